/// BYOL: Bootstrap Your Own Latent (Grill et al., NeurIPS 2020). An online network (encoder f_θ,
/// projector g_θ, predictor q_θ) predicts the projection of another view by a target network
/// (f_ξ, g_ξ), an exponential moving average of the online one (ξ ← τξ + (1 − τ)θ, Sec. 3.1) with
/// τ from 0.996 to 1 on a cosine (Sec. 3.2; Core's Momentum.cosine). The loss is the symmetric
/// normalised squared error 2 − 2·cos (eq. 2, symmetrised as L̃; Core's
/// Siamese.normalisedSquaredError); no negatives. The online encoder is what is kept and evaluated.
/// The step logs `z_std`, the std of the normalised online projections (about 1/√d when healthy,
/// 0 when collapsed, as SimSiam's Sec. 4.1 reads it). Measured runs: docs/experiments/byol.md.
module Ssl.Experiments.Recipes.Byol

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

/// The paper's settings (Sec. 3.3 and App. C): projector and predictor MLPs of 4,096 hidden units
/// with batch norm and a 256-d output, LARS at 0.2 · batch / 256 with cosine decay and 10 warm-up
/// epochs, weight decay 1.5e-6, biases and batch norm excluded from both, τ_base 0.996, batch
/// 4,096 for 1,000 epochs (ImageNet); SimCLR's augmentation with BYOL's colour strengths (App. B),
/// without its blur and solarisation (at 28 px, as MoCo v2's blur here).
type Config =
    { /// The paper's is ResNet-50; `paper` takes ResNet-18 in its CIFAR form; quick and smoke SmallConvNet.
      Encoder: Backbone
      /// Hidden width of the projector and the predictor (paper: 4,096, twice ResNet-50's 2,048 features).
      [<Range(1.0)>] HiddenDim: int64
      /// Output d of the projector and the predictor (paper: 256).
      [<Range(1.0)>] ProjectionDim: int64
      /// τ_base, the target's decay at the first step; it rises to 1 on a cosine (Sec. 3.2).
      [<Range(0.0, 1.0)>] BaseMomentum: float
      [<Range(1.0)>] Epochs: int
      [<Range(2.0)>] BatchSize: int
      [<Range(0.0)>] LearningRate: float
      [<Range(0.0)>] WeightDecay: float
      [<Range(0.0)>] WarmupEpochs: float
      /// LARS's trust coefficient η: a weight moves by at most about lr · η of its norm per step
      /// (You et al. 2017, Alg. 1; the paper's 0.001).
      [<Range(0.0)>] LarsEta: float
      Augmentation: Augmentation
      /// The layer the protocols read ("" = the output, the paper's representation y) and its pooled
      /// size. Quick reads SmallConvNet's last block pooled 2 x 2 (256-d) rather than its 64-d global
      /// pool: the same block, less averaged; its random-init baseline is read there too
      /// (docs/experiments/byol.md, "The probe's layer").
      ProbeLayer: string
      [<Range(1.0)>] ProbePool: int64 }

/// `paper`: ResNet-18 (512-d features, hidden 4,096, d = 256) at batch 512 for 800 epochs (solo-learn's
/// CIFAR budget), lr 0.2 · 512 / 256. `quick`: SmallConvNet-16 (64-d features), hidden 1,024, d = 256,
/// batch 256, 20 epochs with one of warm-up (SimSiam's quick budget), τ_base 0.996 as the paper, LARS
/// at lr 1.0 with η = 0.02 (solo-learn's CIFAR recipe: lr 1.0, η 0.02) instead of the paper's 0.2
/// and 0.001: LARS moves a weight by lr × η of its norm per step, and 2e-4 a step is sized for the
/// paper's 1,000 epochs, not 1% of its steps (trials: docs/experiments/byol.md).
/// Quick probes block 3 pooled 2 x 2 (see ProbeLayer). `smoke`: one epoch of the smoke subset.
let config preset =
    let paper =
        { Encoder = ResNet18; HiddenDim = 4096L; ProjectionDim = 256L; BaseMomentum = 0.996; Epochs = 800; BatchSize = 512
          LearningRate = 0.4; WeightDecay = 1.5e-6; WarmupEpochs = 10.0; LarsEta = 0.001; Augmentation = { mocoAugmentation with ColourJitter = (0.2, 0.1) }
          ProbeLayer = ""; ProbePool = 1L }
    let small = { paper with Encoder = SmallConvNet 16L; HiddenDim = 1024L; BatchSize = 256; LearningRate = 0.2; WarmupEpochs = 1.0 }
    match preset with
    | Smoke -> { small with Epochs = 1; BatchSize = 128; WarmupEpochs = 0.0 }
    | Quick -> { small with Epochs = 20; LearningRate = 1.0; LarsEta = 0.02; ProbeLayer = "features.block3b_relu"; ProbePool = 2L }
    | Paper -> paper

/// g(f(x)): an encoder and its projector as one module, so the target can be a MomentumCopy of it.
let private projected (encoder: Encoder) (config: Config) =
    torch.nn.Sequential(struct ("encoder", encoder :> torch.nn.Module<torch.Tensor, torch.Tensor>),
                        struct ("projector", new MlpHead(encoder.FeatureDim, config.HiddenDim, config.ProjectionDim, true) :> torch.nn.Module<torch.Tensor, torch.Tensor>))

/// One step (Sec. 3.1, eq. 2): z = g_θ(f_θ(v)), p = q_θ(z), z' = g_ξ(f_ξ(v')) for both orders of the
/// two views; L̃ = ‖p̄₁ − z̄'₂‖² + ‖p̄₂ − z̄'₁‖²; LARS on θ, then ξ ← τ_k ξ + (1 − τ_k) θ.
type Step(online: TorchSharp.Modules.Sequential, predictor: MlpHead, target: MomentumCopy, data: Data, config: Config) =
    let spec =
        OptimizerSpec(Kind = OptimizerKind.Lars, LearningRate = config.LearningRate, Momentum = 0.9,
                      WeightDecay = config.WeightDecay, WarmupEpochs = config.WarmupEpochs, LarsEta = config.LarsEta)
    interface ITrainingStep with
        member _.Modules =
            readOnlyDict [ "online", (online :> torch.nn.Module); "predictor", (predictor :> torch.nn.Module)
                           "target", (target :> torch.nn.Module) ]
        member _.Optimizers =
            [| struct ("main", spec, Seq.append (online.named_parameters ()) (predictor.named_parameters ())) |] :> IReadOnlyList<_>
        member _.Step(ctx, batch) =
            let x = unitPixels data batch ctx.Device
            let v1 = view config.Augmentation data ctx.Generator x
            let v2 = view config.Augmentation data ctx.Generator x
            let z1, z2 = online.forward v1, online.forward v2
            let t1, t2 =
                use _ = torch.no_grad()
                target.forward v1, target.forward v2
            let loss = Siamese.normalisedSquaredError (predictor.forward z1) t2 + Siamese.normalisedSquaredError (predictor.forward z2) t1
            let value = ctx.Optimize("main", loss)
            let tau = Momentum.cosine config.BaseMomentum ctx.GlobalStep ctx.TotalSteps
            target.Update tau
            readOnlyDict [ "loss", value; "z_std", Siamese.outputStd z1; "tau", tau ]

let build (c: Context<Config>) =
    let encoder = c.NewEncoder()
    let online = projected encoder c.Config
    let target = new MomentumCopy(online, projected (c.NewEncoder()) c.Config)
    let q = new MlpHead(c.Config.ProjectionDim, c.Config.HiddenDim, c.Config.ProjectionDim, true)
    { training (Step(online, q, target, c.Data, c.Config)) c.Config.Epochs c.Config.BatchSize encoder c with
        Probe = Ssl.Experiments.ConfigParts.Probe.OfLayer(c.Config.ProbeLayer, c.Config.ProbePool); Owned = [ online; q; target ] }

let spec =
    backboneSpec "byol" "Grill et al. 2020, Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning" selfSupervised config
        (fun c -> c.Encoder) build
