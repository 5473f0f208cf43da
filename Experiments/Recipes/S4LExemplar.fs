/// S4L-Exemplar (Zhai, Oliver, Kolesnikov & Beyer 2019, "S4L: Self-Supervised Semi-Supervised
/// Learning", Sec. 3.2): each step a labelled and an unlabelled batch of equal size, every image
/// augmented into 8 copies (Inception crop, flip, HSV noise, as Exemplar); the loss is the class
/// cross-entropy on all labelled copies plus w·L_exemplar (eq. 1, w = 1), a triplet loss on the
/// L2-normalised output of a linear embedding layer, averaged over the two batches, copies of one
/// image being positives (google-research/s4l, semi_supervised/exemplar.py). Left out: the paper's
/// later stages (Sec. 5: Mix Of All Models, pseudo-labels).
/// Measured runs: docs/experiments/s4l-exemplar.md.
module Ssl.Experiments.Recipes.S4LExemplar

open System.Collections.Generic
open TorchSharp
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Host.Engine
open Ssl.Experiments.Recipe
open Ssl.Experiments.Backbone
open Ssl.Experiments.Configs
open Ssl.Experiments.Pipeline
open Ssl.Experiments.Template
open Ssl.Experiments.SemiSupervised

/// The paper trains ResNet-50v2 (width x4) on ImageNet: batch 512 labelled + 512 unlabelled images
/// of 8 copies each, SGD with learning rate 0.1, weight decay 1e-3, w = 1, a 1000-d embedding,
/// Inception crops of area (0.05, 1) at 224 px. Scaled here to the optimiser and schedule of our
/// supervised-only baseline.
type Config =
    { /// The paper's is ResNet-50v2 x4; ours SmallConvNet (any Backbone).
      Encoder: Backbone
      /// Passes over the unlabelled pool.
      [<Range(1.0)>] Epochs: int
      [<Range(1.0)>] LabelledBatch: int
      [<Range(1.0)>] UnlabelledBatch: int
      /// Augmented copies of every image (paper: 8).
      [<Range(1.0)>] Copies: int
      /// The paper's is half its 2048-d features; ours 128, twice our 64-d ones: the triplet loss
      /// needs room to separate the batch's instances.
      [<Range(1.0)>] EmbeddingDim: int64
      /// w of eq. 1.
      [<Range(0.0)>] TripletWeight: float
      /// BatchHard (S4L's code) or SemiHard (Exemplar.TripletForm).
      Triplet: Exemplar.TripletForm
      /// Margin of the semi-hard loss.
      [<Range(0.0)>] Margin: float
      /// Area range of the crop: (0.25, 1) where the paper's (0.05, 1), as a 5% crop of a 28 px garment shows little of it.
      CropScale: float * float
      [<Range(0.0, 1.0)>] FlipProbability: float
      [<Range(0.0)>] LearningRate: float
      [<Range(0.0)>] WeightDecay: float
      [<Range(0.0)>] WarmupEpochs: float }

/// `quick`: width 16, one pass over the ~60,000-image unlabelled pool at 24 + 24 images (8 copies
/// each, 384 a step), sized to the 2-core budget, with the semi-hard triplet loss (margin 0.5);
/// `paper`: width 32, 30 passes at 256 + 256, S4L's batch-hard loss; `smoke`: one pass over the
/// smoke subset with 4 copies (it proves the wiring only).
let config preset =
    let quick =
        { Encoder = SmallConvNet 16L; Epochs = 1; LabelledBatch = 24; UnlabelledBatch = 24; Copies = 8; EmbeddingDim = 128L
          TripletWeight = 1.0; Triplet = Exemplar.SemiHard; Margin = 0.5; CropScale = (0.25, 1.0); FlipProbability = 0.5
          LearningRate = 0.1; WeightDecay = 5e-4; WarmupEpochs = 0.05 }
    match preset with
    | Smoke -> { quick with LabelledBatch = 32; UnlabelledBatch = 32; Copies = 4 }
    | Quick -> quick
    | Paper ->
        { quick with Encoder = SmallConvNet 32L; Epochs = 30; LabelledBatch = 256; UnlabelledBatch = 256; Triplet = Exemplar.BatchHard }

/// One step: `Copies` augmented copies of every labelled and unlabelled image through the encoder at
/// once; class cross-entropy on the labelled copies; the triplet loss (Config.Triplet) on the
/// L2-normalised embeddings of each batch, copies of the same image being positives.
type Step(parts: Parts, embeddingHead: LinearHead, config: Config) =
    let encoder, classifier, data, split = parts.Encoder, parts.Classifier, parts.Data, parts.Split
    let spec = nesterov config.LearningRate config.WeightDecay config.WarmupEpochs
    let copies = int64 config.Copies
    interface ITrainingStep with
        member _.Modules =
            readOnlyDict [ "encoder", (encoder :> torch.nn.Module); "classifier", (classifier :> torch.nn.Module)
                           "embedding_head", (embeddingHead :> torch.nn.Module) ]
        member _.Optimizers =
            let parameters = Seq.concat [ encoder.named_parameters (); classifier.named_parameters (); embeddingHead.named_parameters () ]
            [| struct ("main", spec, parameters) |] :> IReadOnlyList<_>
        member _.Step(ctx, batch) =
            let labelledIdx = labelledBatch ctx.Generator split.Labelled config.LabelledBatch
            // Copy c of image n sits at row n·Copies + c, so an image's instance id is row / Copies.
            let exemplars (indices: int64[]) =
                let images = unitPixels data indices ctx.Device
                let h, w = images.shape[2], images.shape[3]
                images.repeat_interleave(copies, dim = 0L)
                |> Geometric.randomResizedCrop config.CropScale (3.0 / 4.0, 4.0 / 3.0) (h, w) ctx.Generator
                |> Geometric.randomHorizontalFlip config.FlipProbability ctx.Generator
                |> Photometric.valueNoise ctx.Generator
                |> standardise data
            let labelled = exemplars labelledIdx
            let unlabelled = exemplars (batch |> Array.map (fun i -> split.Unlabelled[int i]))
            let y = (labelsOf data ctx.Device labelledIdx).repeat_interleave(copies, dim = 0L)
            let nl = labelled.shape[0]
            let features = encoder.forward(torch.cat([| labelled; unlabelled |], 0L))
            let classLogits = classifier.forward(features.narrow(0L, 0L, nl))
            let embeddings = torch.nn.functional.normalize(embeddingHead.forward features, dim = 1L)
            let triplet (rows: torch.Tensor) =
                let instances = torch.arange((rows.shape[0] / copies).ToScalar(), device = ctx.Device).repeat_interleave(copies, dim = 0L)
                Exemplar.tripletLoss config.Triplet config.Margin rows instances
            let tripletLoss =
                (triplet (embeddings.narrow(0L, 0L, nl)) + triplet (embeddings.narrow(0L, nl, embeddings.shape[0] - nl))) / 2.0
            let classLoss = torch.nn.functional.cross_entropy(classLogits, y)
            let loss = classLoss + config.TripletWeight * tripletLoss
            let value = ctx.Optimize("main", loss)
            readOnlyDict [ "loss", value; "class_loss", float (classLoss.item<float32>())
                           "triplet_loss", float (tripletLoss.item<float32>()); "train_acc", accuracy classLogits y ]

/// `--labels N` per class (default 10), the rest unlabelled: the encoder and classifier, then the embedding head.
let build (c: Context<Config>) =
    let parts = parts c
    let embeddingHead = new LinearHead(parts.Encoder.FeatureDim, c.Config.EmbeddingDim)
    trainingOf c parts (Step(parts, embeddingHead, c.Config)) c.Config.Epochs c.Config.UnlabelledBatch [ embeddingHead ]

let spec =
    backboneSpec "s4l-exemplar" "Zhai et al. 2019, S4L: Self-Supervised Semi-Supervised Learning (S4L-Exemplar)"
        semiSupervised config (fun c -> c.Encoder) build
