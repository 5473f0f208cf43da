/// VAT + EntMin, the semi-supervised baseline S4L compares with (Zhai et al. 2019, Sec. 4 and
/// Table 1): virtual adversarial training (Miyato, Maeda, Koyama & Ishii 2018, TPAMI) plus entropy
/// minimisation (Grandvalet & Bengio 2005). Each step a labelled and an unlabelled batch of equal
/// size; the loss is the cross-entropy on the labelled batch + α·KL(p(y|x) || p(y|x + r_vadv)) +
/// β·H(p(y|x)), the last two on both batches (S4L's code applies VAT and EntMin to the labelled
/// images too: google-research/s4l, config/vat_entmin.sh, --apply_vat_to_labeled). r_vadv: one
/// power-iteration step of size xi from a Gaussian draw, scaled to norm ε (Miyato et al. 2018,
/// Sec. 3.3; Ssl.Core.Losses.Vat). The perturbed forward passes leave the batch-norm running
/// statistics alone, as S4L's code does (momentum 1 in TensorFlow's convention). S4L's code takes
/// the KL the other way round, KL(p(y|x + r) || p(y|x)); we keep the VAT paper's order, in which
/// p(y|x) is the fixed target.
/// Measured runs: docs/experiments/vat-entmin.md.
module Ssl.Experiments.Recipes.VatEntMin

open System
open System.Collections.Generic
open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Host.Engine
open Ssl.Experiments
open Ssl.Experiments.Recipe
open Ssl.Experiments.Backbone
open Ssl.Experiments.Configs
open Ssl.Experiments.Pipeline
open Ssl.Experiments.Template

/// S4L's VAT + EntMin on ImageNet (config/vat_entmin.sh): ResNet-50v2, batch 256 + 256, SGD at
/// 0.03, weight decay 1e-3, α = 0.5, β = 1 (EntMin's weight also 1 in Miyato et al. 2018's
/// VAT + EntMin), one power iteration. Optimiser, weight decay and schedule here are those of our
/// supervised-only baseline, batches of 64 + 64 images.
type Config =
    { /// The paper's is ResNet-50v2; ours SmallConvNet (any Backbone).
      Encoder: Backbone
      /// Passes over the unlabelled pool.
      [<Range(1.0)>] Epochs: int
      [<Range(1.0)>] LabelledBatch: int
      [<Range(1.0)>] UnlabelledBatch: int
      /// α: weight of the VAT loss.
      [<Range(0.0)>] VatWeight: float
      /// β: weight of the entropy of the predictions.
      [<Range(0.0)>] EntropyWeight: float
      /// ε: L2 norm of each image's perturbation in [0, 1] pixel units (divided by the pixel std for
      /// our standardised inputs). S4L: 40 on 224x224x3 in [-1, 1]; ours VAT's MNIST 2.0 on 28x28.
      [<Range(0.0)>] EpsilonPixels: float
      /// xi: the power iteration's finite-difference step. The papers' 1e-6 drowns in float32
      /// rounding here; 1e-2 as few-shot-ssl-public's VAT_utils.py (test core.losses.vat).
      [<Range(0.0)>] Xi: float
      [<Range(1.0)>] PowerIterations: int
      [<Range(0.0)>] LearningRate: float
      [<Range(0.0)>] WeightDecay: float
      [<Range(0.0)>] WarmupEpochs: float }

/// `quick`: width 16, one pass over the ~60,000-image unlabelled pool at 64 + 64 images a step
/// (936 steps, each about 3 forward and 3 backward passes of 128 images), sized to the 2-core
/// budget; `paper`: width 32, 30 passes at S4L's 256 + 256; `smoke`: one pass over the smoke subset.
let config preset =
    let quick =
        { Encoder = SmallConvNet 16L; Epochs = 1; LabelledBatch = 64; UnlabelledBatch = 64; VatWeight = 0.5; EntropyWeight = 1.0
          EpsilonPixels = 2.0; Xi = 1e-2; PowerIterations = 1; LearningRate = 0.1; WeightDecay = 5e-4; WarmupEpochs = 0.05 }
    match preset with
    | Smoke -> { quick with LabelledBatch = 32; UnlabelledBatch = 32 }
    | Quick -> quick
    | Paper -> { quick with Encoder = SmallConvNet 32L; Epochs = 30; LabelledBatch = 256; UnlabelledBatch = 256 }

/// One step: one clean forward pass of both batches; cross-entropy on the labelled part, entropy
/// and the VAT loss on all of it.
type Step(parts: SemiSupervised.Parts, config: Config) =
    let encoder, classifier, data, split = parts.Encoder, parts.Classifier, parts.Data, parts.Split
    let spec = nesterov config.LearningRate config.WeightDecay config.WarmupEpochs
    let epsilon = config.EpsilonPixels / Array.average data.Std
    let classify (x: torch.Tensor) = classifier.forward(encoder.forward x)
    interface ITrainingStep with
        member _.Modules = readOnlyDict [ "encoder", (encoder :> torch.nn.Module); "classifier", (classifier :> torch.nn.Module) ]
        member _.Optimizers =
            [| struct ("main", spec, Seq.append (encoder.named_parameters ()) (classifier.named_parameters ())) |] :> IReadOnlyList<_>
        member _.Step(ctx, batch) =
            let labelledIdx = SemiSupervised.labelledBatch ctx.Generator split.Labelled config.LabelledBatch
            let y = SemiSupervised.labelsOf data ctx.Device labelledIdx
            let prepare indices = unitPixels data indices ctx.Device |> SemiSupervised.lightAugment ctx.Generator |> standardise data
            let x = torch.cat([| prepare labelledIdx; prepare (batch |> Array.map (fun i -> split.Unlabelled[int i])) |], 0L)
            let logits = classify x
            let classLogits = logits.narrow(0L, 0L, int64 labelledIdx.Length)
            let classLoss = torch.nn.functional.cross_entropy(classLogits, y)
            let entropy = Entropy.entropy logits
            let vat =
                BatchNorms.withoutRunningUpdates [ encoder :> torch.nn.Module ] (fun () ->
                    Vat.virtualAdversarialLoss config.Xi epsilon config.PowerIterations ctx.Generator classify x logits)
            let loss = classLoss + config.VatWeight * vat + config.EntropyWeight * entropy
            let value = ctx.Optimize("main", loss)
            readOnlyDict [ "loss", value; "class_loss", float (classLoss.item<float32>()); "vat_loss", float (vat.item<float32>())
                           "entropy", float (entropy.item<float32>()); "train_acc", SemiSupervised.accuracy classLogits y ]

/// `--labels N` per class (default 10), the rest the unlabelled pool.
let build (c: Context<Config>) =
    let parts = SemiSupervised.parts c
    SemiSupervised.trainingOf c parts (Step(parts, c.Config)) c.Config.Epochs c.Config.UnlabelledBatch []

let spec =
    backboneSpec "vat-entmin" "Miyato et al. 2018 (VAT) + Grandvalet & Bengio 2005 (EntMin), the baseline of Zhai et al. 2019 (S4L)"
        semiSupervised config (fun c -> c.Encoder) build
