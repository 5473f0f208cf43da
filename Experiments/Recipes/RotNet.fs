/// RotNet: unsupervised representation learning by predicting image rotations (Gidaris, Singh &
/// Komodakis, ICLR 2018). Every image of a batch is shown at 0, 90, 180 and 270 degrees and the
/// network classifies which rotation it sees (Sec. 2.1-2.2: the 4-way rotation loss, all four
/// rotations of an image in the same batch, which the paper found better than sampling one).
///
/// Which features: the paper reads RotNet's features from an inner block (Table 1: the second conv
/// block beats the later ones, which specialise to rotation), so the recipe evaluates the second
/// block, `features.block2b_relu`, average-pooled to 3x3 (Pipeline.probed; 2w·9 = 288 features at
/// width 16), and its random-init baseline reads the same layer. Measured on the quick run of
/// commit 5337d04 (runs/rotnet-quick) with `ssl eval --layer ... --pool 3 [--random-init]`, linear
/// probe trained / random-init: the encoder's output (64-d) 0.814 / 0.787, below raw pixels'
/// 0.8435; block 2 (288-d) 0.8925 / 0.8646; block 3 (576-d) 0.8863 / 0.8570. kNN at block 2:
/// 0.8440 trained. Global average pooling of the last block throws away where in the 28x28 frame
/// a garment's parts are, which Fashion-MNIST's centred classes depend on; the pooled maps keep it.
///
/// The quick preset as it stands (3 epochs; runs/rotnet-quick-3ep, commit 1b75809, seed 0): linear
/// probe 0.8935 and kNN 0.8454 against random-init's 0.8646 / 0.7857 at the same layer (+2.9 points)
/// and raw pixels' 0.8435 / 0.7885; with 10 labels per class 0.7529 against supervised-only's 0.7076
/// on the same labels. The whole command took 14.5 minutes (training 797 s at 225 img/s, a build
/// running beside it for its first minute).
module Ssl.Experiments.Recipes.RotNet

open System.Collections.Generic
open TorchSharp
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Host.Data
open Ssl.Host.Engine
open Ssl.Host.Eval
open Ssl.Host.Runs
open Ssl.Host.Runtime
open Ssl.Experiments.Recipe
open Ssl.Experiments.Pipeline

/// The paper's CIFAR-10 schedule (Sec. 3.1: SGD, batch 128 images (x4 rotations), momentum 0.9,
/// weight decay 5e-4, learning rate 0.1 dropped by 5x at epochs 30, 60, 80 of 100), with cosine
/// decay standing in for the steps, and fewer epochs for the 2-core `quick` budget.
type Config =
    { /// SmallConvNet base width (see Supervised.Config.Width).
      Width: int64
      Epochs: int
      BatchSize: int
      LearningRate: float
      WeightDecay: float
      FlipProbability: float
      /// The layer whose features are evaluated ("" = the encoder's output) and its pooled size
      /// (Pipeline.probed): the paper reads RotNet's features from the second conv block (Table 1).
      ProbeLayer: string
      ProbePool: int64 }

/// `quick`: 3 epochs of the 4x-rotated training set (720,000 images seen) to fit 15 minutes on
/// 2 cores (4 epochs took 16.8 minutes in all: 917 s of training at 261 img/s); `paper`: 100 epochs at width 32; `smoke`: one epoch on the smoke subset.
let config preset =
    let paper =
        { Width = 32L; Epochs = 100; BatchSize = 128; LearningRate = 0.1; WeightDecay = 5e-4; FlipProbability = 0.5
          ProbeLayer = "features.block2b_relu"; ProbePool = 3L }
    match preset with
    | Smoke -> { paper with Width = 16L; Epochs = 1 }
    | Quick -> { paper with Width = 16L; Epochs = 3 }
    | Paper -> paper

let encoder (preset: Preset) (channels: int64) : Encoder = new SmallConvNet(channels, (config preset).Width)

/// One step: the batch in all four rotations, a linear rotation classifier on the encoder's features.
type Step(encoder: Encoder, head: LinearHead, data: Data, config: Config) =
    let spec =
        OptimizerSpec(Kind = OptimizerKind.Sgd, LearningRate = config.LearningRate, Momentum = 0.9, Nesterov = true,
                      WeightDecay = config.WeightDecay)
    interface ITrainingStep with
        member _.Modules = readOnlyDict [ "encoder", (encoder :> torch.nn.Module); "head", (head :> torch.nn.Module) ]
        member _.Optimizers =
            [| struct ("main", spec, Seq.append (encoder.named_parameters ()) (head.named_parameters ())) |] :> IReadOnlyList<_>
        member _.State = readOnlyDict []
        member _.Step(ctx, batch) =
            use idx = torch.tensor(batch)
            let x =
                Features.ToInput(data.Train.Images.index_select(0L, idx), data.Mean, data.Std, ctx.Device)
                |> Geometric.randomHorizontalFlip config.FlipProbability ctx.Generator
            let rotated, rotations = Geometric.rotationBatch x
            let logits = head.forward(encoder.forward rotated)
            let loss = torch.nn.functional.cross_entropy(logits, rotations)
            let value = ctx.Optimize("main", loss)
            let accuracy = logits.argmax(1L).eq(rotations).to_type(torch.ScalarType.Float32).mean().item<float32>()
            readOnlyDict [ "loss", value; "rotation_acc", float accuracy ]

/// `ssl train rotnet`: pre-train on the unlabelled training images, then every protocol.
let run (request: Request) (env: RunEnvironment) (folder: RunFolder) : RunResult =
    let config = config request.Preset
    folder.WriteConfig {| method = "rotnet"; preset = Preset.name request.Preset; dataset = request.Dataset; seed = request.Seed
                          device = env.DeviceName; threads = env.Threads; deterministic = env.Deterministic
                          encoder = $"SmallConvNet(width={config.Width})"; config = config |}
    use data = loadData request
    if data.Train.Height <> data.Train.Width then
        invalidArg "--dataset" $"--dataset: RotNet needs square images, found {data.Train.Height}x{data.Train.Width}"
    torch.manual_seed(request.Seed) |> ignore
    use encoder = new SmallConvNet(data.Train.Channels, config.Width)
    use head = new LinearHead(encoder.FeatureDim, 4L)
    encoder.``to``(env.Device) |> ignore
    head.``to``(env.Device) |> ignore
    let options =
        TrainerOptions(Epochs = config.Epochs, BatchSize = config.BatchSize, ExampleCount = data.Train.Count, Seed = request.Seed,
                       Resume = request.Resume, ConfigDigest = $"rotnet {config}", LogEvery = 50)
    let summary = Trainer.Run(Step(encoder, head, data, config), options, folder, env.Device, ConsoleProgress())
    Supervised.finishPretext request env folder data encoder config.ProbeLayer config.ProbePool summary

let recipe =
    { Name = "rotnet"
      Paper = "Gidaris et al. 2018, Unsupervised Representation Learning by Predicting Image Rotations"
      Presets = [ Smoke; Quick; Paper ]
      Run = run
      Encoder = encoder }
