/// The augmented views that instance-discrimination methods compare (MoCo, InfoNCE): each view is
/// a batched, seeded transform of a batch of training images, drawn independently per image.
[<AutoOpen>]
module Ssl.Experiments.Views

open TorchSharp
open Ssl.Core.Transforms
open Ssl.Experiments.Pipeline
open Ssl.Host.Distributed

/// The augmentation of MoCo v1 (He et al. 2020, Sec. 4, "Data augmentation": random resized crop,
/// random colour jittering, random horizontal flip, random grayscale conversion), as SimCLR
/// (Chen et al. 2020, App. A) also uses it. On grey images colour jitter keeps its brightness and
/// contrast parts (saturation and hue have nothing to act on) and grayscale conversion is the identity.
type Augmentation =
    { /// Fraction range of the image area a crop keeps (MoCo: 0.2 to 1).
      CropScale: float * float
      /// Brightness and contrast strength of the colour jitter (MoCo: 0.4).
      Jitter: float
      /// Saturation and hue strength on colour images (MoCo: 0.4 and 0.4; hue at most 0.5).
      ColourJitter: float * float
      /// Probability of grayscale conversion on colour images (MoCo: 0.2).
      GrayscaleProbability: float
      FlipProbability: float }

/// MoCo v1's augmentation with its published strengths.
let mocoAugmentation =
    { CropScale = (0.2, 1.0); Jitter = 0.4; ColourJitter = (0.4, 0.4); GrayscaleProbability = 0.2; FlipProbability = 0.5 }

/// One random view of each image: [0, 1] images (B, C, H, W) (Pipeline.unitPixels) → standardised
/// (B, C, H, W).
let view (augmentation: Augmentation) (data: Data) (generator: torch.Generator) (x: torch.Tensor) =
    use scope = torch.NewDisposeScope()
    let h, w = x.shape[2], x.shape[3]
    let saturation, hue = if x.shape[1] = 3L then augmentation.ColourJitter else (0.0, 0.0)
    let cropped = Geometric.randomResizedCrop augmentation.CropScale (3.0 / 4.0, 4.0 / 3.0) (h, w) generator x
    let jittered =
        Photometric.colorJitter augmentation.Jitter augmentation.Jitter saturation hue generator cropped
    let grey =
        if x.shape[1] = 3L then Photometric.randomGrayscale augmentation.GrayscaleProbability generator jittered else jittered
    let flipped = Geometric.randomHorizontalFlip augmentation.FlipProbability generator grey
    (standardise data flipped).MoveToOuterDisposeScope()

/// `f` applied to the images a Bernoulli(p) draw per image picks, the draw made first (torchvision's RandomApply); p ≤ 0
/// draws nothing. images (B, C, H, W) → (B, C, H, W).
let sometimes (generator: torch.Generator) (p: float) (f: torch.Tensor -> torch.Tensor) (images: torch.Tensor) =
    if p <= 0.0 then images
    else torch.where((Draw.bernoulli generator p images.shape[0] images.device).view(-1L, 1L, 1L, 1L), f images, images)

/// One random multi-crop view of each image in [0, 1] (SwAV's MultiCropDataset, DINO's DataAugmentationDINO before its
/// blur and solarisation): a resized crop of `scale` of its area to side x side, a flip, colour jitter applied with
/// probability `jitterProbability`, random grayscale; `augmentation`'s CropScale is not read. The caller standardises.
/// [0, 1] images (B, C, H, W) → (B, C, side, side).
let multiCropPixels (augmentation: Augmentation) (jitterProbability: float) (scale: float * float) (side: int64)
                    (generator: torch.Generator) (x: torch.Tensor) =
    use scope = torch.NewDisposeScope()
    let saturation, hue = if x.shape[1] = 3L then augmentation.ColourJitter else (0.0, 0.0)
    let jittered =
        Geometric.randomResizedCrop scale (3.0 / 4.0, 4.0 / 3.0) (side, side) generator x
        |> Geometric.randomHorizontalFlip augmentation.FlipProbability generator
        |> sometimes generator jitterProbability (Photometric.colorJitter augmentation.Jitter augmentation.Jitter saturation hue generator)
    let grey = if x.shape[1] = 3L then Photometric.randomGrayscale augmentation.GrayscaleProbability generator jittered else jittered
    grey.MoveToOuterDisposeScope()

/// `multiCropPixels`, standardised for the encoder. [0, 1] images (B, C, H, W) → (B, C, side, side).
let resizedView (augmentation: Augmentation) (jitterProbability: float) (scale: float * float) (side: int64) (data: Data)
                (generator: torch.Generator) (x: torch.Tensor) =
    use scope = torch.NewDisposeScope()
    (standardise data (multiCropPixels augmentation jitterProbability scale side generator x)).MoveToOuterDisposeScope()

/// Two random views (`view`) of each image at `batch`, drawn in that order with the step's generator.
let twoViews (augmentation: Augmentation) (data: Data) (step: Ssl.Host.Engine.StepContext) (batch: int64[]) =
    let x = unitPixels data batch step.Device
    let first = view augmentation data step.Generator x
    first, view augmentation data step.Generator x

/// The batch-norm groups one rank runs when a recipe's `groups` split the global batch of `world`:
/// groups / ranks of them on its consecutive rows, so the groups are one process's at any world size.
let rankGroups (world: ICollectives) (groups: int) =
    if groups % world.Size <> 0 then
        invalidArg "Groups" $"Groups: expected a multiple of the {world.Size} ranks (each rank runs Groups / ranks batch-norm groups of the global batch), found {groups}"
    groups / world.Size

/// `forward` on `groups` equal sub-batches of the global batch, each alone through batch norm (one
/// emulated device each, as MoCo's 8-GPU batch is); x is this rank's rows, which hold
/// `rankGroups world groups` of them. The groups keep their own statistics under synchronised batch
/// norm too (SyncBatchNorm.PerGroup): a recipe's groups say which rows share statistics. Small groups
/// also run at a much higher share of the CPU's peak than one large batch (bench: 32-image groups at
/// 66%, a 512-image batch at 27%). x: (n, ...), n a multiple of the rank's groups → outputs in x's order.
let perGroup (world: ICollectives) (groups: int) (forward: torch.Tensor -> torch.Tensor) (x: torch.Tensor) =
    let local = rankGroups world groups
    if x.shape[0] % int64 local <> 0L then
        invalidArg "batch" $"batch: expected a multiple of {local} images (one group per emulated device), found {x.shape[0]}"
    use scope = torch.NewDisposeScope()
    use _ownStatistics = if groups > 1 then SyncBatchNorm.PerGroup() else null
    let outputs = x.chunk(int64 local, 0L) |> Array.map forward
    torch.cat(outputs, 0L).MoveToOuterDisposeScope()

/// `forward` per group after a random shuffle of the global batch's rows across the groups
/// (`generator`, a draw every rank makes alike); this rank gets its own rows back in x's order (MoCo's
/// batch_shuffle_ddp / batch_unshuffle_ddp, He et al. 2020 Sec. 3.3: at several ranks the rows travel
/// between them by all-gather), so which rows share batch statistics is random. x is `blocks` equal
/// blocks (SimCLR's two views: 2), each this rank's rows of one global block, and the global batch is
/// laid out as one process lays it out, block by block, so ranks shuffle as one process does. Gradients
/// flow when they are enabled. With one group every row shares the statistics anyway: `forward x`, no
/// shuffle and no draw.
let shuffledPerGroup (world: ICollectives) (groups: int) (blocks: int) (generator: torch.Generator) (forward: torch.Tensor -> torch.Tensor) (x: torch.Tensor) =
    if groups = 1 then forward x else
    if x.shape[0] % int64 blocks <> 0L then
        invalidArg "x" $"x: expected {blocks} equal blocks of rows, found {x.shape[0]} rows"
    use scope = torch.NewDisposeScope()
    let ranks, rows = int64 world.Size, x.shape[0] / int64 blocks
    // Gathered (ranks, blocks, rows, ...) → one process's (blocks, ranks, rows, ...), and back for this rank's rows.
    let toGlobal (gathered: torch.Tensor) =
        if world.Size = 1 then gathered
        else gathered.reshape(Array.append [| ranks; int64 blocks; rows |] gathered.shape[1..]).transpose(0L, 1L).reshape(Array.append [| -1L |] gathered.shape[1..])
    let own (all: torch.Tensor) =
        if world.Size = 1 then all
        else all.reshape(Array.append [| int64 blocks; ranks; rows |] all.shape[1..]).select(1L, int64 world.Rank).reshape(Array.append [| -1L |] all.shape[1..])
    let all = toGlobal (GatherFunction.Gather(world, x))
    let order = torch.randperm(all.shape[0], generator = generator, device = x.device)
    // This rank's share of the shuffled rows: its consecutive slice, the groups' boundaries one process's.
    let mine = if world.Size = 1 then order else order.narrow(0L, int64 world.Rank * x.shape[0], x.shape[0])
    let shuffled = perGroup world groups forward (all.index_select(0L, mine))
    (own (GatherFunction.Gather(world, shuffled).index_select(0L, order.argsort()))).MoveToOuterDisposeScope()
