/// SwAV: swapping assignments between views (Caron, Misra, Mairal, Goyal, Bojanowski & Joulin, NeurIPS 2020, "Unsupervised
/// Learning of Visual Features by Contrasting Cluster Assignments"). Every crop goes through the encoder and projector to a unit
/// z scored against K unit prototypes; the codes of the 2 global crops, equipartitioned over the batch (and an optional queue
/// of past projections) by Sinkhorn-Knopp (eq. 3), are predicted from every other crop's scores (eq. 1-2; Core's Swav), with
/// multi-crop (Sec. 3.2) and the prototypes normalised each step and frozen at first (main_swav.py). Differs: no blur (its
/// radius at 28 px is under a quarter pixel); LARS leaves biases and batch norm undecayed (solo-learn). Logged:
/// `prototypes_used`, the prototypes winning a code of the batch (1 when collapsed). Measured runs: docs/experiments/swav.md.
module Ssl.Experiments.Recipes.Swav

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Experiments

/// main_swav.py's defaults and the paper's (Sec. 4, App. A): projector 2,048 → D = 128, K = 3,000, τ 0.1, ε 0.05, 3 Sinkhorn
/// iterations, 2 x 224 + 6 x 96 px crops of scales (0.14, 1) and (0.05, 0.14), prototypes frozen the first epoch, LARS (η 0.001)
/// at 4.8 for batch 4,096, weight decay 1e-6, cosine after 10 warm-up epochs; jitter (0.8, 0.8, 0.8, 0.2) at p 0.8, grey 0.2.
type Config =
    { /// The paper's is ResNet-50; `paper` takes ResNet-18 in its CIFAR form; quick and smoke SmallConvNet.
      Encoder: Backbone
      [<Range(1.0)>] HiddenDim: int64
      [<Range(1.0)>] ProjectionDim: int64
      [<Range(1.0)>] Prototypes: int64
      [<Range(0.0)>] Temperature: float
      /// ε of eq. 3: lower gives sharper codes (main_swav's README: 0.03 when training collapses).
      [<Range(0.0)>] Epsilon: float
      [<Range(1.0)>] SinkhornIterations: int
      [<Range(0.0)>] SmallCrops: int
      [<Range(1.0)>] SmallCropSize: int64
      SmallCropScale: float * float
      [<Range(0.0)>] FreezePrototypesEpochs: int
      /// Projections of past batches per global crop joined to the batch's for Sinkhorn; 0: none. The paper adds one when
      /// the batch is small (256) so the assignment sees about as many projections as prototypes (3,840 + 256 for 3,000).
      [<Range(0.0)>] QueueLength: int64
      [<Range(0.0)>] QueueStartEpoch: int
      [<Range(0.0)>] LarsEta: float
      Schedule: TrainingSchedule
      /// CropScale: the global crops' scale.
      Augmentation: Augmentation
      Probe: Probe }

/// `paper`: solo-learn's CIFAR SwAV (scripts/pretrain/cifar/swav.yaml) on ResNet-18: batch 256, LARS at 0.6 with η 0.02,
/// 1,000 epochs, K 3,000, a queue of 3,840 from epoch 50, prototypes frozen 2 epochs; with the paper's multi-crop of 6
/// small crops of 12 px (96/224 of 28). `quick`: SmallConvNet-16, hidden 1,024, K 300 (Fashion-MNIST's 10 classes against
/// ImageNet's 1,000), so the batch of 256 alone is about K and needs no queue (the paper's rule above), one warm-up epoch,
/// block 3 pooled 2 x 2 probed as BYOL's quick, 7 epochs: the quick budget at its measured step cost (docs/experiments/swav.md).
/// `smoke`: one epoch of the smoke subset at batch 128, 2 small crops, a queue of 256 from the start so its path runs.
let config preset =
    let paper =
        { Encoder = ResNet18; HiddenDim = 2048L; ProjectionDim = 128L; Prototypes = 3000L; Temperature = 0.1; Epsilon = 0.05
          SinkhornIterations = 3; SmallCrops = 6; SmallCropSize = 12L; SmallCropScale = (0.05, 0.14); FreezePrototypesEpochs = 2
          QueueLength = 3840L; QueueStartEpoch = 50; LarsEta = 0.02; Probe = Probe.Output
          Augmentation = { CropScale = (0.14, 1.0); Jitter = 0.8; ColourJitter = (0.8, 0.2); GrayscaleProbability = 0.2; FlipProbability = 0.5 }
          Schedule = { Epochs = 1000; BatchSize = 256; LearningRate = 0.6; WeightDecay = 1e-6; WarmupEpochs = 10.0 } }
    let small =
        { paper with Encoder = SmallConvNet 16L; HiddenDim = 1024L; Prototypes = 300L; FreezePrototypesEpochs = 1; QueueLength = 0L
                     Schedule = { paper.Schedule with Epochs = 7; WarmupEpochs = 1.0 } }
    match preset with
    | Smoke -> { small with SmallCrops = 2; QueueLength = 256L; QueueStartEpoch = 0; Schedule = { small.Schedule with Epochs = 1; BatchSize = 128; WarmupEpochs = 0.0 } }
    | Quick -> { small with Probe = Probe.Layer("features.block3b_relu", 2L) }
    | Paper -> paper

/// One step (main_swav.py's train): normalise the prototypes; z = normalise(g(f(crops))) with each resolution's crops
/// through the encoder together; codes of the 2 global crops by Sinkhorn over the batch (and the full queue, whose rows
/// are then dropped); the swapped prediction loss over every other crop.
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let encoder = ctx.NewEncoder()
    let projector = new MlpHead(encoder.FeatureDim, config.HiddenDim, config.ProjectionDim, true)
    let prototypes = new Prototypes(config.ProjectionDim, config.Prototypes)
    let queue = if config.QueueLength > 0L then Some(new AssignmentQueue(2L, config.QueueLength, config.ProjectionDim)) else None
    let modules = [ "encoder" => encoder; "projector" => projector; "prototypes" => prototypes ] @ (queue |> Option.map ((=>) "queue") |> Option.toList)
    ctx.Train(encoder, stepOf modules [ optimizer "main" (Optim.lars config.Schedule config.LarsEta) [ encoder; projector; prototypes ] ] (fun step batch ->
        let x = unitPixels ctx.Data batch step.Device
        let n, crops = x.shape[0], [ (2, config.Augmentation.CropScale, x.shape[2]); (config.SmallCrops, config.SmallCropScale, config.SmallCropSize) ]
        let features =
            [| for count, scale, side in crops do
                 if count > 0 then encoder.forward (torch.cat([| for _ in 1 .. count -> resizedView config.Augmentation 0.8 scale side ctx.Data step.Generator x |], 0L)) |]
        prototypes.Normalise()
        prototypes.Frozen <- step.Epoch < config.FreezePrototypesEpochs
        let local = torch.nn.functional.normalize(projector.forward (torch.cat(features, 0L)), p = 2.0, dim = 1L)
        // Each crop's rows of every rank, crop by crop: Sinkhorn's equipartition, the queue and the loss
        // are one process's at the global batch (the authors' distributed_sinkhorn all-reduces its sums).
        let z = if step.World.Size = 1 then local else torch.cat([| for c in 0L .. local.shape[0] / n - 1L -> step.Gather(local.narrow(0L, c * n, n)) |], 0L)
        let n = n * int64 step.World.Size
        let scores = prototypes.forward z
        let queued = queue |> Option.filter (fun _ -> step.Epoch >= config.QueueStartEpoch)
        let assigned =
            [| for i in 0L .. 1L ->
                 let own = scores.narrow(0L, i * n, n)
                 queued |> Option.map (fun q -> q.Assigned(i, prototypes.forward, own, z.narrow(0L, i * n, n))) |> Option.defaultValue own |]
        let codes = torch.stack([| for a in assigned -> (Swav.sinkhorn config.Epsilon config.SinkhornIterations a).narrow(0L, a.shape[0] - n, n) |])
        let loss = Swav.swappedPrediction config.Temperature codes scores
        [ "loss", step.Optimize("main", loss); "prototypes_used", float (Swav.prototypesUsed codes[0L])
          "queue_used", (if assigned[0].shape[0] > n then 1.0 else 0.0) ]))

let spec =
    { backboneSpec "swav" "Caron et al. 2020, Unsupervised Learning of Visual Features by Contrasting Cluster Assignments (SwAV)" selfSupervised config
        (fun config -> config.Encoder) build with
        CheckData = fun config _ -> requireBatchOf 2 config.Schedule }
