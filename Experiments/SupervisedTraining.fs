/// Supervised training of an encoder with a linear head: the `supervised` recipe's step, the
/// fine-tuning protocol, and the supervised-only baseline every result stands beside (DESIGN.md).
/// No single paper: the standard recipe for small conv nets (SGD with Nesterov momentum, warm-up
/// then cosine decay, weight decay 5e-4 off norms and biases; random resized crop and flip).
module Ssl.Experiments.SupervisedTraining

open System
open System.Collections.Generic
open TorchSharp
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Host.Data
open Ssl.Host.Engine
open Ssl.Host.Eval
open Ssl.Host.Runs
open Ssl.Experiments.Recipe
open Ssl.Experiments.Backbone
open Ssl.Experiments.Configs
open Ssl.Experiments.ConfigParts
open Ssl.Experiments.Pipeline

type Config =
    { /// The encoder; SmallConvNet-w costs 14,112·C·w + 42,336·w² FLOPs per 28x28 image forward.
      Encoder: Backbone
      /// SGD with Nesterov momentum (Optim.nesterov). Epochs and BatchSize are a floor and a ceiling:
      /// MinSteps may add epochs, a small labelled set lowers the batch (`schedule`).
      Schedule: TrainingSchedule
      /// Area fraction range of the random resized crop.
      CropScale: float * float
      [<Range(0.0, 1.0)>] FlipProbability: float
      /// With few labels an epoch is short: train at least this many steps.
      [<Range(0.0)>] MinSteps: int }

/// `quick`: SmallConvNet-16 (11.1 MFLOP per 28x28 grey image) for 15 epochs at batch 256, within
/// 10 minutes on 2 cores; `paper`: width 32, 100 epochs; `smoke`: one epoch on the smoke subset.
let config preset =
    let quick =
        { Encoder = SmallConvNet 16L; CropScale = (0.8, 1.0); FlipProbability = 0.5; MinSteps = 300
          Schedule = { Epochs = 15; BatchSize = 256; LearningRate = 0.1; WeightDecay = 5e-4; WarmupEpochs = 1.0 } }
    match preset with
    | Smoke -> { quick with MinSteps = 10; Schedule = { quick.Schedule with Epochs = 1; BatchSize = 128 } }
    | Quick -> quick
    | Paper -> { quick with Encoder = SmallConvNet 32L; Schedule = { quick.Schedule with Epochs = 100 } }

/// One SGD step of cross-entropy on a batch of the labelled `examples` (indices into the training
/// set), randomly resized, cropped and flipped: the `supervised` recipe's step and the baselines'.
let run (config: Config) (data: Data) (examples: int64[]) (encoder: Encoder) (head: LinearHead) (step: StepContext) (batch: int64[]) =
    let picked = batch |> Array.map (fun i -> examples[int i])
    use idx = torch.tensor(picked)
    let x = Features.ToInput(data.Train.Batch picked, data.Mean, data.Std, step.Device)
    let y = data.Train.Labels.index_select(0L, idx).``to``(step.Device)
    let augmented =
        x
        |> Geometric.randomResizedCrop config.CropScale (3.0 / 4.0, 4.0 / 3.0) (x.shape[2], x.shape[3]) step.Generator
        |> Geometric.randomHorizontalFlip config.FlipProbability step.Generator
    let logits = head.forward(encoder.forward augmented)
    let value = step.Optimize("main", torch.nn.functional.cross_entropy(logits, y))
    let accuracy = logits.argmax(1L).eq(y).to_type(torch.ScalarType.Float32).mean().item<float32>()
    [ "loss", value; "train_acc", float accuracy ]

/// The engine's step of `run` for `trainWith`: the template's StepDef (Template.stepOf) is compiled
/// after this file, so the baselines state their one optimizer here as the recipe does there.
let private engineStep (config: Config) (data: Data) (examples: int64[]) (encoder: Encoder) (head: LinearHead) =
    let modules = readOnlyDict [ "encoder", (encoder :> torch.nn.Module); "head", (head :> torch.nn.Module) ]
    let spec = Optim.nesterov config.Schedule
    { new ITrainingStep with
        member _.Modules = modules
        member _.Optimizers =
            [| struct ("main", spec, Seq.append (encoder.named_parameters ()) (head.named_parameters ())) |] :> IReadOnlyList<_>
        member _.Step(step, batch) = readOnlyDict (run config data examples encoder head step batch) }

/// Epochs that give at least `MinSteps` steps on `examples` labelled images at the config's batch.
let schedule (config: Config) (examples: int) =
    let batch = min config.Schedule.BatchSize examples
    let perEpoch = examples / batch
    max config.Schedule.Epochs ((config.MinSteps + perEpoch - 1) / perEpoch), batch

/// Test accuracy of head(encoder(x)).
let testAccuracy (encoder: Encoder) (head: LinearHead) (data: Data) (device: torch.Device) =
    use features = Features.Extract(encoder, data.Test, data.Mean, data.Std, device)
    head.eval()
    use noGrad = torch.no_grad()
    use logits = head.forward(features.``to``(device))
    use correct = logits.argmax(1L).cpu().eq(data.Test.Labels)
    correct.to_type(torch.ScalarType.Float64).mean().item<float>()

/// The labelled training examples of a run: `perClass` labels per class drawn with `seed` (LabelSplitter), or
/// every image of `train` for None. Indices into `train`.
let labelledExamples (train: ImageDataset) (perClass: int option) (seed: int64) =
    match perClass with
    | Some n -> (LabelSplitter.Draw(train, n, seed)).Labelled
    | None -> Array.init (int train.Count) int64

/// Trains `encoder` + a new linear head on `examples` (all, or a few-label split). Given a trained
/// encoder, that is the fine-tuning protocol. Returns the head and the engine's summary.
let trainWith (encoder: Encoder) (config: Config) (data: Data) (examples: int64[]) (seed: int64) (resume: bool)
              (folder: RunFolder) (device: torch.Device) (progress: IProgressReporter) =
    torch.manual_seed(seed) |> ignore
    let head = new LinearHead(encoder.FeatureDim, int64 data.Classes)
    encoder.``to``(device) |> ignore
    head.``to``(device) |> ignore
    let epochs, batch = schedule config examples.Length
    let options =
        TrainerOptions(Epochs = epochs, BatchSize = batch, ExampleCount = int64 examples.Length, Seed = seed, Resume = resume,
                       ConfigDigest = $"supervised {(toJson config).ToJsonString()} n={examples.Length}", LogEvery = 20)
    let summary = Trainer.Run(engineStep config data examples encoder head, options, folder, device, progress)
    head, summary

/// The fine-tuning protocol's schedule: the preset's, at a tenth of the learning rate.
let fineTuneConfig preset =
    let tuned = config preset
    { tuned with Schedule = { tuned.Schedule with LearningRate = tuned.Schedule.LearningRate / 10.0 } }

/// The supervised-only baseline for `backbone` on `perClass` labels per class: the supervised
/// preset's schedule from a seeded random initialisation, computed once per (data set, preset,
/// labels, seed, backbone) and cached beside the runs (Pipeline.cached); its run folder goes under
/// `<folder>/baselines/`.
let supervisedOnlyCached (request: Request) (backbone: Backbone) (data: Data) (perClass: int) (folder: RunFolder) (device: torch.Device)
                         (layout: Ssl.Core.Models.SafeConv.ConvLayout) =
    let preset = request.Preset
    let suffix = if backbone = (config preset).Encoder then "" else $"-{backbone}"
    cached request $"supervised-only-{data.Name}-{Preset.name preset}-{perClass}-seed{request.Seed}{suffix}" (fun () ->
        let split = LabelSplitter.Draw(data.Train, perClass, request.Seed)
        let baseline = RunFolder(IO.Path.Combine(folder.Root, "baselines", $"supervised-only-{perClass}"))
        torch.manual_seed(request.Seed) |> ignore
        use encoder = instantiate layout None data.Train.Channels backbone
        let head, _ =
            trainWith encoder { config preset with Encoder = backbone } data split.Labelled request.Seed false baseline device (SilentProgress())
        use head = head
        testAccuracy encoder head data device)

/// The fine-tuning protocol of `ssl eval --protocol finetune [--labels N]` run on `encoder`, a fresh encoder of the
/// architecture, after it takes `weights`' parameters and buffers where given (`weights` itself is left as it is, for the
/// protocols that follow; None fine-tunes the random initialisation, the baseline trained from scratch on the same labels
/// and schedule): `perClass` labels per class drawn with `seed` (None: all), the preset's fineTuneConfig, its run under
/// `folder` (resumed if there). Returns the test accuracy; disposes `encoder`.
let fineTuneAccuracy (preset: Preset) (weights: Encoder option) (encoder: Encoder) (data: Data) (perClass: int option) (seed: int64)
                     (folder: RunFolder) (device: torch.Device) =
    use tuned = encoder
    for trained in Option.toList weights do
        use _ = torch.no_grad ()
        for target, source in Seq.zip (tuned.parameters ()) (trained.parameters ()) do target.copy_(source) |> ignore
        for target, source in Seq.zip (tuned.buffers ()) (trained.buffers ()) do target.copy_(source) |> ignore
    let examples = labelledExamples data.Train perClass seed
    let head, _ = trainWith tuned (fineTuneConfig preset) data examples seed true folder device (SilentProgress())
    use head = head
    testAccuracy tuned head data device

/// result.json's extra figures of the fine-tuning protocol run after training on `data`'s labelled set, on encoders
/// `newEncoder` makes: finetune_acc (from `trained`'s weights, run in <root>/finetune-result-<N|all>),
/// finetune_random_init_acc (the same protocol from the random initialisation, in <root>/finetune-random-init-<N|all>),
/// and finetune_labels_per_class where `perClass` is Some. [] where `data` has no labels.
let fineTuneFigures (preset: Preset) (trained: Encoder) (newEncoder: unit -> Encoder) (data: Data) (perClass: int option) (seed: int64)
                    (root: string) (device: torch.Device) =
    match data.Probed with
    | None -> []
    | Some probe ->
        let name = perClass |> Option.map string |> Option.defaultValue "all"
        let tune what weights folder =
            phase $"fine-tuning protocol {what} on {name} labels/class" (fun () ->
                fineTuneAccuracy preset weights (newEncoder ()) probe perClass seed (RunFolder(IO.Path.Combine(root, $"{folder}-{name}"))) device)
        let accuracy = tune "from the trained encoder" (Some trained) "finetune-result"
        let scratch = tune "from the random initialisation" None "finetune-random-init"
        [ "finetune_acc", accuracy; "finetune_random_init_acc", scratch ] @ [ for n in Option.toList perClass -> "finetune_labels_per_class", float n ]
