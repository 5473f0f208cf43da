/// RotNet: unsupervised representation learning by predicting image rotations (Gidaris, Singh &
/// Komodakis, ICLR 2018). Every image of a batch is shown at 0, 90, 180 and 270 degrees and the
/// network classifies which rotation it sees (Sec. 2.1-2.2: the 4-way rotation loss, all four
/// rotations of an image in the same batch, which the paper found better than sampling one).
/// Measured runs: docs/experiments/rotnet.md.
module Ssl.Experiments.Recipes.RotNet

open System.Collections.Generic
open TorchSharp
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Host.Engine
open Ssl.Host.Eval
open Ssl.Experiments.Recipe
open Ssl.Experiments.Backbone
open Ssl.Experiments.Configs
open Ssl.Experiments.Pipeline
open Ssl.Experiments.Template

/// The paper's CIFAR-10 schedule (Sec. 3.1): SGD, batch 128 images (x4 rotations), momentum 0.9,
/// weight decay 5e-4, learning rate 0.1 dropped by 5x at epochs 30, 60, 80 of 100 (cosine decay here).
type Config =
    { /// The paper's is a Network-In-Network; ours SmallConvNet (any Backbone).
      Encoder: Backbone
      [<Range(1.0)>] Epochs: int
      [<Range(1.0)>] BatchSize: int
      [<Range(0.0)>] LearningRate: float
      [<Range(0.0)>] WeightDecay: float
      [<Range(0.0, 1.0)>] FlipProbability: float
      /// The layer the protocols read ("" = the output; "branch" = the input of the encoder's last
      /// stage, SmallConvNet's block 2) and its pooled size: the paper's best features sit in its
      /// second conv block (Table 1); ours against the output: docs/experiments/rotnet.md.
      ProbeLayer: string
      [<Range(1.0)>] ProbePool: int64 }

/// `quick`: 3 epochs of the 4x-rotated training set at width 16, to fit 15 minutes on 2 cores;
/// `paper`: 100 epochs at width 32; `smoke`: one epoch on the smoke subset.
let config preset =
    let paper =
        { Encoder = SmallConvNet 32L; Epochs = 100; BatchSize = 128; LearningRate = 0.1; WeightDecay = 5e-4; FlipProbability = 0.5
          ProbeLayer = "branch"; ProbePool = 3L }
    match preset with
    | Smoke -> { paper with Encoder = SmallConvNet 16L; Epochs = 1 }
    | Quick -> { paper with Encoder = SmallConvNet 16L; Epochs = 3 }
    | Paper -> paper

/// One step: the batch in all four rotations, a linear rotation classifier on the encoder's features.
type Step(encoder: Encoder, head: LinearHead, data: Data, config: Config) =
    let spec = nesterov config.LearningRate config.WeightDecay 0.0
    interface ITrainingStep with
        member _.Modules = readOnlyDict [ "encoder", (encoder :> torch.nn.Module); "head", (head :> torch.nn.Module) ]
        member _.Optimizers =
            [| struct ("main", spec, Seq.append (encoder.named_parameters ()) (head.named_parameters ())) |] :> IReadOnlyList<_>
        member _.Step(ctx, batch) =
            let x =
                Features.ToInput(data.Train.Batch(batch), data.Mean, data.Std, ctx.Device)
                |> Geometric.randomHorizontalFlip config.FlipProbability ctx.Generator
            let rotated, rotations = Geometric.rotationBatch x
            let logits = head.forward(encoder.forward rotated)
            let loss = torch.nn.functional.cross_entropy(logits, rotations)
            let value = ctx.Optimize("main", loss)
            let accuracy = logits.argmax(1L).eq(rotations).to_type(torch.ScalarType.Float32).mean().item<float32>()
            readOnlyDict [ "loss", value; "rotation_acc", float accuracy ]

let build (c: Context<Config>) =
    let encoder = c.NewEncoder()
    let head = new LinearHead(encoder.FeatureDim, 4L)
    { training (Step(encoder, head, c.Data, c.Config)) c.Config.Epochs c.Config.BatchSize encoder c with
        Probe = (c.Config.ProbeLayer, c.Config.ProbePool); Owned = [ encoder; head ] }

let spec =
    { backboneSpec "rotnet" "Gidaris et al. 2018, Unsupervised Representation Learning by Predicting Image Rotations"
        selfSupervised config (fun c -> c.Encoder) build with
        CheckData = fun _ data -> requireSquare "RotNet" data }
