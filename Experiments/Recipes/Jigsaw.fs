/// Jigsaw puzzles: unsupervised learning of visual representations by solving jigsaw puzzles
/// (Noroozi & Favaro, ECCV 2016). Each image is cut into 3 x 3 tiles with random gaps between them
/// (Sec. 3: a random tile inside each cell), the tiles are shuffled by one permutation of a fixed
/// set of maximal Hamming distance (Sec. 3.2, Algorithm 1), every tile goes through one shared tile
/// encoder (the context-free network, Fig. 3), and a classifier on the nine features, concatenated
/// in shuffled order, predicts the permutation's index (cross-entropy). Against shortcuts (Sec.
/// 3.2): the random gaps stop edge continuity, and each tile is standardised on its own; the colour
/// tricks are left out (grey data). The evaluated encoder is the tile encoder on whole images (fully
/// convolutional with a global pool); the classifier is dropped. Measured runs: docs/experiments/jigsaw.md.
module Ssl.Experiments.Recipes.Jigsaw

open TorchSharp
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Experiments

/// The paper's CFN: per-tile fc6 (512), the nine concatenated into fc7 (4096) and fc8 (one logit per
/// permutation); here the encoder's pooled features stand for fc6 and an MLP (hidden `HiddenDim`,
/// batch norm, ReLU) for fc7 + fc8. SGD with Nesterov momentum and cosine decay (the paper: SGD
/// from 0.01, 350k iterations of batch 256).
type Config =
    { /// The paper's is an AlexNet-style net; ours SmallConvNet (any Backbone).
      Encoder: Backbone
      /// Cell and tile sides in pixels (the paper: 75 and 64 in a 225-pixel crop).
      [<Range(1.0)>] CellSize: int64
      [<Range(1.0)>] TileSize: int64
      /// Size of the permutation set (the paper: 1000; its Table 3 compares 100 to 1000).
      [<Range(1.0, 362880.0)>] Permutations: int
      /// Seed of the permutation set's first permutation (the set is then deterministic).
      PermutationSeed: int64
      [<Range(1.0)>] HiddenDim: int64
      Schedule: TrainingSchedule
      /// The branch (SmallConvNet's block 2) pooled 3 x 3, as RotNet (docs/experiments/jigsaw.md).
      Probe: Probe }

/// `paper`: 75-pixel cells, 64-pixel tiles, 1000 permutations, fc7 4096, width 32. `quick` and
/// `smoke` at 28 x 28: 9-pixel cells and 7-pixel tiles (gaps of 0-4 px; the 27-pixel puzzle covers
/// the image) and 100 permutations (larger sets need longer training than our budget), width 16;
/// a puzzle is 441 input pixels, so `quick` trains 5 epochs.
let config preset =
    let paper =
        { Encoder = SmallConvNet 32L; CellSize = 75L; TileSize = 64L; Permutations = 1000; PermutationSeed = 0L; HiddenDim = 4096L
          Probe = Probe.Branch 3L; Schedule = { Epochs = 100; BatchSize = 256; LearningRate = 0.1; WeightDecay = 5e-4; WarmupEpochs = 0.0 } }
    let small =
        { paper with Encoder = SmallConvNet 16L; CellSize = 9L; TileSize = 7L; Permutations = 100; HiddenDim = 512L
                     Schedule = { paper.Schedule with BatchSize = 128 } }
    match preset with
    | Smoke -> { small with Schedule.Epochs = 1 }
    | Quick -> { small with Schedule.Epochs = 5 }
    | Paper -> paper

/// The permutation set (its own generator: no draw from the seeded global one), the tile encoder
/// and the classifier. A step: a puzzle per image, the nine tiles through the shared encoder in one
/// batch, their features concatenated in the shuffled order and classified into the permutation
/// set. result.json's extra figures describe the set.
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let set = Patches.permutationSet config.Permutations config.PermutationSeed
    let permutations = ctx.Own(Patches.permutationTensor set ctx.Device)
    let encoder = ctx.NewEncoder()
    let classifier = new MlpHead(9L * encoder.FeatureDim, config.HiddenDim, int64 config.Permutations)
    let optimizers = [ optimizer "main" (Optim.nesterov config.Schedule) [ encoder; classifier ] ]
    let def =
        stepOf [ "encoder" => encoder; "classifier" => classifier ] optimizers (fun step batch ->
            let x = Features.ToInput(ctx.Data.Train.Batch(batch), ctx.Data.Mean, ctx.Data.Std, step.Device)
            let tiles, labels = Patches.jigsaw permutations config.CellSize config.TileSize step.Generator x
            let count = tiles.shape[0]
            let flat = tiles.view(count * 9L, tiles.shape[2], tiles.shape[3], tiles.shape[4])
            let logits = classifier.forward(encoder.forward(Patches.normaliseTiles flat).view(count, -1L))
            let loss = torch.nn.functional.cross_entropy(logits, labels)
            [ "loss", step.Optimize("main", loss); "permutation_acc", accuracy logits labels ])
    { ctx.Train(encoder, def) with
        Extra = fun () ->
            [ "permutation_set_size", float set.Permutations.Length; "permutation_set_minimum_hamming", float set.MinimumHamming
              "permutation_set_mean_hamming", set.MeanHamming ] }

let spec =
    { backboneSpec "jigsaw" "Noroozi & Favaro 2016, Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles"
        selfSupervised config (fun config -> config.Encoder) build with
        CheckData = fun config data -> requireSide $"jigsaw with {config.CellSize}-pixel cells" (3L * config.CellSize) data }
