/// SimSiam: exploring simple Siamese representation learning (Chen & He, CVPR 2021). Two views of an image go through one encoder
/// f and projector g (z = g(f(x))); a predictor h maps one view's z to the other's, and the loss is the symmetric negative cosine
/// with a stop-gradient on the target branch (eq. 2, Algorithm 1; Core's Siamese.simSiam): no negatives, no momentum encoder. The
/// stop-gradient is what prevents collapse (Sec. 4.1), which the step logs as `z_std`, the standard deviation of the normalised
/// projections (about 1/√d when healthy, 0 when collapsed). Measured runs: docs/experiments/simsiam.md.
module Ssl.Experiments.Recipes.SimSiam

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Experiments

/// The paper's CIFAR-10 settings (Sec. 5 and App. D): a CIFAR ResNet-18, a 2-layer projector of 2048-d output with batch norm on
/// it, a predictor with a 512-d bottleneck, SGD momentum 0.9, lr 0.03 · batch / 256 with cosine decay, weight decay 5e-4, batch
/// 512, 800 epochs; SimCLR's augmentation.
type Config =
    { /// The paper's CIFAR encoder is ResNet-18 (`paper`); quick and smoke SmallConvNet.
      Encoder: Backbone
      /// Projector output d (paper: 2048 over ResNet-18's 512 features; ours 4x SmallConvNet's).
      [<Range(1.0)>] ProjectionDim: int64
      /// Predictor bottleneck (paper: 512, a quarter of d).
      [<Range(1.0)>] PredictorHidden: int64
      /// SGD with momentum 0.9; BatchSize at least 2 (the projector's batch norm).
      Schedule: TrainingSchedule
      Augmentation: Augmentation
      /// The output, the paper's representation; quick reads SmallConvNet's block 3 pooled 2 x 2 (256-d) as BYOL's quick does,
      /// its random-init baseline too (docs/experiments/simsiam.md, "The probe's layer").
      Probe: Probe }

/// `quick`: SmallConvNet-16 (64-d features), d = 256, bottleneck 64, batch 256, 20 epochs at lr 0.1 (BYOL's quick wall time on 2
/// cores: a SimSiam step costs about half of BYOL's), above its rule's 0.03 (0.03 · batch / 256) because the run is 1% of the
/// paper's steps (solo-learn's CIFAR recipe runs SGD at 0.5; trials: docs/experiments/simsiam.md); quick probes block 3 pooled 2
/// x 2 (see Probe); `paper`: the paper's CIFAR run; `smoke`: one epoch on the smoke subset.
let config preset =
    let paper =
        { Encoder = ResNet18; ProjectionDim = 2048L; PredictorHidden = 512L; Augmentation = { mocoAugmentation with ColourJitter = (0.4, 0.1) }
          Probe = Probe.Output; Schedule = { Epochs = 800; BatchSize = 512; LearningRate = 0.06; WeightDecay = 5e-4; WarmupEpochs = 0.0 } }
    let small =
        { paper with Encoder = SmallConvNet 16L; ProjectionDim = 256L; PredictorHidden = 64L
                     Schedule = { paper.Schedule with BatchSize = 256; LearningRate = 0.03 } }
    match preset with
    | Smoke -> { small with Schedule = { small.Schedule with Epochs = 1; BatchSize = 128 } }
    | Quick -> { small with Probe = Probe.Layer("features.block3b_relu", 2L); Schedule = { small.Schedule with Epochs = 20; LearningRate = 0.1 } }
    | Paper -> paper

/// One step (Algorithm 1): z1, z2 = g(f(x1)), g(f(x2)); p = h(z); L = ½ D(p1, z2) + ½ D(p2, z1).
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let encoder = ctx.NewEncoder()
    let g = Projectors.simSiam encoder.FeatureDim config.ProjectionDim
    let h = new MlpHead(config.ProjectionDim, config.PredictorHidden, config.ProjectionDim, true)
    let modules = [ "encoder" => encoder; "projector" => g; "predictor" => h ]
    ctx.Train(encoder, stepOf modules [ optimizer "main" (Optim.sgd config.Schedule) [ encoder; g; h ] ] (fun step batch ->
        let v1, v2 = twoViews config.Augmentation ctx.Data step batch
        let z1, z2 = g.forward (encoder.forward v1), g.forward (encoder.forward v2)
        let loss = Siamese.simSiam (h.forward z1) (h.forward z2) z1 z2
        [ "loss", step.Optimize("main", loss); "z_std", Siamese.outputStd z1 ]))

let spec =
    { backboneSpec "simsiam" "Chen & He 2021, Exploring Simple Siamese Representation Learning" selfSupervised config
        (fun config -> config.Encoder) build with
        CheckData = fun config _ -> requireBatchOf 2 config.Schedule }
