/// SimSiam: exploring simple Siamese representation learning (Chen & He, CVPR 2021). Two views of
/// an image go through one encoder f and projector g (z = g(f(x))); a predictor h maps one view's
/// z to the other's, and the loss is the symmetric negative cosine with a stop-gradient on the
/// target branch (eq. 2, Algorithm 1; Core's Siamese.simSiam): no negatives, no momentum encoder.
/// The stop-gradient is what prevents collapse (Sec. 4.1), which the step logs as `z_std`, the
/// standard deviation of the normalised projections (about 1/√d when healthy, 0 when collapsed).
/// Measured runs: docs/experiments/simsiam.md.
module Ssl.Experiments.Recipes.SimSiam

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

/// The paper's CIFAR-10 settings (Sec. 5 and App. D): a CIFAR ResNet-18, a 2-layer projector of
/// 2048-d output with batch norm on it, a predictor with a 512-d bottleneck, SGD momentum 0.9, lr
/// 0.03 · batch / 256 with cosine decay, weight decay 5e-4, batch 512, 800 epochs; SimCLR's
/// augmentation.
type Config =
    { /// The paper's CIFAR encoder is ResNet-18 (`paper`); quick and smoke SmallConvNet.
      Encoder: Backbone
      /// Projector output d (paper: 2048 over ResNet-18's 512 features; ours 4x SmallConvNet's).
      [<Range(1.0)>] ProjectionDim: int64
      /// Predictor bottleneck (paper: 512, a quarter of d).
      [<Range(1.0)>] PredictorHidden: int64
      [<Range(1.0)>] Epochs: int
      [<Range(2.0)>] BatchSize: int
      [<Range(0.0)>] LearningRate: float
      [<Range(0.0)>] WeightDecay: float
      [<Range(0.0)>] WarmupEpochs: float
      Augmentation: Augmentation
      /// The layer the protocols read ("" = the output, the paper's representation) and its pooled
      /// size. Quick reads SmallConvNet's block 3 pooled 2 x 2 (256-d) as BYOL's quick does; its
      /// random-init baseline is read there too (docs/experiments/simsiam.md, "The probe's layer").
      ProbeLayer: string
      [<Range(1.0)>] ProbePool: int64 }

/// `quick`: SmallConvNet-16 (64-d features), d = 256, bottleneck 64, batch 256, 20 epochs at lr 0.1
/// (BYOL's quick wall time on 2 cores: a SimSiam step costs about half of BYOL's), above its rule's
/// 0.03 (0.03 · batch / 256) because the run is 1% of the paper's steps (solo-learn's CIFAR recipe
/// runs SGD at 0.5; trials: docs/experiments/simsiam.md);
/// quick probes block 3 pooled 2 x 2 (see ProbeLayer); `paper`: the paper's CIFAR run; `smoke`: one
/// epoch on the smoke subset.
let config preset =
    let paper =
        { Encoder = ResNet18; ProjectionDim = 2048L; PredictorHidden = 512L; Epochs = 800; BatchSize = 512; LearningRate = 0.06
          WeightDecay = 5e-4; WarmupEpochs = 0.0; Augmentation = { mocoAugmentation with ColourJitter = (0.4, 0.1) }
          ProbeLayer = ""; ProbePool = 1L }
    let small = { paper with Encoder = SmallConvNet 16L; ProjectionDim = 256L; PredictorHidden = 64L; BatchSize = 256; LearningRate = 0.03 }
    match preset with
    | Smoke -> { small with Epochs = 1; BatchSize = 128 }
    | Quick -> { small with Epochs = 20; LearningRate = 0.1; ProbeLayer = "features.block3b_relu"; ProbePool = 2L }
    | Paper -> paper

/// g: fc → BN → ReLU → fc → BN (the paper's CIFAR projector, App. D: two layers, BN on the output,
/// without affine parameters there as in the authors' builder.py).
let projector (features: int64) (dim: int64) =
    torch.nn.Sequential(struct ("mlp", new MlpHead(features, dim, dim, true) :> torch.nn.Module<torch.Tensor, torch.Tensor>),
                        struct ("bn", torch.nn.BatchNorm1d(dim, affine = false) :> torch.nn.Module<torch.Tensor, torch.Tensor>))

/// One step (Algorithm 1): z1, z2 = g(f(x1)), g(f(x2)); p = h(z); L = ½ D(p1, z2) + ½ D(p2, z1).
type Step(encoder: Encoder, projector: torch.nn.Module<torch.Tensor, torch.Tensor>, predictor: MlpHead, data: Data, config: Config) =
    let spec =
        OptimizerSpec(Kind = OptimizerKind.Sgd, LearningRate = config.LearningRate, Momentum = 0.9,
                      WeightDecay = config.WeightDecay, WarmupEpochs = config.WarmupEpochs)
    interface ITrainingStep with
        member _.Modules =
            readOnlyDict [ "encoder", (encoder :> torch.nn.Module); "projector", (projector :> torch.nn.Module)
                           "predictor", (predictor :> torch.nn.Module) ]
        member _.Optimizers =
            let parameters = Seq.concat [ encoder.named_parameters (); projector.named_parameters (); predictor.named_parameters () ]
            [| struct ("main", spec, parameters) |] :> IReadOnlyList<_>
        member _.Step(ctx, batch) =
            let x = unitPixels data batch ctx.Device
            let project (v: torch.Tensor) = projector.forward (encoder.forward v)
            let z1 = project (view config.Augmentation data ctx.Generator x)
            let z2 = project (view config.Augmentation data ctx.Generator x)
            let loss = Siamese.simSiam (predictor.forward z1) (predictor.forward z2) z1 z2
            let value = ctx.Optimize("main", loss)
            readOnlyDict [ "loss", value; "z_std", Siamese.outputStd z1 ]

let build (c: Context<Config>) =
    let encoder = c.NewEncoder()
    let g = projector encoder.FeatureDim c.Config.ProjectionDim
    let h = new MlpHead(c.Config.ProjectionDim, c.Config.PredictorHidden, c.Config.ProjectionDim, true)
    { training (Step(encoder, g, h, c.Data, c.Config)) c.Config.Epochs c.Config.BatchSize encoder c with
        Probe = Ssl.Experiments.ConfigParts.Probe.OfLayer(c.Config.ProbeLayer, c.Config.ProbePool); Owned = [ encoder; g; h ] }

let spec =
    backboneSpec "simsiam" "Chen & He 2021, Exploring Simple Siamese Representation Learning" selfSupervised config
        (fun c -> c.Encoder) build
