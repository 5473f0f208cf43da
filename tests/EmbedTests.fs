/// `ssl embed` and `ssl neighbours` on one small trained run (RotNet smoke on a 60-image class tree,
/// whose probes read an inner layer): the outputs' formats read back by hand (.npy), by Parquet.Net
/// and by numpy where Debian's python3-numpy is installed; the rows are the features the probed
/// encoder computes; bad input ends in one line (docs/cli.md#using-a-trained-encoder).
module Ssl.Tests.EmbedTests

open System
open System.Buffers.Binary
open System.Diagnostics
open System.IO
open System.Text
open System.Text.Json.Nodes
open Expecto
open TorchSharp
open Ssl.Host.Data
open Ssl.Host.Eval
open Ssl.Experiments

let private root = lazy (Fixtures.tempDir "embed")

/// The run every test reads: RotNet smoke, one epoch of batches of 16, on 2 classes x 30 images of 28 x 28.
let private trained =
    lazy
        (let data = Fixtures.classTree (Path.Combine(root.Force(), "tree")) 2 30 28
         let dir = Path.Combine(root.Force(), "run")
         let code = Program.run [| "train"; "rotnet"; "--preset"; "smoke"; "--set"; "Epochs=1"; "--set"; "BatchSize=16"; "--dataset"; data; "--out"; dir |]
         if code <> 0 then failwithf "the run the embed tests read failed (exit %d)" code
         data, dir)

/// A .npy file read by the format's rules (numpy.lib.format, version 1.0): its header dict and its float32 values.
let private readNpy (path: string) =
    let bytes = File.ReadAllBytes path
    Expect.equal bytes[0] 0x93uy "magic byte"
    Expect.equal (Encoding.ASCII.GetString(bytes, 1, 5)) "NUMPY" "magic string"
    Expect.equal (bytes[6], bytes[7]) (1uy, 0uy) "version 1.0"
    let headerLength = int (BinaryPrimitives.ReadUInt16LittleEndian(ReadOnlySpan(bytes, 8, 2)))
    let dataStart = 10 + headerLength
    Expect.equal (dataStart % 64) 0 "the data starts 64-byte aligned"
    let header = Encoding.ASCII.GetString(bytes, 10, headerLength)
    Expect.isTrue (header.EndsWith "\n") "the header ends with a newline"
    Expect.stringContains header "'descr': '<f4'" "little-endian float32"
    Expect.stringContains header "'fortran_order': False" "C order"
    let shape = Text.RegularExpressions.Regex.Match(header, @"'shape': \((\d+), (\d+)\)")
    Expect.isTrue shape.Success $"a 2-D shape in {header}"
    let rows, columns = int shape.Groups[1].Value, int shape.Groups[2].Value
    Expect.equal (bytes.Length - dataStart) (rows * columns * 4) "N x D float32 values after the header"
    let values = Array.init (rows * columns) (fun i -> BinaryPrimitives.ReadSingleLittleEndian(ReadOnlySpan(bytes, dataStart + 4 * i, 4)))
    rows, columns, values

/// The row shape Parquet.Net's class serializer reads the file into (property names are the column names).
[<AllowNullLiteral>]
type EmbeddingRow() =
    member val index = 0L with get, set
    member val file: string = null with get, set
    member val split: string = null with get, set
    member val label = Nullable<int>() with get, set
    member val embedding: Collections.Generic.List<float32> = null with get, set

/// The features of the run's data under its probed encoder, computed here from the public pieces
/// (config.json, the recipe's encoder, the export, the probe, Features.Extract): (features (N, D), data).
let private oracleFeatures (dir: string) =
    let config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json"))).AsObject()
    let recipe = (Registry.tryFind (config["method"].GetValue<string>())).Value
    let request =
        { Recipe.Request.Create("rotnet", Recipe.Smoke, config["dataset_path"].GetValue<string>(), config["seed"].GetValue<int64>(), dir) with
            Config = Some(config["config"].AsObject()) }
    let data = Pipeline.loadData request
    let layout =
        let format = (config["runtime"]["memory_format"]).GetValue<string>()
        if format = "channels-last" then Ssl.Core.Models.SafeConv.ConvLayout.ChannelsLast else Ssl.Core.Models.SafeConv.ConvLayout.Nchw
    use encoder = recipe.Encoder (config["config"].AsObject()) data layout
    Ssl.Host.Export.EncoderExport.Load(encoder, Path.Combine(dir, "export", "encoder.dat"))
    let probe = config["probe"]
    let probed, _ = Pipeline.probed (probe["layer"].GetValue<string>()) (probe["pool"].GetValue<int64>()) data encoder
    let features = Features.Extract(probed, data.Train, data.Mean, data.Std, torch.CPU)
    if not (Object.ReferenceEquals(probed, encoder)) then probed.Dispose()
    features, data

[<Tests>]
let tests =
    testSequenced <| testList "embed" [
        test "ssl embed writes .npy, .files.txt and .parquet: one row per image, the probed representation's width, the encoder's features" {
            let data, dir = trained.Force()
            let prefix = Path.Combine(root.Force(), "out", "tree")
            Expect.equal (Program.run [| "embed"; dir; "--out"; prefix + ".npy" |]) 0 "exit code"
            let rows, columns, values = readNpy (prefix + ".npy")
            let features, oracleData = oracleFeatures dir
            use features = features
            use _ = oracleData
            Expect.equal rows 60 "every image of the tree (one set: both splits of the run)"
            Expect.equal (int64 columns) features.shape[1] "the probed representation's width"
            let config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))
            let layer = (config["probe"]["layer"]).GetValue<string>()
            Expect.notEqual layer "" "RotNet's probes read an inner layer, not the output"
            let expected = features.contiguous().data<float32>().ToArray()
            for row in [ 0; 29; 59 ] do
                for j in 0 .. columns - 1 do
                    let a, b = values[row * columns + j], expected[row * columns + j]
                    if abs (a - b) > 1e-5f then failtestf "row %d, feature %d: %g written, %g computed by Features.Extract" row j a b
            let lines = File.ReadAllLines(prefix + ".files.txt")
            Expect.equal lines.Length rows "one line per row"
            for line in lines do
                let fields = line.Split('\t')
                Expect.equal fields.Length 3 $"file, label and class name: {line}"
                Expect.isTrue (File.Exists fields[0] && fields[0].StartsWith data) $"an image file of the tree: {fields[0]}"
                Expect.equal (Path.GetFileName(Path.GetDirectoryName fields[0])) fields[2] "the class is the file's folder"
            let parquet = (Parquet.Serialization.ParquetSerializer.DeserializeAsync<EmbeddingRow>(prefix + ".parquet")).GetAwaiter().GetResult()
            Expect.equal parquet.Data.Count rows "one Parquet row per image"
            let first = parquet.Data[0]
            Expect.equal first.index 0L "index"
            Expect.equal first.file (lines[0].Split('\t')[0]) "file"
            Expect.equal first.split "all" "split"
            Expect.equal first.label (Nullable(int (lines[0].Split('\t')[1]))) "label"
            Expect.sequenceEqual first.embedding (values[.. columns - 1]) "the first row's vector, as in the .npy"
            Expect.sequenceEqual (parquet.Data |> Seq.map (fun r -> r.index)) (Seq.init rows int64) "indices in row order"
            Expect.isEmpty (Directory.GetFiles(Path.GetDirectoryName prefix, "*.tmp")) "no temp file left"
        }
        test "numpy reads the .npy (Debian's python3-numpy, which the test target installs)" {
            let _, dir = trained.Force()
            use probe = Process.Start(ProcessStartInfo(Peer.python, "-c \"import numpy\"", RedirectStandardError = true, UseShellExecute = false))
            probe.WaitForExit()
            if probe.ExitCode <> 0 then failtest $"{Peer.python} has no numpy: install python3-numpy (`dotnet fsi build.fsx test` does where apt can)"
            let prefix = Path.Combine(root.Force(), "numpy", "tree")
            Expect.equal (Program.run [| "embed"; dir; "--out"; prefix |]) 0 "exit code"
            let rows, columns, values = readNpy (prefix + ".npy")
            let script = $"import numpy; a = numpy.load('{prefix}.npy'); print(a.dtype, a.shape[0], a.shape[1], repr(float(a[0].sum())))"
            let psi = ProcessStartInfo(Peer.python, UseShellExecute = false, RedirectStandardOutput = true)
            psi.ArgumentList.Add "-c"
            psi.ArgumentList.Add script
            use p = Process.Start psi
            let out = p.StandardOutput.ReadToEnd().Trim().Split(' ')
            p.WaitForExit()
            Expect.equal p.ExitCode 0 "numpy.load"
            Expect.equal out[..2] [| "float32"; string rows; string columns |] "dtype and shape"
            let sum = values[.. columns - 1] |> Array.sumBy float
            Expect.floatClose Accuracy.medium (float out[3]) sum "the first row"
        }
        test "hyparquet, an independent Parquet reader, reads the .parquet: every row's index, file, label and vector" {
            // Debian 12 serves no Parquet reader for Python (no pyarrow or fastparquet); hyparquet (npm,
            // pure JavaScript) is the outside client. The test target installs it (build.fsx, ensureHyparquet).
            let folders =
                [ match Environment.GetEnvironmentVariable "SSL_DATA" with null | "" -> () | d -> Path.Combine(d, "node")
                  Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.DoNotVerify), "ssl", "node") ]
            let entry = folders |> List.map (fun f -> Path.Combine(f, "node_modules", "hyparquet", "src", "node.js")) |> List.tryFind File.Exists
            let entry = match entry with Some e -> e | None -> failtest "hyparquet is not installed: `dotnet fsi build.fsx test` installs it with npm"
            let _, dir = trained.Force()
            let prefix = Path.Combine(root.Force(), "hyparquet", "tree")
            Expect.equal (Program.run [| "embed"; dir; "--out"; prefix |]) 0 "exit code"
            let rows, columns, values = readNpy (prefix + ".npy")
            let script = Path.Combine(root.Force(), "hyparquet", "read.mjs")
            File.WriteAllText(script, $"import {{ asyncBufferFromFile, parquetReadObjects }} from '{Uri(entry).AbsoluteUri}'\n" +
                                      $"const rows = await parquetReadObjects({{ file: await asyncBufferFromFile('{prefix}.parquet') }})\n" +
                                      "console.log(JSON.stringify(rows.map(r => [Number(r.index), r.file, r.label, Array.from(r.embedding)])))\n")
            let psi = ProcessStartInfo("node", UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true)
            psi.ArgumentList.Add script
            use p = Process.Start psi
            let out = p.StandardOutput.ReadToEnd()
            let err = p.StandardError.ReadToEnd()
            p.WaitForExit()
            Expect.equal p.ExitCode 0 $"node read the file: {err}"
            let read = JsonNode.Parse(out).AsArray()
            let lines = File.ReadAllLines(prefix + ".files.txt")
            Expect.equal read.Count rows "one row per image"
            for i in 0 .. rows - 1 do
                let row = read[i].AsArray()
                Expect.equal (row[0].GetValue<int>()) i "index"
                Expect.equal (row[1].GetValue<string>()) (lines[i].Split('\t')[0]) "file"
                Expect.equal (row[2].GetValue<int>()) (int (lines[i].Split('\t')[1])) "label"
                let vector = row[3].AsArray() |> Seq.map (fun v -> float32 (v.GetValue<float>())) |> Seq.toArray
                Expect.sequenceEqual vector values[i * columns .. (i + 1) * columns - 1] $"row {i}'s vector, as in the .npy"
        }
        test "a streamed folder gives the same rows, and another folder is resized to the run's images" {
            let _, dir = trained.Force()
            let inMemory = Path.Combine(root.Force(), "memory", "tree")
            let streamed = Path.Combine(root.Force(), "streamed", "tree")
            Expect.equal (Program.run [| "embed"; dir; "--out"; inMemory; "--batch-size"; "16" |]) 0 "in memory"
            Expect.equal (Program.run [| "embed"; dir; "--out"; streamed; "--data-memory-mb"; "0"; "--batch-size"; "16" |]) 0 "streamed"
            let _, _, a = readNpy (inMemory + ".npy")
            let _, _, b = readNpy (streamed + ".npy")
            Expect.sequenceEqual b a "the same features, batch by batch"
            Expect.sequenceEqual (File.ReadAllLines(streamed + ".files.txt")) (File.ReadAllLines(inMemory + ".files.txt")) "the same files"
            let other = Fixtures.classTree (Path.Combine(root.Force(), "other-tree")) 2 5 40
            let prefix = Path.Combine(root.Force(), "other", "other")
            Expect.equal (Program.run [| "embed"; dir; "--dataset"; other; "--out"; prefix |]) 0 "another folder"
            let rows, columns, _ = readNpy (prefix + ".npy")
            let _, width, _ = readNpy (inMemory + ".npy")
            Expect.equal (rows, columns) (10, width) "its 10 images at the run's width"
        }
        test "ssl neighbours writes one PNG: the trained and the random-init panels, of the size their layout gives" {
            let _, dir = trained.Force()
            let png = Path.Combine(root.Force(), "neighbours.png")
            Expect.equal (Program.run [| "neighbours"; dir; "--queries"; "3"; "--k"; "4"; "--seed"; "1"; "--out"; png |]) 0 "exit code"
            use codec = SkiaSharp.SKCodec.Create png
            // 28 x 28 images at 3x (84 px); a panel: 4 + 5 x (84 + 4) + 12 = 456 wide, 24 + 4 + 3 x (84 + 16 + 4) = 340 high; two panels 16 apart.
            Expect.equal (codec.Info.Width, codec.Info.Height) (2 * 456 + 16, 340) "pixel size"
            Expect.equal (Ssl.Host.Reporting.NeighbourGrid.Size(2, 3, 4, 28, 28, 3)) (struct (928, 340)) "the documented layout"
            let data, _ = trained.Force()
            let queries = [ Path.Combine(data, "class0", "03.png"); Path.Combine(root.Force(), "other-query.png") ]
            Fixtures.writeImage queries[1] 7 56 40
            let png = Path.Combine(root.Force(), "neighbours-query.png")
            Expect.equal (Program.run [| "neighbours"; dir; "--query"; queries[0]; "--query"; queries[1]; "--k"; "3"; "--out"; png |]) 0 "--query images"
            use codec = SkiaSharp.SKCodec.Create png
            Expect.equal (codec.Info.Width, codec.Info.Height) (2 * (4 + 4 * 88 + 12) + 16, 24 + 4 + 2 * 104) "two queries, three neighbours each"
            Expect.equal (Program.run [| "neighbours"; dir; "--query"; queries[0]; "--random"; "2" |]) 2 "--query and --random (--queries) together"
        }
        test "nearest neighbours by cosine similarity, a query's own row left out" {
            use pool = torch.tensor([| 1.0f; 0.0f; 0.0f; 1.0f; 1.0f; 1.0f; -1.0f; 0.0f |]).view(4L, 2L)
            use queries = torch.tensor([| 2.0f; 0.1f; 0.0f; 3.0f |]).view(2L, 2L)
            let indices, sims = Embed.nearest queries pool 2 None
            use indices = indices
            use sims = sims
            Expect.sequenceEqual (indices.data<int64>().ToArray()) [| 0L; 2L; 1L; 2L |] "nearest first"
            Expect.floatClose Accuracy.medium (float (sims[0L, 0L].item<float32>())) (2.0 / sqrt 4.01) "cosine"
            let excluded, _ = Embed.nearest queries pool 1 (Some [| 0L; 1L |])
            use excluded = excluded
            Expect.sequenceEqual (excluded.data<int64>().ToArray()) [| 2L; 2L |] "the excluded rows are never neighbours"
        }
        test "ssl eval reads the run through the same reader: its kNN is result.json's" {
            let _, dir = trained.Force()
            Expect.equal (Program.run [| "eval"; dir; "--protocol"; "knn" |]) 0 "exit code"
            let read (file: string) = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, file)))
            let result = read "result.json"
            let figure = read "eval-knn.json"
            Expect.equal ((figure["test_acc"]).GetValue<float>()) ((result["eval"]["knn_acc"]).GetValue<float>()) "the same figure"
        }
        test "bad input ends in one line: no such run folder, a run without its export (exit 1), an unknown data set (exit 2)" {
            let missing = Path.Combine(root.Force(), "no-such-run")
            for command in [ "embed"; "neighbours" ] do
                let code, lines = Fixtures.sslCapturingErrors [| command; missing |]
                Expect.equal code 1 $"{command}: exit code"
                let said = String.Join(" / ", lines)
                Expect.equal lines.Length 1 $"{command}: one line: {said}"
                Expect.stringContains lines[0] missing $"{command}: names the folder"
            let _, dir = trained.Force()
            let noExport = Path.Combine(root.Force(), "no-export")
            Directory.CreateDirectory noExport |> ignore
            File.Copy(Path.Combine(dir, "config.json"), Path.Combine(noExport, "config.json"))
            let code, lines = Fixtures.sslCapturingErrors [| "embed"; noExport |]
            Expect.equal code 1 "exit code"
            Expect.equal lines.Length 1 (String.Join(" / ", lines))
            Expect.stringContains lines[0] "encoder.dat" "names the missing export"
            let code, lines = Fixtures.sslCapturingErrors [| "embed"; dir; "--dataset"; "imagenet" |]
            Expect.equal code 2 "a usage error"
            Expect.stringContains lines[0] "--dataset" "the first line names the flag"
            Expect.stringContains lines[0] "imagenet" "and the data set"
        }
    ]
