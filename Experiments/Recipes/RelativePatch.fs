/// Relative patch location: unsupervised visual representation learning by context prediction
/// (Doersch, Gupta & Efros, ICCV 2015). A centre patch and one of its eight neighbours are cut on a
/// 3 x 3 grid with a gap and a random jitter between them (Sec. 3, Fig. 2), both go through one
/// shared patch encoder (the siamese "pair" network of Fig. 3), and a classifier on the two
/// concatenated feature vectors says which neighbour it is (an 8-way softmax, cross-entropy).
/// The gap stops the network following lines across the boundary, the jitter matching edge
/// positions (Sec. 3.1); the paper's chromatic-aberration trick targets colour fringes and is left
/// out (Fashion-MNIST is grey). The evaluated encoder is the patch encoder on whole images (fully
/// convolutional with a global pool); the pair classifier is dropped, as the paper keeps only the
/// conv layers (Sec. 4). Measured runs: docs/experiments/relative-patch.md.
module Ssl.Experiments.Recipes.RelativePatch

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

/// The paper's pair network: per-patch fc6, concatenated, fc7 (4096), fc8 (8); here the encoder's
/// pooled features stand for fc6 and an MLP (hidden `HiddenDim`, batch norm, ReLU) for fc7 + fc8.
/// SGD with Nesterov momentum and cosine decay (the paper: Caffe's SGD, about four weeks on a K40).
type Config =
    { /// The paper's is an AlexNet-style net; ours SmallConvNet (any Backbone).
      Encoder: Backbone
      /// Patch side, gap between patches and maximal jitter, in pixels (the paper: 96, 48, 7).
      [<Range(1.0)>] PatchSize: int64
      [<Range(0.0)>] Gap: int64
      [<Range(0.0)>] Jitter: int64
      [<Range(1.0)>] HiddenDim: int64
      [<Range(1.0)>] Epochs: int
      [<Range(1.0)>] BatchSize: int
      [<Range(0.0)>] LearningRate: float
      [<Range(0.0)>] WeightDecay: float
      /// The layer the protocols read ("" = the output; "branch" = the input of the encoder's last
      /// stage, SmallConvNet's block 2) and its pooled size, as RotNet (docs/experiments/relative-patch.md).
      ProbeLayer: string
      [<Range(1.0)>] ProbePool: int64 }

/// `paper`: the paper's geometry, for images of at least 3·96 + 2·48 + 14 = 398 pixels, width 32,
/// fc7 of 4096. `quick` and `smoke` at 28 x 28: 6-pixel patches, 3-pixel gaps, jitter ±1 (the grid
/// spans 24 px, 26 with jitter; the gap never closes; jitter 1/6 of a patch, the paper's 7/96),
/// width 16; a pair is 72 input pixels, so `quick` trains 15 epochs.
let config preset =
    let paper =
        { Encoder = SmallConvNet 32L; PatchSize = 96L; Gap = 48L; Jitter = 7L; HiddenDim = 4096L; Epochs = 100; BatchSize = 256
          LearningRate = 0.1; WeightDecay = 5e-4; ProbeLayer = "branch"; ProbePool = 3L }
    let small = { paper with Encoder = SmallConvNet 16L; PatchSize = 6L; Gap = 3L; Jitter = 1L; HiddenDim = 512L }
    match preset with
    | Smoke -> { small with Epochs = 1 }
    | Quick -> { small with Epochs = 15 }
    | Paper -> paper

/// One step: a (centre, neighbour) pair per image, both through the shared encoder in one batch,
/// the concatenated pair features classified into the 8 neighbour positions.
type Step(encoder: Encoder, classifier: MlpHead, data: Data, config: Config) =
    let spec = nesterov config.LearningRate config.WeightDecay 0.0
    interface ITrainingStep with
        member _.Modules = readOnlyDict [ "encoder", (encoder :> torch.nn.Module); "classifier", (classifier :> torch.nn.Module) ]
        member _.Optimizers =
            [| struct ("main", spec, Seq.append (encoder.named_parameters ()) (classifier.named_parameters ())) |] :> IReadOnlyList<_>
        member _.Step(ctx, batch) =
            let x = Features.ToInput(data.Train.Batch(batch), data.Mean, data.Std, ctx.Device)
            let centres, neighbours, labels, _ = Patches.relativePatchPairs config.PatchSize config.Gap config.Jitter ctx.Generator x
            let count = centres.shape[0]
            let features = encoder.forward(torch.cat([| centres; neighbours |], 0L))
            let pairs = torch.cat([| features.narrow(0L, 0L, count); features.narrow(0L, count, count) |], 1L)
            let logits = classifier.forward pairs
            let loss = torch.nn.functional.cross_entropy(logits, labels)
            let value = ctx.Optimize("main", loss)
            let accuracy = logits.argmax(1L).eq(labels).to_type(torch.ScalarType.Float32).mean().item<float32>()
            readOnlyDict [ "loss", value; "position_acc", float accuracy ]

let build (c: Context<Config>) =
    let encoder = c.NewEncoder()
    let classifier = new MlpHead(2L * encoder.FeatureDim, c.Config.HiddenDim, 8L)
    { training (Step(encoder, classifier, c.Data, c.Config)) c.Config.Epochs c.Config.BatchSize encoder c with
        Probe = Ssl.Experiments.ConfigParts.Probe.OfLayer(c.Config.ProbeLayer, c.Config.ProbePool); Owned = [ encoder; classifier ] }

/// Images large enough for the 3 x 3 grid with its gaps and jitter.
let checkData (config: Config) (data: Data) =
    let needed = 3L * config.PatchSize + 2L * config.Gap + 2L * config.Jitter
    if data.Train.Height < needed || data.Train.Width < needed then
        invalidArg "--dataset" $"--dataset: relative-patch with {config.PatchSize}-pixel patches, gap {config.Gap} and jitter {config.Jitter} needs images of at least {needed}x{needed}, found {data.Train.Height}x{data.Train.Width}"

let spec =
    { backboneSpec "relative-patch" "Doersch et al. 2015, Unsupervised Visual Representation Learning by Context Prediction"
        selfSupervised config (fun c -> c.Encoder) build with
        CheckData = checkData }
