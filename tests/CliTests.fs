module Ssl.Tests.CliTests

open System.IO
open System.Text.Json
open Expecto
open TorchSharp
open Ssl.Experiments

/// Recipes that need colour images (their smoke tests use Fixtures.colourFolder).
let colourOnlyRecipes = Registry.recipes |> List.filter (fun r -> r.Traits.Colour) |> List.map (fun r -> r.Name)

[<Tests>]
let tests =
    testList "cli" [
        test "--help answers with exit code 0" { Expect.equal (Program.run [| "--help" |]) 0 "exit code" }
        test "methods answers" { Expect.equal (Program.run [| "methods" |]) 0 "exit code" }
        test "an unknown flag exits 2" { Expect.equal (Program.run [| "--no-such-flag" |]) 2 "exit code" }
        test "an unknown sub-command flag exits 2" { Expect.equal (Program.run [| "data"; "--bogus" |]) 2 "exit code" }
        test "an unknown split value exits 2" { Expect.equal (Program.run [| "data"; "--split"; "validation" |]) 2 "exit code" }
        test "an unknown data set exits 2" { Expect.equal (Program.run [| "data"; "--dataset"; "imagenet" |]) 2 "exit code" }
        test "cuda without CUDA exits 1 with a message" {
            if not (torch.cuda.is_available ()) then
                Expect.equal (Program.run [| "info"; "--device"; "cuda" |]) 1 "exit code"
        }
        test "info on cpu answers" { Expect.equal (Program.run [| "info"; "--device"; "cpu"; "--seed"; "1" |]) 0 "exit code" }
        test "an unknown method names the registered ones; exit 2" {
            Expect.equal (Program.run [| "train"; "no-such-method" |]) 2 "exit code"
        }
        test "an unknown preset exits 2" {
            Expect.equal (Program.run [| "train"; "supervised"; "--preset"; "huge" |]) 2 "exit code"
        }
        test "zero labels per class exits 2" {
            Expect.equal (Program.run [| "train"; "supervised"; "--labels"; "0" |]) 2 "exit code"
        }
        test "a negative --data-memory-mb, zero --workers and --data of a missing folder exit 2" {
            Expect.equal (Program.run [| "train"; "rotnet"; "--data-memory-mb"; "-1" |]) 2 "--data-memory-mb -1"
            Expect.equal (Program.run [| "train"; "rotnet"; "--workers"; "0" |]) 2 "--workers 0"
            Expect.equal (Program.run [| "bench"; "--data"; Path.Combine(Fixtures.tempDir "no-folder", "missing") |]) 2 "bench --data"
        }
        test "train supervised --preset smoke writes the run folder of the contract, and --resume of a finished run trains nothing" {
            let dir = Path.Combine(Fixtures.tempDir "cli-train", "run")
            Expect.equal (Program.run [| "train"; "supervised"; "--preset"; "smoke"; "--out"; dir; "--deterministic" |]) 0 "exit code"
            for file in [ "config.json"; "metrics.jsonl"; "result.json"; "checkpoints/last.ckpt"; "plots/loss.png"; "plots/accuracy.png"
                          "plots/tsne.png"; "plots/memory.png"; "export/encoder.safetensors"; "export/encoder.names.txt" ] do
                Expect.isTrue (File.Exists(Path.Combine(dir, file))) $"{file} written"
            use doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "result.json")))
            let eval = doc.RootElement.GetProperty "eval"
            for key in [ "linear_probe_acc"; "knn_acc"; "test_acc" ] do
                let v = eval.GetProperty(key).GetDouble()
                Expect.isTrue (v >= 0.0 && v <= 1.0) $"{key} is a fraction"
            Expect.equal (doc.RootElement.GetProperty("baselines").GetProperty("supervised_only").GetProperty("test_acc").ValueKind)
                JsonValueKind.Null "no supervised-only figure for an all-labels run"
            let steps = doc.RootElement.GetProperty("train").GetProperty("steps").GetInt64()
            Expect.equal (Program.run [| "train"; "supervised"; "--preset"; "smoke"; "--out"; dir; "--resume"; "--deterministic" |]) 0 "resume"
            use again = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "result.json")))
            Expect.equal (again.RootElement.GetProperty("train").GetProperty("steps").GetInt64()) steps "no further steps"

            // ssl eval on the same run: kNN on all labels, fine-tuning on 10 per class.
            Expect.equal (Program.run [| "eval"; dir; "--protocol"; "knn" |]) 0 "eval knn"
            Expect.equal (Program.run [| "eval"; dir; "--protocol"; "finetune"; "--labels"; "10" |]) 0 "eval finetune"
            for name in [ "eval-knn.json"; "eval-finetune-10.json" ] do
                use figure = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, name)))
                let acc = figure.RootElement.GetProperty("test_acc").GetDouble()
                Expect.isTrue (acc > 0.1 && acc <= 1.0) $"{name}: better than chance"
            Expect.equal (Program.run [| "eval"; dir; "--protocol"; "bogus" |]) 2 "unknown protocol"
        }
        test "eval of a folder that holds no run is a clear error (exit 1)" {
            Expect.equal (Program.run [| "eval"; Fixtures.tempDir "no-run" |]) 1 "exit code"
        }
        testSequenced <| testList "smoke" [
            // One parent folder, so the runs share its baseline cache (.cache) as runs under runs/ do: a
            // baseline is computed once per data set, encoder and seed, not once per recipe.
            let root = lazy (Fixtures.tempDir "smoke")
            // An alias is its recipe under another name: the recipe's own smoke run covers it.
            for recipe in Registry.recipes |> List.filter (fun r -> r.Name <> "supervised" && r.AliasOf.IsNone) do
                test $"ssl train {recipe.Name} --preset smoke writes result.json with its baselines" {
                    let dir = Path.Combine(root.Force(), recipe.Name)
                    // Colour-only recipes refuse the grey default data set: they train on the colour fixture.
                    let dataset = if List.contains recipe.Name colourOnlyRecipes then [| "--dataset"; Fixtures.colourFolder () |] else [||]
                    Expect.equal (Program.run (Array.append [| "train"; recipe.Name; "--preset"; "smoke"; "--out"; dir |] dataset)) 0 "exit code"
                    use _ = Fixtures.expectContractResult dir recipe.Name
                    // MAE fine-tunes after training, from its encoder and from the random initialisation (result.json's extra).
                    if recipe.Name = "mae" then
                        use result = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "result.json")))
                        for key in [ "finetune_acc"; "finetune_random_init_acc" ] do
                            let acc = result.RootElement.GetProperty("extra").GetProperty(key).GetDouble()
                            Expect.isTrue (acc > 0.0 && acc <= 1.0) $"{key} is a fraction"
                    // DINO's protocol reads class tokens of the last blocks; `ssl eval --layer class-tokens` does the same.
                    if recipe.Name = "dino" then
                        Expect.equal (Program.run [| "eval"; dir; "--protocol"; "knn"; "--layer"; "class-tokens"; "--pool"; "1" |]) 0 "eval class tokens"
                        use figure = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "eval-knn-class-tokens-pool1.json")))
                        Expect.equal (figure.RootElement.GetProperty("feature_dim").GetInt64()) 192L "one block's class token"
                        Expect.equal (Program.run [| "eval"; dir; "--protocol"; "knn"; "--layer"; "class-tokens"; "--pool"; "2" |]) 2
                            "more blocks than the smoke ViT's one is a usage error"
                }
        ]
        test "colorization refuses grey data, and on colour images writes the colour PNG and its per-pixel accuracy" {
            Expect.equal (Program.run [| "train"; "colorization"; "--preset"; "smoke"; "--out"; Path.Combine(Fixtures.tempDir "colour-grey", "run") |])
                2 "fashion-mnist is refused with a usage error"
            let dir = Path.Combine(Fixtures.tempDir "colour-run", "run")
            Expect.equal (Program.run [| "train"; "colorization"; "--preset"; "smoke"; "--out"; dir; "--dataset"; Fixtures.colourFolder () |]) 0 "exit code"
            Expect.isTrue (File.Exists(Path.Combine(dir, "plots", "colorization.png"))) "grey inputs / predictions / truth PNG"
            use figures = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "colorization.json")))
            for key in [ "per_pixel_auc"; "grey_per_pixel_auc" ] do
                let v = figures.RootElement.GetProperty(key).GetDouble()
                Expect.isTrue (v > 0.0 && v <= 1.0) $"{key} is a fraction"
            Expect.equal (figures.RootElement.GetProperty("bins").GetInt64()) 261L "ab bins"
            let metrics = File.ReadAllLines(Path.Combine(dir, "metrics.jsonl"))
            Expect.isTrue (metrics |> Array.exists (fun line -> line.Contains "per_pixel_auc")) "per-pixel accuracy in metrics.jsonl"
        }
        // ResNet-18 the same way takes minutes on two cores: measured outside the suite (docs/experiments/rotnet.md).
        test "rotnet trains on the encoder --set Encoder names, and ssl eval rebuilds that encoder from config.json" {
            let dir = Path.Combine(Fixtures.tempDir "rotnet-encoder", "run")
            let args = [| "train"; "rotnet"; "--preset"; "smoke"; "--set"; "Encoder=smallconvnet-8"; "--out"; dir |]
            Expect.equal (Program.run args) 0 "exit code"
            use config = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))
            Expect.equal (config.RootElement.GetProperty("encoder").GetString()) "SmallConvNet8" "the encoder named"
            Expect.equal (Program.run [| "eval"; dir; "--protocol"; "knn"; "--layer"; "output" |]) 0 "eval"
            use figure = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "eval-knn-output.json")))
            Expect.equal (figure.RootElement.GetProperty("feature_dim").GetInt64()) 32L "width 8's 4w features"
        }
    ]
