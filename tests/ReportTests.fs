/// RESULTS.md from fake run folders, the repro plan and its skip rule, the FLOP counter against
/// SmallConvNet's closed form, the step benchmark, and the determinism of smoke presets.
module Ssl.Tests.ReportTests

open System
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open Expecto
open TorchSharp
open Ssl.Core.Models
open Ssl.Host.Engine
open Ssl.Host.Runs
open Ssl.Experiments
open Ssl.Experiments.Recipe

/// A run folder with a result.json of the contract (and a config.json and metrics.jsonl).
let private fakeRun (runsDir: string) (name: string) (methodName: string) (labels: int option) (linear: float option) (supervisedOnly: float option) =
    let dir = Path.Combine(runsDir, name)
    Directory.CreateDirectory dir |> ignore
    let few = Collections.Generic.Dictionary<string, Nullable<float>>()
    few["10"] <- Nullable 0.61
    few["100"] <- Nullable()
    let result =
        RunResult(
            Method = methodName, Dataset = "fashion-mnist", Seed = 0L, LabelsPerClass = Option.toNullable labels,
            Eval = EvalFigures(LinearProbeAcc = Option.toNullable linear, KnnAcc = Nullable 0.75, TestAcc = Nullable(), FewLabelLinearAcc = few),
            Baselines = BaselineFigures(RandomInit = ProtocolFigures(LinearProbeAcc = Nullable 0.7866, KnnAcc = Nullable 0.7503),
                                        RawPixels = ProtocolFigures(LinearProbeAcc = Nullable 0.8435, KnnAcc = Nullable 0.7885),
                                        SupervisedOnly = SupervisedFigures(TestAcc = Option.toNullable supervisedOnly)),
            Train = TrainFigures(Epochs = 2, Steps = 20L, WallSeconds = 12.5, ImagesPerSecond = 1234.4, PeakRssMb = 700.2),
            Versions = VersionFigures(Commit = "0123456789abcdef", TorchSharp = "0.107.0", LibTorch = "2.10.0.0"))
    File.WriteAllText(Path.Combine(dir, "result.json"), JsonSerializer.Serialize(result, RunFolder.Json))
    File.WriteAllText(Path.Combine(dir, "config.json"), """{ "method": "x", "preset": "quick", "encoder": "SmallConvNet(width=16)" }""")
    File.WriteAllLines(Path.Combine(dir, "metrics.jsonl"),
                       [ for s in 1 .. 20 -> $$"""{"epoch":{{(s - 1) / 10}},"step":{{s}},"loss":{{2.0 / float s}}}""" ])
    dir

let private rowOf (table: string) (run: string) =
    table.Split('\n') |> Array.find (fun l -> l.StartsWith $"| {run} |")

/// result.json and every logged loss of two runs, without what depends on the clock or the machine.
let private figures (dir: string) =
    let result = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "result.json"))).AsObject()
    let train = result["train"].AsObject()
    for key in [ "wall_s"; "images_per_s"; "peak_rss_mb" ] do train.Remove key |> ignore
    let losses =
        File.ReadLines(Path.Combine(dir, "metrics.jsonl"))
        |> Seq.map (fun l -> JsonNode.Parse(l).AsObject())
        |> Seq.map (fun r ->
            [ for kv in r do
                  if not (List.contains kv.Key [ "images_per_s"; "rss_mb"; "peak_rss_mb"; "live_tensors" ]) then
                      yield kv.Key, kv.Value.ToJsonString() ])
        |> Seq.toList
    result.ToJsonString(), losses

/// A Linear(8, 3) "encoder" trained through its module call (so the FLOP counter's hooks see it) on
/// fixed random inputs.
type private CalledLinear() =
    let model = torch.nn.Linear(8L, 3L)
    let x = torch.randn(256L, 8L)
    interface ITrainingStep with
        member _.Modules = readOnlyDict [ "encoder", (model :> torch.nn.Module) ]
        member _.Optimizers =
            [| struct ("main", OptimizerSpec(Kind = OptimizerKind.Sgd), model.named_parameters ()) |] :> Collections.Generic.IReadOnlyList<_>
        member _.Step(ctx, batch) =
            use idx = torch.tensor(batch)
            readOnlyDict [ "loss", ctx.Optimize("main", model.call(x.index_select(0L, idx)).square().mean()) ]

[<Tests>]
let tests =
    testList "results" [
        test "a null figure shows as — and never as 0; accuracies in per cent" {
            let runs = Fixtures.tempDir "report-null"
            fakeRun runs "rotnet" "rotnet" None (Some 0.8140) None |> ignore
            fakeRun runs "mixmatch-10" "mixmatch" (Some 10) None (Some 0.7076) |> ignore
            let table = Report.methodsTable (Report.loadRuns runs)
            let rotnet = rowOf table "rotnet"
            Expect.stringContains rotnet "| 81.40 |" "linear probe in per cent"
            Expect.stringContains rotnet "| 61.00 | — |" "10 labels/class, then the missing 100-label figure as —"
            Expect.isFalse (rotnet.Contains "| 0.00 |") "no made-up zero"
            let mixmatch = rowOf table "mixmatch-10"
            Expect.stringContains mixmatch "| mixmatch | quick | 10 | — |" "null linear probe as —"
            Expect.stringContains mixmatch "| 70.76 |" "supervised-only"
            Expect.stringContains mixmatch "| 1,234 | 700 | 0123456789 |" "img/s, peak RSS, short commit"
            Expect.equal (Report.formatAcc (Nullable())) "—" "formatAcc of null"
        }
        test "runs are ordered as the contract names them, folders without result.json are left out" {
            let runs = Fixtures.tempDir "report-order"
            fakeRun runs "mixmatch-100" "mixmatch" (Some 100) (Some 0.8) None |> ignore
            fakeRun runs "rotnet" "rotnet" None (Some 0.8) None |> ignore
            fakeRun runs "mixmatch-10" "mixmatch" (Some 10) (Some 0.8) None |> ignore
            Directory.CreateDirectory(Path.Combine(runs, "half-done")) |> ignore
            let names = Report.loadRuns runs |> List.map (fun e -> e.Name)
            Expect.equal names [ "rotnet"; "mixmatch-10"; "mixmatch-100" ] "contract order, then labels"
        }
        test "RESULTS.md says it is generated and how to regenerate it, links its figures and shares one baseline row" {
            let root = Fixtures.tempDir "report-render"
            let runs = Path.Combine(root, "runs")
            fakeRun runs "rotnet" "rotnet" None (Some 0.8140) None |> ignore
            fakeRun runs "supervised" "supervised" None (Some 0.9263) None |> ignore
            let out = Path.Combine(root, "RESULTS.md")
            let figures = Path.Combine(root, "docs", "results")
            Expect.equal (Report.write runs out figures) 2 "two runs"
            let text = File.ReadAllText out
            Expect.stringContains text "GENERATED" "generated mark"
            Expect.stringContains text "never edited by hand" "not to be edited"
            Expect.stringContains text "dotnet fsi build.fsx repro" "how to regenerate"
            Expect.stringContains text "](docs/results/accuracy-fashion-mnist.png)" "figure link relative to RESULTS.md, one per data set"
            for png in [ "accuracy-fashion-mnist.png"; "few-labels-fashion-mnist.png"; "curves/rotnet.png"; "curves/supervised.png" ] do
                Expect.isTrue (File.Exists(Path.Combine(figures, png))) $"{png} drawn"
            let baselineRows = text.Split('\n') |> Array.filter (fun l -> l.StartsWith "| fashion-mnist |")
            Expect.equal baselineRows.Length 1 "one baseline row shared by both runs"
            Expect.stringContains baselineRows[0] "| 78.66 | 75.03 | 84.35 | 78.85 | supervised, rotnet |" "baseline figures and their runs"
            Expect.stringContains text "`0123456789abcdef`" "commit"
        }
        test "a folder that does not exist is a clear error naming it" {
            let missing = Path.Combine(Fixtures.tempDir "report-missing", "nope")
            let e = Prop.throws<Ssl.Host.Data.DataException> (fun () -> Report.loadRuns missing |> ignore)
            Expect.stringContains e.Message missing "names the folder"
        }
        test "the FLOP counter gives SmallConvNet's closed form 14,112·C·w + 42,336·w² per 28x28 image" {
            for c, w in [ 1L, 16L; 3L, 32L; 1L, 32L ] do
                use net = new SmallConvNet(c, w)
                let counted = FlopCounter.ForwardFlopsPerExample(net, c, 28L, 28L)
                Expect.equal counted (float (14112L * c * w + 42336L * w * w)) $"C={c}, w={w}"
            use linear = torch.nn.Linear(10L, 7L)
            Expect.equal (FlopCounter.ForwardFlopsPerExample(linear, 10L)) 140.0 "linear: 2·in·out"
            // Core's models call their children with `call` (hooks run), not `forward` (they would not).
            use head = new LinearHead(10L, 7L)
            Expect.equal (FlopCounter.ForwardFlopsPerExample(head, 10L)) 140.0 "LinearHead's inner Linear is counted"
            use mlp = new MlpHead(8L, 16L, 4L)
            Expect.equal (FlopCounter.ForwardFlopsPerExample(mlp, 8L)) (2.0 * 8.0 * 16.0 + 2.0 * 16.0 * 4.0) "MlpHead's two Linears"
        }
        test "the FLOP counter counts transposed convolutions and Core's functional layers (closed forms)" {
            // Transposed: every input element meets out·k² weights: 8·7·7 inputs · 4 · 16.
            use up = torch.nn.ConvTranspose2d(8L, 4L, 4L, stride = 2L, padding = 1L)
            Expect.equal (FlopCounter.ForwardFlopsPerExample(up, 8L, 7L, 7L)) (2.0 * 392.0 * 4.0 * 16.0) "ConvTranspose2d"
            // Functional layers: every output element costs in·k² multiply-adds.
            use safe = new SafeConv.SafeConv2d(4L, 1L, 3L, 1L, 1L, true)
            Expect.equal (FlopCounter.ForwardFlopsPerExample(safe, 4L, 6L, 6L)) (2.0 * 36.0 * 36.0) "SafeConv2d (1 of 16 padded outputs kept)"
            use spectral = new SpectralNormConv2d(4L, 8L, 3L, 1L, 1L)
            Expect.equal (FlopCounter.ForwardFlopsPerExample(spectral, 4L, 6L, 6L)) (2.0 * 288.0 * 36.0) "SpectralNormConv2d"
            use spectralLinear = new SpectralNormLinear(10L, 7L)
            Expect.equal (FlopCounter.ForwardFlopsPerExample(spectralLinear, 10L)) 140.0 "SpectralNormLinear"
            use masked = new MaskedConv2d(4L, 8L, 3L, ContextMask.RowsAbove, true)
            Expect.equal (FlopCounter.ForwardFlopsPerExample(masked, 4L, 5L, 5L)) (2.0 * 200.0 * 36.0) "MaskedConv2d (masked taps are computed)"
        }
        test "the FLOP counter counts backward as twice the forward of passes with gradients" {
            use net = new SmallConvNet(1L, 16L)
            use counter = new FlopCounter([ net :> torch.nn.Module ])
            use x = torch.zeros(2L, 1L, 28L, 28L)
            net.call(x).sum().backward()
            (using (torch.no_grad ()) (fun _ -> net.call(x))).Dispose()
            let perImage = float (14112L * 16L + 42336L * 16L * 16L)
            Expect.equal counter.ForwardFlops (4.0 * perImage) "two forward passes of 2 images"
            Expect.equal counter.TrainingFlops (4.0 * perImage + 2.0 * 2.0 * perImage) "backward only for the pass with gradients"
        }
        test "a step benchmark times its window of steps and stops the run" {
            let folder = RunFolder(Fixtures.tempDir "bench-window")
            let benchmarked (warmup: int) =
                let benchmark = StepBenchmark(warmup, 3)
                let summary =
                    Trainer.Run(CalledLinear(), TrainerOptions(Epochs = 5, BatchSize = 32, ExampleCount = 256L, Observer = benchmark),
                                RunFolder(Fixtures.tempDir $"bench-window-{warmup}"), torch.CPU, SilentProgress())
                Expect.equal summary.StoppedBy StopReason.Observer "stopped by the benchmark"
                Expect.isFalse summary.Finished "not finished"
                Expect.equal summary.Steps (int64 (warmup + 3)) "warm-up and timed steps, then no more"
                benchmark.Result
            let r = benchmarked 2
            Expect.equal r.Steps 3 "timed steps"
            Expect.equal r.Images 96L "images of the timed steps"
            Expect.isTrue (r.Seconds > 0.0) "time"
            Expect.equal (Set.ofSeq r.PhaseSeconds.Keys) (set [ "backward"; "optimizer" ]) "phases"
            // The Linear(8, 3) on 32 examples: 2·8·3·32 forward FLOPs a step, backward twice that.
            Expect.equal r.EncoderTrainingFlops (3.0 * 3.0 * 1536.0) "FLOPs of the timed steps alone"
            Expect.equal (benchmarked 0).EncoderTrainingFlops r.EncoderTrainingFlops "without warm-up the first step is timed whole"
            let summary = Trainer.Run(EngineTests.LinearTask(1L), TrainerOptions(Epochs = 1, BatchSize = 32, ExampleCount = 256L), folder,
                                      torch.CPU, SilentProgress())
            Expect.equal summary.Steps 8L "a run without an observer trains to its end"
            Expect.equal summary.StoppedBy StopReason.None "not stopped"
        }
        test "the bench table goes between the README's markers, and missing markers are an error naming the file" {
            let dir = Fixtures.tempDir "bench-readme"
            let readme = Path.Combine(dir, "README.md")
            File.WriteAllText(readme, $"# x\n{Bench.startMarker}\nold\n{Bench.endMarker}\nrest\n")
            Bench.replaceBetweenMarkers readme "| table |\n"
            Expect.equal (File.ReadAllText readme) $"# x\n{Bench.startMarker}\n| table |\n{Bench.endMarker}\nrest\n" "replaced"
            File.WriteAllText(readme, "no markers")
            let e = Prop.throws<Ssl.Host.Data.DataException> (fun () -> Bench.replaceBetweenMarkers readme "x")
            Expect.stringContains e.Message readme "names the file"
        }
        // Evidence for the thread count: two --deterministic rotnet smoke runs at the default two
        // threads, started at once on a machine with a load average of 9-15 (so each thread was
        // descheduled often), logged identical losses and identical result.json figures. libtorch's
        // CPU kernels split work statically by thread count, so a fixed count suffices; deterministic
        // mode does not need one thread. (The two supervised quick runs that differed earlier were of
        // different commits and differed from the first logged step: code, not scheduling.)
        test "the same seed gives the same losses and figures on the CPU with --deterministic (smoke preset, twice)" {
            // One parent folder: the second run reads the baselines the first cached (they are
            // compared by the baseline cache's own key); the method's figures are computed twice.
            let parent = Fixtures.tempDir "determinism"
            let run (name: string) =
                let dir = Path.Combine(parent, name)
                Expect.equal (Program.run [| "train"; "supervised"; "--preset"; "smoke"; "--out"; dir; "--deterministic"; "--seed"; "3" |]) 0 "exit code"
                figures dir
            let resultA, lossesA = run "a"
            let resultB, lossesB = run "b"
            Expect.isNonEmpty lossesA "losses logged"
            Expect.equal lossesB lossesA "every logged loss, bit for bit"
            Expect.equal resultB resultA "every figure of result.json, bit for bit"
        }
        test "a run's config.json given to --config replays it: the same overrides, losses and figures, bit for bit" {
            let parent = Fixtures.tempDir "replay"
            let a, b = Path.Combine(parent, "a"), Path.Combine(parent, "b")
            let sets = [| "--set"; "BatchSize=64"; "--set"; "LearningRate=0.05"; "--set"; "CropScale=0.7,1" |]
            Expect.equal (Program.run (Array.append [| "train"; "supervised"; "--preset"; "smoke"; "--out"; a; "--deterministic"; "--seed"; "2" |] sets)) 0 "first run"
            Expect.equal (Program.run [| "train"; "--config"; Path.Combine(a, "config.json"); "--out"; b; "--deterministic" |]) 0 "replay"
            let config dir = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))
            let ca, cb = config a, config b
            let field (key: string) (node: System.Text.Json.Nodes.JsonNode) = node[key]
            Expect.equal ((ca |> field "config" |> field "Schedule" |> field "BatchSize").GetValue<int>()) 64 "the override is in config.json"
            Expect.equal ((ca |> field "config" |> field "CropScale").ToJsonString()) "[0.7,1]" "a tuple override"
            Expect.equal (cb["config"].ToJsonString()) (ca["config"].ToJsonString()) "the same resolved config"
            Expect.equal (cb["overrides"].ToJsonString()) (ca["overrides"].ToJsonString()) "the same overrides listed"
            Expect.equal (cb["seed"].GetValue<int64>()) 2L "the seed comes from the file"
            let resultA, lossesA = figures a
            let resultB, lossesB = figures b
            Expect.isNonEmpty lossesA "losses logged"
            Expect.equal lossesB lossesA "every logged loss, bit for bit"
            Expect.equal resultB resultA "every figure of result.json, bit for bit"
            Expect.equal (Program.run [| "train"; "--config"; Path.Combine(a, "config.json"); "--out"; a; "--resume"; "--set"; "Epochs=3" |]) 2
                "--resume with other overrides is refused"
            Expect.equal ((config a |> field "config").ToJsonString()) (ca["config"].ToJsonString()) "and the run's config.json is left as it was"
        }
    ]
