/// Π-model: temporal ensembling for semi-supervised learning (Laine & Aila, ICLR 2017, Sec. 2.1):
/// two stochastic views of each unlabelled image, the squared difference of their class
/// probabilities as the consistency loss (one side a target without gradient, as USB's pimodel.py),
/// its weight ramped up. Measured runs: docs/experiments/pi-model.md.
module Ssl.Experiments.Recipes.PiModel

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Experiments

/// USB's pimodel_cifar10 settings: λ_u = 10, μ = 1, two weak views (ConsistencySettings).
type Config = { Consistency: ConsistencySettings }

let config preset = { Consistency = consistencySettings 10.0 preset }

/// ‖softmax(f(x₂)) − softmax(f(x₁))‖² / C, the first view the target (MixMatch.consistencyL2, USB's 'mse').
let private unlabelled (p: Parts) (_: StepContext) (first: torch.Tensor) (second: torch.Tensor) =
    let classify (x: torch.Tensor) = p.Classifier.forward(p.Encoder.forward x)
    use target = classify(first).detach().softmax(1L)
    MixMatch.consistencyL2 (classify second) target, []

let build (ctx: Context<Config>) =
    let settings = ctx.Config.Consistency
    let p = parts ctx
    snd (ctx.TrainWithEma(p, settings.Schedule.BatchSize * settings.UnlabelledRatio, FixMatch.optimizerSpec settings.Schedule, settings.EmaMomentum,
                          (fun _ -> consistencyLoss settings ctx.Data p (unlabelled p))))

let spec = consistencySpec "pi-model" "Laine & Aila 2017, Temporal Ensembling for Semi-Supervised Learning (the Π-model)" config (fun c -> c.Consistency) build
