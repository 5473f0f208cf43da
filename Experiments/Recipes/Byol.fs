/// BYOL: Bootstrap Your Own Latent (Grill et al., NeurIPS 2020). An online network (encoder f_θ, projector g_θ,
/// predictor q_θ) predicts the projection of another view by a target network (f_ξ, g_ξ), an exponential moving
/// average of the online one (ξ ← τξ + (1 − τ)θ, Sec. 3.1) with τ from 0.996 to 1 on a cosine (Sec. 3.2; Core's
/// Momentum.cosine). The loss is the symmetric normalised squared error 2 − 2·cos (eq. 2, symmetrised as L̃; Core's
/// Siamese.normalisedSquaredError); no negatives. The online encoder is what is kept and evaluated. The step logs
/// `z_std`, the std of the normalised online projections (about 1/√d when healthy, 0 when collapsed, as SimSiam's
/// Sec. 4.1 reads it). Measured runs: docs/experiments/byol.md.
module Ssl.Experiments.Recipes.Byol

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Experiments

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
      Schedule: TrainingSchedule
      /// LARS's trust coefficient η (You et al. 2017, Alg. 1; the paper's 0.001): a weight moves by about lr · η of its norm a step.
      [<Range(0.0)>] LarsEta: float
      Augmentation: Augmentation
      /// The output, the paper's representation y; quick reads SmallConvNet's last block pooled 2 x 2 (256-d, not its 64-d
      /// global pool), its random-init baseline too (docs/experiments/byol.md, "The probe's layer").
      Probe: Probe }

/// `paper`: ResNet-18 (512-d features, hidden 4,096, d = 256) at batch 512 for 800 epochs (solo-learn's CIFAR
/// budget), lr 0.2 · 512 / 256. `quick`: SmallConvNet-16, hidden 1,024, batch 256, 20 epochs with one of warm-up
/// (SimSiam's quick budget), LARS at lr 1.0 with η = 0.02 (solo-learn's CIFAR recipe) instead of the paper's 0.2
/// and 0.001, whose 2e-4 of a weight's norm a step is sized for 1,000 epochs, not 1% of its steps
/// (docs/experiments/byol.md). `smoke`: one epoch of the smoke subset.
let config preset =
    let paper =
        { Encoder = ResNet18; HiddenDim = 4096L; ProjectionDim = 256L; BaseMomentum = 0.996; LarsEta = 0.001
          Augmentation = { mocoAugmentation with ColourJitter = (0.2, 0.1) }; Probe = Probe.Output
          Schedule = { Epochs = 800; BatchSize = 512; LearningRate = 0.4; WeightDecay = 1.5e-6; WarmupEpochs = 10.0 } }
    let small =
        { paper with Encoder = SmallConvNet 16L; HiddenDim = 1024L
                     Schedule = { paper.Schedule with BatchSize = 256; LearningRate = 0.2; WarmupEpochs = 1.0 } }
    match preset with
    | Smoke -> { small with Schedule = { small.Schedule with Epochs = 1; BatchSize = 128; WarmupEpochs = 0.0 } }
    | Quick ->
        { small with LarsEta = 0.02; Probe = Probe.Layer("features.block3b_relu", 2L)
                     Schedule = { small.Schedule with Epochs = 20; LearningRate = 1.0 } }
    | Paper -> paper

/// g(f(x)): an encoder and its projector as one module, so the target can be a MomentumCopy of it.
let private projected (encoder: Encoder) (config: Config) =
    Projectors.projected encoder (new MlpHead(encoder.FeatureDim, config.HiddenDim, config.ProjectionDim, true))

/// One step (Sec. 3.1, eq. 2): z = g_θ(f_θ(v)), p = q_θ(z), z' = g_ξ(f_ξ(v')) for both orders of the
/// two views; L̃ = ‖p̄₁ − z̄'₂‖² + ‖p̄₂ − z̄'₁‖²; LARS on θ, then ξ ← τ_k ξ + (1 − τ_k) θ.
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let encoder = ctx.NewEncoder()
    let online = projected encoder config
    let target = new MomentumCopy(online, projected (ctx.NewEncoder()) config)
    let predictor = new MlpHead(config.ProjectionDim, config.HiddenDim, config.ProjectionDim, true)
    let optimizers = [ optimizer "main" (Optim.lars config.Schedule config.LarsEta) [ online; predictor ] ]
    ctx.Train(encoder, stepOf [ "online" => online; "predictor" => predictor; "target" => target ] optimizers (fun step batch ->
        let v1, v2 = twoViews config.Augmentation ctx.Data step batch
        let z1, z2 = online.forward v1, online.forward v2
        let t1, t2 =
            use _ = torch.no_grad()
            target.forward v1, target.forward v2
        let loss = Siamese.normalisedSquaredError (predictor.forward z1) t2 + Siamese.normalisedSquaredError (predictor.forward z2) t1
        let value = step.Optimize("main", loss)
        let tau = Momentum.cosine config.BaseMomentum step.GlobalStep step.TotalSteps
        target.Update tau
        [ "loss", value; "z_std", Siamese.outputStd z1; "tau", tau ]))

let spec =
    { backboneSpec "byol" "Grill et al. 2020, Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning" synchronisedBatchNorm config
        (fun config -> config.Encoder) build with
        CheckData = fun config _ -> requireBatchOf 2 config.Schedule }
