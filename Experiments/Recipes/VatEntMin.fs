/// VAT + EntMin, the semi-supervised baseline S4L compares with (Zhai et al. 2019, Sec. 4 and Table 1): virtual adversarial
/// training (Miyato, Maeda, Koyama & Ishii 2018, TPAMI) plus entropy minimisation (Grandvalet & Bengio 2005). Each step a
/// labelled and an unlabelled batch of equal size; the loss is the cross-entropy on the labelled batch + α·KL(p(y|x) || p(y|x +
/// r_vadv)) + β·H(p(y|x)), the last two on both batches (S4L's code applies VAT and EntMin to the labelled images too:
/// google-research/s4l, config/vat_entmin.sh, --apply_vat_to_labeled). r_vadv: one power-iteration step of size xi from a
/// Gaussian draw, scaled to norm ε (Miyato et al. 2018, Sec. 3.3; Ssl.Core.Losses.Vat). The perturbed forward passes leave the
/// batch-norm running statistics alone, as S4L's code does (momentum 1 in TensorFlow's convention). S4L's code takes the KL the
/// other way round, KL(p(y|x + r) || p(y|x)); we keep the VAT paper's order, in which p(y|x) is the fixed target. Measured runs:
/// docs/experiments/vat-entmin.md.
module Ssl.Experiments.Recipes.VatEntMin

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Experiments

/// S4L's VAT + EntMin on ImageNet (config/vat_entmin.sh): ResNet-50v2, batch 256 + 256, SGD at 0.03, weight decay 1e-3, α = 0.5,
/// β = 1 (EntMin's weight also 1 in Miyato et al. 2018's VAT + EntMin), one power iteration. Optimiser, weight decay and schedule
/// here are those of our supervised-only baseline, batches of 64 + 64 images.
type Config =
    { /// The paper's is ResNet-50v2; ours SmallConvNet (any Backbone).
      Encoder: Backbone
      /// Epochs: passes over the unlabelled pool; BatchSize: labelled images a step.
      Schedule: TrainingSchedule
      [<Range(1.0)>] UnlabelledBatch: int
      /// α: weight of the VAT loss.
      [<Range(0.0)>] VatWeight: float
      /// β: weight of the entropy of the predictions.
      [<Range(0.0)>] EntropyWeight: float
      /// ε: L2 norm of each image's perturbation in [0, 1] pixel units (divided by the pixel std for our standardised inputs).
      /// S4L: 40 on 224x224x3 in [-1, 1]; ours VAT's MNIST 2.0 on 28x28.
      [<Range(0.0)>] EpsilonPixels: float
      /// xi: the power iteration's finite-difference step. The papers' 1e-6 drowns in float32 rounding here; 1e-2 as
      /// few-shot-ssl-public's VAT_utils.py (test core.losses.vat).
      [<Range(0.0)>] Xi: float
      [<Range(1.0)>] PowerIterations: int }

/// `quick`: width 16, one pass over the ~60,000-image unlabelled pool at 64 + 64 images a step (936 steps, each about 3 forward
/// and 3 backward passes of 128 images), sized to the 2-core budget; `paper`: width 32, 30 passes at S4L's 256 + 256; `smoke`:
/// one pass over the smoke subset.
let config preset =
    let quick =
        { Encoder = SmallConvNet 16L; UnlabelledBatch = 64; VatWeight = 0.5; EntropyWeight = 1.0; EpsilonPixels = 2.0; Xi = 1e-2
          PowerIterations = 1; Schedule = { Epochs = 1; BatchSize = 64; LearningRate = 0.1; WeightDecay = 5e-4; WarmupEpochs = 0.05 } }
    match preset with
    | Smoke -> { quick with UnlabelledBatch = 32; Schedule = { quick.Schedule with BatchSize = 32 } }
    | Quick -> quick
    | Paper -> { quick with Encoder = SmallConvNet 32L; UnlabelledBatch = 256; Schedule = { quick.Schedule with Epochs = 30; BatchSize = 256 } }

/// One step: one clean forward pass of both batches; cross-entropy on the labelled part, entropy and the VAT loss on all of it.
let build (ctx: Context<Config>) =
    let config, data = ctx.Config, ctx.Data
    let p = parts ctx
    let epsilon = config.EpsilonPixels / Array.average data.Std
    let classify (x: torch.Tensor) = p.Classifier.forward(p.Encoder.forward x)
    let optimizers = [ optimizer "main" (Optim.nesterov config.Schedule) [ p.Encoder; p.Classifier ] ]
    ctx.TrainSemi(p, config.UnlabelledBatch, stepOf [ "encoder" => p.Encoder; "classifier" => p.Classifier ] optimizers (fun step batches ->
        let y = labelsOf data step.Device batches.Labelled
        let prepare indices = unitPixels data indices step.Device |> lightAugment step.Generator |> standardise data
        let x = torch.cat([| prepare batches.Labelled; prepare batches.Unlabelled |], 0L)
        let logits = classify x
        let classLogits = logits.narrow(0L, 0L, int64 batches.Labelled.Length)
        let classLoss = torch.nn.functional.cross_entropy(classLogits, y)
        let entropy = Entropy.entropy logits
        let vat =
            BatchNorms.withoutRunningUpdates [ p.Encoder :> torch.nn.Module ] (fun () ->
                Vat.virtualAdversarialLoss config.Xi epsilon config.PowerIterations step.Generator classify x logits)
        let value = step.Optimize("main", classLoss + config.VatWeight * vat + config.EntropyWeight * entropy)
        [ "loss", value; "class_loss", float (classLoss.item<float32>()); "vat_loss", float (vat.item<float32>())
          "entropy", float (entropy.item<float32>()); "train_acc", accuracy classLogits y ]))

let spec =
    backboneSpec "vat-entmin" "Miyato et al. 2018 (VAT) + Grandvalet & Bengio 2005 (EntMin), the baseline of Zhai et al. 2019 (S4L)"
        semiSupervised config (fun config -> config.Encoder) build
