/// Pseudo-Label: the simple and efficient semi-supervised learning method for deep neural networks
/// (Lee, ICML 2013 workshop). The model's own confident predictions on unlabelled images, taken as
/// hard labels, train it with the cross-entropy (eq. 15), its weight ramped up (eq. 16); as USB's
/// pseudolabel.py: one weak view, the labels from the same pass (no gradient through them), kept
/// where max q ≥ τ = 0.95. Measured runs: docs/experiments/pseudo-label.md.
module Ssl.Experiments.Recipes.PseudoLabel

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Experiments

/// USB's pseudolabel_cifar10 settings: λ_u = 1, τ = 0.95, μ = 1 (ConsistencySettings).
type Config =
    { Consistency: ConsistencySettings
      /// τ, the confidence a pseudo-label needs.
      [<Range(0.0)>] Threshold: float }

let config preset = { Consistency = consistencySettings 1.0 preset; Threshold = 0.95 }

let private unlabelled (config: Config) (p: Parts) (_: StepContext) (view: torch.Tensor) _ =
    let logits = p.Classifier.forward(p.Encoder.forward view)
    let struct (confidence, labels) = logits.detach().softmax(1L).max(1L)
    let mask = confidence.ge(config.Threshold.ToScalar()).to_type(logits.dtype)
    FixMatch.weightedLoss mask labels logits, [ "mask_rate", float (mask.mean().item<float32>()) ]

let build (ctx: Context<Config>) =
    let settings = ctx.Config.Consistency
    let p = parts ctx
    snd (ctx.TrainWithEma(p, settings.Schedule.BatchSize * settings.UnlabelledRatio, FixMatch.optimizerSpec settings.Schedule, settings.EmaMomentum,
                          (fun _ -> consistencyLoss settings ctx.Data p (unlabelled ctx.Config p))))

let spec = consistencySpec "pseudo-label" "Lee 2013, Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method for Deep Neural Networks" config (fun c -> c.Consistency) build
