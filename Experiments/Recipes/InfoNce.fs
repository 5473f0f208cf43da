/// InfoNCE with in-batch negatives: two augmented views of each image, one the query and one the
/// key, and every other image's views in the batch as negatives. The loss is InfoNCE (van den Oord,
/// Li & Vinyals 2018, "Representation Learning with Contrastive Predictive Coding", eq. 4) in the
/// symmetric NT-Xent form of SimCLR (Chen, Kornblith, Norouzi & Hinton 2020, "A Simple Framework
/// for Contrastive Learning of Visual Representations", eq. 1): 2N embeddings, each one's positive
/// the other view of its image, 2N − 2 negatives. SimCLR's MLP projection head (Sec. 2.1) sits on
/// the encoder; the representation evaluated is the encoder's, before the head (Sec. 4.2).
/// Unlike MoCo, the dictionary is the current batch, encoded by the same network with gradients,
/// so it is consistent but only as large as the batch. Measured runs: docs/experiments/infonce.md.
module Ssl.Experiments.Recipes.InfoNce

open System.Collections.Generic
open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Host.Engine
open Ssl.Experiments.Recipe
open Ssl.Experiments.Backbone
open Ssl.Experiments.Configs
open Ssl.Experiments.Pipeline
open Ssl.Experiments.Template
open Ssl.Experiments.Views

/// SimCLR's CIFAR-10 settings (App. B.9: ResNet-50 adapted to 32 px, batch 256 to 4,096, LARS,
/// learning rate 0.3 · B/256, weight decay 1e-6, 10 warm-up epochs, cosine decay; τ = 0.5 best on
/// CIFAR-10, Table 5/B.2) and its augmentation (random resized crop, flip, colour distortion; no blur).
type Config =
    { /// SimCLR's is ResNet-50; `paper` takes ResNet-18 in its CIFAR form (solo-learn's and
      /// lightly's CIFAR tables); quick and smoke SmallConvNet.
      Encoder: Backbone
      /// Output of SimCLR's two-layer MLP head (hidden layer as wide as the encoder's features).
      [<Range(1.0)>] ProjectionDim: int64
      [<Range(0.0)>] Temperature: float
      [<Range(1.0)>] Epochs: int
      [<Range(1.0)>] BatchSize: int
      [<Range(0.0)>] LearningRate: float
      [<Range(0.0)>] WeightDecay: float
      [<Range(0.0)>] WarmupEpochs: float
      /// Batch-norm groups: the 2N views are shuffled across this many equal groups, each normalised
      /// with its own statistics (Views.shuffledPerGroup). 1 is SimCLR's global batch norm (Sec. 2.2).
      [<Range(1.0)>] Groups: int
      Augmentation: Augmentation }

/// `paper`: ResNet-18 with the CIFAR-10 settings for 500 epochs at batch 512 (SimCLR's 1,000 at 4,096 are a TPU
/// budget), global batch norm. `quick` (15 minutes on 2 cores): SmallConvNet-16, batch 256 (512
/// views) in 16 shuffled batch-norm groups of 32 views (faster on a CPU than one 512-view batch),
/// LARS at learning rate 1.0 with half an epoch of warm-up, 10 epochs. `smoke`: one epoch.
let config preset =
    let paper =
        { Encoder = ResNet18; ProjectionDim = 128L; Temperature = 0.5; Epochs = 500; BatchSize = 512; LearningRate = 0.6
          WeightDecay = 1e-6; WarmupEpochs = 10.0; Groups = 1; Augmentation = { mocoAugmentation with ColourJitter = (0.8, 0.2) } }
    match preset with
    | Smoke -> { paper with Encoder = SmallConvNet 16L; Epochs = 1; BatchSize = 128; WarmupEpochs = 0.0; Groups = 8 }
    | Quick -> { paper with Encoder = SmallConvNet 16L; Epochs = 10; BatchSize = 256; LearningRate = 1.0; WarmupEpochs = 0.5; Groups = 16 }
    | Paper -> paper

/// One step: two views of the batch through encoder and head, NT-Xent over the 2N embeddings.
type Step(encoder: Encoder, head: MlpHead, data: Data, config: Config) =
    let spec =
        OptimizerSpec(Kind = OptimizerKind.Lars, LearningRate = config.LearningRate, Momentum = 0.9,
                      WeightDecay = config.WeightDecay, WarmupEpochs = config.WarmupEpochs)
    interface ITrainingStep with
        member _.Modules = readOnlyDict [ "encoder", (encoder :> torch.nn.Module); "head", (head :> torch.nn.Module) ]
        member _.Optimizers =
            [| struct ("main", spec, Seq.append (encoder.named_parameters ()) (head.named_parameters ())) |] :> IReadOnlyList<_>
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

let build (c: Context<Config>) =
    let encoder = c.NewEncoder()
    let head = new MlpHead(encoder.FeatureDim, encoder.FeatureDim, c.Config.ProjectionDim)
    { training (Step(encoder, head, c.Data, c.Config)) c.Config.Epochs c.Config.BatchSize encoder c with Owned = [ encoder; head ] }

let spec =
    backboneSpec "infonce" "van den Oord et al. 2018 (InfoNCE) in SimCLR's in-batch form, Chen et al. 2020"
        selfSupervised config (fun c -> c.Encoder) build
