/// Relative patch location: unsupervised visual representation learning by context prediction
/// (Doersch, Gupta & Efros, ICCV 2015). From each image a centre patch and one of its eight
/// neighbours are cut on a 3 x 3 grid with a gap and a random jitter between them (Sec. 3, Fig. 2),
/// both go through one shared patch encoder (the siamese "pair" architecture of Fig. 3), the two
/// feature vectors are concatenated and a classifier says which of the eight neighbours it is
/// (Sec. 3: an 8-way softmax, cross-entropy).
///
/// Against trivial shortcuts (Sec. 3.1): the gap between patches stops the network from following
/// lines and textures across the boundary, the jitter stops it from matching edge positions. The
/// paper's other trick, chromatic aberration (randomly dropping two colour channels, or projecting
/// out the green-magenta axis), targets lens colour fringes that shift between channels; it is
/// irrelevant on grey data (Fashion-MNIST has one channel) and left out. On colour data we do not
/// add it either (said here rather than implemented; the quick preset is Fashion-MNIST).
///
/// Geometry at 28 x 28 (the paper: 96-pixel patches, 48-pixel gaps, jitter up to 7 pixels, on
/// images resized to 150-450 pixels): 6-pixel patches, 3-pixel gaps, jitter +-1 pixel. The grid
/// spans 3·6 + 2·3 = 24 pixels, with the jitter 26 of the 28, so it covers the garment; the gap
/// never closes (at least 3 - 2·1 = 1 pixel between two patches, so no boundary continuity), and
/// the jitter is 1/6 of a patch (the paper: 7/96). 7-pixel patches with a 2-pixel gap would let
/// jittered patches touch; larger patches need upsampling, which adds no information and puts the
/// pretext task at another scale than the evaluation.
///
/// The evaluated encoder is the patch encoder itself applied to whole 28 x 28 images:
/// SmallConvNet is fully convolutional with a global average pool, so the same weights that map a
/// 6 x 6 patch to a 64-d vector map a whole image to the average of its conv features over the
/// 7 x 7 final map (each position sees a neighbourhood the size of a few patches); the pair
/// classifier is dropped, as the paper keeps only the conv layers (Sec. 4).
///
/// Measured (quick, seed 0, runs/relative-patch-quick, commit e5404c5, 1.7 minutes in all): the 64-d
/// output's linear probe 0.8277 and kNN 0.7824 against random-init's 0.7866 / 0.7503 and raw pixels'
/// 0.8435 — +4.1 points but below raw pixels. The second block pooled 3x3 (`ssl eval --layer
/// features.block2b_relu --pool 3`) gives 0.9010 against 0.8646 random-init at that layer. The recipe
/// now evaluates that layer (ProbeLayer/ProbePool, as RotNet), with its random-init baseline there.
module Ssl.Experiments.Recipes.RelativePatch

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

/// The pretext geometry and schedule. The paper's pair network: per-patch fc6, concatenated, fc7
/// (4096), fc8 (8); here the encoder's pooled features stand for fc6 and an MLP (hidden
/// `HiddenDim`, batch norm, ReLU) for fc7 + fc8. SGD with Nesterov momentum and cosine decay as in
/// the other recipes (the paper trained with Caffe's SGD for about four weeks on one K40).
type Config =
    { /// SmallConvNet base width (see Supervised.Config.Width).
      Width: int64
      PatchSize: int64
      Gap: int64
      Jitter: int64
      HiddenDim: int64
      Epochs: int
      BatchSize: int
      LearningRate: float
      WeightDecay: float
      /// The layer whose features are evaluated ("" = the encoder's output) and its pooled size
      /// (Pipeline.probed; see the module comment's measurements).
      ProbeLayer: string
      ProbePool: int64 }

/// `paper`: the paper's geometry (96-pixel patches, gap 48, jitter 7), for images of at least
/// 3·96 + 2·48 + 14 = 398 pixels, width 32, fc7 of 4096; `quick` and `smoke`: the 28 x 28 geometry
/// of the module comment at width 16 (64-d features, so the cached width-16 baselines apply).
/// A pair costs 2·36 = 72 input pixels, under a tenth of a whole image: `quick` trains 15 epochs (about 2,000 pairs/s measured with
/// another run sharing the 2 cores).
let config preset =
    let paper =
        { Width = 32L; PatchSize = 96L; Gap = 48L; Jitter = 7L; HiddenDim = 4096L; Epochs = 100; BatchSize = 256
          LearningRate = 0.1; WeightDecay = 5e-4
          ProbeLayer = "features.block2b_relu"; ProbePool = 3L }
    let small = { paper with Width = 16L; PatchSize = 6L; Gap = 3L; Jitter = 1L; HiddenDim = 512L }
    match preset with
    | Smoke -> { small with Epochs = 1 }
    | Quick -> { small with Epochs = 15 }
    | Paper -> paper

let encoder (preset: Preset) (channels: int64) : Encoder = new SmallConvNet(channels, (config preset).Width)

/// One step: a (centre, neighbour) pair per image, both through the shared encoder in one batch,
/// the concatenated pair features classified into the 8 neighbour positions.
type Step(encoder: Encoder, classifier: MlpHead, data: Data, config: Config) =
    let spec =
        OptimizerSpec(Kind = OptimizerKind.Sgd, LearningRate = config.LearningRate, Momentum = 0.9, Nesterov = true,
                      WeightDecay = config.WeightDecay)
    interface ITrainingStep with
        member _.Modules = readOnlyDict [ "encoder", (encoder :> torch.nn.Module); "classifier", (classifier :> torch.nn.Module) ]
        member _.Optimizers =
            [| struct ("main", spec, Seq.append (encoder.named_parameters ()) (classifier.named_parameters ())) |] :> IReadOnlyList<_>
        member _.State = readOnlyDict []
        member _.Step(ctx, batch) =
            use idx = torch.tensor(batch)
            let x = Features.ToInput(data.Train.Images.index_select(0L, idx), data.Mean, data.Std, ctx.Device)
            let centres, neighbours, labels, _ = Patches.relativePatchPairs config.PatchSize config.Gap config.Jitter ctx.Generator x
            let count = centres.shape[0]
            let features = encoder.forward(torch.cat([| centres; neighbours |], 0L))
            let pairs = torch.cat([| features.narrow(0L, 0L, count); features.narrow(0L, count, count) |], 1L)
            let logits = classifier.forward pairs
            let loss = torch.nn.functional.cross_entropy(logits, labels)
            let value = ctx.Optimize("main", loss)
            let accuracy = logits.argmax(1L).eq(labels).to_type(torch.ScalarType.Float32).mean().item<float32>()
            readOnlyDict [ "loss", value; "position_acc", float accuracy ]

/// `ssl train relative-patch`: pre-train on the unlabelled training images, then every protocol.
let run (request: Request) (env: RunEnvironment) (folder: RunFolder) : RunResult =
    let config = config request.Preset
    folder.WriteConfig {| method = "relative-patch"; preset = Preset.name request.Preset; dataset = request.Dataset; seed = request.Seed
                          device = env.DeviceName; threads = env.Threads; deterministic = env.Deterministic
                          encoder = $"SmallConvNet(width={config.Width})"; config = config |}
    use data = loadData request
    let needed = 3L * config.PatchSize + 2L * config.Gap + 2L * config.Jitter
    if data.Train.Height < needed || data.Train.Width < needed then
        invalidArg "--dataset" $"--dataset: relative-patch with {config.PatchSize}-pixel patches, gap {config.Gap} and jitter {config.Jitter} needs images of at least {needed}x{needed}, found {data.Train.Height}x{data.Train.Width}"
    torch.manual_seed(request.Seed) |> ignore
    use encoder = new SmallConvNet(data.Train.Channels, config.Width)
    use classifier = new MlpHead(2L * encoder.FeatureDim, config.HiddenDim, 8L)
    encoder.``to``(env.Device) |> ignore
    classifier.``to``(env.Device) |> ignore
    let options =
        TrainerOptions(Epochs = config.Epochs, BatchSize = config.BatchSize, ExampleCount = data.Train.Count, Seed = request.Seed,
                       Resume = request.Resume, ConfigDigest = $"relative-patch {config}", LogEvery = 50)
    let summary = Trainer.Run(Step(encoder, classifier, data, config), options, folder, env.Device, ConsoleProgress())
    Supervised.finishPretext request env folder data encoder config.ProbeLayer config.ProbePool summary

let recipe =
    { Name = "relative-patch"
      Paper = "Doersch et al. 2015, Unsupervised Visual Representation Learning by Context Prediction"
      Presets = [ Smoke; Quick; Paper ]
      Run = run
      Encoder = encoder }
