/// FixMatch: simplifying semi-supervised learning with consistency and confidence (Sohn, Berthelot,
/// Li, Zhang, Carlini, Cubuk, Kurakin, Zhang & Raffel, NeurIPS 2020). Each step B labelled and μB
/// unlabelled images; the loss ℓ_s + λ_u ℓ_u (Sec. 2.2, eq. 2-4): ℓ_s the cross-entropy on the weakly
/// augmented labelled batch, ℓ_u the cross-entropy of the strongly augmented unlabelled view against
/// the hard pseudo-label of its weak view where the weak prediction is confident (max q_b ≥ τ).
/// Weak α: flip and translation; strong A: the same, then RandAugment and Cutout (Core's
/// Transforms/RandAugment.fs); ℓ_u is Core's Losses/FixMatch.fs. As the authors' code
/// (google-research/fixmatch), the three batches go through the network in one pass, so batch norm
/// sees them together. SGD with Nesterov momentum, cosine decay, and an EMA of the weights, which is
/// what is evaluated. Measured runs: docs/experiments/fixmatch.md.
module Ssl.Experiments.Recipes.FixMatch

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Experiments

/// The paper's CIFAR-10 settings (Sec. 4 and Appendix B.1, Table 4): WRN-28-2, B = 64, μ = 7,
/// τ = 0.95, λ_u = 1, SGD with Nesterov momentum 0.9 at 0.03, weight decay 5e-4, EMA 0.999,
/// 2^20 steps; weak: flip and translation by up to 12.5%; strong: RandAugment (2 operations,
/// random magnitudes) and Cutout.
type Config =
    { /// The paper's WRN-28-2; quick SmallConvNet-16 (WRN-28-2 costs ~30x more per image).
      Encoder: Backbone
      /// Epochs: passes over the unlabelled pool, μB images a step; BatchSize: B, labelled images
      /// per step; weight decay on weights only (not biases, batch-norm scales), as kekmodel/FixMatch-pytorch.
      Schedule: TrainingSchedule
      /// μ, unlabelled images per labelled one.
      [<Range(1.0)>] UnlabelledRatio: int
      /// τ, the confidence a pseudo-label needs (above 1 none passes).
      [<Range(0.0)>] Threshold: float
      /// λ_u, the weight of ℓ_u.
      [<Range(0.0)>] UnlabelledWeight: float
      [<Range(0.0, 1.0)>] EmaMomentum: float
      /// The batch norms' running-statistics momentum (PyTorch's convention): the code's decay 0.999.
      [<Range(0.0, 1.0)>] BatchNormMomentum: float
      /// Translation by up to this many pixels: 3 of 28, int(12.5% · 28) as the reference code's int(12.5% · 32).
      [<Range(0.0)>] TranslatePixels: int64
      [<Range(0.0, 1.0)>] FlipProbability: float
      /// RandAugment's operations per image, the paper's N = 2.
      [<Range(0.0)>] StrongOperations: int
      /// Cutout's largest side as a fraction of the image side: the paper's 0.5.
      [<Range(0.0, 1.0)>] CutoutFraction: float }

/// The pool is ~59,900 images (Fashion-MNIST's 60,000 less 10 per class), 448 a step: 134 steps an
/// epoch. `paper`: 7,840 epochs (~2^20 steps). `quick`: SmallConvNet-16, 10 epochs (~1,340 steps of
/// 64 + 2·448 images, ~4x MixMatch's step in compute, so ~1/6 of MixMatch quick's steps for about
/// the same ~11 min on 2 cores; 0.13% of the paper's steps); batch-norm momentum 0.01 and EMA decay
/// 0.99 because the run is so short (at 0.999 a quarter of the EMA would still be the initial weights).
/// `smoke`: one epoch of the smoke subset's pool.
let config preset =
    let paper =
        { Encoder = WideResNet(28, 2L); UnlabelledRatio = 7; Threshold = 0.95; UnlabelledWeight = 1.0; EmaMomentum = 0.999
          BatchNormMomentum = 0.001; TranslatePixels = 3L; FlipProbability = 0.5; StrongOperations = 2; CutoutFraction = 0.5
          Schedule = { Epochs = 7840; BatchSize = 64; LearningRate = 0.03; WeightDecay = 5e-4; WarmupEpochs = 0.0 } }
    match preset with
    | Smoke -> { paper with Encoder = SmallConvNet 16L; BatchNormMomentum = 0.01; Schedule = { paper.Schedule with Epochs = 1; BatchSize = 16 } }
    | Quick -> { paper with Encoder = SmallConvNet 16L; BatchNormMomentum = 0.01; EmaMomentum = 0.99; Schedule = { paper.Schedule with Epochs = 10 } }
    | Paper -> paper

/// The encoder of a config: its Backbone with the config's batch-norm momentum, convolutions in `layout`.
let encoder (config: Config) (channels: int64) (layout: SafeConv.ConvLayout) : Encoder =
    instantiate layout (Some config.BatchNormMomentum) channels config.Encoder

/// SGD with Nesterov momentum 0.9. The paper decays the rate as cos(7πk / 16K); OptimizerSpec's
/// schedule is the half cosine ½(1 + cos(πk/K)) to a floor, so we use it with the floor cos(7π/16)
/// ≈ 0.195, the paper's final factor: same start and end, a slightly lower middle.
let optimizerSpec (schedule: TrainingSchedule) =
    OptimizerSpec(Kind = OptimizerKind.Sgd, LearningRate = schedule.LearningRate, Momentum = 0.9, Nesterov = true,
                  WeightDecay = schedule.WeightDecay, FinalLrFraction = cos (7.0 * System.Math.PI / 16.0))

/// Share of `predicted` equal to the pool images' true labels where `among` holds (and the label is
/// known): logged only, None where nothing counts.
let private agreement (truth: torch.Tensor) (predicted: torch.Tensor) (among: torch.Tensor) =
    use counted = truth.ge((0L).ToScalar()).logical_and(among)
    let total = counted.sum().item<int64>()
    if total = 0L then None
    else
        use hits = predicted.eq(truth).logical_and(counted)
        Some(float (hits.sum().item<int64>()) / float total)

/// FixMatch's fixed confidence threshold τ (eq. 4).
let fixedThreshold (threshold: float) : Weigh =
    fun _ probs _ ->
        let struct (confidence, predicted) = probs.max(1L)
        use _ = predicted
        use _ = confidence
        { Weights = confidence.ge(threshold.ToScalar()).to_type(probs.dtype); Added = None; Figures = [] }

/// One step of the family: the labelled batch, the weak and the strong view of the unlabelled batch,
/// classified in one pass; ℓ_s + λ_u ℓ_u (+ the weighing's added term).
let private loss (config: Config) (weigh: Weigh) (data: Data) (encoder: Encoder) (head: LinearHead) (step: StepContext) (batches: Batches) =
    let generator = step.Generator
    let weak x = weakAugment config.TranslatePixels config.FlipProbability generator x
    let x = pixels data.Train batches.Labelled step.Device |> weak
    let y = labelsOf data step.Device batches.Labelled
    let raw = pixels data.Train batches.Unlabelled step.Device
    let weakView = weak raw
    let strongView = weak raw |> RandAugment.strongAugment config.StrongOperations config.CutoutFraction 0.5 generator
    let logits = head.forward(encoder.forward(standardise data (torch.cat([| x; weakView; strongView |], 0L))))
    let b, u = x.shape[0], raw.shape[0]
    let labelledLogits = logits.narrow(0L, 0L, b)
    let strongLogits = logits.narrow(0L, b + u, u)
    let supervised = torch.nn.functional.cross_entropy(labelledLogits, y)
    let probs = logits.narrow(0L, b, u).detach().softmax(1L)
    let pseudoLabels = probs.argmax(1L)
    // The weighing sees the global unlabelled batch (USB's concat_all_gather), so that its state stays
    // alike on every rank; this rank keeps its own rows of the weights.
    let everyRank: Batches =
        { Labelled = step.GatherIndices batches.Labelled; Unlabelled = step.GatherIndices batches.Unlabelled; Pool = step.GatherIndices batches.Pool }
    let weighing = weigh everyRank (step.Gather probs) (step.Gather strongLogits)
    let weighing = { weighing with Weights = step.OwnRows weighing.Weights }
    let unlabelled = FixMatch.weightedLoss weighing.Weights pseudoLabels strongLogits
    let total = supervised + unlabelled * config.UnlabelledWeight
    use truth = labelsOf data step.Device batches.Unlabelled
    use everywhere = torch.ones_like(truth, dtype = torch.ScalarType.Bool)
    use kept = weighing.Weights.gt(0.0.ToScalar())
    (match weighing.Added with Some added -> total + added | None -> total),
    [ "loss_x", float (supervised.item<float32>()); "loss_u", float (unlabelled.item<float32>())
      "mask_rate", float (weighing.Weights.mean().item<float32>()); "train_acc", accuracy labelledLogits y
      match agreement truth pseudoLabels everywhere with Some a -> "pseudo_acc", a | None -> ()
      match agreement truth pseudoLabels kept with Some a -> "pseudo_acc_masked", a | None -> ()
      yield! weighing.Figures ]

/// After training, the EMA classifier on the un-augmented pool: the share of images whose
/// pseudo-label would pass τ, and the accuracy of all pseudo-labels and of those passing.
let poolFigures (ema: EmaClassifier) (data: Data) (pool: int64[]) (threshold: float) (device: torch.Device) () =
    use idx = torch.tensor(pool)
    use images = data.Train.Subset pool
    use truth = data.Train.Labels.index_select(0L, idx)
    use features = Features.Extract(ema.Encoder, images, data.Mean, data.Std, device)
    ema.Head.eval()
    use noGrad = torch.no_grad()
    use logits = ema.Head.forward(features.``to``(device))
    let struct (confidence, predicted) = logits.softmax(1L).max(1L)
    use confidence = confidence.cpu()
    use predicted = predicted.cpu()
    use passing = confidence.ge(threshold.ToScalar())
    use everywhere = torch.ones_like(passing)
    [ "pool_mask_rate", float (passing.to_type(torch.ScalarType.Float64).mean().item<float>())
      match agreement truth predicted everywhere with Some a -> "pool_pseudo_acc", a | None -> ()
      match agreement truth predicted passing with Some a -> "pool_pseudo_acc_confident", a | None -> () ]

/// A FixMatch-family recipe's training: the classifier and its EMA copy (what test accuracy, the
/// protocols and the pool figures read), the step with the weighing that `weighing` makes for the run
/// (with the state tensors it keeps, for checkpoints); an epoch walks the pool μB images at a time.
/// `fixMatch`: the FixMatch settings inside the recipe's config.
let buildFamily (fixMatch: 'Config -> Config) (weighing: Context<'Config> -> Parts -> Weigh * (unit -> (string * torch.Tensor) list)) (ctx: Context<'Config>) =
    let config = fixMatch ctx.Config
    let p = parts ctx
    let weigh, state = weighing ctx p
    let ema, training =
        ctx.TrainWithEma(p, config.Schedule.BatchSize * config.UnlabelledRatio, optimizerSpec config.Schedule, config.EmaMomentum,
                         (fun _ -> loss config weigh ctx.Data p.Encoder p.Classifier), state)
    { training with Extra = poolFigures ema ctx.Data p.Split.Unlabelled config.Threshold ctx.Device }

let build (ctx: Context<Config>) = buildFamily id (fun ctx _ -> fixedThreshold ctx.Config.Threshold, (fun () -> [])) ctx

let spec =
    Ssl.Experiments.Template.spec "fixmatch" "Sohn et al. 2020, FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence"
        semiSupervised config (fun config data layout -> encoder config data.Train.Channels layout) (fun config -> Some config.Encoder)
        (fun config -> name config.Encoder) build

/// The spec of a recipe built on FixMatch's settings, which its config holds at `fixMatch`.
let familySpec (method: string) (paper: string) (config: Preset -> 'Config) (fixMatch: 'Config -> Config) build =
    Ssl.Experiments.Template.spec method paper semiSupervised config (fun config data layout -> encoder (fixMatch config) data.Train.Channels layout)
        (fun config -> Some (fixMatch config).Encoder) (fun config -> name (fixMatch config).Encoder) build
