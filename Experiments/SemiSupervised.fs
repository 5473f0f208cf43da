/// What the semi-supervised recipes (MixMatch, EnAET) share: the few-label split of DESIGN.md, a
/// labelled batch drawn beside every unlabelled batch the engine hands out, MixMatch's weak
/// augmentation, the classifier's EMA copy, and the supervised-only baseline on the same labels.
///
/// The engine's epoch runs over the unlabelled pool (ExampleCount = pool size, the step's `batch`
/// indexes the pool); each step also draws `size` labelled examples with the step's generator, as
/// the papers' code does by cycling a shuffled labelled loader beside the unlabelled one.
module Ssl.Experiments.SemiSupervised

open System.IO
open TorchSharp
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Host.Data
open Ssl.Host.Eval
open Ssl.Host.Runs
open Ssl.Experiments.Recipe
open Ssl.Experiments.Pipeline

type private Tensor = torch.Tensor

/// Labels per class when `--labels` is absent: 10, the harder of the two budgets issue 7 measures.
let defaultLabelsPerClass = 10

/// The run's labels per class: `--labels N`, else `defaultLabelsPerClass`.
let labelsPerClass (request: Request) = defaultArg request.Labels defaultLabelsPerClass

/// The few-label split of DESIGN.md: `perClass` labelled examples of every class drawn with `seed`
/// (the same split the supervised-only baseline trains on); the rest is the unlabelled pool.
let drawSplit (data: Data) (perClass: int) (seed: int64) =
    let split = LabelSplitter.Draw(data.Train, perClass, seed)
    if split.Unlabelled.Length = 0 then
        invalidArg "--labels" $"--labels: expected fewer labels per class than the training set holds, found {perClass} (nothing left unlabelled)"
    split

/// `size` labelled examples for one step, drawn with the step's generator: a random subset when the
/// labelled set holds at least `size` examples, otherwise `size` draws with replacement.
/// Result: indices into the training set.
let labelledBatch (generator: torch.Generator) (labelled: int64[]) (size: int) : int64[] =
    use scope = torch.NewDisposeScope()
    let count = int64 labelled.Length
    let picks =
        if count >= int64 size then
            torch.randperm(count, generator = generator, device = generator.device).narrow(0L, 0L, int64 size)
        else Draw.integers generator 0L (count - 1L) [| int64 size |] generator.device
    picks.cpu().data<int64>().ToArray() |> Array.map (fun i -> labelled[int i])

/// The images at `indices` as float32 (N, C, H, W) in [0, 1] on `device` (not yet standardised, so
/// warps fill with black and photometric transforms see [0, 1] values).
let pixels (images: Tensor) (indices: int64[]) (device: torch.Device) : Tensor =
    use scope = torch.NewDisposeScope()
    let channels = int images.shape[1]
    use idx = torch.tensor(indices)
    Features.ToInput(images.index_select(0L, idx), Array.create channels 0.0, Array.create channels 1.0, device).MoveToOuterDisposeScope()


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

/// The encoder a semi-supervised preset trains: Wide-ResNet-28-2 (the MixMatch and EnAET papers'
/// network, Berthelot et al. 2019 Sec. 4.1) when `wideResNet`, else SmallConvNet of base `width`;
/// `bnMomentum`: their batch norms' running-statistics momentum (PyTorch's convention).
let buildEncoder (wideResNet: bool) (width: int64) (bnMomentum: float) (channels: int64) : Encoder =
    if wideResNet then new WideResNet(channels, 28, 2L, bnMomentum) :> Encoder
    else new SmallConvNet(channels, width, bnMomentum) :> Encoder

let encoderName (wideResNet: bool) (width: int64) = if wideResNet then "WRN-28-2" else $"SmallConvNet{width}"

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

/// The supervised-only baseline on the same labels (Supervised.supervisedOnlyCached at the supervised
/// recipe's width, the same split), cached beside the runs, so every recipe shares one figure.
let supervisedOnlyBaseline (request: Request) (data: Data) (perClass: int) (folder: RunFolder) (device: torch.Device) =
    Recipes.Supervised.supervisedOnlyCached request (Recipes.Supervised.config request.Preset).Width data perClass folder device
