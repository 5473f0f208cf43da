/// VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning (Bardes, Ponce & LeCun, ICLR 2022).
/// Two views go through one encoder and expander; the loss (eq. 6; Core's Vicreg) pulls the views' embeddings together
/// (invariance, eq. 5), keeps each dimension's standard deviation over the batch at 1 or above (variance, eq. 1-2) and
/// drives the off-diagonal covariances to 0 (covariance, eq. 3-4): no negatives, no momentum encoder, no stop-gradient,
/// no normalisation of the embeddings. Each term is logged every step. Measured runs: docs/experiments/vicreg.md.
module Ssl.Experiments.Recipes.Vicreg

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Experiments

/// The paper's settings (Sec. 4.1 and App. C; main_vicreg.py): an expander of three linear layers of 8,192 units with batch
/// norm and ReLU after the first two; λ = μ = 25, ν = 1, ε = 1e-4; LARS at base lr 0.2 · batch / 256 with 10 warm-up epochs
/// and cosine decay, weight decay 1e-6, biases and batch norm excluded; batch 2,048, 1,000 epochs; BYOL's augmentation.
type Config =
    { /// The paper's is ResNet-50; `paper` takes ResNet-18 in its CIFAR form; quick and smoke SmallConvNet.
      Encoder: Backbone
      /// Width D of the expander's three layers (its output is the embedding the loss reads).
      [<Range(1.0)>] ExpanderDim: int64
      /// λ, μ and ν of eq. 6.
      [<Range(0.0)>] InvarianceWeight: float
      [<Range(0.0)>] VarianceWeight: float
      [<Range(0.0)>] CovarianceWeight: float
      /// ε inside the variance term's square root (eq. 1).
      [<Range(0.0)>] Epsilon: float
      Schedule: TrainingSchedule
      /// LARS's trust coefficient η (You et al. 2017, Alg. 1).
      [<Range(0.0)>] LarsEta: float
      Augmentation: Augmentation
      /// The output, the paper's representation; quick reads SmallConvNet's block 3 pooled 2 x 2 (256-d) as Barlow Twins'
      /// and BYOL's quick presets do, its random-init baseline too.
      Probe: Probe }

/// `paper`: ResNet-18 with D = 2,048 (solo-learn's CIFAR expander) at batch 512 for 1,000 epochs, LARS at 0.2 · 512 / 256,
/// η = 0.001. `quick`: SmallConvNet-16, D = 1,024, batch 256, 10 epochs with one of warm-up (Barlow Twins' quick budget on the
/// same encoder), LARS at solo-learn's CIFAR values (lr 0.3, η = 0.02, weight decay 1e-4): the paper's η = 0.001 moves a weight
/// by 2e-4 of its norm a step, sized for 1,000 epochs, not 1% of its steps. `smoke`: one epoch of the smoke subset.
let config preset =
    let paper =
        { Encoder = ResNet18; ExpanderDim = 2048L; InvarianceWeight = 25.0; VarianceWeight = 25.0; CovarianceWeight = 1.0
          Epsilon = 1e-4; LarsEta = 0.001; Augmentation = { mocoAugmentation with ColourJitter = (0.2, 0.1) }; Probe = Probe.Output
          Schedule = { Epochs = 1000; BatchSize = 512; LearningRate = 0.4; WeightDecay = 1e-6; WarmupEpochs = 10.0 } }
    let small =
        { paper with Encoder = SmallConvNet 16L; ExpanderDim = 1024L; LarsEta = 0.02
                     Schedule = { paper.Schedule with BatchSize = 256; LearningRate = 0.3; WeightDecay = 1e-4; WarmupEpochs = 1.0 } }
    match preset with
    | Smoke -> { small with ExpanderDim = 512L; Schedule = { small.Schedule with Epochs = 1; BatchSize = 128; WarmupEpochs = 0.0 } }
    | Quick -> { small with Probe = Probe.Layer("features.block3b_relu", 2L); Schedule = { small.Schedule with Epochs = 10 } }
    | Paper -> paper

/// One step (the paper's Algorithm 1): z, z' = h(f(v)), h(f(v')); ℓ = λ s + μ v + ν c.
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let encoder = ctx.NewEncoder()
    let expander = Projectors.vicreg encoder.FeatureDim config.ExpanderDim
    let optimizers = [ optimizer "main" (Optim.lars config.Schedule config.LarsEta) [ encoder; expander ] ]
    ctx.Train(encoder, stepOf [ "encoder" => encoder; "expander" => expander ] optimizers (fun step batch ->
        let v1, v2 = twoViews config.Augmentation ctx.Data step batch
        let invariance, variance, covariance =
            // Over the global batch, as main_vicreg.py's FullGatherLayer: every rank the whole loss.
            Vicreg.terms config.Epsilon (step.Gather(expander.forward (encoder.forward v1))) (step.Gather(expander.forward (encoder.forward v2)))
        let loss = Vicreg.weighted config.InvarianceWeight config.VarianceWeight config.CovarianceWeight (invariance, variance, covariance)
        let value = step.Optimize("main", loss)
        let figure (t: torch.Tensor) = t.item<float32>() |> float
        [ "loss", value; "invariance", figure invariance; "variance", figure variance; "covariance", figure covariance ]))

let spec =
    { backboneSpec "vicreg" "Bardes et al. 2022, VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning"
        selfSupervised config (fun config -> config.Encoder) build with
        CheckData = fun config _ -> requireBatchOf 2 config.Schedule }
