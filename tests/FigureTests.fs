/// Figures a person reads: bar labels that never overprint, one-point curves that show, class
/// colours told apart, sample grids that name their rows, and RESULTS.md told apart by data set.
module Ssl.Tests.FigureTests

open System
open System.IO
open Expecto
open ScottPlot
open SkiaSharp
open TorchSharp
open Ssl.Host.Data
open Ssl.Host.Reporting

/// CIELAB (D65) of a colour, for ΔE76 distances (CIE 15:2004).
let private lab (c: Color) =
    let linear (v: byte) = let v = float v / 255.0 in if v <= 0.04045 then v / 12.92 else ((v + 0.055) / 1.055) ** 2.4
    let r, g, b = linear c.R, linear c.G, linear c.B
    let x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    let y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    let z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883
    let f t = if t > 0.008856 then t ** (1.0 / 3.0) else 7.787 * t + 16.0 / 116.0
    116.0 * f y - 16.0, 500.0 * (f x - f y), 200.0 * (f y - f z)

let private deltaE (a: Color) (b: Color) =
    let (l1, a1, b1), (l2, a2, b2) = lab a, lab b
    sqrt ((l1 - l2) ** 2.0 + (a1 - a2) ** 2.0 + (b1 - b2) ** 2.0)

/// The smallest ΔE between any two of the first `n` palette colours.
let private closestPair n =
    [ for i in 0 .. n - 1 do for j in i + 1 .. n - 1 -> deltaE (ClassPalette.Of i) (ClassPalette.Of j) ] |> List.min

/// RESULTS.md's names of the 28 fresh rows (with the longest recipe names), as the bar chart gets them.
let private methodNames =
    [ "supervised"; "rotnet"; "infonce"; "moco"; "moco-no-shuffle"; "moco-v2"; "simsiam"; "byol"; "barlow-twins"; "dino"; "nce"
      "cpc-v2"; "relative-patch"; "jigsaw"; "exemplar"; "bigbigan"; "mixmatch-10"; "mixmatch-100"; "fixmatch-10"; "fixmatch-100"
      "enaet-10"; "enaet-100"; "s4l-rotation-10"; "s4l-rotation-100"; "s4l-exemplar-10"; "s4l-exemplar-100"; "vat-entmin-10"
      "random init (PatchGrid(LayerNormConvNet16, patch=8, stride=5))" ]

let private decode (path: string) = SKBitmap.Decode path

let private near (tolerance: int) (a: SKColor) (b: Color) =
    abs (int a.Red - int b.R) <= tolerance && abs (int a.Green - int b.G) <= tolerance && abs (int a.Blue - int b.B) <= tolerance

let private barTests =
    testList "bars" [
        for series in [ 1; 3; 4 ] do
            test $"the labels of 28 methods with {series} series each stand apart, each whole inside the figure, the first on top" {
                let values = [| for g in methodNames -> Nullable(0.5 + 0.01 * float g.Length) |]
                let names = [ "linear probe"; "kNN"; "own classifier"; "supervised only" ] |> List.truncate series
                use figure = Plots.BarChart("mean over seeds", "test top-1", methodNames, readOnlyDict [ for n in names -> n, values ])
                figure.Render()
                let plot = figure.Plot
                let ticks = plot.Axes.Left.TickGenerator.Ticks |> Array.filter (fun t -> t.IsMajor)
                Expect.equal (set [ for t in ticks -> t.Label ]) (set methodNames) "the method names are the category axis's labels"
                use paint = Paint.NewDisposablePaint()
                let boxes =
                    [ for t in ticks |> Array.sortBy (fun t -> plot.GetPixel(Coordinates(0.0, t.Position)).Y) ->
                          let size = plot.Axes.Left.TickLabelStyle.Measure(t.Label, paint).Size
                          let y = float (plot.GetPixel(Coordinates(0.0, t.Position)).Y)
                          t.Label, y - float size.Height / 2.0, y + float size.Height / 2.0, float size.Width ]
                let label, _, _, _ = boxes.Head
                Expect.equal label methodNames.Head "the first method on top"
                for (a, _, bottom, _), (b, top, _, _) in List.pairwise boxes do
                    Expect.isLessThanOrEqual bottom top $"'{a}' ends above '{b}' begins"
                let dataRect = plot.LastRender.DataRect
                for name, top, bottom, width in boxes do
                    Expect.isGreaterThanOrEqual (float dataRect.Left - width) 0.0 $"'{name}' fits left of the bars"
                    Expect.isTrue (top >= float dataRect.Top - 1.0 && bottom <= float dataRect.Bottom + 1.0) $"'{name}' beside the bars"
            }
        test "a chart of two groups is no taller than it needs, and writes a PNG of its size" {
            let path = Path.Combine(Fixtures.tempDir "bars-small", "bars.png")
            Plots.Bars(path, "accuracy", "top-1", [| "linear probe"; "kNN" |],
                       readOnlyDict [ "method", [| Nullable 0.9; Nullable 0.85 |]; "random", [| Nullable 0.7; Nullable() |] ])
            use bitmap = decode path
            Expect.equal (bitmap.Width, bitmap.Height) (900, 360) "size"
        }
    ]

let private curveTests =
    testList "curves" [
        test "a one-point curve is a marker of the series colour a reader sees, its value written above it" {
            let path = Path.Combine(Fixtures.tempDir "curve-one", "loss.png")
            use figure = Plots.CurveChart("loss", "epoch", "loss", readOnlyDict [ "epoch mean", ([| 1.0 |], [| 1.2394 |]) ])
            figure.Save path
            let centre = figure.Plot.GetPixel(Coordinates(1.0, 1.2394))
            use bitmap = decode path
            // A dot a reader finds: at least 10 px across (the old 4 px speck fails this).
            let radius = 5
            let colour = ClassPalette.Of 0
            let disc = [ for dy in -radius .. radius do for dx in -radius .. radius do if dx * dx + dy * dy <= radius * radius then yield dx, dy ]
            let coloured =
                disc |> List.filter (fun (dx, dy) -> near 40 (bitmap.GetPixel(int centre.X + dx, int centre.Y + dy)) colour) |> List.length
            Expect.isGreaterThan (float coloured) (0.8 * float disc.Length) $"the marker fills its disc of radius {radius} px ({coloured} of {disc.Length})"
            let texts = figure.Plot.GetPlottables<Plottables.Text>() |> Seq.map (fun t -> t.LabelText) |> List.ofSeq
            Expect.equal texts [ "1.239" ] "the value is written"
        }
        test "a curve of many points gets no markers and no value label" {
            let xs = Array.init 100 float
            use figure = Plots.CurveChart("loss", "step", "loss", readOnlyDict [ "loss", (xs, xs |> Array.map (fun x -> 1.0 / (1.0 + x))) ])
            let line = figure.Plot.GetPlottables<Plottables.Scatter>() |> Seq.exactlyOne
            Expect.equal line.MarkerSize 0.0f "a line alone"
            Expect.isEmpty (figure.Plot.GetPlottables<Plottables.Text>()) "no label"
        }
    ]

let private paletteTests =
    testList "class colours" [
        test "ten classes are pairwise ΔE ≥ 25 apart, twenty ≥ 20, sixty all different; a t-SNE map's legend names each class in its colour" {
            Expect.isGreaterThanOrEqual (closestPair 10) 25.0 "Tableau 10"
            Expect.isGreaterThanOrEqual (closestPair ClassPalette.DistinctCount) 20.0 "the first twenty"
            Expect.equal ClassPalette.DistinctCount 20 "twenty far apart"
            Expect.isGreaterThan (closestPair 60) 1.0 "no colour repeats"
            use scope = torch.NewDisposeScope()
            let names = [| for c in 0 .. 11 -> $"class {c}" |]
            let labels = torch.arange(12L).repeat(5L)
            let points = torch.randn(60L, 2L)
            let path = Path.Combine(Fixtures.tempDir "class-map", "tsne.png")
            use figure = Plots.ClassMapChart("map", points, labels, names)
            let items = figure.Plot.Legend.GetItems()
            Expect.equal [ for i in items -> i.LabelText ] (List.ofArray names) "a legend item per class, by name"
            Expect.equal [ for i in items -> i.MarkerFillColor ] [ for c in 0 .. 11 -> ClassPalette.Of c ] "in the class's colour"
            figure.Save path
            use bitmap = decode path
            Expect.equal (bitmap.Width, bitmap.Height) (900, 700) "size"
        }
    ]

let private gridTests =
    testList "sample grid" [
        test "a labelled grid is the plain grid and a band as wide as its longest name, the names written in it" {
            let dir = Fixtures.tempDir "grid-labels"
            use images = torch.tensor(Array.create (12 * 64) 200uy).reshape(12L, 1L, 8L, 8L)
            ImageGrid.SavePng(images, Path.Combine(dir, "plain.png"), columns = 4, scale = 3, padding = 2)
            let rows (names: string list) = ResizeArray [ for i, name in List.indexed names -> struct (name, images.narrow(0L, int64 (4 * i), 4L)) ]
            let short = ImageGrid.SaveLabelledRows(rows [ "a"; "b"; "c" ], Path.Combine(dir, "short.png"), scale = 3, padding = 2)
            let struct (width, height, band) = ImageGrid.SaveLabelledRows(rows [ "a"; "a much longer class name"; "c" ], Path.Combine(dir, "long.png"), scale = 3, padding = 2)
            use plain = decode (Path.Combine(dir, "plain.png"))
            use long = decode (Path.Combine(dir, "long.png"))
            Expect.equal (long.Width, long.Height) (width, height) "the size it says"
            Expect.equal (width, height) (plain.Width + band, plain.Height) "wider by the band, as tall"
            let struct (_, _, shortBand) = short
            Expect.isGreaterThan band (shortBand + 80) "the band grows with the longest name"
            let cellH = 8 * 3 + 2
            for r in 0 .. 2 do
                let lit = [ for y in 2 + r * cellH .. 2 + (r + 1) * cellH - 3 do for x in 0 .. band - 1 do if long.GetPixel(x, y).Red > 150uy then yield 1 ] |> List.sum
                Expect.isGreaterThan lit 5 $"row {r}'s name is drawn in its band"
        }
        test "ssl data --grid names each row by its class folder" {
            let folder = Fixtures.writeColourFolder (Fixtures.tempDir "grid-folder") 3 4 16
            let png = Path.Combine(Fixtures.tempDir "grid-folder-out", "grid.png")
            Expect.equal (Ssl.Experiments.Program.run [| "data"; "--dataset"; folder; "--grid"; png |]) 0 "exit code"
            use dataset = DataCatalog.Load(folder, Split.Train, null)
            let rows = Ssl.Experiments.Commands.classRows dataset 10
            Expect.equal [ for name, picks in rows -> name, picks.Length ] [ "class0", 4; "class1", 4; "class2", 4 ] "a row per class, by name"
            use bitmap = decode png
            let cell = 16 * 3 + 2
            Expect.equal bitmap.Height (3 * cell + 2) "three rows"
            Expect.isGreaterThan bitmap.Width (4 * cell + 2 + 2 * ImageGrid.LabelMargin) "wider by a band of names"
        }
    ]

/// A record of `method` on `dataset` (seed 0) in `recordsDir`, at the digest its recipe resolves to today.
let private writeRecord (recordsDir: string) (dataset: string) (method: string) (linear: float) =
    let result =
        Ssl.Host.Runs.RunResult(
            Method = method, Dataset = dataset, Seed = 0L,
            Eval = Ssl.Host.Runs.EvalFigures(LinearProbeAcc = Nullable linear, KnnAcc = Nullable 0.5),
            Baselines = Ssl.Host.Runs.BaselineFigures(RandomInit = Ssl.Host.Runs.ProtocolFigures(), RawPixels = Ssl.Host.Runs.ProtocolFigures(),
                                                      SupervisedOnly = Ssl.Host.Runs.SupervisedFigures()),
            Train = Ssl.Host.Runs.TrainFigures(Epochs = 1, Steps = 10L, WallSeconds = 1.0),
            Versions = Ssl.Host.Runs.VersionFigures(Commit = "0123456789abcdef", TorchSharp = "0.107.0", LibTorch = "2.10.0.0"))
    let record: Ssl.Experiments.Records.RunRecord =
        { File = ""; Method = method; Preset = "quick"; Labels = None; Seed = 0L; Dataset = dataset; Overrides = []; Encoder = "SmallConvNet16"
          Digest = ""; Commit = "0123456789abcdef"; Machine = "test"; CommandSeconds = 1.0; Result = result }
    let digest = (Ssl.Experiments.Records.currentDigest Ssl.Experiments.Registry.recipes record).Value
    let node = Text.Json.Nodes.JsonObject()
    for key, value in [ "method", method; "preset", "quick"; "dataset", dataset; "encoder", "SmallConvNet16"; "config_digest", digest
                        "commit", "0123456789abcdef"; "machine", "test" ] do
        node[key] <- Text.Json.Nodes.JsonValue.Create value
    node["labels_per_class"] <- null
    node["seed"] <- Text.Json.Nodes.JsonValue.Create 0L
    node["overrides"] <- Text.Json.Nodes.JsonArray()
    node["result"] <- Text.Json.Nodes.JsonNode.Parse(Text.Json.JsonSerializer.Serialize(result, Ssl.Host.Runs.RunFolder.Json))
    Directory.CreateDirectory recordsDir |> ignore
    File.WriteAllText(Path.Combine(recordsDir, $"{method}-quick-{digest}-{dataset}.json"), node.ToJsonString())

let private resultsTests =
    testList "RESULTS.md" [
        test "rows say their data set, sort by it, and each data set gets its own figure" {
            let root = Fixtures.tempDir "results-datasets"
            let records = Path.Combine(root, "results")
            for dataset in [ "fashion-mnist"; "emoji" ] do
                for method, acc in [ "rotnet", 0.81; "supervised", 0.91 ] do writeRecord records dataset method acc
            let out = Path.Combine(root, "RESULTS.md")
            let count, stale = Ssl.Experiments.Records.write Ssl.Experiments.Registry.recipes records out (Path.Combine(root, "docs", "results")) []
            Expect.equal (count, stale) (4, 0) "four fresh records"
            let text = File.ReadAllText out
            let methods = text.Substring(text.IndexOf "## Methods", text.IndexOf "## Baselines" - text.IndexOf "## Methods").Split('\n')
            Expect.isTrue (methods |> Array.exists (fun l -> l.StartsWith "| data set | method |")) "the data set is the first column"
            let rows = methods |> Array.filter (fun l -> l.StartsWith "| emoji |" || l.StartsWith "| fashion-mnist |")
                               |> Array.map (fun l -> let cells = l.Split('|') in cells[1].Trim(), cells[2].Trim()) |> List.ofArray
            Expect.equal rows [ "emoji", "supervised"; "emoji", "rotnet"; "fashion-mnist", "supervised"; "fashion-mnist", "rotnet" ]
                "by data set, then in the registry's order"
            for dataset in [ "emoji"; "fashion-mnist" ] do
                Expect.stringContains text $"](docs/results/accuracy-{dataset}.png)" $"{dataset}'s figure linked"
                Expect.isTrue (File.Exists(Path.Combine(root, "docs", "results", $"accuracy-{dataset}.png"))) $"{dataset}'s figure drawn"
        }
    ]

let private loggingTests =
    testList "logged steps" [
        test "a short run logs every step, a longer one at least twenty lines, a long one every LogEvery steps" {
            let options = Ssl.Host.Engine.TrainerOptions(Epochs = 1, BatchSize = 32, ExampleCount = 256L, LogEvery = 50)
            Expect.equal [ for total in [ 8L; 15L; 400L; 1000L; 10000L ] -> options.LogInterval total ] [ 1; 1; 20; 50; 50 ] "intervals"
            let folder = Ssl.Host.Runs.RunFolder(Fixtures.tempDir "log-short")
            Ssl.Host.Engine.Trainer.Run(EngineTests.LinearTask(1L), options, folder, torch.CPU, Ssl.Host.Engine.SilentProgress()) |> ignore
            let steps = folder.ReadMetrics() |> Seq.filter (fun r -> not (r.ContainsKey "summary")) |> Seq.map (fun r -> r["step"].GetValue<int64>()) |> List.ofSeq
            Expect.equal steps [ 1L .. 8L ] "one epoch of 8 steps: a line per step, so its curve is a curve"
        }
    ]

[<Tests>]
let tests = testList "figures" [ barTests; curveTests; paletteTests; gridTests; resultsTests; loggingTests ]
