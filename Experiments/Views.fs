/// The augmented views that instance-discrimination methods compare (MoCo, InfoNCE): each view is
/// a batched, seeded transform of a batch of training images, drawn independently per image.
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
