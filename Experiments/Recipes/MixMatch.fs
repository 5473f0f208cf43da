/// MixMatch: a holistic approach to semi-supervised learning (Berthelot, Carlini, Goodfellow,
/// Papernot, Oliver & Raffel, NeurIPS 2019). Algorithm 1: K weak augmentations of each unlabelled
/// image, the guessed label = the sharpened mean of the model's predictions on them (eq. 6-7), MixUp
/// with λ' = max(λ, 1 − λ) of the labelled and unlabelled batches with a shuffle of their
/// concatenation (eq. 8-11), and the loss L_X + λ_U L_U (eq. 2-5): cross-entropy on the mixed
/// labelled batch, squared L2 between predictions and guesses on the mixed unlabelled batch, λ_U
/// ramped up linearly. Adam with decoupled weight decay and an EMA of the weights for evaluation.
/// The pieces are Core's Losses/MixMatch.fs; `terms` here is the loss EnAET builds on.
/// Measured runs: docs/experiments/mixmatch.md.
module Ssl.Experiments.Recipes.MixMatch

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Experiments

/// The paper's CIFAR-10 settings (Sec. 4.1 and the authors' code): WRN-28-2, batch 64 labelled +
/// 64 unlabelled, K = 2, T = 0.5, α = 0.75, λ_U = 75 (the authors' CIFAR-10 command line; the text
/// says 100) ramped over 16,000 of 2^20 steps, Adam at 0.002, constant, weight decay 0.02 decoupled
/// (θ ← θ (1 − 0.02·lr), weights only), EMA decay 0.999, translation by up to 4 px and flips.
type Config =
    { /// The paper's WRN-28-2; quick SmallConvNet-16 (WRN-28-2 costs ~30x more per image).
      Encoder: Backbone
      /// Epochs: passes over the unlabelled pool; BatchSize: labelled and unlabelled images per step, each.
      Schedule: TrainingSchedule
      /// K, the augmentations of each unlabelled image the guess averages over.
      [<Range(1.0)>] Augmentations: int
      [<Range(0.0)>] Temperature: float
      [<Range(0.0)>] Alpha: float
      /// λ_U. L_U is already divided by the classes, as the authors' code.
      [<Range(0.0)>] ConsistencyWeight: float
      /// Steps of λ_U's linear ramp: the paper's 16,000 (1.5%); quick a third of training.
      [<Range(1.0)>] RampUpSteps: int64
      [<Range(0.0, 1.0)>] EmaMomentum: float
      /// The batch norms' running-statistics momentum (PyTorch's convention): the code's decay 0.999,
      /// updated by the training pass only, not by the guessing pass.
      [<Range(0.0, 1.0)>] BatchNormMomentum: float
      /// ReMixMatch's distribution alignment of the guesses (Berthelot et al. 2020, Sec. 3.2; not
      /// MixMatch's): on in quick and smoke, where without it the guesses drift to a few classes
      /// (docs/experiments/mixmatch.md); off in paper, MixMatch as published.
      DistributionAlignment: bool
      /// Translation by up to this many pixels: 3 of 28 for the paper's 4 of 32.
      [<Range(0.0)>] TranslatePixels: int64
      [<Range(0.0, 1.0)>] FlipProbability: float }

/// `paper`: 1,140 epochs of the unlabelled pool (~2^20 steps of ~920) on WRN-28-2. `quick`:
/// SmallConvNet-16, 9 epochs (~8,300 steps), λ_U ramped over 2,760 of them, distribution alignment
/// on. `smoke`: one epoch of the smoke subset's pool.
let config preset =
    let paper =
        { Encoder = WideResNet(28, 2L); Augmentations = 2; Temperature = 0.5; Alpha = 0.75; ConsistencyWeight = 75.0
          RampUpSteps = 16000L; EmaMomentum = 0.999; BatchNormMomentum = 0.001; DistributionAlignment = false
          TranslatePixels = 3L; FlipProbability = 0.5
          Schedule = { Epochs = 1140; BatchSize = 64; LearningRate = 0.002; WeightDecay = 0.02; WarmupEpochs = 0.0 } }
    match preset with
    | Smoke ->
        { paper with Encoder = SmallConvNet 16L; RampUpSteps = 10L; DistributionAlignment = true
                     Schedule = { paper.Schedule with Epochs = 1 } }
    | Quick ->
        { paper with Encoder = SmallConvNet 16L; RampUpSteps = 2760L; DistributionAlignment = true
                     Schedule = { paper.Schedule with Epochs = 9 } }
    | Paper -> paper

/// The encoder of a config: its Backbone with the config's batch-norm momentum, convolutions in `layout`.
let encoder (config: Config) (channels: int64) (layout: SafeConv.ConvLayout) : Encoder =
    instantiate layout (Some config.BatchNormMomentum) channels config.Encoder

/// The optimiser of the paper: Adam, constant rate, decoupled weight decay on weights.
let optimizerSpec (schedule: TrainingSchedule) =
    OptimizerSpec(Kind = OptimizerKind.AdamW, LearningRate = schedule.LearningRate, WeightDecay = schedule.WeightDecay,
                  WarmupEpochs = schedule.WarmupEpochs, Cosine = false)

/// Distribution alignment's state (ReMixMatch, Sec. 3.2): `Target` p(y), the labelled set's class
/// marginal, and `Running` p̃(y), the running mean of the guesses' predictions, both (C), updated in place.
type Alignment =
    { Target: torch.Tensor
      Running: torch.Tensor }

/// ReMixMatch's window of 128 batches as an exponential moving average's momentum.
let alignmentMomentum = 1.0 - 1.0 / 128.0

/// The alignment state when `config` asks for it: p(y) from the labelled set, p̃(y) uniform at first.
let alignment (config: Config) (data: Data) (labelled: int64[]) (device: torch.Device) : Alignment option =
    if not config.DistributionAlignment then None
    else
        use idx = torch.tensor(labelled)
        use labels = data.Train.Labels.index_select(0L, idx)
        use counts = torch.bincount(labels, minlength = int64 data.Classes).to_type(torch.ScalarType.Float32)
        Some { Target = (counts / counts.sum()).``to``(device)
               Running = torch.full([| int64 data.Classes |], (1.0 / float data.Classes).ToScalar(), device = device) }

/// The step state a checkpoint keeps for `alignment`: p̃(y), when aligning.
let alignmentState (alignment: Alignment option) () =
    [ match alignment with Some a -> "alignment_running", a.Running | None -> () ]

/// One step's MixMatch loss terms, and the guessed labels that EnAET reuses.
type Terms =
    { /// L_X + w L_U.
      Loss: torch.Tensor
      SupervisedLoss: torch.Tensor
      ConsistencyLoss: torch.Tensor
      /// w = λ_U ramped up at this step.
      ConsistencyWeight: float
      /// q_b, the sharpened guesses, (B, C), no gradient.
      Guesses: torch.Tensor }

/// MixMatch (Algorithm 1) on one batch. `classify`: standardised images → logits (N, C), running
/// the modules `classifier`; `labelled` (B, C, H, W) and its one-hot `targets` (B, C); `unlabelled`:
/// K augmentations of the same B' images. Guessing runs without gradients and leaves the batch-norm
/// statistics as they were (as the authors' code); one pass classifies the whole mixed batch.
let terms (config: Config) (generator: torch.Generator) (step: int64) (classifier: torch.nn.Module list)
          (alignment: Alignment option) (classify: torch.Tensor -> torch.Tensor) (labelled: torch.Tensor)
          (targets: torch.Tensor) (unlabelled: torch.Tensor list) : Terms =
    let k = int64 unlabelled.Length
    let count = unlabelled.Head.shape[0]
    let guesses =
        use _ = torch.no_grad()
        BatchNorms.withoutRunningUpdates classifier (fun () ->
            use logits = classify (torch.cat(List.toArray unlabelled, 0L))
            match alignment with
            | Some a -> MixMatch.guessLabelsAligned config.Temperature alignmentMomentum a.Target a.Running (logits.view(k, count, -1L))
            | None -> MixMatch.guessLabels config.Temperature (logits.view(k, count, -1L)))
    let inputs = torch.cat(Array.ofList (labelled :: unlabelled), 0L)
    let allTargets = torch.cat(Array.ofList (targets :: List.replicate (int k) guesses), 0L)
    let mixedInputs, mixedTargets = MixMatch.mixMatchMixUp config.Alpha generator inputs allTargets
    let logits = classify mixedInputs
    let b = labelled.shape[0]
    let rest = logits.shape[0] - b
    let supervised = MixMatch.softCrossEntropy (logits.narrow(0L, 0L, b)) (mixedTargets.narrow(0L, 0L, b))
    let consistency = MixMatch.consistencyL2 (logits.narrow(0L, b, rest)) (mixedTargets.narrow(0L, b, rest))
    let weight = MixMatch.linearRampUp config.RampUpSteps config.ConsistencyWeight step
    { Loss = supervised + consistency * weight; SupervisedLoss = supervised; ConsistencyLoss = consistency
      ConsistencyWeight = weight; Guesses = guesses }

/// The step's labelled batch (augmented, standardised), its one-hot targets, K augmentations of the
/// unlabelled batch (standardised) and that batch's [0, 1] first augmentation (EnAET's).
let inputs (config: Config) (data: Data) (step: StepContext) (batches: Batches) =
    let augment x = weakAugment config.TranslatePixels config.FlipProbability step.Generator x
    let x = pixels data.Train batches.Labelled step.Device |> augment |> standardise data
    let targets = oneHot data.Classes (labelsOf data step.Device batches.Labelled)
    let raw = pixels data.Train batches.Unlabelled step.Device
    let augmented = List.init config.Augmentations (fun _ -> augment raw)
    x, targets, List.map (standardise data) augmented, augmented.Head

/// Share of guesses whose argmax is the pool image's true label (where it has one): logged only.
let guessAccuracy (data: Data) (unlabelledIdx: int64[]) (guesses: torch.Tensor) =
    use idx = torch.tensor(unlabelledIdx)
    use truth = data.Train.Labels.index_select(0L, idx)
    use known = truth.ge((0L).ToScalar())
    if known.any().item<bool>() then
        use hits = guesses.argmax(1L).cpu().eq(truth).logical_and(known)
        Some(hits.sum().item<int64>() |> float |> fun h -> h / float (known.sum().item<int64>()))
    else None

/// `guess_share_k`: the batch's mean of q_b for each class k, logged only (a class taking over is
/// the confirmation bias that costs accuracy at 10 labels per class).
let guessShares (guesses: torch.Tensor) =
    use shares = guesses.mean([| 0L |]).cpu()
    let values = shares.data<float32>().ToArray()
    [ for k in 0 .. values.Length - 1 -> $"guess_share_{k}", float values[k] ]

/// What a step logs: `loss`, MixMatch's terms, the method's `own` figures, then the guesses' accuracy and shares.
let figures (data: Data) (batches: Batches) (t: Terms) (loss: float) (own: (string * float) list) =
    [ "loss", loss; "loss_x", float (t.SupervisedLoss.item<float32>()); "loss_u", float (t.ConsistencyLoss.item<float32>())
      "weight_u", t.ConsistencyWeight ]
    @ own @ Option.toList (guessAccuracy data batches.Unlabelled t.Guesses |> Option.map (fun a -> "guess_acc", a)) @ guessShares t.Guesses

/// The classifier, its EMA copy and the step (MixMatch, then the EMA update); test accuracy and
/// every protocol read the EMA copy.
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let p = parts ctx
    let ema = new EmaClassifier(p.Encoder, p.Classifier, ctx.NewEncoder, int64 ctx.Data.Classes)
    let aligned = alignment config ctx.Data p.Split.Labelled ctx.Device
    let classifier: torch.nn.Module list = [ p.Encoder; p.Classifier ]
    let def =
        stepOf ([ "encoder" => p.Encoder; "head" => p.Classifier ] @ ema.Modules) [ optimizer "main" (optimizerSpec config.Schedule) classifier ]
            (fun step batches ->
                let x, targets, unlabelled, _ = inputs config ctx.Data step batches
                let classify images = p.Classifier.forward(p.Encoder.forward images)
                let t = terms config step.Generator step.GlobalStep classifier aligned classify x targets unlabelled
                let value = step.Optimize("main", t.Loss)
                ema.Update config.EmaMomentum
                figures ctx.Data batches t value [])
    { ctx.TrainSemi(p, config.Schedule.BatchSize, { def with State = alignmentState aligned }) with
        Evaluated = ema.Encoder; Classifier = Some(ema.Encoder, ema.Head) }

let spec =
    Ssl.Experiments.Template.spec "mixmatch" "Berthelot et al. 2019, MixMatch: A Holistic Approach to Semi-Supervised Learning"
        semiSupervised config (fun config data layout -> encoder config data.Train.Channels layout) (fun config -> Some config.Encoder)
        (fun config -> name config.Encoder) build
