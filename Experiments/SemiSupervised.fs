/// What the semi-supervised recipes (S4L-Rotation, S4L-Exemplar, VAT + EntMin, MixMatch, EnAET)
/// share on top of the template's few-label split (Template.semiSupervised: `--labels N` per class,
/// default 10): a labelled batch drawn beside every unlabelled batch the engine hands out (the
/// engine's epoch runs over the unlabelled pool; the step's `batch` indexes the pool), as the papers'
/// code cycles a shuffled labelled loader beside the unlabelled one; the classifier and its EMA
/// copy; MixMatch's weak augmentation and S4L's light one.
[<AutoOpen>]
module Ssl.Experiments.SemiSupervised

open System.IO
open TorchSharp
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Host.Data
open Ssl.Host.Eval
open Ssl.Host.Runs
open Ssl.Host.Engine
open Ssl.Experiments.Recipe
open Ssl.Experiments.Pipeline
open Ssl.Experiments.Template

type private Tensor = torch.Tensor

/// `size` labelled examples for one step (indices into the training set), drawn without
/// replacement with the step's generator, in several rounds when the labelled set is smaller than
/// `size`, so every step sees a fresh labelled batch while the engine's sampler walks the pool.
let labelledBatch (generator: torch.Generator) (labelled: int64[]) (size: int) : int64[] =
    let n = int64 labelled.Length
    let rounds = (int64 size + n - 1L) / n
    let order =
        Array.init (int rounds) (fun _ ->
            use permutation = torch.randperm(n, generator = generator, device = generator.device)
            permutation.cpu().data<int64>().ToArray())
        |> Array.concat
    Array.init size (fun i -> labelled[int order[i]])

/// Labels of the training examples at `indices`, on `device`.
let labelsOf (data: Data) (device: torch.Device) (indices: int64[]) =
    use idx = torch.tensor(indices)
    use labels = data.Train.Labels.index_select(0L, idx)
    labels.``to``(device)

/// Fraction of rows where argmax(logits) equals `labels`.
let accuracy (logits: Tensor) (labels: Tensor) =
    use correct = logits.argmax(1L).eq(labels).to_type(torch.ScalarType.Float32)
    float (correct.mean().item<float32>())

/// The light augmentation of the supervised-only baseline (SupervisedTraining.Config: random resized
/// crop of scale (0.8, 1), horizontal flip with p = 0.5), standing in for the Inception crop and flip
/// that S4L applies to both batches, so the S4L recipes and their baseline see the same labelled
/// views. images: (N, C, H, W) → same shape.
let lightAugment (generator: torch.Generator) (images: Tensor) =
    let supervised = SupervisedTraining.config Quick
    images
    |> Geometric.randomResizedCrop supervised.CropScale (3.0 / 4.0, 4.0 / 3.0) (images.shape[2], images.shape[3]) generator
    |> Geometric.randomHorizontalFlip supervised.FlipProbability generator

/// The encoder, the linear classifier and the split a semi-supervised recipe trains.
type Parts =
    { Data: Data
      Split: LabelSplit
      Encoder: Encoder
      Classifier: LinearHead }

/// A new encoder (the spec's factory) and linear classifier over the run's classes, with its split.
let parts (c: Context<'Config>) =
    let encoder = c.NewEncoder()
    { Data = c.Data; Split = c.LabelSplit; Encoder = encoder; Classifier = new LinearHead(encoder.FeatureDim, int64 c.Data.Classes) }

/// A semi-supervised step's examples, as training-set indices: the labelled batch drawn for the
/// step and the unlabelled batch the engine hands out of the pool; `Pool`: the unlabelled images'
/// positions in the pool (0 .. pool size − 1), for state kept per pool image (FlexMatch).
type Batches =
    { Labelled: int64[]
      Unlabelled: int64[]
      Pool: int64[] }

/// What a FixMatch-family method makes of the weak views' class probabilities q (μB, C; no
/// gradient): a weight per image for its hard pseudo-label's cross-entropy, a loss term added to
/// the step's (FreeMatch's fairness loss) and figures to log. FixMatch's weight is 1(max q ≥ τ).
type Weighing =
    { Weights: Tensor
      Added: Tensor option
      Figures: (string * float) list }

/// A method's weighing of one step: its batches, q of the weak views, the strong views' logits.
type Weigh = Batches -> Tensor -> Tensor -> Weighing

type Context<'Config> with
    /// The training of a semi-supervised recipe's `def` on the parts `p`: an epoch walks the unlabelled
    /// pool `unlabelledBatch` images a step, and each step first draws the Schedule's BatchSize
    /// labelled images with its generator (labelledBatch); the classifier's test accuracy is the
    /// method's own figure, the encoder what the protocols read.
    member c.TrainSemi(p: Parts, unlabelledBatch: int, def: StepDef<Batches>) =
        let labelledSize = c.Schedule.BatchSize
        let batches (ctx: Ssl.Host.Engine.StepContext) (batch: int64[]) =
            // The global labelled batch (a permutation: a draw every rank makes alike); this rank trains on its part.
            let labelled = labelledBatch ctx.Generator p.Split.Labelled labelledSize |> ctx.Shard
            { Labelled = labelled; Unlabelled = batch |> Array.map (fun i -> p.Split.Unlabelled[int i]); Pool = batch }
        { trainOn c p.Encoder def batches with
            BatchSize = unlabelledBatch; Examples = int64 p.Split.Unlabelled.Length; Classifier = Some(p.Encoder, p.Classifier) }

/// The images at `indices` as float32 (N, C, H, W) in [0, 1] on `device` (not yet standardised, so
/// warps fill with black and photometric transforms see [0, 1] values).
let pixels (images: ImageDataset) (indices: int64[]) (device: torch.Device) : Tensor =
    use scope = torch.NewDisposeScope()
    let channels = int images.Channels
    Features.ToInput(images.Batch indices, Array.create channels 0.0, Array.create channels 1.0, device).MoveToOuterDisposeScope()


/// One-hot targets of int64 class indices: (N) → float32 (N, classes).
let oneHot (classes: int) (labels: Tensor) : Tensor =
    use scope = torch.NewDisposeScope()
    torch.nn.functional.one_hot(labels, int64 classes).to_type(torch.ScalarType.Float32).MoveToOuterDisposeScope()

/// MixMatch's weak augmentation (Berthelot et al. 2019, Sec. 4 and the authors' code: a random
/// translation by up to `padding` pixels, by padding and cropping back to size, and a horizontal
/// flip with probability `flipProbability`). The padding is black (0), Fashion-MNIST's
/// background, where the authors' CIFAR code reflects. images: (N, C, H, W) in [0, 1] → same shape.
let weakAugment (padding: int64) (flipProbability: float) (generator: torch.Generator) (images: Tensor) : Tensor =
    use scope = torch.NewDisposeScope()
    let count, height, width = images.shape[0], images.shape[2], images.shape[3]
    let padded = torch.nn.functional.pad(images, [| padding; padding; padding; padding |])
    let offsets () = Draw.integers generator 0L (2L * padding) [| count |] images.device
    let tops, lefts = offsets (), offsets ()
    let boxes =
        torch.stack([| tops; lefts; torch.full_like(tops, height.ToScalar()); torch.full_like(tops, width.ToScalar()) |], 1L).to_type(torch.ScalarType.Float64)
    Geometric.resizedCrop height width boxes padded
    |> Geometric.randomHorizontalFlip flipProbability generator
    |> fun x -> x.MoveToOuterDisposeScope()

/// A classifier (encoder + linear head) and its exponential moving average (Berthelot et al. 2019,
/// Sec. 4: an EMA of the weights with decay 0.999 is what MixMatch evaluates). The copies are built
/// fresh and filled by `MomentumCopy`; buffers (batch-norm statistics) follow the online network.
type EmaClassifier(encoder: Encoder, head: LinearHead, makeEncoder: unit -> Encoder, classes: int64) =
    let emaEncoder = makeEncoder ()
    let emaHead = new LinearHead(encoder.FeatureDim, classes)
    let encoderCopy = new MomentumCopy(encoder, emaEncoder)
    let headCopy = new MomentumCopy(head, emaHead)
    member _.Encoder = emaEncoder
    member _.Head = emaHead
    /// The momentum copies, for checkpoints.
    member _.Modules = [ "ema_encoder", (encoderCopy :> torch.nn.Module); "ema_head", (headCopy :> torch.nn.Module) ]
    /// θ_ema ← m θ_ema + (1 − m) θ after an optimiser step. `momentum`: m in [0, 1].
    member _.Update(momentum: float) =
        encoderCopy.Update momentum
        headCopy.Update momentum
    interface System.IDisposable with
        member _.Dispose() =
            encoderCopy.Dispose()
            headCopy.Dispose()

type Context<'Config> with
    /// The training of the classifier `p` with an EMA copy of its weights (decay `emaMomentum`,
    /// updated after every optimiser step) that test accuracy and the protocols read, as USB
    /// evaluates every method (ema_m): `loss` makes one step's loss to minimise and figures from the
    /// EMA copy, the step's context and batches; `state`: tensors the method keeps, for checkpoints.
    /// Returns the EMA copy with the training.
    member c.TrainWithEma(p: Parts, unlabelledBatch: int, spec: OptimizerSpec, emaMomentum: float,
                          loss: EmaClassifier -> StepContext -> Batches -> Tensor * (string * float) list, ?state: unit -> (string * Tensor) list) =
        let ema = new EmaClassifier(p.Encoder, p.Classifier, c.NewEncoder, int64 c.Data.Classes)
        let def =
            stepOf ([ "encoder" => p.Encoder; "head" => p.Classifier ] @ ema.Modules) [ optimizer "main" spec [ p.Encoder; p.Classifier ] ] (fun step batches ->
                let total, figures = loss ema step batches
                let value = step.Optimize("main", total)
                ema.Update emaMomentum
                ("loss", value) :: figures)
        ema, { c.TrainSemi(p, unlabelledBatch, { def with State = defaultArg state (fun () -> []) }) with
                 Evaluated = ema.Encoder; Classifier = Some(ema.Encoder, ema.Head) }

/// USB's settings of its classic consistency baselines (Pseudo-Label, Π-model, Mean Teacher;
/// config/classic_cv/<method>/<method>_cifar10_40_0.yaml): WRN-28-2, B = μB = 64, SGD with Nesterov
/// momentum at 0.03 and FixMatch's cosine, weight decay 5e-4, EMA 0.999, the unlabelled weight ramped
/// up linearly over the first 40% of the steps (unsup_warm_up), weak views only.
type ConsistencySettings =
    { /// The paper's WRN-28-2; quick SmallConvNet-16, as FixMatch's quick.
      Encoder: Backbone
      /// Epochs: passes over the unlabelled pool; BatchSize: B, labelled images per step.
      Schedule: TrainingSchedule
      /// μ, unlabelled images per labelled one.
      [<Range(1.0)>] UnlabelledRatio: int
      /// λ_u, the unlabelled loss's weight once ramped up.
      [<Range(0.0)>] UnlabelledWeight: float
      /// The share of the steps over which λ_u ramps up linearly from 0.
      [<Range(0.0, 1.0)>] RampUp: float
      [<Range(0.0, 1.0)>] EmaMomentum: float
      /// The batch norms' running-statistics momentum (PyTorch's convention).
      [<Range(0.0, 1.0)>] BatchNormMomentum: float
      /// The weak view's translation by up to this many pixels (FixMatch's 12.5%) and flip.
      [<Range(0.0)>] TranslatePixels: int64
      [<Range(0.0, 1.0)>] FlipProbability: float }

/// The settings with λ_u = `weight`. `paper`: USB's 2^20 steps (1,120 epochs of the ~59,900-image pool
/// at 64 a step); `quick`: SmallConvNet-16, 10 epochs (~9,400 steps of 64 + 64 or 64 + 2·64 images,
/// about FixMatch quick's images), batch-norm momentum 0.01 and EMA 0.99 as FixMatch's quick;
/// `smoke`: one epoch of the smoke pool at 16 a step.
let consistencySettings (weight: float) (preset: Preset) =
    let paper =
        { Encoder = Backbone.WideResNet(28, 2L); UnlabelledRatio = 1; UnlabelledWeight = weight; RampUp = 0.4; EmaMomentum = 0.999
          BatchNormMomentum = 0.001; TranslatePixels = 3L; FlipProbability = 0.5
          Schedule = { Epochs = 1120; BatchSize = 64; LearningRate = 0.03; WeightDecay = 5e-4; WarmupEpochs = 0.0 } }
    match preset with
    | Paper -> paper
    | Quick -> { paper with Encoder = Backbone.SmallConvNet 16L; BatchNormMomentum = 0.01; EmaMomentum = 0.99; Schedule = { paper.Schedule with Epochs = 10 } }
    | Smoke -> { paper with Encoder = Backbone.SmallConvNet 16L; BatchNormMomentum = 0.01; Schedule = { paper.Schedule with Epochs = 1; BatchSize = 16 } }

/// The encoder of the settings: its Backbone with their batch-norm momentum, convolutions in `layout`.
let consistencyEncoder (settings: ConsistencySettings) (channels: int64) (layout: Ssl.Core.Models.SafeConv.ConvLayout) =
    instantiate layout (Some settings.BatchNormMomentum) channels settings.Encoder

/// The spec of a consistency baseline whose config holds its settings at `settings`.
let consistencySpec (method: string) (paper: string) (config: Preset -> 'Config) (settings: 'Config -> ConsistencySettings) build =
    spec method paper semiSupervised config (fun config data layout -> consistencyEncoder (settings config) data.Train.Channels layout)
        (fun config -> Some (settings config).Encoder) (fun config -> name (settings config).Encoder) build

/// One step of a consistency baseline: the cross-entropy of the weakly augmented labelled batch
/// (the pass that moves the batch-norm statistics, as USB's bn_controller leaves them to it) plus
/// λ_u·r(t)·`unlabelled`, r(t) the linear ramp-up; `unlabelled` gets the step and two weak views of
/// the unlabelled batch and returns its loss and figures.
let consistencyLoss (settings: ConsistencySettings) (data: Data) (p: Parts) (unlabelled: StepContext -> Tensor -> Tensor -> Tensor * (string * float) list)
                    (step: StepContext) (batches: Batches) =
    let weak x = weakAugment settings.TranslatePixels settings.FlipProbability step.Generator x
    let x = pixels data.Train batches.Labelled step.Device |> weak |> standardise data
    let y = labelsOf data step.Device batches.Labelled
    let logits = p.Classifier.forward(p.Encoder.forward x)
    let supervised = torch.nn.functional.cross_entropy(logits, y)
    let raw = pixels data.Train batches.Unlabelled step.Device
    let first, second = weak raw |> standardise data, weak raw |> standardise data
    let loss, figures = BatchNorms.withoutRunningUpdates [ p.Encoder :> torch.nn.Module ] (fun () -> unlabelled step first second)
    let ramp = Ssl.Core.Losses.MixMatch.linearRampUp (max 1L (int64 (settings.RampUp * float step.TotalSteps))) 1.0 step.GlobalStep
    supervised + loss * (settings.UnlabelledWeight * ramp),
    [ "loss_x", float (supervised.item<float32>()); "loss_u", float (loss.item<float32>()); "ramp", ramp; "train_acc", accuracy logits y; yield! figures ]
