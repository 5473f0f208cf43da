/// Barlow Twins: self-supervised learning via redundancy reduction (Zbontar, Jing, Misra, LeCun &
/// Deny, ICML 2021). Two views go through one encoder and projector; the cross-correlation of their
/// batch-standardised embeddings is driven to the identity (eq. 1-2; Core's Siamese.barlowTwins):
/// no negatives, no predictor, no momentum encoder, no stop-gradient. The step logs the mean of
/// C's diagonal (invariance, → 1) and the root mean square of its off-diagonal (redundancy, → 0).
/// Measured runs: docs/experiments/barlow-twins.md.
module Ssl.Experiments.Recipes.BarlowTwins

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

/// The paper's settings (Sec. 4 "Implementation details"): a projector of three linear layers of
/// 8,192 units, batch norm and ReLU after the first two; λ = 5e-3; LARS at 0.2 for weights and
/// 0.0048 for biases and batch norm, cosine decay after 10 warm-up epochs, weight decay 1.5e-6,
/// batch 2,048, 1,000 epochs; BYOL's augmentation.
type Config =
    { /// The paper's is ResNet-50; `paper` takes ResNet-18 in its CIFAR form; quick and smoke SmallConvNet.
      Encoder: Backbone
      /// Width D of the projector's three layers (its output is the embedding the loss reads).
      [<Range(1.0)>] ProjectionDim: int64
      /// λ, the off-diagonal weight. Uncorrelated dimensions give an off-diagonal sum of about
      /// D(D − 1)/N against D diagonal terms, so the terms' balance is λ(D − 1)/N: the paper's 5e-3
      /// at D = 8,192, N = 2,048 holds unchanged wherever D/N = 4 (quick: 1,024 over 256).
      [<Range(0.0)>] OffDiagonalWeight: float
      /// The loss is multiplied by this. Under LARS the weights' steps ignore it and the biases' and
      /// batch norms' (not LARS-adapted) scale with it: 0.024 turns one rate of 0.2 into the paper's
      /// 0.2 and 0.0048 (its first code's --scale-loss 0.024).
      [<Range(0.0)>] LossScale: float
      [<Range(1.0)>] Epochs: int
      [<Range(2.0)>] BatchSize: int
      [<Range(0.0)>] LearningRate: float
      [<Range(0.0)>] WeightDecay: float
      [<Range(0.0)>] WarmupEpochs: float
      /// LARS's trust coefficient η: a weight moves by at most about lr · η of its norm per step
      /// (You et al. 2017, Alg. 1; the paper's 0.001).
      [<Range(0.0)>] LarsEta: float
      Augmentation: Augmentation
      /// The layer the protocols read ("" = the output, the paper's representation) and its pooled
      /// size. Quick reads SmallConvNet's block 3 pooled 2 x 2 (256-d) as BYOL's quick does; its
      /// random-init baseline is read there too (docs/experiments/barlow-twins.md, "The probe's layer").
      ProbeLayer: string
      [<Range(1.0)>] ProbePool: int64 }

/// `paper`: ResNet-18 (512-d features), D = 2,048 at batch 512 (D/N = 4 as the paper) for 800
/// epochs (solo-learn's CIFAR budget). `quick`: SmallConvNet-16, D = 1,024, batch 256 (D/N = 4),
/// one warm-up epoch of ten, 10 epochs: SimSiam's budget on 2 cores, LARS at lr 1.0 with η = 0.02
/// (solo-learn's CIFAR η, whose clipped LARS moves a weight by at most 0.02 of its norm a step; ours
/// by lr · η = 0.02): the paper's 0.2 · 0.001 = 2e-4 a step suits its 1,000 epochs, not 1% of its
/// steps (trials: docs/experiments/barlow-twins.md). Quick probes block 3 pooled 2 x 2 (see
/// ProbeLayer). `smoke`: one epoch.
let config preset =
    let paper =
        { Encoder = ResNet18; ProjectionDim = 2048L; OffDiagonalWeight = 5e-3; LossScale = 0.024; Epochs = 800; BatchSize = 512
          LearningRate = 0.2; WeightDecay = 1.5e-6; WarmupEpochs = 10.0; LarsEta = 0.001; Augmentation = { mocoAugmentation with ColourJitter = (0.2, 0.1) }
          ProbeLayer = ""; ProbePool = 1L }
    let small = { paper with Encoder = SmallConvNet 16L; ProjectionDim = 1024L; BatchSize = 256; WarmupEpochs = 1.0 }
    match preset with
    | Smoke -> { small with Epochs = 1; BatchSize = 128; ProjectionDim = 512L; WarmupEpochs = 0.0 }
    | Quick -> { small with Epochs = 10; LearningRate = 1.0; LarsEta = 0.02; ProbeLayer = "features.block3b_relu"; ProbePool = 2L }
    | Paper -> paper

/// The projector: linear → BN → ReLU, linear → BN → ReLU, linear (the authors' main.py).
let projector (features: int64) (dim: int64) =
    let layer (i: int) (input: int64) =
        [ struct ($"fc{i}", torch.nn.Linear(input, dim, hasBias = false) :> torch.nn.Module<torch.Tensor, torch.Tensor>)
          struct ($"bn{i}", torch.nn.BatchNorm1d(dim))
          struct ($"relu{i}", torch.nn.ReLU()) ]
    torch.nn.Sequential(layer 1 features @ layer 2 dim @ [ struct ("fc3", torch.nn.Linear(dim, dim, hasBias = false)) ])

/// One step (the paper's Algorithm 1): z = g(f(v)) for two views, L = scale · BT(z¹, z²).
type Step(encoder: Encoder, projector: TorchSharp.Modules.Sequential, data: Data, config: Config) =
    let spec =
        OptimizerSpec(Kind = OptimizerKind.Lars, LearningRate = config.LearningRate, Momentum = 0.9,
                      WeightDecay = config.WeightDecay, WarmupEpochs = config.WarmupEpochs, LarsEta = config.LarsEta)
    interface ITrainingStep with
        member _.Modules = readOnlyDict [ "encoder", (encoder :> torch.nn.Module); "projector", (projector :> torch.nn.Module) ]
        member _.Optimizers =
            [| struct ("main", spec, Seq.append (encoder.named_parameters ()) (projector.named_parameters ())) |] :> IReadOnlyList<_>
        member _.Step(ctx, batch) =
            let x = unitPixels data batch ctx.Device
            let project (v: torch.Tensor) = projector.forward (encoder.forward v)
            let z1 = project (view config.Augmentation data ctx.Generator x)
            let z2 = project (view config.Augmentation data ctx.Generator x)
            let correlation = Siamese.crossCorrelation z1 z2
            let loss = Siamese.barlowTwinsOf config.OffDiagonalWeight correlation * config.LossScale
            let value = ctx.Optimize("main", loss)
            // The logged terms read the same C, without its graph.
            let c = correlation.detach()
            let d = float c.shape[0]
            let diagonal = c.diagonal()
            let offDiagonal = (c.square().sum() - diagonal.square().sum()) / (d * (d - 1.0) |> max 1.0)
            readOnlyDict [ "loss", value; "c_diagonal", diagonal.mean().item<float32>() |> float
                           "c_off_rms", offDiagonal.sqrt().item<float32>() |> float ]

let build (c: Context<Config>) =
    let encoder = c.NewEncoder()
    let g = projector encoder.FeatureDim c.Config.ProjectionDim
    { training (Step(encoder, g, c.Data, c.Config)) c.Config.Epochs c.Config.BatchSize encoder c with
        Probe = Ssl.Experiments.ConfigParts.Probe.OfLayer(c.Config.ProbeLayer, c.Config.ProbePool); Owned = [ encoder; g ] }

let spec =
    backboneSpec "barlow-twins" "Zbontar et al. 2021, Barlow Twins: Self-Supervised Learning via Redundancy Reduction" selfSupervised config
        (fun c -> c.Encoder) build
