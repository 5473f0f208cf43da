/// MixMatch: a holistic approach to semi-supervised learning (Berthelot, Carlini, Goodfellow,
/// Papernot, Oliver & Raffel, NeurIPS 2019). Algorithm 1: K weak augmentations of each unlabelled
/// image, the guessed label = the sharpened mean of the model's predictions on them (eq. 6-7), MixUp
/// with λ' = max(λ, 1 − λ) of the labelled and unlabelled batches with a shuffle of their
/// concatenation (eq. 8-11), and the loss L_X + λ_U L_U (eq. 2-5): cross-entropy on the mixed
/// labelled batch, squared L2 between predictions and guesses on the mixed unlabelled batch, λ_U
/// ramped up linearly. Adam with decoupled weight decay and an EMA of the weights for evaluation.
/// The pieces are Core's Losses/MixMatch.fs; `terms` here is the loss EnAET builds on.
///
/// Measured with the former 4-epoch quick preset (seed 0): 100 labels per class (runs/mixmatch-quick-100,
/// commit e5404c5, 16.4 minutes in all, 901 s of training) reached a test accuracy of the EMA
/// classifier of 0.8446 against supervised-only's 0.8328, short of issue 7's 0.88; 10 labels per
/// class (runs/mixmatch-quick-10, commit da3d74a, 5.9 minutes, 315 s of training: the step has
/// become 2.9x faster since) reached 0.679, below supervised-only's 0.7076. The quick preset now
/// spends the freed time on 9 epochs. Measured with it: 100 labels per class 0.8477
/// (runs/mixmatch-quick9-100, commit 16023c3, 18.2 minutes; guess accuracy flat at 0.845 from the
/// fifth epoch), still short of 0.88; 10 labels per class 0.6599 (runs/mixmatch-quick9-10, commit
/// 474b3de, 17.6 minutes, 1,018 s of training at 529 img/s), worse than at 4 epochs: the accuracy
/// of the guessed labels on the unlabelled pool peaked at 0.741 in the second epoch and fell every
/// epoch after, to 0.651 — the model fits its own wrong guesses (confirmation bias), and more steps
/// at full λ_U make it worse. The encoder itself is good (linear probe with all labels 0.8451,
/// 10-label probe 0.6836); the EMA classifier is what falls below supervised-only.
/// With the authors' batch norm (momentum 0.001 and no running-statistics update from the guessing
/// pass; commit b98a432) the training is the same to the last digit (training passes normalise with
/// batch statistics), and only the evaluated classifier changes: 100 labels per class 0.8563
/// (runs/mixmatch-bn-100, was 0.8477; linear probe 0.8935, was 0.8823), 10 labels 0.6591
/// (runs/mixmatch-bn-10, was 0.6599). The guesses' class histogram (`guess_share_k`, epoch means)
/// at 10 labels shows the bias: on a balanced pool Shirt's share of the guesses rises from 0.109 to
/// 0.178 and Coat's falls from 0.088 to 0.031 while their accuracy falls from 0.752 to 0.659.
/// The bias is what ReMixMatch's distribution alignment (Berthelot et al. 2020, Sec. 3.2; the same
/// authors) corrects: each guess is scaled by p(y) / p̃(y), the labelled set's class marginal over
/// the running mean of the model's predictions on unlabelled images, before sharpening. The quick
/// preset turns it on (`DistributionAlignment`; the paper preset stays MixMatch as published).
/// Measured (commit 24ea7d2, otherwise b98a432's recipe): 10 labels per class 0.7452 against
/// supervised-only's 0.7076 (runs/mixmatch-da-10, 609 s of training at 884 img/s, 10.7 minutes in
/// all; every class's share of the guesses stays within 0.084-0.118 in every epoch's mean and their
/// accuracy within 0.73-0.78, where without it they fell to 0.659); 100 labels per class 0.8544
/// (runs/mixmatch-da-100, 577 s, 10.1 minutes), the same as without it (0.8563) and still short of
/// issue 7's 0.88, with the 100-label probe on its own encoder at 0.8631.
/// Tried and not taken (commit 30a6375): 13 epochs instead of 9, the ramp stretched to a third of
/// them and the learning rate decayed to 0 on a cosine. 100 labels per class 0.8653 (+1.1,
/// runs/mixmatch-cos13-100; still short of 0.88), 10 labels per class 0.7223 (−2.3,
/// runs/mixmatch-cos13-10, 813 s of training at 957 img/s against 609 s), so no better overall and
/// 40% dearer. Longer does not reach 0.88 either: 24 epochs the same way (commit ff4ad9b, a
/// diagnostic; 1,532 s of training at 924 img/s) fell to 0.8230 at 100 labels per class
/// (runs/mixmatch-cos24-100), the guesses' accuracy on the pool peaking at 0.869 in the sixth epoch
/// and sinking to 0.81 by the last: at this encoder's size the model fits its own guesses with
/// time at 100 labels too, alignment or not.
/// More tried at 100 labels per class on the 13-epoch cosine schedule (seed 0, none taken; test accuracy
/// against that schedule's 0.8653): USB's optimiser for MixMatch (SGD with Nesterov momentum 0.9 at
/// 0.03, weight decay 5e-4; commit 839707b) 0.8554 (runs/mixmatch-sgd13-100, 933 s of training);
/// cutout of 12 px (DeVries & Taylor 2017) on every augmented view, labelled and guessed (commit
/// 123aec1) 0.8635 (runs/mixmatch-cutout-100, 993 s). And the control that says why none of them
/// moves: λ_U = 0 (commit c0377ff; the guesses still label the unlabelled rows that MixUp mixes into
/// the labelled ones, but L_U is off) reaches 0.8619 (runs/mixmatch-lu0-100, 911 s). At this budget
/// (about 12,000 steps, 1.1% of the paper's 2^20) the consistency term adds +0.3 at 100 labels per
/// class; what lifts MixMatch above supervised-only's 0.8328 is the longer MixUp training with an EMA
/// of the weights on the same 1,000 labels. The guesses' accuracy on the pool is alike in all four
/// runs: 0.84-0.88 from the sixth epoch on (cutout's guesses are made on cut images).
module Ssl.Experiments.Recipes.MixMatch

open System.Collections.Generic
open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Host.Engine
open Ssl.Host.Runs
open Ssl.Host.Runtime
open Ssl.Experiments.Recipe
open Ssl.Experiments.Pipeline
open Ssl.Experiments.SemiSupervised

/// The paper's CIFAR-10 settings (Sec. 4.1 and the authors' code): WRN-28-2, batch 64 labelled +
/// 64 unlabelled, K = 2, T = 0.5, α = 0.75, λ_U = 75 (the authors' CIFAR-10 command line; the
/// text's default is 100; L_U is already divided by the 10 classes, as on Fashion-MNIST), λ_U ramped
/// up over 16,000 of 2^20 steps, Adam at 0.002 with a constant rate, weight decay 0.02 applied as
/// θ ← θ (1 − 0.02·lr) after each step to weights (not biases or norms; AdamW's decoupled form),
/// EMA decay 0.999, augmentation: translation by up to 4 px and horizontal flips; batch norm with
/// the code's decay 0.999 (momentum 0.001 in PyTorch's convention), its running statistics updated
/// by the training pass only, not by the label-guessing pass.
type Config =
    { /// WRN-28-2 (the paper's) when true, else SmallConvNet of base width `Width`.
      WideResNet: bool
      Width: int64
      Epochs: int
      /// Labelled and unlabelled images per step, each.
      BatchSize: int
      LearningRate: float
      WeightDecay: float
      Augmentations: int
      Temperature: float
      Alpha: float
      ConsistencyWeight: float
      RampUpSteps: int64
      EmaMomentum: float
      /// Running-statistics momentum of the encoder's batch norms (PyTorch's convention).
      BatchNormMomentum: float
      /// ReMixMatch's distribution alignment of the guesses (not in MixMatch; see `terms`).
      DistributionAlignment: bool
      TranslatePixels: int64
      FlipProbability: float }

/// `paper`: 1,024 epochs of 1,024 steps (2^20 steps) as the paper, here epochs of the unlabelled pool
/// (~920 steps on Fashion-MNIST), on WRN-28-2. `quick`: SmallConvNet width 16 instead of WRN-28-2
/// (WRN-28-2 costs ~30x more per image; it does not fit 20 minutes on 2 cores), 9 epochs of the pool
/// (~8,300 steps, 0.8% of the paper's; 4 epochs took 315 s of training at commit da3d74a, and left
/// 10 labels per class below supervised-only: 0.679 against 0.708), the λ_U ramp stretched to
/// 2,760 steps (a third of training; the paper's 1.5% would reach full weight while the guesses are
/// still near chance, and the PyTorch ports ramp over all of training); translation by up to 3 px
/// of 28 (the paper's 4 of 32). λ_U stays at the paper's 75: at 10 labels per class the guesses'
/// accuracy on the pool peaks in the first two epochs and falls after them at every λ_U tried, and
/// neither a smaller nor a larger weight did better (test accuracy, seed 0, 9 epochs): λ_U = 25
/// 0.6117 (guesses 0.756 → 0.646; runs/mixmatch-quick-lu25-10, commit c5038d1), 75 0.6599
/// (runs/mixmatch-quick9-10), 200 0.6458 (guesses 0.721 → 0.668; runs/mixmatch-quick-lu200-10,
/// commit 41e3db1), against supervised-only's 0.7076. Each run took about 12.4 minutes in all
/// (707-725 s of training at 743-762 img/s). Quick and smoke align the guesses' class distribution
/// (ReMixMatch's distribution alignment, see the module comment): without it the guesses drift
/// towards a few classes at 10 labels per class and MixMatch falls below supervised-only.
/// `smoke`: one epoch of the smoke subset's pool.
let config preset =
    let paper =
        { WideResNet = true; Width = 16L; Epochs = 1140; BatchSize = 64; LearningRate = 0.002; WeightDecay = 0.02; Augmentations = 2
          Temperature = 0.5; Alpha = 0.75; ConsistencyWeight = 75.0; RampUpSteps = 16000L; EmaMomentum = 0.999
          BatchNormMomentum = 0.001; DistributionAlignment = false; TranslatePixels = 3L; FlipProbability = 0.5 }
    match preset with
    | Smoke -> { paper with WideResNet = false; Epochs = 1; RampUpSteps = 10L; DistributionAlignment = true }
    | Quick -> { paper with WideResNet = false; Epochs = 9; RampUpSteps = 2760L; DistributionAlignment = true }
    | Paper -> paper

let encoder (preset: Preset) (channels: int64) : Encoder =
    let c = config preset
    buildEncoder c.WideResNet c.Width c.BatchNormMomentum channels

/// The optimiser of the paper: Adam, constant rate, decoupled weight decay on weights.
let optimizer (config: Config) =
    OptimizerSpec(Kind = OptimizerKind.AdamW, LearningRate = config.LearningRate, WeightDecay = config.WeightDecay, Cosine = false)

/// Distribution alignment's state (Berthelot et al. 2020, ReMixMatch, Sec. 3.2): `Target` p(y), the
/// labelled set's class marginal, and `Running` p̃(y), the running mean of the guesses' predictions,
/// both (C), updated in place by `terms`.
type Alignment =
    { Target: torch.Tensor
      Running: torch.Tensor }

/// ReMixMatch's window of 128 batches as an exponential moving average's momentum.
let alignmentMomentum = 1.0 - 1.0 / 128.0

/// The alignment state for a labelled set when `config` asks for it: p(y) from the set's labels,
/// p̃(y) uniform to start with.
let alignment (config: Config) (data: Data) (labelled: int64[]) (device: torch.Device) : Alignment option =
    if not config.DistributionAlignment then None
    else
        use idx = torch.tensor(labelled)
        use labels = data.Train.Labels.index_select(0L, idx)
        use counts = torch.bincount(labels, minlength = int64 data.Classes).to_type(torch.ScalarType.Float32)
        Some { Target = (counts / counts.sum()).``to``(device)
               Running = torch.full([| int64 data.Classes |], (1.0 / float data.Classes).ToScalar(), device = device) }

/// The step state a checkpoint keeps for `alignment`: p̃(y), when aligning.
let alignmentState (alignment: Alignment option) =
    readOnlyDict [ match alignment with Some a -> "alignment_running", a.Running | None -> () ]

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

/// MixMatch (Algorithm 1) on one batch: `classify` maps standardised images to logits (N, C).
/// `labelled: (B, C, H, W)` one augmentation of the labelled batch, standardised;
/// `targets: (B, C)` their one-hot labels; `unlabelled`: K augmentations of the same B' unlabelled
/// images, each (B', C, H, W), standardised; `classifier`: the modules `classify` runs. Guessing runs
/// without gradients (the authors' code stops it) and leaves the classifier's batch-norm running
/// statistics as they were (the authors' code discards that pass's updates); one forward pass
/// classifies the whole mixed batch, so batch norm sees labelled and unlabelled rows together (what
/// the authors' interleaving emulates across their split passes). With `alignment`, the guesses are
/// distribution-aligned before sharpening (ReMixMatch's addition: on in quick and smoke, off in paper).
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
/// unlabelled batch (standardised) and that batch's [0, 1] first augmentation (for EnAET's warps).
let batches (config: Config) (data: Data) (labelled: int64[]) (pool: int64[]) (ctx: StepContext) (batch: int64[]) =
    let generator = ctx.Generator
    let augment x = weakAugment config.TranslatePixels config.FlipProbability generator x
    let labelledIdx = labelledBatch generator labelled config.BatchSize
    let x = pixels data.Train.Images labelledIdx ctx.Device |> augment |> standardise data
    use labelIdx = torch.tensor(labelledIdx)
    let targets = oneHot data.Classes (data.Train.Labels.index_select(0L, labelIdx).``to``(ctx.Device))
    let unlabelledIdx = batch |> Array.map (fun i -> pool[int i])
    let raw = pixels data.Train.Images unlabelledIdx ctx.Device
    let augmented = List.init config.Augmentations (fun _ -> augment raw)
    x, targets, List.map (standardise data) augmented, augmented.Head, unlabelledIdx

/// Share of guesses whose argmax is the true label of the unlabelled image (where the pool has
/// labels): a diagnostic of guess quality, logged only; no loss reads the pool's labels.
let guessAccuracy (data: Data) (unlabelledIdx: int64[]) (guesses: torch.Tensor) =
    use idx = torch.tensor(unlabelledIdx)
    use truth = data.Train.Labels.index_select(0L, idx)
    use known = truth.ge((0L).ToScalar())
    if known.any().item<bool>() then
        use hits = guesses.argmax(1L).cpu().eq(truth).logical_and(known)
        Some(hits.sum().item<int64>() |> float |> fun h -> h / float (known.sum().item<int64>()))
    else None

/// The batch's guessed class distribution: `guess_share_k` = the mean of q_b over the batch for each
/// class k, logged only. Epoch means of these are the guesses' class histogram: a class taking
/// over is the confirmation bias that costs accuracy at 10 labels per class.
let guessShares (guesses: torch.Tensor) =
    use shares = guesses.mean([| 0L |]).cpu()
    let values = shares.data<float32>().ToArray()
    [ for k in 0 .. values.Length - 1 -> $"guess_share_{k}", float values[k] ]

/// One MixMatch step, then the EMA update.
type Step(encoder: Encoder, head: LinearHead, ema: EmaClassifier, data: Data, labelled: int64[], pool: int64[], config: Config,
          device: torch.Device) =
    let modules = readOnlyDict ([ "encoder", (encoder :> torch.nn.Module); "head", (head :> torch.nn.Module) ] @ ema.Modules)
    let aligned = alignment config data labelled device
    interface ITrainingStep with
        member _.Modules = modules
        member _.Optimizers =
            [| struct ("main", optimizer config, Seq.append (encoder.named_parameters ()) (head.named_parameters ())) |] :> IReadOnlyList<_>
        member _.State = alignmentState aligned
        member _.Step(ctx, batch) =
            let x, targets, unlabelled, _, unlabelledIdx = batches config data labelled pool ctx batch
            let t = terms config ctx.Generator ctx.GlobalStep [ encoder :> torch.nn.Module; head ] aligned
                          (fun images -> head.forward(encoder.forward images)) x targets unlabelled
            let value = ctx.Optimize("main", t.Loss)
            ema.Update config.EmaMomentum
            let figures =
                [ "loss", value; "loss_x", t.SupervisedLoss.item<float32>() |> float
                  "loss_u", t.ConsistencyLoss.item<float32>() |> float; "weight_u", t.ConsistencyWeight ]
            let guess = guessAccuracy data unlabelledIdx t.Guesses |> Option.map (fun a -> "guess_acc", a) |> Option.toList
            readOnlyDict (figures @ guess @ guessShares t.Guesses)

/// `ssl train mixmatch`: semi-supervised training on `--labels N` per class (default 10) and the
/// unlabelled rest; eval.test_acc is the EMA classifier's, beside supervised-only on the same labels.
let run (request: Request) (env: RunEnvironment) (folder: RunFolder) : RunResult =
    let config = config request.Preset
    let perClass = labelsPerClass request
    let request = { request with Labels = Some perClass }
    let name = encoderName config.WideResNet config.Width
    folder.WriteConfig {| method = "mixmatch"; preset = Preset.name request.Preset; dataset = request.Dataset; seed = request.Seed
                          labels_per_class = perClass; device = env.DeviceName; threads = env.Threads
                          deterministic = env.Deterministic; encoder = name; config = config |}
    use data = loadData request
    let split = drawSplit data perClass request.Seed
    torch.manual_seed(request.Seed) |> ignore
    let makeEncoder () = buildEncoder config.WideResNet config.Width config.BatchNormMomentum data.Train.Channels
    use encoder = makeEncoder ()
    use head = new LinearHead(encoder.FeatureDim, int64 data.Classes)
    encoder.``to``(env.Device) |> ignore
    head.``to``(env.Device) |> ignore
    use ema = new EmaClassifier(encoder, head, makeEncoder, int64 data.Classes)
    let options =
        TrainerOptions(Epochs = config.Epochs, BatchSize = config.BatchSize, ExampleCount = int64 split.Unlabelled.Length,
                       Seed = request.Seed, Resume = request.Resume, ConfigDigest = $"mixmatch {config} labels={perClass}", LogEvery = 50)
    let summary =
        Trainer.Run(Step(encoder, head, ema, data, split.Labelled, split.Unlabelled, config, env.Device), options, folder, env.Device, ConsoleProgress())
    let testAcc = Supervised.testAccuracy ema.Encoder ema.Head data env.Device
    let supervisedOnly = supervisedOnlyBaseline request data perClass folder env.Device
    finish request env folder data ema.Encoder name makeEncoder summary (Some testAcc) (Some supervisedOnly)

let recipe =
    { Name = "mixmatch"
      Paper = "Berthelot et al. 2019, MixMatch: A Holistic Approach to Semi-Supervised Learning"
      Presets = [ Smoke; Quick; Paper ]
      Run = run
      Encoder = encoder }
