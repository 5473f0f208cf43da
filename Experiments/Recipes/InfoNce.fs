/// InfoNCE with in-batch negatives: two augmented views of each image, one the query and one the
/// key, and every other image's views in the batch as negatives. The loss is InfoNCE (van den Oord,
/// Li & Vinyals 2018, "Representation Learning with Contrastive Predictive Coding", eq. 4) in the
/// symmetric NT-Xent form of SimCLR (Chen, Kornblith, Norouzi & Hinton 2020, "A Simple Framework
/// for Contrastive Learning of Visual Representations", eq. 1): 2N embeddings, each one's positive
/// the other view of its image, 2N − 2 negatives. SimCLR's MLP projection head (Sec. 2.1) sits on
/// the encoder; the representation evaluated is the encoder's, before the head (Sec. 4.2).
/// Unlike MoCo, the dictionary is the current batch, encoded by the same network with gradients,
/// so it is consistent but only as large as the batch.
module Ssl.Experiments.Recipes.InfoNce

open System.Collections.Generic
open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Host.Engine
open Ssl.Host.Runs
open Ssl.Host.Runtime
open Ssl.Experiments.Recipe
open Ssl.Experiments.Pipeline
open Ssl.Experiments.Views

/// SimCLR's CIFAR-10 settings (App. B.9: ResNet-50 adapted to 32 px, batch 256 to 4,096, LARS,
/// learning rate 0.3 · B/256 with square-root scaling tried, weight decay 1e-6, 10 warm-up epochs,
/// cosine decay; τ = 0.5 best on CIFAR-10, Table 5/B.2) and its augmentation (random resized crop,
/// flip, colour distortion; no blur on CIFAR). The projection head is SimCLR's two-layer MLP with
/// the hidden width of the encoder's output and a 128-d output.
type Config =
    { Width: int64
      ProjectionDim: int64
      Temperature: float
      Epochs: int
      BatchSize: int
      LearningRate: float
      WeightDecay: float
      WarmupEpochs: float
      /// Batch-norm groups: the 2N views are shuffled across this many equal groups, each normalised
      /// with its own statistics (Views.shuffledPerGroup), so the two views of an image rarely share
      /// statistics. 1 is SimCLR's global batch norm (Sec. 2.2); more groups run faster on a CPU.
      Groups: int
      Augmentation: Augmentation }

/// `paper`: the CIFAR-10 settings for 500 epochs at batch 512 (SimCLR's 1,000 epochs at 4,096 are a
/// TPU budget), global batch norm. `quick` (15 minutes on 2 cores): SmallConvNet width 16, batch 256
/// (512 views) in 16 shuffled batch-norm groups of 32 views (one 512-view batch ran at 27% of the
/// matmul peak, MoCo's 32-image groups at 66%; SimCLR itself normalises over all devices), SGD-LARS
/// at learning rate 1.0 with half an epoch of warm-up (a short run cannot spend 10 epochs warming
/// up), 10 epochs: the grouped step ran at 1,447 img/s in `ssl bench` (5 + 30 steps, commit 10d7710 plus
/// this change), and real runs go about 1.6x slower than the bench (MoCo: 839 there, 505-553 in
/// runs/moco-quick), so about 11 minutes of training. Measured (runs/infonce-quick, commit 474b3de,
/// seed 0): linear probe 0.8292 and kNN 0.8008 against the random-initialised encoder's 0.7866 /
/// 0.7503 (+4.3 points), 10 labels per class 0.6905; 731 s of training at 819 img/s, the whole
/// command 12.9 minutes; live tensors flat at 62, RSS 559-612 MB. `smoke`: one epoch.
let config preset =
    let paper =
        { Width = 32L; ProjectionDim = 128L; Temperature = 0.5; Epochs = 500; BatchSize = 512; LearningRate = 0.6
          WeightDecay = 1e-6; WarmupEpochs = 10.0; Groups = 1; Augmentation = { mocoAugmentation with ColourJitter = (0.8, 0.2) } }
    match preset with
    | Smoke -> { paper with Width = 16L; Epochs = 1; BatchSize = 128; WarmupEpochs = 0.0; Groups = 8 }
    | Quick -> { paper with Width = 16L; Epochs = 10; BatchSize = 256; LearningRate = 1.0; WarmupEpochs = 0.5; Groups = 16 }
    | Paper -> paper

let encoder (preset: Preset) (channels: int64) : Encoder = new SmallConvNet(channels, (config preset).Width)

/// One step: two views of the batch through encoder and head, NT-Xent over the 2N embeddings.
type Step(encoder: Encoder, head: MlpHead, data: Data, config: Config) =
    let spec =
        OptimizerSpec(Kind = OptimizerKind.Lars, LearningRate = config.LearningRate, Momentum = 0.9,
                      WeightDecay = config.WeightDecay, WarmupEpochs = config.WarmupEpochs)
    interface ITrainingStep with
        member _.Modules = readOnlyDict [ "encoder", (encoder :> torch.nn.Module); "head", (head :> torch.nn.Module) ]
        member _.Optimizers =
            [| struct ("main", spec, Seq.append (encoder.named_parameters ()) (head.named_parameters ())) |] :> IReadOnlyList<_>
        member _.State = readOnlyDict []
        member _.Step(ctx, batch) =
            let x = unitPixels data batch ctx.Device
            let views = torch.cat([| view config.Augmentation data ctx.Generator x; view config.Augmentation data ctx.Generator x |], 0L)
            let embed (v: torch.Tensor) = head.forward (encoder.forward v)
            let z = Contrastive.normalize (shuffledPerGroup config.Groups ctx.Generator embed views)
            let z1, z2 = z.narrow(0L, 0L, int64 batch.Length), z.narrow(0L, int64 batch.Length, int64 batch.Length)
            let loss = Contrastive.infoNceInBatch config.Temperature z1 z2
            let value = ctx.Optimize("main", loss)
            // Instance accuracy: how often the other view is the nearest of the 2N − 1 candidates.
            let similarities = z1.detach().matmul(z.detach().t())
            let self = torch.arange(int64 batch.Length, device = ctx.Device)
            similarities.index_put_(torch.tensor(-2.0f, device = ctx.Device), [| self; self |]) |> ignore
            let accuracy = similarities.argmax(1L).eq(self + int64 batch.Length).to_type(torch.ScalarType.Float32).mean().item<float32>()
            readOnlyDict [ "loss", value; "instance_acc", float accuracy ]

/// `ssl train infonce`: pre-train on the unlabelled training images, then every protocol.
let run (request: Request) (env: RunEnvironment) (folder: RunFolder) : RunResult =
    let config = config request.Preset
    folder.WriteConfig {| method = "infonce"; preset = Preset.name request.Preset; dataset = request.Dataset; seed = request.Seed
                          device = env.DeviceName; threads = env.Threads; deterministic = env.Deterministic
                          encoder = $"SmallConvNet(width={config.Width})"; config = config |}
    use data = loadData request
    torch.manual_seed(request.Seed) |> ignore
    use encoder = new SmallConvNet(data.Train.Channels, config.Width)
    use head = new MlpHead(encoder.FeatureDim, encoder.FeatureDim, config.ProjectionDim)
    encoder.``to``(env.Device) |> ignore
    head.``to``(env.Device) |> ignore
    let options =
        TrainerOptions(Epochs = config.Epochs, BatchSize = config.BatchSize, ExampleCount = data.Train.Count, Seed = request.Seed,
                       Resume = request.Resume, ConfigDigest = $"infonce {config}", LogEvery = 50)
    let summary = Trainer.Run(Step(encoder, head, data, config), options, folder, env.Device, ConsoleProgress())
    let perClass = defaultArg request.Labels 10
    let supervisedOnly = Supervised.supervisedOnlyCached request (Supervised.config request.Preset).Width data perClass folder env.Device
    let makeEncoder () : Encoder = new SmallConvNet(data.Train.Channels, config.Width)
    finish request env folder data encoder $"SmallConvNet{config.Width}" makeEncoder summary None (Some supervisedOnly)

let recipe =
    { Name = "infonce"
      Paper = "van den Oord et al. 2018 (InfoNCE) in SimCLR's in-batch form, Chen et al. 2020"
      Presets = [ Smoke; Quick; Paper ]
      Run = run
      Encoder = encoder }
