/// VAT + EntMin, the semi-supervised baseline S4L compares with (Zhai et al. 2019, Sec. 4 and
/// Table 1): virtual adversarial training (Miyato, Maeda, Koyama & Ishii 2018, TPAMI) plus entropy
/// minimisation (Grandvalet & Bengio 2005). Each step a labelled and an unlabelled batch of equal
/// size; the loss is the cross-entropy on the labelled batch + α·KL(p(y|x) || p(y|x + r_vadv)) +
/// β·H(p(y|x)), the last two on both batches (S4L's code applies VAT and EntMin to the labelled
/// images too: google-research/s4l, config/vat_entmin.sh, --apply_vat_to_labeled). r_vadv: one
/// power-iteration step with xi = 1e-2 from a Gaussian draw, scaled to norm ε (Miyato et al.
/// 2018, Sec. 3.3; Ssl.Core.Losses.Vat). The perturbed forward passes leave the batch-norm
/// running statistics alone, as S4L's code does (momentum 1 in TensorFlow's convention).
/// S4L's code takes the KL the other way round, KL(p(y|x + r) || p(y|x)); we keep the VAT paper's
/// order, in which p(y|x) is the fixed target.
///
/// xi: the papers' 1e-6 does not survive float32 here. Spread over 784 pixels, a step of 1e-6 is
/// below the rounding of standardised inputs of order 1, and on a 28x28 conv net the float32
/// direction had cosine -0.50 to 0.55 with the float64 power iteration (measured 2026-11-28, two
/// seeds); 1e-3 and 1e-2 gave > 0.998 and 10 (lyakaap/VAT-pytorch's value) 0.63-0.83. We use
/// 1e-2, as few-shot-ssl-public's TensorFlow fewshot/models/VAT_utils.py does; the float32-against-float64 test
/// `core.losses.vat` holds it there.
module Ssl.Experiments.Recipes.VatEntMin

open System
open System.Collections.Generic
open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Host.Engine
open Ssl.Host.Runs
open Ssl.Host.Runtime
open Ssl.Experiments.Recipe
open Ssl.Experiments.Pipeline

/// S4L's VAT + EntMin on ImageNet (config/vat_entmin.sh): ResNet-50v2, batch 256 + 256, SGD at
/// 0.03, weight decay 1e-3, α = 0.5, β = 1 (EntMin's weight also 1 in Miyato et al. 2018's
/// VAT + EntMin), ε = 40 on 224x224x3 inputs in [-1, 1], xi = 1e-6 (1e-2 here, see above), one power iteration.
/// ε scaled to our inputs: VAT's MNIST setting, ε = 2.0 on 28x28 [0, 1] pixels (a per-pixel RMS of
/// 0.071, near S4L's 0.051 in [0, 1] units), converted to our standardised inputs by dividing by
/// the training set's pixel std (2.0 / 0.353 = 5.7 on Fashion-MNIST). Optimiser, weight decay and
/// schedule are those of our supervised-only baseline, batches of 64 + 64 images.
type Config =
    { /// SmallConvNet base width (see Supervised.Config.Width).
      Width: int64
      /// Passes over the unlabelled pool.
      Epochs: int
      LabelledBatch: int
      UnlabelledBatch: int
      /// α: weight of the VAT loss.
      VatWeight: float
      /// β: weight of the entropy of the predictions.
      EntropyWeight: float
      /// ε: L2 norm of each image's perturbation, in [0, 1] pixel units.
      EpsilonPixels: float
      /// xi: the finite-difference step of the power iteration.
      Xi: float
      PowerIterations: int
      LearningRate: float
      WeightDecay: float
      WarmupEpochs: float }

/// `quick`: width 16, one pass over the ~60,000-image unlabelled pool at 64 + 64 images a step
/// (936 steps, each about 3 forward and 3 backward passes of 128 images), sized to the 2-core
/// budget; `paper`: width 32, 30 passes at S4L's 256 + 256; `smoke`: one pass over the smoke subset.
let config preset =
    let quick =
        { Width = 16L; Epochs = 1; LabelledBatch = 64; UnlabelledBatch = 64; VatWeight = 0.5; EntropyWeight = 1.0
          EpsilonPixels = 2.0; Xi = 1e-2; PowerIterations = 1; LearningRate = 0.1; WeightDecay = 5e-4; WarmupEpochs = 0.05 }
    match preset with
    | Smoke -> { quick with LabelledBatch = 32; UnlabelledBatch = 32 }
    | Quick -> quick
    | Paper -> { quick with Width = 32L; Epochs = 30; LabelledBatch = 256; UnlabelledBatch = 256 }

let encoder (preset: Preset) (channels: int64) : Encoder = new SmallConvNet(channels, (config preset).Width)

/// One step: one clean forward pass of both batches; cross-entropy on the labelled part, entropy
/// and the VAT loss on all of it.
type Step(parts: S4L.Parts, config: Config) =
    let encoder, classifier, data, split = parts.Encoder, parts.Classifier, parts.Data, parts.Split
    let spec =
        OptimizerSpec(Kind = OptimizerKind.Sgd, LearningRate = config.LearningRate, Momentum = 0.9, Nesterov = true,
                      WeightDecay = config.WeightDecay, WarmupEpochs = config.WarmupEpochs)
    let epsilon = config.EpsilonPixels / Array.average data.Std
    let classify (x: torch.Tensor) = classifier.forward(encoder.forward x)
    interface ITrainingStep with
        member _.Modules = readOnlyDict [ "encoder", (encoder :> torch.nn.Module); "classifier", (classifier :> torch.nn.Module) ]
        member _.Optimizers =
            [| struct ("main", spec, Seq.append (encoder.named_parameters ()) (classifier.named_parameters ())) |] :> IReadOnlyList<_>
        member _.State = readOnlyDict []
        member _.Step(ctx, batch) =
            let labelledIdx = S4L.labelledBatch ctx.Generator ctx.Device split.Labelled config.LabelledBatch
            let y = S4L.labelsOf data ctx.Device labelledIdx
            let prepare indices = unitPixels data indices ctx.Device |> S4L.lightAugment ctx.Generator |> standardise data
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
                           "entropy", float (entropy.item<float32>()); "train_acc", S4L.accuracy classLogits y ]

/// `ssl train vat-entmin [--labels N]`: N labels per class (default 10), the rest unlabelled.
let run (request: Request) (env: RunEnvironment) (folder: RunFolder) : RunResult =
    let config = config request.Preset
    S4L.run request env folder config.Width config (fun parts ->
        let options =
            S4L.trainerOptions request parts config.Epochs config.UnlabelledBatch $"vat-entmin {config} n={parts.Split.Labelled.Length}"
        Trainer.Run(Step(parts, config), options, folder, env.Device, ConsoleProgress()))

let recipe =
    { Name = "vat-entmin"
      Paper = "Miyato et al. 2018 (VAT) + Grandvalet & Bengio 2005 (EntMin), the baseline of Zhai et al. 2019 (S4L)"
      Presets = [ Smoke; Quick; Paper ]
      Run = run
      Encoder = encoder }
