/// The ONNX export (`ssl export --format onnx`, Host.CSharp/Export/Onnx): every backbone and probe
/// view run in ONNX Runtime against TorchSharp's features of the same images (batch norms with
/// random running statistics), at batch sizes 64 and 1; a model checked by onnx.checker (Debian's
/// python3-onnx); the command on a small trained run; bad input ending in one line.
module Ssl.Tests.OnnxTests

open System
open System.Diagnostics
open System.IO
open Expecto
open Microsoft.ML.OnnxRuntime
open Microsoft.ML.OnnxRuntime.Tensors
open TorchSharp
open Ssl.Core.Models
open Ssl.Host.Eval
open Ssl.Host.Export.Onnx
open Ssl.Experiments

let private root = lazy (Fixtures.tempDir "onnx")

/// The largest difference ONNX Runtime's features may have from TorchSharp's (float32 both).
let private tolerance = 1e-4f

/// Batch norms with running statistics and affine parameters away from their initial 0, 1: an export
/// that ignored any of them would differ.
let private randomiseBatchNorms (model: torch.nn.Module) =
    use _ = torch.no_grad ()
    for m in model.modules () do
        match m with
        | :? Modules.BatchNorm2d as bn ->
            bn.running_mean.uniform_(-0.5, 0.5) |> ignore
            bn.running_var.uniform_(0.5, 2.0) |> ignore
            bn.weight.uniform_(0.5, 1.5) |> ignore
            bn.bias.uniform_(-0.2, 0.2) |> ignore
        | _ -> ()

/// Per-channel statistics that are not the identity.
let private statistics (channels: int64) =
    Array.init (int channels) (fun c -> 0.3 + 0.1 * float c), Array.init (int channels) (fun c -> 0.25 + 0.05 * float c)

/// `count` random uint8 images (count, channels, size, size), seeded.
let private pixels (count: int64) (channels: int64) (size: int64) =
    use generator = new torch.Generator(7UL)
    torch.randint(0L, 256L, [| count; channels; size; size |], dtype = torch.uint8, generator = generator)

/// The features ONNX Runtime computes with `session` for the images `rows` of `images` (raw [0, 1]
/// pixels, as the model reads them): float32 (rows, D), row-major.
let private onnxFeatures (session: InferenceSession) (images: torch.Tensor) (first: int64) (count: int64) =
    use scale = Scalar.op_Implicit 255.0
    use batch = images.narrow(0L, first, count).to_type(torch.float32).div(scale)
    let values = batch.contiguous().data<float32>().ToArray()
    let input = DenseTensor<float32>(Memory values, ReadOnlySpan(batch.shape |> Array.map int))
    use results = session.Run([ NamedOnnxValue.CreateFromTensor(EncoderToOnnx.InputName, input) ])
    (Seq.head results).AsTensor<float32>().ToDenseTensor().Buffer.ToArray()

/// The ONNX model of `encoder` for (channels, size, size) images, as bytes.
let private modelOf (encoder: torch.nn.Module<torch.Tensor, torch.Tensor>) (channels: int64) (size: int64) =
    let mean, std = statistics channels
    OnnxWriter.Model(EncoderToOnnx.Build(encoder, channels, size, size, mean, std), [], "test")

/// The largest |ONNX − TorchSharp| over the features of 64 images, the model run once at batch 64
/// and once per image at batch 1 for the first 8.
let private maxDifference (encoder: torch.nn.Module<torch.Tensor, torch.Tensor>) (channels: int64) (size: int64) =
    let mean, std = statistics channels
    use images = pixels 64L channels size
    use expected = Features.Extract(encoder, images, mean, std, torch.CPU)
    let reference = expected.contiguous().data<float32>().ToArray()
    let width = int expected.shape[1]
    use session = new InferenceSession(modelOf encoder channels size)
    let whole = onnxFeatures session images 0L 64L
    Expect.equal whole.Length reference.Length "batch 64: one row of the encoder's width per image"
    let mutable worst = Array.fold2 (fun m (a: float32) b -> max m (abs (a - b))) 0f whole reference
    for i in 0 .. 7 do
        let single = onnxFeatures session images (int64 i) 1L
        Expect.equal single.Length width "batch 1: one row"
        for j in 0 .. width - 1 do worst <- max worst (abs (single[j] - reference[i * width + j]))
    worst

/// The backbones and probe views compared: name, a maker (seeded), input channels and side; ResNet-18
/// channels-last, whose stage-4 shortcut goes through SafeConv.pointwise (docs/conv-backward-bug.md#1x1-convolutions).
let private cases: (string * (unit -> torch.nn.Module<torch.Tensor, torch.Tensor>) * int64 * int64) list =
    let vit (channels: int64) patch depth grid = VisionTransformer.Tiny(channels, patch, depth, grid)
    [ "smallconvnet-16", (fun () -> new SmallConvNet(1L, 16L) :> _), 1L, 28L
      "smallconvnet-12 (SafeConv2d), 3 channels", (fun () -> new SmallConvNet(3L, 12L) :> _), 3L, 32L
      "resnet18", (fun () -> new ResNet18(1L) :> _), 1L, 16L
      "wrn-10-2", (fun () -> new WideResNet(1L, 10, 2L, 0.1) :> _), 1L, 28L
      "vit-tiny-7-2", (fun () -> vit 1L 7L 2 4L :> _), 1L, 28L
      "vit-tiny-4-2 on 32 px (positional table resized from 7x7 to 8x8)", (fun () -> vit 3L 4L 2 7L :> _), 3L, 32L
      "layer:features.block2b_relu:2 (AveragePool)", (fun () -> new LayerFeatures(new SmallConvNet(1L, 16L), "features.block2b_relu", 2L, [| 1L; 28L; 28L |]) :> _), 1L, 28L
      "layer:features.block2b_relu:3 (uneven windows)", (fun () -> new LayerFeatures(new SmallConvNet(1L, 16L), "features.block2b_relu", 3L, [| 1L; 28L; 28L |]) :> _), 1L, 28L
      "resnet18 layer:features.stage2.block1:2", (fun () -> new LayerFeatures(new ResNet18(1L), "features.stage2.block1", 2L, [| 1L; 16L; 16L |]) :> _), 1L, 16L
      "wrn-10-2 branch (features.stage2):2", (fun () -> new LayerFeatures(new WideResNet(1L, 10, 2L, 0.1), "features.stage2", 2L, [| 1L; 28L; 28L |]) :> _), 1L, 28L
      "vit class-tokens:2", (fun () -> new ClassTokenFeatures(vit 1L 7L 2 4L, 2) :> _), 1L, 28L
      "vit class-tokens-patch-mean:2", (fun () -> new ClassTokenFeatures(vit 1L 7L 2 4L, 2, true) :> _), 1L, 28L ]

/// The run the command tests read: RotNet smoke (a SmallConvNet-16 probed at its branch layer), one
/// epoch of batches of 16 on a class tree of 2 x 20 grey 28 x 28 images.
let private trained =
    lazy
        (let data = Path.Combine(root.Force(), "tree")
         for c in 0 .. 1 do
             let classDir = Path.Combine(data, $"class{c}")
             Directory.CreateDirectory classDir |> ignore
             for i in 0 .. 19 do Fixtures.writeImage (Path.Combine(classDir, $"{i:D2}.png")) (c * 100 + i) 28 28
         let dir = Path.Combine(root.Force(), "run")
         let code = Program.run [| "train"; "rotnet"; "--preset"; "smoke"; "--set"; "Epochs=1"; "--set"; "BatchSize=16"; "--dataset"; data; "--out"; dir |]
         if code <> 0 then failwithf "the run the onnx tests read failed (exit %d)" code
         dir)

let private comparisons =
    [ for name, make, channels, size in cases ->
            test $"ONNX Runtime computes TorchSharp's features within 1e-4 at batch 64 and 1: {name}" {
                torch.manual_seed 0L |> ignore
                use encoder = make ()
                randomiseBatchNorms encoder
                let difference = maxDifference encoder channels size
                printfn "onnx %s: max |ONNX Runtime - TorchSharp| = %.2e" name difference
                Expect.isLessThanOrEqual difference tolerance $"max abs difference of {name}"
            } ]

[<Tests>]
let tests =
    testSequenced <| testList "onnx" [
        yield! comparisons

        test "onnx.checker (full check) accepts the models: SmallConvNet-12 probed at a layer, a ViT's class tokens and patch mean" {
            let python = Peer.python
            use probe = Process.Start(ProcessStartInfo(python, "-c \"import onnx\"", RedirectStandardError = true, UseShellExecute = false))
            probe.WaitForExit()
            if probe.ExitCode <> 0 then failtest $"{python} has no onnx: install python3-onnx (`dotnet fsi build.fsx test` does where apt can)"
            torch.manual_seed 0L |> ignore
            let models: (string * torch.nn.Module<torch.Tensor, torch.Tensor> * int64 * int64) list =
                [ "layer", new LayerFeatures(new SmallConvNet(3L, 12L), "features.block2b_relu", 3L, [| 3L; 32L; 32L |]), 3L, 32L
                  "vit", new ClassTokenFeatures(VisionTransformer.Tiny(1L, 7L, 2, 4L), 2, true), 1L, 28L ]
            for name, encoder, channels, size in models do
                use encoder = encoder
                let path = Path.Combine(root.Force(), "checker", $"{name}.onnx")
                let mean, std = statistics channels
                EncoderToOnnx.Save(encoder, channels, size, size, mean, std, [ Collections.Generic.KeyValuePair("method", "test") ], path, "test") |> ignore
                let script =
                    "import onnx, sys; m = onnx.load(sys.argv[1]); onnx.checker.check_model(m, full_check=True); "
                    + "print(m.opset_import[0].version, m.graph.input[0].type.tensor_type.shape.dim[0].dim_param, {p.key: p.value for p in m.metadata_props}['mean'])"
                use p = Process.Start(ProcessStartInfo(python, $"-c \"{script}\" {path}", RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false))
                let output = p.StandardOutput.ReadToEnd()
                let errors = p.StandardError.ReadToEnd()
                p.WaitForExit()
                Expect.equal p.ExitCode 0 $"onnx.checker on {name}: {errors}"
                let recordedMean = fst (statistics channels) |> Array.map (fun v -> v.ToString("R", Globalization.CultureInfo.InvariantCulture)) |> String.concat ","
                Expect.stringStarts output $"17 batch {recordedMean}" "opset 17, a symbolic batch axis, the mean recorded"
        }

        test "a module without a rule is one error naming its type" {
            use encoder =
                torch.nn.Sequential(
                    [| struct ("conv", torch.nn.Conv2d(1L, 2L, 3L) :> torch.nn.Module<torch.Tensor, torch.Tensor>)
                       struct ("tanh", torch.nn.Tanh()); struct ("flatten", torch.nn.Flatten()) |])
            let message =
                try
                    EncoderToOnnx.Build(encoder, 1L, 8L, 8L, [| 0.0 |], [| 1.0 |]) |> ignore
                    "no error"
                with :? NotSupportedException as e -> e.Message
            Expect.equal message "ONNX export: no rule for module type Tanh ('tanh')" "names the module type and its path"
            Expect.isFalse (message.Contains '\n') "one line"
        }

        test "ssl export --format onnx writes <run>/export/encoder.onnx: the run's probed features of its images, metadata recorded" {
            let dir = trained.Force()
            Expect.equal (Program.run [| "export"; dir; "--format"; "onnx" |]) 0 "exit code"
            let path = Path.Combine(dir, "export", "encoder.onnx")
            Expect.isTrue (File.Exists path) "the default output"
            Expect.isFalse (File.Exists(path + ".tmp")) "no temp file left"
            let run = TrainedRun.read dir
            let env = Embed.configure run None None
            use data = Pipeline.loadData { TrainedRun.request run env.Threads with EvalDataset = None }
            use encoder = Embed.probedEncoder run data env run.ProbeLayer run.ProbePool false
            use images = (data.Train: Ssl.Host.Data.ImageDataset).Rows(0L, data.Train.Count)
            use expected = Features.Extract(encoder, images, data.Mean, data.Std, torch.CPU)
            use session = new InferenceSession(path)
            let actual = onnxFeatures session images 0L images.shape[0]
            let reference = expected.contiguous().data<float32>().ToArray()
            Expect.equal actual.Length reference.Length "one row per image, the probe's width"
            let difference = Array.fold2 (fun m (a: float32) b -> max m (abs (a - b))) 0f actual reference
            Expect.isLessThanOrEqual difference tolerance "the features `ssl embed` computes"
            let metadata = session.ModelMetadata.CustomMetadataMap
            Expect.equal metadata["method"] "rotnet" "method"
            Expect.equal metadata["architecture"] "smallconvnet-16" "architecture"
            Expect.equal metadata["probe"] (string (Probe.OfLayer(run.ProbeLayer, run.ProbePool))) "probe"
            Expect.equal metadata["input_height"] "28" "input size"
            Expect.equal metadata["seed"] "0" "seed"
            Expect.equal (metadata["mean"].Split(',').Length) (int metadata["input_channels"]) "one mean per channel"
            let out = Path.Combine(root.Force(), "elsewhere", "model.onnx")
            Expect.equal (Program.run [| "export"; dir; "--format"; "onnx"; "--out"; out |]) 0 "--out"
            Expect.equal (File.ReadAllBytes out) (File.ReadAllBytes path) "the same model, written where --out says"
        }

        test "ssl export of a folder without a finished run, or to another format, ends in one line; safetensors is the run's file" {
            let empty = Path.Combine(root.Force(), "not-a-run")
            Directory.CreateDirectory empty |> ignore
            let code, lines = Fixtures.sslCapturingErrors [| "export"; empty; "--format"; "onnx" |]
            Expect.equal code 1 "exit code 1"
            Expect.equal lines.Length 1 "one line"
            Expect.stringContains lines[0] "config.json" "names the missing file"
            let code, lines = Fixtures.sslCapturingErrors [| "export"; trained.Force(); "--format"; "tflite" |]
            Expect.equal code 2 "a usage error"
            Expect.stringContains lines[0] "--format: expected onnx or safetensors, found 'tflite'" "names the flag, the expected and the found"
            let copy = Path.Combine(root.Force(), "copy", "encoder.safetensors")
            Expect.equal (Program.run [| "export"; trained.Force(); "--format"; "safetensors"; "--out"; copy |]) 0 "--format safetensors"
            Expect.equal (File.ReadAllBytes copy) (File.ReadAllBytes(Path.Combine(trained.Force(), "export", "encoder.safetensors"))) "a copy of the run's file"
        }
    ]
