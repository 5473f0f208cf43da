/// Barlow Twins: self-supervised learning via redundancy reduction (Zbontar, Jing, Misra, LeCun & Deny, ICML 2021). Two views
/// go through one encoder and projector; the cross-correlation of their batch-standardised embeddings is driven to the identity
/// (eq. 1-2; Core's Siamese.barlowTwins): no negatives, predictor, momentum encoder or stop-gradient. docs/experiments/barlow-twins.md.
module Ssl.Experiments.Recipes.BarlowTwins

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Experiments

/// The paper's settings (Sec. 4 "Implementation details"): a projector of three linear layers of 8,192 units, batch norm and ReLU
/// after the first two; λ = 5e-3; LARS at 0.2 for weights and 0.0048 for biases and batch norm, cosine decay after 10 warm-up
/// epochs, weight decay 1.5e-6, batch 2,048, 1,000 epochs; BYOL's augmentation.
type Config =
    { /// The paper's is ResNet-50; `paper` takes ResNet-18 in its CIFAR form; quick and smoke SmallConvNet.
      Encoder: Backbone
      /// Width D of the projector's three layers (its output is the embedding the loss reads).
      [<Range(1.0)>] ProjectionDim: int64
      /// λ, the off-diagonal weight. Uncorrelated dimensions give an off-diagonal sum of about D(D − 1)/N against D diagonal
      /// terms, so the terms' balance is λ(D − 1)/N: the paper's 5e-3 at D = 8,192, N = 2,048 holds unchanged wherever D/N = 4
      /// (quick: 1,024 over 256).
      [<Range(0.0)>] OffDiagonalWeight: float
      /// The loss's factor: LARS's weight steps ignore it, the biases' and batch norms' scale with it, so 0.024 turns one
      /// rate of 0.2 into the paper's 0.2 and 0.0048 (its first code's --scale-loss 0.024).
      [<Range(0.0)>] LossScale: float
      Schedule: TrainingSchedule
      /// LARS's trust coefficient η (You et al. 2017, Alg. 1; the paper's 0.001): a weight moves by about lr · η of its norm.
      [<Range(0.0)>] LarsEta: float
      Augmentation: Augmentation
      /// The output, the paper's representation; quick reads SmallConvNet's block 3 pooled 2 x 2 (256-d) as BYOL's quick does,
      /// its random-init baseline too (docs/experiments/barlow-twins.md, "The probe's layer").
      Probe: Probe }

/// `paper`: ResNet-18 (512-d features), D = 2,048 at batch 512 (D/N = 4 as the paper) for 800 epochs (solo-learn's CIFAR budget).
/// `quick`: SmallConvNet-16, D = 1,024, batch 256 (D/N = 4), one warm-up epoch of ten, 10 epochs (SimSiam's budget on 2 cores),
/// LARS at lr 1.0 with η = 0.02 (solo-learn's CIFAR η): the paper's 0.2 · 0.001 = 2e-4 of a weight's norm a step suits its 1,000
/// epochs, not 1% of its steps (docs/experiments/barlow-twins.md). `smoke`: one epoch.
let config preset =
    let paper =
        { Encoder = ResNet18; ProjectionDim = 2048L; OffDiagonalWeight = 5e-3; LossScale = 0.024; LarsEta = 0.001
          Augmentation = { mocoAugmentation with ColourJitter = (0.2, 0.1) }; Probe = Probe.Output
          Schedule = { Epochs = 800; BatchSize = 512; LearningRate = 0.2; WeightDecay = 1.5e-6; WarmupEpochs = 10.0 } }
    let small =
        { paper with Encoder = SmallConvNet 16L; ProjectionDim = 1024L; Schedule = { paper.Schedule with BatchSize = 256; WarmupEpochs = 1.0 } }
    match preset with
    | Smoke -> { small with ProjectionDim = 512L; Schedule = { small.Schedule with Epochs = 1; BatchSize = 128; WarmupEpochs = 0.0 } }
    | Quick ->
        { small with LarsEta = 0.02; Probe = Probe.Layer("features.block3b_relu", 2L)
                     Schedule = { small.Schedule with Epochs = 10; LearningRate = 1.0 } }
    | Paper -> paper

/// One step (the paper's Algorithm 1): z = g(f(v)) for two views, L = scale · BT(z¹, z²), C over the global batch (the
/// authors' code all-reduces it); logged: C's diagonal mean (invariance, → 1) and off-diagonal RMS (redundancy, → 0).
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let encoder = ctx.NewEncoder()
    let g = Projectors.barlowTwins encoder.FeatureDim config.ProjectionDim
    let optimizers = [ optimizer "main" (Optim.lars config.Schedule config.LarsEta) [ encoder; g ] ]
    ctx.Train(encoder, stepOf [ "encoder" => encoder; "projector" => g ] optimizers (fun step batch ->
        let v1, v2 = twoViews config.Augmentation ctx.Data step batch
        let correlation = Siamese.crossCorrelation (step.Gather(g.forward (encoder.forward v1))) (step.Gather(g.forward (encoder.forward v2)))
        let value = step.Optimize("main", Siamese.barlowTwinsOf config.OffDiagonalWeight correlation * config.LossScale)
        let diagonal, offDiagonalRms = Siamese.correlationFigures correlation
        [ "loss", value; "c_diagonal", diagonal; "c_off_rms", offDiagonalRms ]))

let spec =
    { backboneSpec "barlow-twins" "Zbontar et al. 2021, Barlow Twins: Self-Supervised Learning via Redundancy Reduction" synchronisedBatchNorm config
        (fun config -> config.Encoder) build with
        CheckData = fun config _ -> requireBatchOf 2 config.Schedule }
