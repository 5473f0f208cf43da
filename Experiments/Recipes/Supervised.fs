/// Supervised training: cross-entropy on all labels or on N per class. It exercises the engine end
/// to end, and it is the "supervised-only" baseline every semi-supervised result stands beside.
module Ssl.Experiments.Recipes.Supervised

open System
open System.Collections.Generic
open TorchSharp
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Host.Data
open Ssl.Host.Engine
open Ssl.Host.Eval
open Ssl.Host.Runs
open Ssl.Host.Runtime
open Ssl.Experiments.Recipe
open Ssl.Experiments.Pipeline

/// The schedule and augmentation. No single paper: the standard recipe for small conv nets (SGD
/// with Nesterov momentum, warm-up then cosine decay, weight decay 5e-4 off norms and biases;
/// random resized crop and horizontal flip as light augmentation).
type Config =
    { /// SmallConvNet base width w (channels w, 2w, 4w); FLOPs per 28x28 image: 14,112·C·w + 42,336·w².
      Width: int64
      Epochs: int
      BatchSize: int
      LearningRate: float
      WeightDecay: float
      WarmupEpochs: float
      CropScale: float * float
      FlipProbability: float
      /// With few labels an epoch is short: train at least this many steps.
      MinSteps: int }

/// `quick`: width 16 (11.1 MFLOP per 28x28 grey image forward) for 15 epochs at batch 256, which
/// fits the 10-minute budget on 2 cores; `paper`: width 32 (43.8 MFLOP), 100 epochs;
/// `smoke`: one epoch on the smoke subset.
let config preset =
    let quick =
        { Width = 16L; Epochs = 15; BatchSize = 256; LearningRate = 0.1; WeightDecay = 5e-4; WarmupEpochs = 1.0
          CropScale = (0.8, 1.0); FlipProbability = 0.5; MinSteps = 300 }
    match preset with
    | Smoke -> { quick with Epochs = 1; BatchSize = 128; MinSteps = 10 }
    | Quick -> quick
    | Paper -> { quick with Width = 32L; Epochs = 100 }

let private makeEncoder (data: Data) (config: Config) () : Encoder =
    new SmallConvNet(data.Train.Channels, config.Width)

/// The encoder a preset trains (for `ssl eval`).
let encoder (preset: Preset) (channels: int64) : Encoder = new SmallConvNet(channels, (config preset).Width)

/// One SGD step of cross-entropy on a batch of the labelled `examples` (indices into the training set).
type Step(encoder: Encoder, head: LinearHead, data: Data, examples: int64[], config: Config) =
    let modules = readOnlyDict [ "encoder", (encoder :> torch.nn.Module); "head", (head :> torch.nn.Module) ]
    let spec =
        OptimizerSpec(Kind = OptimizerKind.Sgd, LearningRate = config.LearningRate, Momentum = 0.9, Nesterov = true,
                      WeightDecay = config.WeightDecay, WarmupEpochs = config.WarmupEpochs)
    interface ITrainingStep with
        member _.Modules = modules
        member _.Optimizers =
            [| struct ("main", spec, Seq.append (encoder.named_parameters ()) (head.named_parameters ())) |] :> IReadOnlyList<_>
        member _.State = readOnlyDict []
        member _.Step(ctx, batch) =
            use idx = torch.tensor(batch |> Array.map (fun i -> examples[int i]))
            let x = Features.ToInput(data.Train.Images.index_select(0L, idx), data.Mean, data.Std, ctx.Device)
            let y = data.Train.Labels.index_select(0L, idx).``to``(ctx.Device)
            let h, w = x.shape[2], x.shape[3]
            let augmented =
                x
                |> Geometric.randomResizedCrop config.CropScale (3.0 / 4.0, 4.0 / 3.0) (h, w) ctx.Generator
                |> Geometric.randomHorizontalFlip config.FlipProbability ctx.Generator
            let logits = head.forward(encoder.forward augmented)
            let loss = torch.nn.functional.cross_entropy(logits, y)
            let value = ctx.Optimize("main", loss)
            let accuracy = logits.argmax(1L).eq(y).to_type(torch.ScalarType.Float32).mean().item<float32>()
            readOnlyDict [ "loss", value; "train_acc", float accuracy ]

/// Test accuracy of head(encoder(x)).
let testAccuracy (encoder: Encoder) (head: LinearHead) (data: Data) (device: torch.Device) =
    use features = Features.Extract(encoder, data.Test.Images, data.Mean, data.Std, device)
    head.eval()
    use noGrad = torch.no_grad()
    use logits = head.forward(features.``to``(device))
    use correct = logits.argmax(1L).cpu().eq(data.Test.Labels)
    correct.to_type(torch.ScalarType.Float64).mean().item<float>()

/// Trains `encoder` + a new linear head on `examples` (all, or a few-label split). Given a trained
/// encoder, that is the fine-tuning protocol. Returns the modules and the engine's summary.
let trainWith (encoder: Encoder) (config: Config) (data: Data) (examples: int64[]) (seed: int64) (resume: bool)
              (folder: RunFolder) (device: torch.Device) (progress: IProgressReporter) =
    torch.manual_seed(seed) |> ignore
    let head = new LinearHead(encoder.FeatureDim, int64 data.Classes)
    encoder.``to``(device) |> ignore
    head.``to``(device) |> ignore
    let batch = min config.BatchSize examples.Length
    let perEpoch = examples.Length / batch
    let epochs = max config.Epochs ((config.MinSteps + perEpoch - 1) / perEpoch)
    let options =
        TrainerOptions(Epochs = epochs, BatchSize = batch, ExampleCount = int64 examples.Length, Seed = seed, Resume = resume,
                       ConfigDigest = $"supervised {config} n={examples.Length}", LogEvery = 20)
    let summary = Trainer.Run(Step(encoder, head, data, examples, config), options, folder, device, progress)
    encoder, head, summary

/// Trains encoder + linear head from a random initialisation (seeded).
let train (config: Config) (data: Data) examples (seed: int64) resume folder device progress =
    torch.manual_seed(seed) |> ignore
    trainWith (makeEncoder data config ()) config data examples seed resume folder device progress

/// The fine-tuning protocol's schedule: the preset's, at a tenth of the learning rate.
let fineTuneConfig preset = { config preset with LearningRate = (config preset).LearningRate / 10.0 }

/// The supervised-only baseline for a SmallConvNet of `width` on `perClass` labels per class, computed
/// once per (data set, preset, labels, seed, width) and cached beside the runs (Pipeline.cached).
/// Its training run folder goes under `<folder>/baselines/`.
let supervisedOnlyCached (request: Request) (width: int64) (data: Data) (perClass: int) (folder: RunFolder) (device: torch.Device) =
    let preset = request.Preset
    let suffix = if width = (config preset).Width then "" else $"-w{width}"
    cached request $"supervised-only-{data.Name}-{Preset.name preset}-{perClass}-seed{request.Seed}{suffix}" (fun () ->
        let split = LabelSplitter.Draw(data.Train, perClass, request.Seed)
        let baseline = RunFolder(IO.Path.Combine(folder.Root, "baselines", $"supervised-only-{perClass}"))
        let encoder, head, _ =
            train { config preset with Width = width } data split.Labelled request.Seed false baseline device (SilentProgress())
        use encoder = encoder
        use head = head
        testAccuracy encoder head data device)

/// The tail of the SmallConvNet pretext recipes (RotNet, jigsaw, relative patch, exemplar): the supervised-only
/// baseline on the run's labels (the supervised preset's width), then `finish` on the representation
/// `probeLayer` / `probePool` select (Pipeline.probed), its random-init baseline read at the same layer.
let finishPretext (request: Request) (env: RunEnvironment) (folder: RunFolder) (data: Data) (encoder: SmallConvNet)
                  (probeLayer: string) (probePool: int64) (summary: TrainSummary) =
    let perClass = defaultArg request.Labels 10
    let supervisedOnly = supervisedOnlyCached request (config request.Preset).Width data perClass folder env.Device
    let evaluated, suffix = probed probeLayer probePool data encoder
    let makeEncoder () : Encoder = fst (probed probeLayer probePool data (new SmallConvNet(data.Train.Channels, encoder.Width)))
    finish request env folder data evaluated $"SmallConvNet{encoder.Width}{suffix}" makeEncoder summary None (Some supervisedOnly)

/// `ssl train supervised`: all labels, or `--labels N` per class.
let run (request: Request) (env: RunEnvironment) (folder: RunFolder) : RunResult =
    let config = config request.Preset
    folder.WriteConfig {| method = "supervised"; preset = Preset.name request.Preset; dataset = request.Dataset
                          labels_per_class = Option.toNullable request.Labels; seed = request.Seed; device = env.DeviceName
                          threads = env.Threads; deterministic = env.Deterministic; encoder = $"SmallConvNet(width={config.Width})"
                          config = config |}
    use data = loadData request
    let examples =
        match request.Labels with
        | Some n -> (LabelSplitter.Draw(data.Train, n, request.Seed)).Labelled
        | None -> Array.init (int data.Train.Count) int64
    let encoder, head, summary = train config data examples request.Seed request.Resume folder env.Device (ConsoleProgress())
    use encoder = encoder
    use head = head
    let testAcc = testAccuracy encoder head data env.Device
    // With --labels this run is itself the supervised-only result on those labels.
    let supervisedOnly = request.Labels |> Option.map (fun _ -> testAcc)
    finish request env folder data encoder $"SmallConvNet{config.Width}" (makeEncoder data config) summary (Some testAcc) supervisedOnly

let recipe =
    { Name = "supervised"
      Paper = "supervised baseline (cross-entropy; SGD + Nesterov, cosine)"
      Presets = [ Smoke; Quick; Paper ]
      Run = run
      Encoder = encoder }
