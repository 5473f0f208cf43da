/// S4L-Exemplar (Zhai, Oliver, Kolesnikov & Beyer 2019, "S4L: Self-Supervised Semi-Supervised
/// Learning", Sec. 3.2): each step a labelled and an unlabelled batch of equal size; every image
/// is augmented into 8 copies (Inception crop, horizontal flip, HSV noise, as in Exemplar,
/// Dosovitskiy et al. 2014), and the batch-hard triplet loss with soft margin (Hermans et al.
/// 2017) pulls the copies of an image together and pushes other images away in an embedding
/// space, on the unlabelled and the labelled batch; the loss is the supervised cross-entropy plus
/// w·L_exemplar with w = 1 (Sec. 3, eq. 1). As in the authors' code (google-research/s4l,
/// semi_supervised/exemplar.py, config/s4l_exemplar.sh): the embedding is a linear layer on the
/// features (1000-d there), L2-normalised before the loss, margin 0; the triplet loss is the mean
/// of its value on the two batches; the class loss is applied to all 8 copies of each labelled
/// image. Left out: the paper's later stages (Sec. 5, Mix Of All Models, retraining on
/// pseudo-labels, fine-tuning). The quick preset departs from S4L's loss: it uses the semi-hard
/// triplet loss, because the batch-hard one collapsed here (see `config`).
module Ssl.Experiments.Recipes.S4LExemplar

open System.Collections.Generic
open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Host.Engine
open Ssl.Host.Runs
open Ssl.Host.Runtime
open Ssl.Experiments.Recipe
open Ssl.Experiments.Pipeline

/// The paper trains ResNet-50v2 (width x4) on ImageNet: batch 512 labelled + 512 unlabelled images
/// of 8 copies each, SGD with learning rate 0.1, weight decay 1e-3, w = 1, embedding 1000-d,
/// Inception crops of area (0.05, 1) at 224 px. Scaled here: the SmallConvNet and the optimiser and
/// schedule of our supervised-only baseline, batches of 24 + 24 images (384 copies a step), a
/// 128-d embedding (the paper's is half its 2048-d features wide, ours twice our 64-d ones: the
/// triplet loss needs room to separate 24 instances), and crops of area (0.25, 1): a 5% crop of a
/// 28 px garment is a 6 px patch that shows little of the garment.
type Config =
    { /// SmallConvNet base width (see Supervised.Config.Width).
      Width: int64
      /// Passes over the unlabelled pool.
      Epochs: int
      LabelledBatch: int
      UnlabelledBatch: int
      /// Augmented copies of every image (paper: 8).
      Copies: int
      EmbeddingDim: int64
      /// w of eq. 1.
      TripletWeight: float
      /// Exemplar.TripletForm.BatchHard (S4L's code) or Exemplar.TripletForm.SemiHard.
      Triplet: string
      /// Margin of the semi-hard loss.
      Margin: float
      CropScale: float * float
      FlipProbability: float
      LearningRate: float
      WeightDecay: float
      WarmupEpochs: float }

/// `quick`: width 16, one pass over the ~60,000-image unlabelled pool at 24 + 24 images (8 copies
/// each) a step, sized to the 2-core budget, with the semi-hard triplet loss (margin 0.5): with
/// S4L's batch-hard loss the triplet term collapsed here (runs/s4l-exemplar-quick-10, commit
/// 98dc5cc: 0.7125 at step 150, 0.6968 at step 900, towards ln 2 = 0.6931, its value when every
/// embedding is the same), as it did in Exemplar (see Exemplar's module doc); that run's test
/// accuracy, 0.7318 against supervised-only's 0.7076, came from its class loss. Measured with the
/// semi-hard quick preset (commits 10d7710 / 474b3de, same code): 10 labels per class 0.7544 against
/// supervised-only's 0.7076 (runs/s4l-exemplar-semihard-10, 671 s of training at 89 img/s, 11.8
/// minutes in all; the triplet term fell 0.48 → 0.14, the collapsed value being the margin, 0.5);
/// 100 labels per class 0.8525 against 0.8328 (runs/s4l-exemplar-semihard-100, 1,092 s of training
/// at 54 img/s on a slower stretch of the machine, 19.0 minutes in all, within the 20 but barely). `paper`: width 32, 30 passes at 256 + 256, S4L's batch-hard
/// loss; `smoke`: one pass over the smoke subset with 4 copies (it proves the wiring only).
let config preset =
    let quick =
        { Width = 16L; Epochs = 1; LabelledBatch = 24; UnlabelledBatch = 24; Copies = 8; EmbeddingDim = 128L
          TripletWeight = 1.0; Triplet = Exemplar.TripletForm.SemiHard; Margin = 0.5; CropScale = (0.25, 1.0); FlipProbability = 0.5; LearningRate = 0.1; WeightDecay = 5e-4
          WarmupEpochs = 0.05 }
    match preset with
    | Smoke -> { quick with LabelledBatch = 32; UnlabelledBatch = 32; Copies = 4 }
    | Quick -> quick
    | Paper -> { quick with Width = 32L; Epochs = 30; LabelledBatch = 256; UnlabelledBatch = 256; Triplet = Exemplar.TripletForm.BatchHard }

let encoder (preset: Preset) (channels: int64) : Encoder = new SmallConvNet(channels, (config preset).Width)

/// The HSV noise of S4L's Exemplar preprocessing (google-research/s4l, preprocess.py
/// get_hsvnoise_preprocess, "similarly to the Exemplar paper"): per image v' = clamp(v^(2^a)·2^b + c,
/// 0, 1) with a ~ U(-2, 2), b ~ U(-0.5, 0.5), c ~ U(-0.1, 0.1), on the saturation and value
/// channels, and a hue shift. A grey image has saturation 0 and value = its pixel value, so there the
/// noise acts on the pixels; on colour images we apply the value noise to every channel and leave hue
/// and saturation alone. images: (N, C, H, W) in [0, 1] → same shape.
let valueNoise (generator: torch.Generator) (images: torch.Tensor) =
    use scope = torch.NewDisposeScope()
    let n = images.shape[0]
    let uniform (low: float) (high: float) =
        torch.rand([| n; 1L; 1L; 1L |], dtype = images.dtype, device = images.device, generator = generator) * (high - low) + low
    let powerOfTwo (exponent: torch.Tensor) = (exponent * log 2.0).exp()
    let power = powerOfTwo (uniform -2.0 2.0)
    let scale = powerOfTwo (uniform -0.5 0.5)
    let shift = uniform -0.1 0.1
    (images.clamp_min(0.0).pow(power) * scale + shift).clamp(0.0.ToScalar(), 1.0.ToScalar()).MoveToOuterDisposeScope()

/// One step: `Copies` augmented copies of every labelled and unlabelled image through the encoder at
/// once; class cross-entropy on the labelled copies; the triplet loss (Config.Triplet) on the
/// L2-normalised embeddings of each batch, copies of the same image being positives.
type Step(parts: S4L.Parts, embeddingHead: LinearHead, config: Config) =
    let encoder, classifier, data, split = parts.Encoder, parts.Classifier, parts.Data, parts.Split
    let spec =
        OptimizerSpec(Kind = OptimizerKind.Sgd, LearningRate = config.LearningRate, Momentum = 0.9, Nesterov = true,
                      WeightDecay = config.WeightDecay, WarmupEpochs = config.WarmupEpochs)
    let copies = int64 config.Copies
    interface ITrainingStep with
        member _.Modules =
            readOnlyDict [ "encoder", (encoder :> torch.nn.Module); "classifier", (classifier :> torch.nn.Module)
                           "embedding_head", (embeddingHead :> torch.nn.Module) ]
        member _.Optimizers =
            let parameters = Seq.concat [ encoder.named_parameters (); classifier.named_parameters (); embeddingHead.named_parameters () ]
            [| struct ("main", spec, parameters) |] :> IReadOnlyList<_>
        member _.State = readOnlyDict []
        member _.Step(ctx, batch) =
            let labelledIdx = S4L.labelledBatch ctx.Generator ctx.Device split.Labelled config.LabelledBatch
            // Copy c of image n sits at row n·Copies + c, so an image's instance id is row / Copies.
            let exemplars (indices: int64[]) =
                let images = unitPixels data indices ctx.Device
                let h, w = images.shape[2], images.shape[3]
                images.repeat_interleave(copies, dim = 0L)
                |> Geometric.randomResizedCrop config.CropScale (3.0 / 4.0, 4.0 / 3.0) (h, w) ctx.Generator
                |> Geometric.randomHorizontalFlip config.FlipProbability ctx.Generator
                |> valueNoise ctx.Generator
                |> standardise data
            let labelled = exemplars labelledIdx
            let unlabelled = exemplars (batch |> Array.map (fun i -> split.Unlabelled[int i]))
            let y = (S4L.labelsOf data ctx.Device labelledIdx).repeat_interleave(copies, dim = 0L)
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
                           "triplet_loss", float (tripletLoss.item<float32>()); "train_acc", S4L.accuracy classLogits y ]

/// `ssl train s4l-exemplar [--labels N]`: N labels per class (default 10), the rest unlabelled.
let run (request: Request) (env: RunEnvironment) (folder: RunFolder) : RunResult =
    let config = config request.Preset
    S4L.run request env folder config.Width config (fun parts ->
        use embeddingHead = new LinearHead(parts.Encoder.FeatureDim, config.EmbeddingDim)
        embeddingHead.``to``(env.Device) |> ignore
        let options =
            S4L.trainerOptions request parts config.Epochs config.UnlabelledBatch $"s4l-exemplar {config} n={parts.Split.Labelled.Length}"
        Trainer.Run(Step(parts, embeddingHead, config), options, folder, env.Device, ConsoleProgress()))

let recipe =
    { Name = "s4l-exemplar"
      Paper = "Zhai et al. 2019, S4L: Self-Supervised Semi-Supervised Learning (S4L-Exemplar)"
      Presets = [ Smoke; Quick; Paper ]
      Run = run
      Encoder = encoder }
