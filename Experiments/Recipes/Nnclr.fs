/// NNCLR: With a Little Help from My Friends: Nearest-Neighbor Contrastive Learning of Visual Representations (Dwibedi, Aytar,
/// Tompson, Sermanet & Zisserman, ICCV 2021). SimCLR's two views and in-batch negatives, but each view's positive is the
/// nearest neighbour NN(z, Q) of its projection in a support set Q of past projections (eq. 2; Core's Nnclr.nearest), matched
/// against the other view's prediction (a BYOL-like predictor on the projections, Sec. 4.1), symmetrised (Core's Nnclr.loss).
/// Q is a FIFO queue of view 1's normalised projections, filled after the loss (solo-learn's nnclr.py). The step logs how
/// close the neighbours are (`nn_cosine`). Measured runs: docs/experiments/nnclr.md.
module Ssl.Experiments.Recipes.Nnclr

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Experiments

/// The paper's settings (Sec. 4.1): a projection MLP of three layers (2,048 hidden, 256 out, batch norm), a prediction MLP of
/// two (4,096 hidden), a support set of 98,304, τ = 0.1, LARS at base lr 0.3 · batch / 256 with 10 warm-up epochs and cosine
/// decay, weight decay 1e-6, batch 4,096, 1,000 epochs; BYOL's augmentation.
type Config =
    { /// The paper's is ResNet-50; `paper` takes ResNet-18 in its CIFAR form; quick and smoke SmallConvNet.
      Encoder: Backbone
      [<Range(1.0)>] ProjectionHidden: int64
      [<Range(1.0)>] ProjectionDim: int64
      [<Range(1.0)>] PredictorHidden: int64
      /// Size of the support set Q, at least the batch.
      [<Range(1.0)>] SupportSize: int64
      [<Range(0.0)>] Temperature: float
      Schedule: TrainingSchedule
      /// LARS's trust coefficient η (You et al. 2017, Alg. 1).
      [<Range(0.0)>] LarsEta: float
      Augmentation: Augmentation
      /// The output, the paper's representation; quick reads SmallConvNet's block 3 pooled 2 x 2 (256-d) as Barlow Twins'
      /// and BYOL's quick presets do, its random-init baseline too.
      Probe: Probe }

/// `paper`: ResNet-18 at batch 512 for 1,000 epochs, lr 0.3 · 512 / 256, Q = 65,536 (solo-learn's CIFAR support set).
/// `quick`: SmallConvNet-16, hidden widths 1,024, batch 256, 10 epochs with one of warm-up (Barlow Twins' quick budget),
/// solo-learn's CIFAR LARS (lr 0.4, η = 0.02, weight decay 1e-5) and τ = 0.2, Q = 8,192: between the paper's share of its
/// training set (98,304 of ImageNet's 1.28 M, 4,600 of our 60,000) and solo-learn's CIFAR queue larger than the set, full
/// after 32 of the run's 2,340 steps. `smoke`: one epoch of the smoke subset, Q = 1,024.
let config preset =
    let paper =
        { Encoder = ResNet18; ProjectionHidden = 2048L; ProjectionDim = 256L; PredictorHidden = 4096L; SupportSize = 65536L
          Temperature = 0.1; LarsEta = 0.001; Augmentation = { mocoAugmentation with ColourJitter = (0.2, 0.1) }; Probe = Probe.Output
          Schedule = { Epochs = 1000; BatchSize = 512; LearningRate = 0.6; WeightDecay = 1e-6; WarmupEpochs = 10.0 } }
    let small =
        { paper with Encoder = SmallConvNet 16L; ProjectionHidden = 1024L; PredictorHidden = 1024L; SupportSize = 8192L
                     Temperature = 0.2; LarsEta = 0.02
                     Schedule = { paper.Schedule with BatchSize = 256; LearningRate = 0.4; WeightDecay = 1e-5; WarmupEpochs = 1.0 } }
    match preset with
    | Smoke -> { small with SupportSize = 1024L; Schedule = { small.Schedule with Epochs = 1; BatchSize = 128; WarmupEpochs = 0.0 } }
    | Quick -> { small with Probe = Probe.Layer("features.block3b_relu", 2L); Schedule = { small.Schedule with Epochs = 10 } }
    | Paper -> paper

/// One step: z = g(f(v)) and p = h(z) for both views; NN(z̄, Q) for both; the symmetric loss; LARS; z̄₁ enqueued.
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let encoder = ctx.NewEncoder()
    let g = Projectors.nnclr encoder.FeatureDim config.ProjectionHidden config.ProjectionDim
    let h = new MlpHead(config.ProjectionDim, config.PredictorHidden, config.ProjectionDim, true)
    let support = new KeyQueue(config.SupportSize, config.ProjectionDim, ctx.Own(new torch.Generator(uint64 ctx.Seed, ctx.Device)))
    let optimizers = [ optimizer "main" (Optim.lars config.Schedule config.LarsEta) [ encoder; g; h ] ]
    ctx.Train(encoder, stepOf [ "encoder" => encoder; "projector" => g; "predictor" => h; "support" => support ] optimizers (fun step batch ->
        let v1, v2 = twoViews config.Augmentation ctx.Data step batch
        // The global batch's embeddings on every rank: its neighbours, loss and support set are one process's.
        let z1, z2 = step.Gather(g.forward (encoder.forward v1)), step.Gather(g.forward (encoder.forward v2))
        let unit1, unit2 = Contrastive.normalize (z1.detach()), Contrastive.normalize (z2.detach())
        let nn1, _ = Nnclr.nearest support.Keys unit1
        let nn2, _ = Nnclr.nearest support.Keys unit2
        let value = step.Optimize("main", Nnclr.loss config.Temperature nn1 nn2 (h.forward z1) (h.forward z2))
        let cosine = (nn1 * unit1).sum(1L).mean().item<float32>() |> float
        support.Enqueue unit1
        [ "loss", value; "nn_cosine", cosine; "z_std", Siamese.outputStd z1 ]))

let spec =
    { backboneSpec "nnclr" "Dwibedi et al. 2021, With a Little Help from My Friends: Nearest-Neighbor Contrastive Learning (NNCLR)"
        selfSupervised config (fun config -> config.Encoder) build with
        CheckData = fun config _ ->
            requireBatchOf 2 config.Schedule
            if config.SupportSize < int64 config.Schedule.BatchSize then
                invalidArg "SupportSize" $"SupportSize: expected at least Schedule.BatchSize ({config.Schedule.BatchSize}), found {config.SupportSize}" }
