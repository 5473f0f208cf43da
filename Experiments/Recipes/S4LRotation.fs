/// S4L-Rotation (Zhai, Oliver, Kolesnikov & Beyer 2019, "S4L: Self-Supervised Semi-Supervised Learning", Sec. 3.1):
/// each step a labelled and an unlabelled batch of equal size; every image of both batches is shown at 0, 90, 180 and
/// 270 degrees and a 4-way rotation head classifies the rotation (L_rot = 1/|R| Σ_r L(f(x^r), r), eq. 2, RotNet's
/// task); the loss is the supervised cross-entropy on the labelled batch plus w·L_rot with w = 1 (Sec. 3, eq. 1; "we
/// also apply the self-supervised loss to the labelled images"). As in the authors' code (google-research/s4l,
/// semi_supervised/rotation.py), the rotation loss is the mean of its value on the unlabelled and on the labelled
/// images, and the two heads are linear layers on the same features. That code also applies the class loss to all
/// four rotations of a labelled image; we apply it to the upright images only, as the paper's L_l on D_l reads and as
/// the test images come. Left out: the paper's later stages (Sec. 5, Mix Of All Models, retraining on pseudo-labels,
/// fine-tuning).
module Ssl.Experiments.Recipes.S4LRotation

open TorchSharp
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Experiments

/// The paper trains ResNet-50v2 (width x4) on ImageNet with SGD (momentum 0.9), batch 256 labelled + 256 unlabelled
/// images (each in 4 rotations), weight decay 1e-3, learning rate 0.03 with warm-up and steps
/// (config/s4l_rotation.sh), w = 1. Scaled here: the optimiser, weight decay and warm-up + cosine schedule of our
/// supervised-only baseline (so the comparison isolates the method), batches of 64 + 64 images.
type Config =
    { /// The paper's is ResNet-50v2 (x4); ours SmallConvNet (any Backbone).
      Encoder: Backbone
      /// Epochs: passes over the unlabelled pool; BatchSize: labelled images a step.
      Schedule: TrainingSchedule
      [<Range(1.0)>] UnlabelledBatch: int
      /// w of eq. 1.
      [<Range(0.0)>] RotationWeight: float }

/// `quick`: width 16, one pass over the ~60,000-image unlabelled pool at 64 + 64 images a step (936 steps, 479,000
/// images through the network in 4 rotations), sized to the 2-core budget; `paper`: width 32, 30 passes at the
/// paper's 256 + 256; `smoke`: one pass over the smoke subset.
let config preset =
    let quick =
        { Encoder = SmallConvNet 16L; UnlabelledBatch = 64; RotationWeight = 1.0
          Schedule = { Epochs = 1; BatchSize = 64; LearningRate = 0.1; WeightDecay = 5e-4; WarmupEpochs = 0.05 } }
    match preset with
    | Smoke -> { quick with UnlabelledBatch = 32; Schedule = { quick.Schedule with BatchSize = 32 } }
    | Quick -> quick
    | Paper -> { quick with Encoder = SmallConvNet 32L; UnlabelledBatch = 256; Schedule = { quick.Schedule with Epochs = 30; BatchSize = 256 } }

/// One step: both batches lightly augmented, in all four rotations, through the encoder at once; class cross-entropy
/// on the upright labelled images, rotation cross-entropy on everything.
let private run (config: Config) (p: Parts) (rotationHead: LinearHead) (step: StepContext) (batches: Batches) =
    let y = labelsOf p.Data step.Device batches.Labelled
    let prepare indices = unitPixels p.Data indices step.Device |> lightAugment step.Generator |> standardise p.Data
    let labelled = prepare batches.Labelled
    let unlabelled = prepare batches.Unlabelled
    // rotationBatch puts rotation k of image n at row k·N + n: rows 0..N-1 are the upright images.
    let rotatedLabelled, rotationsLabelled = Geometric.rotationBatch labelled
    let rotatedUnlabelled, rotationsUnlabelled = Geometric.rotationBatch unlabelled
    let nl = rotatedLabelled.shape[0]
    let features = p.Encoder.forward(torch.cat([| rotatedLabelled; rotatedUnlabelled |], 0L))
    let classLogits = p.Classifier.forward(features.narrow(0L, 0L, labelled.shape[0]))
    let rotationLogits = rotationHead.forward features
    let rotationLabelled = torch.nn.functional.cross_entropy(rotationLogits.narrow(0L, 0L, nl), rotationsLabelled)
    let rotationUnlabelled = torch.nn.functional.cross_entropy(rotationLogits.narrow(0L, nl, rotationLogits.shape[0] - nl), rotationsUnlabelled)
    let rotationLoss = (rotationLabelled + rotationUnlabelled) / 2.0
    let classLoss = torch.nn.functional.cross_entropy(classLogits, y)
    let value = step.Optimize("main", classLoss + config.RotationWeight * rotationLoss)
    let rotations = torch.cat([| rotationsLabelled; rotationsUnlabelled |], 0L)
    [ "loss", value; "class_loss", float (classLoss.item<float32>()); "rotation_loss", float (rotationLoss.item<float32>())
      "train_acc", accuracy classLogits y; "rotation_acc", accuracy rotationLogits rotations ]

/// `--labels N` per class (default 10), the rest the unlabelled pool.
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let p = parts ctx
    let rotationHead = new LinearHead(p.Encoder.FeatureDim, 4L)
    ctx.TrainSemi(p, config.UnlabelledBatch,
        stepOf [ "encoder" => p.Encoder; "classifier" => p.Classifier; "rotation_head" => rotationHead ]
            [ optimizer "main" (Optim.nesterov config.Schedule) [ p.Encoder; p.Classifier; rotationHead ] ] (run config p rotationHead))

let spec =
    { backboneSpec "s4l-rotation" "Zhai et al. 2019, S4L: Self-Supervised Semi-Supervised Learning (S4L-Rotation)"
        semiSupervised config (fun config -> config.Encoder) build with
        CheckData = fun _ data -> requireSquare "S4L-Rotation" data }
