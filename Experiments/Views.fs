/// The augmented views that instance-discrimination methods compare (MoCo, InfoNCE): each view is
/// a batched, seeded transform of a batch of training images, drawn independently per image.
[<AutoOpen>]
module Ssl.Experiments.Views

open TorchSharp
open Ssl.Core.Transforms
open Ssl.Experiments.Pipeline

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

/// `forward` on `groups` equal sub-batches of `x`, each alone through batch norm (one emulated
/// device each, as MoCo's 8-GPU batch is). Small groups also run at a much higher share of the CPU's
/// peak than one large batch (bench: 32-image groups at 66%, a 512-image batch at 27%).
/// x: (N, ...) with N a multiple of `groups` → the outputs in x's row order.
let perGroup (groups: int) (forward: torch.Tensor -> torch.Tensor) (x: torch.Tensor) =
    if x.shape[0] % int64 groups <> 0L then
        invalidArg "batch" $"batch: expected a multiple of {groups} images (one group per emulated device), found {x.shape[0]}"
    use scope = torch.NewDisposeScope()
    let outputs = x.chunk(int64 groups, 0L) |> Array.map forward
    torch.cat(outputs, 0L).MoveToOuterDisposeScope()

/// `forward` per group after a random shuffle of the rows across the groups (`generator`); the rows
/// come back in x's order (MoCo's batch_shuffle / batch_unshuffle, He et al. 2020 Sec. 3.3), so
/// which rows share batch statistics is random. Gradients flow when they are enabled. With one
/// group every row shares the statistics anyway: `forward x`, no shuffle and no draw.
let shuffledPerGroup (groups: int) (generator: torch.Generator) (forward: torch.Tensor -> torch.Tensor) (x: torch.Tensor) =
    if groups = 1 then forward x else
    use scope = torch.NewDisposeScope()
    let order = torch.randperm(x.shape[0], generator = generator, device = x.device)
    let shuffled = perGroup groups forward (x.index_select(0L, order))
    shuffled.index_select(0L, order.argsort()).MoveToOuterDisposeScope()
