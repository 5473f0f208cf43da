/// Weights in (`ssl train --init FILE`, EncoderInit) and the metadata of the safetensors export:
/// torchvision's resnet18, built by Debian's python3-torchvision (which the test target installs),
/// loads whole into resnet18-imagenet and computes the same features; every backbone's export
/// (.safetensors, .pt, .dat) loads back into a fresh encoder; mismatches end in one line; a smoke
/// run records its init in config.json and its export's header carries the metadata
/// (docs/cli.md#weights-in-and-out).
module Ssl.Tests.InitTests

open System
open System.Diagnostics
open System.IO
open System.Text.Json.Nodes
open Expecto
open TorchSharp
open Ssl.Core.Models
open Ssl.Host.Data
open Ssl.Host.Export
open Ssl.Experiments

let private root = lazy (Fixtures.tempDir "init")

/// Runs Debian's python3 with `args`; (exit code, stdout + stderr).
let private python (args: string list) =
    let psi = ProcessStartInfo(Peer.python, UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true)
    for a in args do psi.ArgumentList.Add a
    use p = Process.Start psi
    let err = p.StandardError.ReadToEndAsync()
    let out = p.StandardOutput.ReadToEnd()
    p.WaitForExit()
    p.ExitCode, out + err.Result

/// The folder tests/scripts/torchvision_resnet18.py wrote: resnet18.pt, checkpoint.pth, input.f32, features.f32.
let private torchvision =
    lazy
        (let dir = Path.Combine(root.Force(), "torchvision")
         Directory.CreateDirectory dir |> ignore
         let code, output = python [ Path.Combine(AppContext.BaseDirectory, "scripts", "torchvision_resnet18.py"); dir ]
         if code <> 0 then
             failtestf "%s could not build torchvision's resnet18 (install python3-torchvision; `dotnet fsi build.fsx test` does where apt can): %s"
                 Peer.python (output.Trim())
         dir)

/// A raw little-endian float32 file as a tensor of `shape`.
let private readF32 (path: string) (shape: int64[]) =
    let bytes = File.ReadAllBytes path
    let values: float32[] = Array.init (bytes.Length / 4) (fun i -> BitConverter.ToSingle(bytes, 4 * i))
    torch.tensor(values, ReadOnlySpan shape)

/// Features of `encoder` in eval mode, without gradients.
let private features (encoder: Encoder) (images: torch.Tensor) =
    encoder.eval()
    use _ = torch.no_grad()
    encoder.forward images

/// An encoder of `backbone` for `channels` whose convolutions read `layout`, seeded, with batch-norm
/// running statistics drawn away from their initial 0 and 1 (so that a buffer left unloaded shows).
let private seededIn (layout: SafeConv.ConvLayout) (seed: int64) (channels: int64) (backbone: Backbone) =
    torch.manual_seed seed |> ignore
    let encoder = instantiate layout None channels backbone
    use _ = torch.no_grad()
    for struct (name, buffer) in encoder.named_buffers () do
        if name.EndsWith "running_mean" then buffer.normal_(0.0, 0.1) |> ignore
        elif name.EndsWith "running_var" then buffer.uniform_(0.5, 1.5) |> ignore
    encoder

let private seeded = seededIn SafeConv.ChannelsLast

let private refusal (load: unit -> unit) =
    let e = Expect.throwsC load id
    Expect.isTrue (e :? DataException) $"a DataException, found {e.GetType().Name}: {e.Message}"
    Expect.isFalse (e.Message.Contains '\n') $"one line: {e.Message}"
    e.Message

let private torchvisionTests =
    testList "torchvision" [
        test "torchvision's resnet18 (.pt) loads whole into resnet18-imagenet: the same features within 1e-4" {
            let dir = torchvision.Force()
            use encoder = seeded 1L 3L ResNet18ImageNet
            let loaded = EncoderInit.Load(encoder, Path.Combine(dir, "resnet18.pt"), "resnet18-imagenet")
            Expect.equal (List.sort (List.ofSeq loaded.IgnoredHeads)) [ "fc.bias"; "fc.weight" ] "the classifier head is left aside"
            Expect.equal loaded.Loaded (encoder.state_dict().Count) "every tensor of the encoder"
            Expect.equal (encoder.parameters() |> Seq.sumBy (fun p -> p.numel())) 11_176_512L "torchvision's parameters less its fc"
            use images = readF32 (Path.Combine(dir, "input.f32")) [| 2L; 3L; 64L; 64L |]
            use expected = readF32 (Path.Combine(dir, "features.f32")) [| 2L; 512L |]
            use ours = features encoder images
            let diff = (ours - expected).abs().max().item<float32>()
            printfn "init: torchvision resnet18 vs ours, max abs feature difference %g" diff
            Check.close 1e-4 0.0 "features before torchvision's fc" ours expected
        }
        test "a safetensors file of it under a module. prefix, beside other parts of a checkpoint, loads the same" {
            let dir = torchvision.Force()
            let state = EncoderInit.ReadStateDict(Path.Combine(dir, "resnet18.pt"))
            let path = Path.Combine(dir, "wrapped.safetensors")
            try
                use projector = torch.ones(4L, 512L)
                let wrapped = readOnlyDict [ yield! state |> Seq.map (fun kv -> "module." + kv.Key, kv.Value); "projector.0.weight", projector ]
                EncoderExport.WriteSafetensors(path, wrapped, readOnlyDict [])
            finally
                for t in state.Values do t.Dispose()
            use encoder = seeded 2L 3L ResNet18ImageNet
            let loaded = EncoderInit.Load(encoder, path, "resnet18-imagenet")
            Expect.equal loaded.Prefix "module." "the prefix every name of the encoder is found under"
            Expect.equal (List.ofSeq loaded.IgnoredOutsidePrefix) [ "projector.0.weight" ] "the rest of the checkpoint"
            use images = readF32 (Path.Combine(dir, "input.f32")) [| 2L; 3L; 64L; 64L |]
            use expected = readF32 (Path.Combine(dir, "features.f32")) [| 2L; 512L |]
            use ours = features encoder images
            Check.close 1e-4 0.0 "features" ours expected
        }
        test "a training checkpoint (.pth) is unwrapped from its state_dict entry and read under its backbone. prefix" {
            let dir = torchvision.Force()
            use encoder = seeded 3L 3L ResNet18ImageNet
            let loaded = EncoderInit.Load(encoder, Path.Combine(dir, "checkpoint.pth"), "resnet18-imagenet")
            Expect.equal (loaded.Prefix, List.ofSeq loaded.IgnoredOutsidePrefix) ("backbone.", [ "projector.weight" ]) "prefix and the rest"
            use images = readF32 (Path.Combine(dir, "input.f32")) [| 2L; 3L; 64L; 64L |]
            use expected = readF32 (Path.Combine(dir, "features.f32")) [| 2L; 512L |]
            use ours = features encoder images
            Check.close 1e-4 0.0 "features" ours expected
        }
        test "into the CIFAR stem it is refused in one line naming the file and the mis-shaped tensor" {
            let path = Path.Combine(torchvision.Force(), "resnet18.pt")
            use encoder = seeded 3L 3L ResNet18
            let message = refusal (fun () -> EncoderInit.Load(encoder, path, "resnet18") |> ignore)
            Expect.stringStarts message path "names the file"
            Expect.stringContains message "1 mis-shaped (conv1.weight [64, 3, 7, 7] for [64, 3, 3, 3])" "the stem's shapes"
        }
    ]

let private backbones = [ SmallConvNet 16L; ResNet18; WideResNet(10, 1L); VitTiny(7L, 2) ]

let private roundTripTests =
    testList "round trip" [
        for backbone in backbones do
            yield test $"{backbone}: its export (.safetensors, .dat) and a .pt of it load into a fresh encoder with identical features" {
                let dir = Path.Combine(root.Force(), string backbone)
                use source = seeded 4L 1L backbone
                let struct (dat, safetensors, _) = EncoderExport.Save(source, dir)
                let pt = Path.Combine(dir, "encoder.pt")
                TorchSharp.PyBridge.PyBridgeModuleExtensions.save_py(source, pt) |> ignore
                torch.manual_seed 5L |> ignore
                use images = torch.randn(2L, 1L, 28L, 28L)
                use expected = features source images
                for path in [ safetensors; dat; pt ] do
                    use fresh = seeded 6L 1L backbone
                    let loaded = EncoderInit.Load(fresh, path, string backbone)
                    Expect.equal loaded.Prefix "" $"{path}: names as they are"
                    use actual = features fresh images
                    Check.close 0.0 0.0 $"{Path.GetExtension path} features" actual expected
            }
        yield test "another architecture's file is refused in one line listing missing and unexpected tensors with counts" {
            let dir = Path.Combine(root.Force(), "refused")
            use small = seeded 7L 1L (SmallConvNet 16L)
            let struct (_, safetensors, _) = EncoderExport.Save(small, dir)
            use wide = seeded 7L 1L (WideResNet(10, 1L))
            let message = refusal (fun () -> EncoderInit.Load(wide, safetensors, "wrn-10-1") |> ignore)
            Expect.stringStarts message safetensors "names the file"
            Expect.stringContains message "expected the tensors of a wrn-10-1 encoder" "what was expected"
            Expect.isMatch message @"found \d+ missing \([^)]+, \.\.\.\), \d+ unexpected \(features\.stem_bn\.weight, " "counts and the first names"
            use narrow = seeded 7L 1L (SmallConvNet 8L)
            let message = refusal (fun () -> EncoderInit.Load(narrow, safetensors, "smallconvnet-8") |> ignore)
            Expect.stringContains message "mis-shaped (features.stem_conv.weight [16, 1, 3, 3] for [8, 1, 3, 3]" "shapes"
            let text = Path.Combine(dir, "weights.txt")
            File.WriteAllText(text, "not weights")
            Expect.stringContains (refusal (fun () -> EncoderInit.Load(narrow, text, "smallconvnet-8") |> ignore)) ".pt/.pth" "the formats"
        }
    ]

let private metadataTests =
    testList "metadata" [
        test "the safetensors export's __metadata__ reads in python with struct and json; its header is 8-byte aligned" {
            let dir = Path.Combine(root.Force(), "metadata")
            use encoder = seeded 8L 1L (SmallConvNet 16L)
            let metadata = readOnlyDict [ "architecture", "smallconvnet-16"; "input_mean", "[0.286]"; "seed", "3" ]
            let struct (_, safetensors, _) = EncoderExport.Save(encoder, dir, metadata = metadata)
            let script =
                "import json, struct, sys\n" +
                "f = open(sys.argv[1], 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n))\n" +
                "print(n % 8, json.dumps(h['__metadata__'], sort_keys=True), len(h) - 1)"
            let code, output = python [ "-c"; script; safetensors ]
            Expect.equal code 0 output
            Expect.equal (output.Trim())
                $"""0 {{"architecture": "smallconvnet-16", "input_mean": "[0.286]", "seed": "3"}} {encoder.state_dict().Count}""" "python's reading"
            Expect.equal (EncoderExport.ReadSafetensorsMetadata safetensors |> Seq.map (fun kv -> kv.Key, kv.Value) |> List.ofSeq)
                [ "architecture", "smallconvnet-16"; "input_mean", "[0.286]"; "seed", "3" ] "ours"
        }
    ]

/// The rotnet smoke run of the CLI test: 2 classes x 30 colour images of 28 x 28, one epoch of batches of 16.
let private cliTests =
    testList "cli" [
        test "ssl train --init records the file in config.json; its export carries the metadata and serves ssl eval --init" {
            let dir = Path.Combine(root.Force(), "cli")
            let data = Fixtures.classTree (Path.Combine(dir, "tree")) 2 30 28
            use start = seeded 9L 3L (SmallConvNet 16L)
            let init = Path.Combine(dir, "start.pt")
            TorchSharp.PyBridge.PyBridgeModuleExtensions.save_py(start, init) |> ignore
            let run = Path.Combine(dir, "run")
            let train extra =
                Program.run (Array.append [| "train"; "rotnet"; "--preset"; "smoke"; "--set"; "Epochs=1"; "--set"; "BatchSize=16"; "--dataset"; data; "--out"; run |] extra)
            Expect.equal (train [| "--init"; init |]) 0 "ssl train --init"
            let config = JsonNode.Parse(File.ReadAllText(Path.Combine(run, "config.json")))
            Expect.equal (config["init"].["path"].GetValue<string>()) init "the init's absolute path"
            Expect.equal (config["init"].["sha256"].GetValue<string>()) (EncoderInit.Sha256 init) "and its SHA-256"
            let safetensors = Path.Combine(run, "export", "encoder.safetensors")
            let code, output =
                python [ "-c"; "import json, struct, sys\nf = open(sys.argv[1], 'rb'); n = struct.unpack('<Q', f.read(8))[0]\nm = json.loads(f.read(n))['__metadata__']\nprint(m['architecture'], m['input_channels'], m['input_height'], m['probe'], m['method'], m['seed'], len(json.loads(m['input_mean'])))"; safetensors ]
            Expect.equal code 0 output
            Expect.equal (output.Trim()) "smallconvnet-16 3 28 branch:3 rotnet 0 3" "the export's metadata, read by python"
            Expect.equal (Program.run [| "eval"; run; "--protocol"; "knn"; "--init"; safetensors |]) 0 "ssl eval --init of the export"
            let eval = JsonNode.Parse(File.ReadAllText(Path.Combine(run, "eval-knn-init-encoder.json")))
            Expect.equal (eval["init"].["path"].GetValue<string>()) safetensors "the figure names its weights"
            Expect.notEqual (train [| "--resume"; "--init"; safetensors |]) 0 "--resume with another init is refused"
            File.WriteAllText(init, "changed")
            let replay = Path.Combine(dir, "replay")
            Expect.notEqual (Program.run [| "train"; "--config"; Path.Combine(run, "config.json"); "--dataset"; data; "--out"; replay |]) 0
                "a replay whose init file changed is refused"
            Expect.isFalse (File.Exists(Path.Combine(replay, "config.json"))) "before writing a run"
        }
    ]

[<Tests>]
let tests = testList "init" [ torchvisionTests; roundTripTests; metadataTests; cliTests ]
