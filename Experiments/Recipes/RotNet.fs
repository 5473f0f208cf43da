/// RotNet: unsupervised representation learning by predicting image rotations (Gidaris, Singh &
/// Komodakis, ICLR 2018). Every image of a batch is shown at 0, 90, 180 and 270 degrees and the
/// network classifies which rotation it sees (Sec. 2.1-2.2: the 4-way rotation loss, all four
/// rotations of an image in the same batch, which the paper found better than sampling one).
/// Measured runs: docs/experiments/rotnet.md.
module Ssl.Experiments.Recipes.RotNet

open TorchSharp
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Experiments

/// The paper's CIFAR-10 schedule (Sec. 3.1): SGD, batch 128 images (x4 rotations), momentum 0.9,
/// weight decay 5e-4, learning rate 0.1 dropped by 5x at epochs 30, 60, 80 of 100 (cosine decay here).
type Config =
    { /// The paper's is a Network-In-Network; ours SmallConvNet (any Backbone).
      Encoder: Backbone
      Schedule: TrainingSchedule
      [<Range(0.0, 1.0)>] FlipProbability: float
      /// The paper's best features sit in its second conv block (Table 1): the branch, SmallConvNet's
      /// block 2, pooled 3 x 3; ours against the output: docs/experiments/rotnet.md.
      Probe: Probe }

/// `quick`: 3 epochs of the 4x-rotated training set at width 16, to fit 15 minutes on 2 cores;
/// `paper`: 100 epochs at width 32; `smoke`: one epoch on the smoke subset.
let config preset =
    let paper =
        { Encoder = SmallConvNet 32L; FlipProbability = 0.5; Probe = Probe.Branch 3L
          Schedule = { Epochs = 100; BatchSize = 128; LearningRate = 0.1; WeightDecay = 5e-4; WarmupEpochs = 0.0 } }
    match preset with
    | Smoke -> { paper with Encoder = SmallConvNet 16L; Schedule.Epochs = 1 }
    | Quick -> { paper with Encoder = SmallConvNet 16L; Schedule.Epochs = 3 }
    | Paper -> paper

/// The batch in all four rotations, a linear rotation classifier on the encoder's features.
let rotationStep (config: Config) (data: Data) (encoder: Encoder) (head: LinearHead) =
    stepOf [ "encoder" => encoder; "head" => head ] [ optimizer "main" (Optim.nesterov config.Schedule) [ encoder; head ] ] (fun step batch ->
        let x =
            Features.ToInput(data.Train.Batch(batch), data.Mean, data.Std, step.Device)
            |> Geometric.randomHorizontalFlip config.FlipProbability step.Generator
        let rotated, rotations = Geometric.rotationBatch x
        let logits = head.forward(encoder.forward rotated)
        let loss = torch.nn.functional.cross_entropy(logits, rotations)
        [ "loss", step.Optimize("main", loss); "rotation_acc", accuracy logits rotations ])

let build (ctx: Context<Config>) =
    let encoder = ctx.NewEncoder()
    ctx.Train(encoder, rotationStep ctx.Config ctx.Data encoder (new LinearHead(encoder.FeatureDim, 4L)))

let spec =
    { backboneSpec "rotnet" "Gidaris et al. 2018, Unsupervised Representation Learning by Predicting Image Rotations"
        selfSupervised config (fun config -> config.Encoder) build with
        CheckData = fun _ data -> requireSquare "RotNet" data }
