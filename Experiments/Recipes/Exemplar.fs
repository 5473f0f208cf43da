/// Exemplar: every training image is its own class, seen through heavy augmentation (Dosovitskiy
/// et al., NIPS 2014), in the triplet form of S4L-Exemplar (Zhai et al., ICCV 2019, Sec. 3.1): each
/// image of a batch is copied (the paper: 8 times), every copy augmented independently (crop, flip,
/// rotation, brightness, contrast), and a triplet loss on the L2-normalised output of a linear layer
/// (S4L: ResNet-50's 1000-d logits) pulls an image's copies together and pushes other images' away,
/// where Dosovitskiy's one-logit-per-image softmax does not scale to 60,000 images. S4L's loss is
/// batch-hard with soft margin (Hermans et al. 2017); ours the semi-hard one of the exemplar code S4L
/// builds on (Kolesnikov et al. 2019; why: docs/experiments/exemplar.md). The evaluated
/// encoder is everything before the linear layer. Measured runs: docs/experiments/exemplar.md.
module Ssl.Experiments.Recipes.Exemplar

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Experiments

/// S4L-Exemplar's choices (Sec. 3.1 and 4: 8 copies per image, a triplet loss on a 1000-d
/// representation, SGD with momentum); cosine decay with one warm-up epoch like the other recipes.
type Config =
    { /// The paper's is ResNet-50; ours SmallConvNet (any Backbone).
      Encoder: Backbone
      [<Range(1.0)>] Copies: int
      [<Range(1.0)>] EmbeddingDim: int64
      /// BatchHard (S4L's) or SemiHard (Kolesnikov et al. 2019's), Core's Triplet.Form.
      Triplet: Triplet.Form
      /// The semi-hard loss's margin (on squared distances of unit vectors).
      [<Range(0.0)>] Margin: float
      CropScale: float * float
      [<Range(0.0)>] RotationDegrees: float
      [<Range(0.0)>] Brightness: float
      [<Range(0.0)>] Contrast: float
      [<Range(0.0, 1.0)>] FlipProbability: float
      /// BatchSize: source images per batch; a step sees BatchSize x Copies augmented images.
      Schedule: TrainingSchedule
      /// The branch (SmallConvNet's block 2) pooled 3 x 3, as RotNet, jigsaw and relative patch.
      Probe: Probe }

/// `paper`: 8 copies of 64 images (512 per step), width 32, 100 epochs; `quick`: 8 copies of 32
/// images (480,000 augmented images an epoch), width 16, two epochs to fit 15 minutes on 2 cores
/// (the engine's images_per_s counts source images, not views); `smoke`: one epoch of the smoke subset.
let config preset =
    let paper =
        { Encoder = SmallConvNet 32L; Copies = 8; EmbeddingDim = 1000L; Triplet = Triplet.SemiHard; Margin = 0.5; CropScale = (0.2, 1.0)
          RotationDegrees = 20.0; Brightness = 0.4; Contrast = 0.4; FlipProbability = 0.5; Probe = Probe.Branch 3L
          Schedule = { Epochs = 100; BatchSize = 64; LearningRate = 0.1; WeightDecay = 5e-4; WarmupEpochs = 1.0 } }
    let small = { paper with Encoder = SmallConvNet 16L; Schedule = { paper.Schedule with BatchSize = 32 } }
    match preset with
    | Smoke -> { small with Schedule = { small.Schedule with Epochs = 1; WarmupEpochs = 0.0 } }
    | Quick -> { small with Schedule = { small.Schedule with Epochs = 2; WarmupEpochs = 0.1 } }
    | Paper -> paper

/// Heavily augmented copies: pixels (M, C, H, W) in [0, 1] → standardised (M, C, H, W).
let augment (config: Config) (data: Data) (generator: torch.Generator) (pixels: torch.Tensor) =
    use scope = torch.NewDisposeScope()
    let h, w = pixels.shape[2], pixels.shape[3]
    let cropped = Geometric.randomResizedCrop config.CropScale (3.0 / 4.0, 4.0 / 3.0) (h, w) generator pixels
    let flipped = Geometric.randomHorizontalFlip config.FlipProbability generator cropped
    let rotated, _ = Geometric.randomAffine config.RotationDegrees 0.0 (1.0, 1.0) 0.0 generator flipped
    let jittered = Photometric.colorJitter config.Brightness config.Contrast 0.0 0.0 generator rotated
    (standardise data (jittered.clamp(0.0.ToScalar(), 1.0.ToScalar()))).MoveToOuterDisposeScope()

/// `Copies` augmented views of each source image, embedded and L2-normalised, the triplet loss
/// (Config.Triplet) with the source image as the label.
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let encoder = ctx.NewEncoder()
    let projection = new LinearHead(encoder.FeatureDim, config.EmbeddingDim)
    let optimizers = [ optimizer "main" (Optim.nesterov config.Schedule) [ encoder; projection ] ]
    ctx.Train(encoder, stepOf [ "encoder" => encoder; "projection" => projection ] optimizers (fun step batch ->
        let pixels = unitPixels ctx.Data batch step.Device
        let copies = int64 config.Copies
        let count = pixels.shape[0]
        let views = augment config ctx.Data step.Generator (pixels.repeat(copies, 1L, 1L, 1L))
        let sources = torch.arange(count, dtype = torch.ScalarType.Int64, device = step.Device).repeat(copies)
        let embeddings = torch.nn.functional.normalize(projection.forward(encoder.forward views), dim = 1L)
        let loss = Triplet.ofForm config.Triplet config.Margin embeddings sources
        [ "loss", step.Optimize("main", loss); "copy_retrieval_acc", Triplet.nearestSameLabel embeddings sources ]))

let spec =
    backboneSpec "exemplar" "Dosovitskiy et al. 2014, Exemplar CNN; triplet form of S4L-Exemplar, Zhai et al. 2019"
        selfSupervised config (fun config -> config.Encoder) build
