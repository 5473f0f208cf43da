/// S4L-Rotation (Zhai, Oliver, Kolesnikov & Beyer 2019, "S4L: Self-Supervised Semi-Supervised
/// Learning", Sec. 3.1): each step a labelled and an unlabelled batch of equal size; every image of
/// both batches is shown at 0, 90, 180 and 270 degrees and a 4-way rotation head classifies the
/// rotation (L_rot = 1/|R| Σ_r L(f(x^r), r), eq. 2, RotNet's task); the loss is the supervised
/// cross-entropy on the labelled batch plus w·L_rot with w = 1 (Sec. 3, eq. 1; "we also apply the
/// self-supervised loss to the labelled images"). As in the authors' code
/// (google-research/s4l, semi_supervised/rotation.py), the rotation loss is the mean of its value
/// on the unlabelled and on the labelled images, and the two heads are linear layers on the same
/// features. That code also applies the class loss to all four rotations of a labelled image; we
/// apply it to the upright images only, as the paper's L_l on D_l reads and as the test images
/// come. Left out: the paper's later stages (Sec. 5, Mix Of All Models, retraining on
/// pseudo-labels, fine-tuning).
module Ssl.Experiments.Recipes.S4LRotation

open System.Collections.Generic
open TorchSharp
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Host.Engine
open Ssl.Experiments
open Ssl.Experiments.Recipe
open Ssl.Experiments.Backbone
open Ssl.Experiments.Configs
open Ssl.Experiments.Pipeline
open Ssl.Experiments.Template

/// The paper trains ResNet-50v2 (width x4) on ImageNet with SGD (momentum 0.9), batch 256
/// labelled + 256 unlabelled images (each in 4 rotations), weight decay 1e-3, learning rate 0.03
/// with warm-up and steps (config/s4l_rotation.sh), w = 1. Scaled here: the optimiser, weight decay
/// and warm-up + cosine schedule of our supervised-only baseline (so the comparison isolates the
/// method), batches of 64 + 64 images.
type Config =
    { /// The paper's is ResNet-50v2 (x4); ours SmallConvNet (any Backbone).
      Encoder: Backbone
      /// Passes over the unlabelled pool.
      [<Range(1.0)>] Epochs: int
      [<Range(1.0)>] LabelledBatch: int
      [<Range(1.0)>] UnlabelledBatch: int
      /// w of eq. 1.
      [<Range(0.0)>] RotationWeight: float
      [<Range(0.0)>] LearningRate: float
      [<Range(0.0)>] WeightDecay: float
      [<Range(0.0)>] WarmupEpochs: float }

/// `quick`: width 16, one pass over the ~60,000-image unlabelled pool at 64 + 64 images a step
/// (936 steps, 479,000 images through the network in 4 rotations), sized to the 2-core budget;
/// `paper`: width 32, 30 passes at the paper's 256 + 256; `smoke`: one pass over the smoke subset.
let config preset =
    let quick =
        { Encoder = SmallConvNet 16L; Epochs = 1; LabelledBatch = 64; UnlabelledBatch = 64; RotationWeight = 1.0
          LearningRate = 0.1; WeightDecay = 5e-4; WarmupEpochs = 0.05 }
    match preset with
    | Smoke -> { quick with LabelledBatch = 32; UnlabelledBatch = 32 }
    | Quick -> quick
    | Paper -> { quick with Encoder = SmallConvNet 32L; Epochs = 30; LabelledBatch = 256; UnlabelledBatch = 256 }

/// One step: both batches lightly augmented, in all four rotations, through the encoder at once;
/// class cross-entropy on the upright labelled images, rotation cross-entropy on everything.
type Step(parts: SemiSupervised.Parts, rotationHead: LinearHead, config: Config) =
    let encoder, classifier, data, split = parts.Encoder, parts.Classifier, parts.Data, parts.Split
    let spec = nesterov config.LearningRate config.WeightDecay config.WarmupEpochs
    interface ITrainingStep with
        member _.Modules =
            readOnlyDict [ "encoder", (encoder :> torch.nn.Module); "classifier", (classifier :> torch.nn.Module)
                           "rotation_head", (rotationHead :> torch.nn.Module) ]
        member _.Optimizers =
            let parameters = Seq.concat [ encoder.named_parameters (); classifier.named_parameters (); rotationHead.named_parameters () ]
            [| struct ("main", spec, parameters) |] :> IReadOnlyList<_>
        member _.Step(ctx, batch) =
            let labelledIdx = SemiSupervised.labelledBatch ctx.Generator split.Labelled config.LabelledBatch
            let y = SemiSupervised.labelsOf data ctx.Device labelledIdx
            let prepare indices = unitPixels data indices ctx.Device |> SemiSupervised.lightAugment ctx.Generator |> standardise data
            let labelled = prepare labelledIdx
            let unlabelled = prepare (batch |> Array.map (fun i -> split.Unlabelled[int i]))
            // rotationBatch puts rotation k of image n at row k·N + n: rows 0..N-1 are the upright images.
            let rotatedLabelled, rotationsLabelled = Geometric.rotationBatch labelled
            let rotatedUnlabelled, rotationsUnlabelled = Geometric.rotationBatch unlabelled
            let nl = rotatedLabelled.shape[0]
            let features = encoder.forward(torch.cat([| rotatedLabelled; rotatedUnlabelled |], 0L))
            let classLogits = classifier.forward(features.narrow(0L, 0L, labelled.shape[0]))
            let rotationLogits = rotationHead.forward features
            let rotationLabelled = torch.nn.functional.cross_entropy(rotationLogits.narrow(0L, 0L, nl), rotationsLabelled)
            let rotationUnlabelled =
                torch.nn.functional.cross_entropy(rotationLogits.narrow(0L, nl, rotationLogits.shape[0] - nl), rotationsUnlabelled)
            let rotationLoss = (rotationLabelled + rotationUnlabelled) / 2.0
            let classLoss = torch.nn.functional.cross_entropy(classLogits, y)
            let loss = classLoss + config.RotationWeight * rotationLoss
            let value = ctx.Optimize("main", loss)
            let rotations = torch.cat([| rotationsLabelled; rotationsUnlabelled |], 0L)
            readOnlyDict [ "loss", value; "class_loss", float (classLoss.item<float32>())
                           "rotation_loss", float (rotationLoss.item<float32>())
                           "train_acc", SemiSupervised.accuracy classLogits y; "rotation_acc", SemiSupervised.accuracy rotationLogits rotations ]

/// `--labels N` per class (default 10), the rest the unlabelled pool.
let build (c: Context<Config>) =
    let parts = SemiSupervised.parts c
    let rotationHead = new LinearHead(parts.Encoder.FeatureDim, 4L)
    SemiSupervised.trainingOf c parts (Step(parts, rotationHead, c.Config)) c.Config.Epochs c.Config.UnlabelledBatch [ rotationHead ]

let spec =
    { backboneSpec "s4l-rotation" "Zhai et al. 2019, S4L: Self-Supervised Semi-Supervised Learning (S4L-Rotation)"
        semiSupervised config (fun c -> c.Encoder) build with
        CheckData = fun _ data -> requireSquare "S4L-Rotation" data }
