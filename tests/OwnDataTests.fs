/// Training on one's own images (docs/data.md, "Train on your own images"): a flat folder of Fashion-MNIST
/// images written as JPEG and PNG files of random sizes with corrupt files among them, probed on a
/// labelled tree through --eval-dataset; the 1% limit on bad files; the refusals.
module Ssl.Tests.OwnDataTests

open System
open System.IO
open System.Text.Json.Nodes
open Expecto
open Ssl.Host.Data
open Ssl.Experiments

/// A flat folder of `count` Fashion-MNIST training images of random sizes 40-120 px (JPEG and PNG)
/// and a labelled tree of `labelled` test images (one sub-folder per class, 48 px PNG); returns both.
let private writeFolders (count: int) (labelled: int) =
    let flat = Synthetic.writeFashionFolder (Fixtures.tempDir "own-flat") count 40 120 7
    use test = DataCatalog.Load("fashion-mnist", Split.Test)
    let tree = Fixtures.tempDir "own-tree"
    let labels = test.Labels.data<int64>().ToArray()
    let pixels = Synthetic.greyImages test.Images labelled
    let dirs = [| for i in 0 .. labelled - 1 -> Path.Combine(tree, test.ClassNames[int labels[i]].Replace('/', '-')) |]
    for d in Array.distinct dirs do Directory.CreateDirectory d |> ignore
    Threading.Tasks.Parallel.For(0, labelled, fun i -> Synthetic.writeGrey pixels[i] (Path.Combine(dirs[i], $"t{i:D5}.png")) 48 48) |> ignore
    flat, tree

let private corrupt = Synthetic.writeCorruptFiles

let private result (dir: string) = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "result.json")))

/// node[k1][k2]... (F# does not chain JsonNode's string indexers).
let rec private at (node: JsonNode) (keys: string list) = match keys with [] -> node | k :: rest -> at (node.[k]) rest

[<Tests>]
let tests =
    testSequenced <| testList "own images" [
        test "moco trains on 5,000 unlabelled files of mixed sizes with 20 corrupt, probed on a labelled tree; 2% corrupt stops it" {
            Ssl.Host.Native.TorchRuntime.EnsureLoaded()
            let flat, tree = writeFolders 5000 2000
            corrupt flat "bad" 20
            let dir = Path.Combine(Fixtures.tempDir "own-run", "run")
            let args = [| "train"; "moco"; "--preset"; "smoke"; "--dataset"; flat; "--eval-dataset"; tree; "--image-size"; "32"; "--deterministic"; "--out"; dir |]
            Expect.equal (Program.run args) 0 "trains"
            let errors = File.ReadAllLines(Path.Combine(dir, "data_errors.txt"))
            Expect.equal errors.Length 20 "the 20 corrupt files listed"
            for line in errors do
                let parts = line.Split('\t')
                Expect.stringContains (Path.GetFileName parts[0]) "bad" "a corrupt file's path"
                Expect.isNotEmpty parts[1] "and its reason"
            let r = result dir
            let linear = (at r [ "eval"; "linear_probe_acc" ]).GetValue<float>()
            Expect.isTrue (linear > 0.1 && linear <= 1.0) $"a linear probe on the labelled tree ({linear})"
            Expect.isNotNull ((at r [ "baselines"; "random_init"; "linear_probe_acc" ])) "baselines on it too"
            let config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))
            Expect.equal ((at config [ "data"; "channels" ]).GetValue<int>()) 1 "grey by majority, recorded"
            Expect.equal ((at config [ "data"; "height" ]).GetValue<int>()) 32 "--image-size"
            Expect.equal ((at config [ "data"; "labelled" ]).GetValue<bool>()) false "unlabelled"
            Expect.equal ((at config [ "data"; "eval"; "classes" ]).GetValue<int>()) 10 "the tree's classes"
            Expect.equal (config["image_size"].GetValue<int>()) 32 "the flag recorded"
            Expect.isFalse ((at config [ "data"; "streamed" ]).GetValue<bool>()) "held in memory"
            // The same folder streamed from its files (a budget of 0 MiB) at the same seed: the same losses.
            let streamed = Path.Combine(Fixtures.tempDir "own-streamed", "run")
            let args = [| "train"; "moco"; "--preset"; "smoke"; "--dataset"; flat; "--image-size"; "32"; "--data-memory-mb"; "0"; "--workers"; "2"; "--deterministic"; "--out"; streamed |]
            Expect.equal (Program.run args) 0 "trains streamed"
            let config = JsonNode.Parse(File.ReadAllText(Path.Combine(streamed, "config.json")))
            Expect.isTrue ((at config [ "data"; "streamed" ]).GetValue<bool>()) "streamed"
            let losses (run: string) =
                File.ReadAllLines(Path.Combine(run, "metrics.jsonl")) |> Array.map JsonNode.Parse
                |> Array.filter (fun r -> not (isNull r["loss"])) |> Array.map (fun r -> r["loss"].GetValue<float>())
            Expect.isNonEmpty (losses dir) "losses logged"
            Expect.sequenceEqual (losses streamed) (losses dir) "streamed and in memory: identical losses"
            Expect.equal (File.ReadAllLines(Path.Combine(streamed, "data_errors.txt")).Length) 20 "the same 20 files found before training"
            // 81 more corrupt files make 101 of 5,101 (2%): stopped before training, exit 1.
            corrupt flat "worse" 81
            let stopped = Path.Combine(Fixtures.tempDir "own-stop", "run")
            Directory.CreateDirectory stopped |> ignore
            File.WriteAllText(Path.Combine(stopped, "notes.txt"), "mine")
            let code = Program.run [| "train"; "moco"; "--preset"; "smoke"; "--dataset"; flat; "--image-size"; "32"; "--out"; stopped |]
            Expect.equal code 1 "exit 1"
            Expect.isFalse (File.Exists(Path.Combine(stopped, "metrics.jsonl"))) "no training step"
            Expect.equal (File.ReadAllText(Path.Combine(stopped, "notes.txt"))) "mine" "what the folder held is kept"
            Expect.equal (File.ReadAllLines(Path.Combine(stopped, "data_errors.txt")).Length) 101 "every bad file listed"
        }
        test "an unlabelled set without --eval-dataset trains and says no probe ran; label-hungry methods refuse it" {
            let flat = Fixtures.tempDir "own-small"
            use train = DataCatalog.Load("fashion-mnist", Split.Train)
            let pixels = Synthetic.greyImages train.Images 300
            for i in 0 .. 299 do Synthetic.writeGrey pixels[i] (Path.Combine(flat, $"{i}.png")) 28 28
            let dir = Path.Combine(Fixtures.tempDir "own-noprobe", "run")
            Expect.equal (Program.run [| "train"; "rotnet"; "--preset"; "smoke"; "--dataset"; flat; "--out"; dir |]) 0 "trains"
            let r = result dir
            Expect.isNull (at r [ "eval"; "linear_probe_acc" ]) "no probe"
            Expect.isTrue (File.Exists(Path.Combine(dir, "export", "encoder.dat"))) "exported"
            let bench = Fixtures.tempDir "own-bench"
            let args = [| "bench"; "--data"; flat; "--method"; "rotnet"; "--preset"; "quick"; "--pairs"; "1"; "--warmup"; "1"; "--steps"; "2"; "--out"; bench |]
            Expect.equal (Program.run args) 0 "ssl bench --data"
            let report = JsonNode.Parse(File.ReadAllText(Path.Combine(bench, "bench-data.json")))
            Expect.isGreaterThan (report["images_per_s"].GetValue<float>()) 0.0 "a decode rate"
            for key in [ "in_memory_images_per_s"; "streamed_images_per_s"; "streamed_peak_rss_mb" ] do
                Expect.isGreaterThan ((at report [ "training"; key ]).GetValue<float>()) 0.0 $"training {key}"
            for recipe in [ "supervised"; "mixmatch" ] do
                let out = Path.Combine(Fixtures.tempDir "own-refused", "run")
                Expect.equal (Program.run [| "train"; recipe; "--preset"; "smoke"; "--dataset"; flat; "--out"; out |]) 2 $"{recipe} refuses"
            let e = Prop.throws<ArgumentException> (fun () ->
                let request = { Recipe.Request.Create("rotnet", Recipe.Smoke) with ImageSize = Some 32 }
                (Pipeline.loadData request :> IDisposable).Dispose())
            Expect.stringContains e.Message "--image-size: resizes image folders" "built-in sets are not resized"
        }
    ]
