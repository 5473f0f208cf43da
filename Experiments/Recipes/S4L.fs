/// What the S4L recipes (Zhai, Oliver, Kolesnikov & Beyer 2019, "S4L: Self-Supervised
/// Semi-Supervised Learning", ICCV) and the VAT + EntMin baseline they compare with share: the
/// few-label split (`--labels N` per class, default 10), a labelled and an unlabelled mini-batch
/// of equal size every step (Sec. 3: min_θ L_l(D_l, θ) + w·L_u(D_u, θ), "the minibatch sizes of
/// D_l and D_u are equal"), one forward pass over their concatenation (the authors' code,
/// google-research/s4l, semi_supervised/utils.py apply_model_semi), linear heads on the
/// encoder's features, and the run: training, the classifier's test accuracy beside
/// supervised-only on the same labels, then Pipeline.finish.
module Ssl.Experiments.Recipes.S4L

open System
open TorchSharp
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Host.Data
open Ssl.Host.Engine
open Ssl.Host.Runs
open Ssl.Host.Runtime
open Ssl.Experiments.Recipe
open Ssl.Experiments.Pipeline

/// Labels per class when `--labels` is absent.
let defaultLabelsPerClass = 10

/// `size` indices of the labelled examples, drawn without replacement with the step's generator
/// (in several rounds when the labelled set is smaller than `size`), so every step sees a fresh
/// labelled batch while the engine's sampler walks the unlabelled pool.
let labelledBatch (generator: torch.Generator) (device: torch.Device) (labelled: int64[]) (size: int) : int64[] =
    let n = int64 labelled.Length
    let rounds = (int64 size + n - 1L) / n
    let order =
        Array.init (int rounds) (fun _ ->
            use permutation = torch.randperm(n, generator = generator, device = device)
            permutation.cpu().data<int64>().ToArray())
        |> Array.concat
    Array.init size (fun i -> labelled[int order[i]])


/// Labels of the training examples at `indices`, on `device`.
let labelsOf (data: Data) (device: torch.Device) (indices: int64[]) =
    use idx = torch.tensor(indices)
    use labels = data.Train.Labels.index_select(0L, idx)
    labels.``to``(device)

/// The light augmentation of the supervised-only baseline (Supervised.Config: random resized crop
/// of scale (0.8, 1), horizontal flip with p = 0.5), standing in for the Inception crop and flip
/// that S4L applies to both batches, so the semi-supervised recipes and their baseline see the same
/// labelled views. images: (N, C, H, W) → same shape.
let lightAugment (generator: torch.Generator) (images: torch.Tensor) =
    let supervised = Supervised.config Quick
    images
    |> Geometric.randomResizedCrop supervised.CropScale (3.0 / 4.0, 4.0 / 3.0) (images.shape[2], images.shape[3]) generator
    |> Geometric.randomHorizontalFlip supervised.FlipProbability generator

/// Fraction of rows where argmax(logits) equals `labels`.
let accuracy (logits: torch.Tensor) (labels: torch.Tensor) =
    use correct = logits.argmax(1L).eq(labels).to_type(torch.ScalarType.Float32)
    float (correct.mean().item<float32>())

/// The encoder, the linear classifier and the split a semi-supervised recipe trains.
type Parts =
    { Data: Data
      Split: LabelSplit
      Encoder: SmallConvNet
      Classifier: LinearHead }

/// A run of a semi-supervised recipe: writes config.json, draws the split, builds a SmallConvNet of
/// `width` and a linear classifier, calls `train` (which runs the engine and returns its summary),
/// measures the classifier's test accuracy, trains (or reads from runs/.cache) the supervised-only
/// baseline on the same labels, and finishes with every protocol (Pipeline.finish).
let run (request: Request) (env: RunEnvironment) (folder: RunFolder) (width: int64) (config: 'Config)
        (train: Parts -> TrainSummary) : RunResult =
    let perClass = defaultArg request.Labels defaultLabelsPerClass
    let request = { request with Labels = Some perClass }
    folder.WriteConfig {| method = request.Method; preset = Preset.name request.Preset; dataset = request.Dataset
                          labels_per_class = perClass; seed = request.Seed; device = env.DeviceName; threads = env.Threads
                          deterministic = env.Deterministic; encoder = $"SmallConvNet(width={width})"; config = config |}
    use data = loadData request
    let split = LabelSplitter.Draw(data.Train, perClass, request.Seed)
    torch.manual_seed(request.Seed) |> ignore
    use encoder = new SmallConvNet(data.Train.Channels, width)
    use classifier = new LinearHead(encoder.FeatureDim, int64 data.Classes)
    encoder.``to``(env.Device) |> ignore
    classifier.``to``(env.Device) |> ignore
    let summary = train { Data = data; Split = split; Encoder = encoder; Classifier = classifier }
    let testAcc = Supervised.testAccuracy encoder classifier data env.Device
    let supervisedOnly =
        Supervised.supervisedOnlyCached request (Supervised.config request.Preset).Width data perClass folder env.Device
    let makeEncoder () : Encoder = new SmallConvNet(data.Train.Channels, width)
    finish request env folder data encoder $"SmallConvNet{width}" makeEncoder summary (Some testAcc) (Some supervisedOnly)

/// Engine options for a semi-supervised recipe: an epoch is one pass over the unlabelled pool in
/// batches of `unlabelledBatch`.
let trainerOptions (request: Request) (parts: Parts) (epochs: int) (unlabelledBatch: int) (digest: string) =
    TrainerOptions(Epochs = epochs, BatchSize = unlabelledBatch, ExampleCount = int64 parts.Split.Unlabelled.Length,
                   Seed = request.Seed, Resume = request.Resume, ConfigDigest = digest, LogEvery = 50)
