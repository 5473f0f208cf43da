/// SimCLR (Chen, Kornblith, Norouzi & Hinton, ICML 2020, "A Simple Framework for Contrastive Learning of Visual
/// Representations"): two augmented views of each image, every other image's views in the batch as negatives. The loss is
/// InfoNCE (van den Oord, Li & Vinyals 2018, eq. 4) in SimCLR's symmetric NT-Xent form (eq. 1): 2N embeddings, each one's
/// positive the other view of its image, 2N − 2 negatives. The MLP projection head (Sec. 2.1) sits on the encoder; the
/// representation evaluated is the encoder's, before the head (Sec. 4.2). Unlike MoCo, the dictionary is the current batch,
/// encoded by the same network with gradients, so it is consistent but only as large as the batch. Registered as `simclr`
/// and, for the runs and records made under its earlier name, as `infonce`. Measured runs: docs/experiments/simclr.md.
module Ssl.Experiments.Recipes.SimClr

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Experiments

/// SimCLR's CIFAR-10 settings (App. B.9: ResNet-50 adapted to 32 px, batch 256 to 4,096, LARS, learning rate 0.3 ·
/// B/256, weight decay 1e-6, 10 warm-up epochs, cosine decay; τ = 0.5 best on CIFAR-10, Table 5/B.2) and its
/// augmentation (random resized crop, flip, colour distortion; no blur).
type Config =
    { /// SimCLR's is ResNet-50; `paper` takes ResNet-18 in its CIFAR form (solo-learn's and
      /// lightly's CIFAR tables); quick and smoke SmallConvNet.
      Encoder: Backbone
      /// Output of SimCLR's two-layer MLP head (hidden layer as wide as the encoder's features).
      [<Range(1.0)>] ProjectionDim: int64
      [<Range(0.0)>] Temperature: float
      /// LARS with η = 0.001 (You et al. 2017, Alg. 1), warm-up then cosine decay.
      Schedule: TrainingSchedule
      /// Batch-norm groups: the 2N views are shuffled across this many equal groups, each normalised with its own
      /// statistics (Views.shuffledPerGroup). 1 is SimCLR's global batch norm (Sec. 2.2).
      [<Range(1.0)>] Groups: int
      Augmentation: Augmentation }

/// `paper`: ResNet-18 with the CIFAR-10 settings for 500 epochs at batch 512 (SimCLR's 1,000 at 4,096 are a TPU
/// budget), global batch norm. `quick` (15 minutes on 2 cores): SmallConvNet-16, batch 256 (512 views) in 16 shuffled
/// batch-norm groups of 32 views (faster on a CPU than one 512-view batch), LARS at learning rate 1.0 with half an
/// epoch of warm-up, 10 epochs. `smoke`: one epoch.
let config preset =
    let paper =
        { Encoder = ResNet18; ProjectionDim = 128L; Temperature = 0.5; Groups = 1
          Augmentation = { mocoAugmentation with ColourJitter = (0.8, 0.2) }
          Schedule = { Epochs = 500; BatchSize = 512; LearningRate = 0.6; WeightDecay = 1e-6; WarmupEpochs = 10.0 } }
    match preset with
    | Smoke ->
        { paper with Encoder = SmallConvNet 16L; Groups = 8; Schedule = { paper.Schedule with Epochs = 1; BatchSize = 128; WarmupEpochs = 0.0 } }
    | Quick ->
        { paper with Encoder = SmallConvNet 16L; Groups = 16
                     Schedule = { paper.Schedule with Epochs = 10; BatchSize = 256; LearningRate = 1.0; WarmupEpochs = 0.5 } }
    | Paper -> paper

/// One step: two views of the batch through encoder and head, NT-Xent over the 2N embeddings.
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let encoder = ctx.NewEncoder()
    let head = new MlpHead(encoder.FeatureDim, encoder.FeatureDim, config.ProjectionDim)
    let optimizers = [ optimizer "main" (Optim.lars config.Schedule 0.001) [ encoder; head ] ]
    ctx.Train(encoder, stepOf [ "encoder" => encoder; "head" => head ] optimizers (fun step batch ->
        let v1, v2 = twoViews config.Augmentation ctx.Data step batch
        let views = torch.cat([| v1; v2 |], 0L)
        let embed (v: torch.Tensor) = head.forward (encoder.forward v)
        let z = Contrastive.normalize (shuffledPerGroup step.World config.Groups 2 step.Generator embed views)
        let local = int64 batch.Length
        // NT-Xent over the global batch: every rank's embeddings are each other's negatives (the
        // paper's Sec. 2 / its code's cross-replica gather); one rank: its own batch.
        let z1, z2 = step.Gather(z.narrow(0L, 0L, local)), step.Gather(z.narrow(0L, local, local))
        let n = z1.shape[0]
        let value = step.Optimize("main", Contrastive.infoNceInBatch config.Temperature z1 z2)
        // Instance accuracy: how often the other view is the nearest of the 2N − 1 candidates.
        let similarities = z1.detach().matmul(torch.cat([| z1; z2 |], 0L).detach().t())
        let self = torch.arange(n, device = step.Device)
        similarities.index_put_(torch.tensor(-2.0f, device = step.Device), [| self; self |]) |> ignore
        [ "loss", value; "instance_acc", accuracy similarities (self + n) ]))

let spec =
    { backboneSpec "simclr" "Chen et al. 2020, A Simple Framework for Contrastive Learning of Visual Representations (SimCLR)"
        synchronisedBatchNorm config (fun config -> config.Encoder) build with
        CheckData = fun config _ -> rankGroups Ssl.Host.Distributed.World.Current config.Groups |> ignore }
