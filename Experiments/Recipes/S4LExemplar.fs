/// S4L-Exemplar (Zhai, Oliver, Kolesnikov & Beyer 2019, "S4L: Self-Supervised Semi-Supervised
/// Learning", Sec. 3.2): each step a labelled and an unlabelled batch of equal size, every image
/// augmented into 8 copies (Inception crop, flip, HSV noise, as Exemplar); the loss is the class
/// cross-entropy on all labelled copies plus w·L_exemplar (eq. 1, w = 1), a triplet loss on the
/// L2-normalised output of a linear embedding layer, averaged over the two batches, copies of one
/// image being positives (google-research/s4l, semi_supervised/exemplar.py). Left out: the paper's
/// later stages (Sec. 5: Mix Of All Models, pseudo-labels).
/// Measured runs: docs/experiments/s4l-exemplar.md.
module Ssl.Experiments.Recipes.S4LExemplar

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Experiments

/// The paper trains ResNet-50v2 (width x4) on ImageNet: batch 512 labelled + 512 unlabelled images
/// of 8 copies each, SGD with learning rate 0.1, weight decay 1e-3, w = 1, a 1000-d embedding,
/// Inception crops of area (0.05, 1) at 224 px. Scaled here to the optimiser and schedule of our
/// supervised-only baseline.
type Config =
    { /// The paper's is ResNet-50v2 x4; ours SmallConvNet (any Backbone).
      Encoder: Backbone
      /// Epochs: passes over the unlabelled pool; BatchSize: labelled images a step.
      Schedule: TrainingSchedule
      [<Range(1.0)>] UnlabelledBatch: int
      /// Augmented copies of every image (paper: 8).
      [<Range(1.0)>] Copies: int
      /// The paper's is half its 2048-d features; ours 128, twice our 64-d ones: the triplet loss
      /// needs room to separate the batch's instances.
      [<Range(1.0)>] EmbeddingDim: int64
      /// w of eq. 1.
      [<Range(0.0)>] TripletWeight: float
      /// BatchHard (S4L's code) or SemiHard (Core's Triplet.Form).
      Triplet: Triplet.Form
      /// Margin of the semi-hard loss.
      [<Range(0.0)>] Margin: float
      /// Area range of the crop: (0.25, 1) where the paper's (0.05, 1), as a 5% crop of a 28 px garment shows little of it.
      CropScale: float * float
      [<Range(0.0, 1.0)>] FlipProbability: float }

/// `quick`: width 16, one pass over the ~60,000-image unlabelled pool at 24 + 24 images (8 copies
/// each, 384 a step), sized to the 2-core budget, with the semi-hard triplet loss (margin 0.5);
/// `paper`: width 32, 30 passes at 256 + 256, S4L's batch-hard loss; `smoke`: one pass over the
/// smoke subset with 4 copies (it proves the wiring only).
let config preset =
    let quick =
        { Encoder = SmallConvNet 16L; UnlabelledBatch = 24; Copies = 8; EmbeddingDim = 128L; TripletWeight = 1.0
          Triplet = Triplet.SemiHard; Margin = 0.5; CropScale = (0.25, 1.0); FlipProbability = 0.5
          Schedule = { Epochs = 1; BatchSize = 24; LearningRate = 0.1; WeightDecay = 5e-4; WarmupEpochs = 0.05 } }
    match preset with
    | Smoke -> { quick with UnlabelledBatch = 32; Copies = 4; Schedule = { quick.Schedule with BatchSize = 32 } }
    | Quick -> quick
    | Paper ->
        { quick with Encoder = SmallConvNet 32L; UnlabelledBatch = 256; Triplet = Triplet.BatchHard
                     Schedule = { quick.Schedule with Epochs = 30; BatchSize = 256 } }

/// One step: `Copies` augmented copies of every labelled and unlabelled image through the encoder at
/// once; class cross-entropy on the labelled copies; the triplet loss (Config.Triplet) on the
/// L2-normalised embeddings of each batch, copies of the same image being positives.
let private run (config: Config) (p: Parts) (embeddingHead: LinearHead) (step: StepContext) (batches: Batches) =
    let copies = int64 config.Copies
    // Copy c of image n sits at row n·Copies + c, so an image's instance id is row / Copies.
    let exemplars (indices: int64[]) =
        let images = unitPixels p.Data indices step.Device
        let h, w = images.shape[2], images.shape[3]
        images.repeat_interleave(copies, dim = 0L)
        |> Geometric.randomResizedCrop config.CropScale (3.0 / 4.0, 4.0 / 3.0) (h, w) step.Generator
        |> Geometric.randomHorizontalFlip config.FlipProbability step.Generator
        |> Photometric.valueNoise step.Generator
        |> standardise p.Data
    let labelled = exemplars batches.Labelled
    let unlabelled = exemplars batches.Unlabelled
    let y = (labelsOf p.Data step.Device batches.Labelled).repeat_interleave(copies, dim = 0L)
    let nl = labelled.shape[0]
    let features = p.Encoder.forward(torch.cat([| labelled; unlabelled |], 0L))
    let classLogits = p.Classifier.forward(features.narrow(0L, 0L, nl))
    let embeddings = torch.nn.functional.normalize(embeddingHead.forward features, dim = 1L)
    let triplet (rows: torch.Tensor) =
        let instances = torch.arange((rows.shape[0] / copies).ToScalar(), device = step.Device).repeat_interleave(copies, dim = 0L)
        Triplet.ofForm config.Triplet config.Margin rows instances
    let tripletLoss = (triplet (embeddings.narrow(0L, 0L, nl)) + triplet (embeddings.narrow(0L, nl, embeddings.shape[0] - nl))) / 2.0
    let classLoss = torch.nn.functional.cross_entropy(classLogits, y)
    let value = step.Optimize("main", classLoss + config.TripletWeight * tripletLoss)
    [ "loss", value; "class_loss", float (classLoss.item<float32>()); "triplet_loss", float (tripletLoss.item<float32>())
      "train_acc", accuracy classLogits y ]

/// `--labels N` per class (default 10), the rest unlabelled: the encoder and classifier, then the embedding head.
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let p = parts ctx
    let embeddingHead = new LinearHead(p.Encoder.FeatureDim, config.EmbeddingDim)
    ctx.TrainSemi(p, config.UnlabelledBatch,
        stepOf [ "encoder" => p.Encoder; "classifier" => p.Classifier; "embedding_head" => embeddingHead ]
            [ optimizer "main" (Optim.nesterov config.Schedule) [ p.Encoder; p.Classifier; embeddingHead ] ] (run config p embeddingHead))

let spec =
    backboneSpec "s4l-exemplar" "Zhai et al. 2019, S4L: Self-Supervised Semi-Supervised Learning (S4L-Exemplar)"
        semiSupervised config (fun config -> config.Encoder) build
