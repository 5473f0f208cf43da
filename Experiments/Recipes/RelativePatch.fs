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

open TorchSharp
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Experiments

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
      Schedule: TrainingSchedule
      /// The branch (SmallConvNet's block 2) pooled 3 x 3, as RotNet (docs/experiments/relative-patch.md).
      Probe: Probe }

/// `paper`: the paper's geometry, for images of at least 3·96 + 2·48 + 14 = 398 pixels, width 32,
/// fc7 of 4096. `quick` and `smoke` at 28 x 28: 6-pixel patches, 3-pixel gaps, jitter ±1 (the grid
/// spans 24 px, 26 with jitter; the gap never closes; jitter 1/6 of a patch, the paper's 7/96),
/// width 16; a pair is 72 input pixels, so `quick` trains 15 epochs.
let config preset =
    let paper =
        { Encoder = SmallConvNet 32L; PatchSize = 96L; Gap = 48L; Jitter = 7L; HiddenDim = 4096L; Probe = Probe.Branch 3L
          Schedule = { Epochs = 100; BatchSize = 256; LearningRate = 0.1; WeightDecay = 5e-4; WarmupEpochs = 0.0 } }
    let small = { paper with Encoder = SmallConvNet 16L; PatchSize = 6L; Gap = 3L; Jitter = 1L; HiddenDim = 512L }
    match preset with
    | Smoke -> { small with Schedule.Epochs = 1 }
    | Quick -> { small with Schedule.Epochs = 15 }
    | Paper -> paper

/// A (centre, neighbour) pair per image, both through the shared encoder in one batch, the
/// concatenated pair features classified into the 8 neighbour positions.
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let encoder = ctx.NewEncoder()
    let classifier = new MlpHead(2L * encoder.FeatureDim, config.HiddenDim, 8L)
    let optimizers = [ optimizer "main" (Optim.nesterov config.Schedule) [ encoder; classifier ] ]
    ctx.Train(encoder, stepOf [ "encoder" => encoder; "classifier" => classifier ] optimizers (fun step batch ->
        let x = Features.ToInput(ctx.Data.Train.Batch(batch), ctx.Data.Mean, ctx.Data.Std, step.Device)
        let centres, neighbours, labels, _ = Patches.relativePatchPairs config.PatchSize config.Gap config.Jitter step.Generator x
        let count = centres.shape[0]
        let features = encoder.forward(torch.cat([| centres; neighbours |], 0L))
        let pairs = torch.cat([| features.narrow(0L, 0L, count); features.narrow(0L, count, count) |], 1L)
        let logits = classifier.forward pairs
        let loss = torch.nn.functional.cross_entropy(logits, labels)
        [ "loss", step.Optimize("main", loss); "position_acc", accuracy logits labels ]))

/// Images large enough for the 3 x 3 grid with its gaps and jitter.
let checkData (config: Config) (data: Data) =
    let what = $"relative-patch with {config.PatchSize}-pixel patches, gap {config.Gap} and jitter {config.Jitter}"
    requireSide what (3L * config.PatchSize + 2L * config.Gap + 2L * config.Jitter) data

let spec =
    { backboneSpec "relative-patch" "Doersch et al. 2015, Unsupervised Visual Representation Learning by Context Prediction"
        selfSupervised config (fun config -> config.Encoder) build with
        CheckData = checkData }
