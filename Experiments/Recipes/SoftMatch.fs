/// SoftMatch: addressing the quantity-quality trade-off in semi-supervised learning (Chen, Tao, Fan,
/// Wang, Wang, Schiele, Xie, Raj & Savvides, ICLR 2023). FixMatch with a truncated Gaussian weight
/// of each pseudo-label's confidence instead of a threshold, from the EMA mean and variance of the
/// confidences after uniform distribution alignment (Core's Losses/AdaptiveThresholds.fs, in USB's
/// order); the pseudo-labels stay the argmax of the unaligned weak view, as USB's softmatch.py.
/// Everything else is FixMatch's recipe. Measured runs: docs/experiments/softmatch.md.
module Ssl.Experiments.Recipes.SoftMatch

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Experiments

/// USB's softmatch_cifar10 settings: FixMatch's (μ = 7, λ_u = 1, hard pseudo-labels; τ unused),
/// EMA momentum 0.999, n_σ = 2, uniform alignment, one Gaussian for all classes (per_class off).
type Config =
    { FixMatch: FixMatch.Config
      /// The EMA momentum of p_model, μ_t and σ²_t: 0.999 over USB's 2^20 steps; 0.99 at quick and
      /// smoke, as FreeMatch's (the runs are ~1,000x shorter).
      [<Range(0.0, 1.0)>] Momentum: float
      /// n_σ: the Gaussian's width is σ_t / n_σ below the mean.
      [<Range(0.0)>] Sigmas: float }

let config preset =
    { FixMatch = FixMatch.config preset; Sigmas = 2.0
      Momentum = match preset with Paper -> 0.999 | Quick | Smoke -> 0.99 }

/// p_model, μ_t, σ²_t and the steps seen, as USB's DistAlignEMAHook and SoftMatchWeightingHook
/// keep them; μ_t and σ_t logged.
let private weighing (ctx: Context<Config>) (_: Parts) =
    let start = SoftMatch.initial (int64 ctx.Data.Classes) torch.ScalarType.Float32
    let own (t: torch.Tensor) = ctx.Own(t.``to``(ctx.Device))
    let state = { ClassProbabilities = own start.ClassProbabilities; Mean = own start.Mean; Variance = own start.Variance; Steps = own start.Steps } : SoftMatch.State
    let weigh (_: Batches) (probs: torch.Tensor) _ =
        let weights, next = SoftMatch.step ctx.Config.Momentum ctx.Config.Sigmas state probs
        for target, value in [ state.ClassProbabilities, next.ClassProbabilities; state.Mean, next.Mean; state.Variance, next.Variance; state.Steps, next.Steps ] do
            target.copy_(value) |> ignore
            value.Dispose()
        { Weights = weights; Added = None
          Figures = [ "confidence_mean", float (state.Mean.item<float32>()); "confidence_std", sqrt (float (state.Variance.item<float32>())) ] }
    weigh, (fun () -> [ "p_model", state.ClassProbabilities; "prob_max_mu_t", state.Mean; "prob_max_var_t", state.Variance; "steps", state.Steps ])

let spec =
    FixMatch.familySpec "softmatch" "Chen et al. 2023, SoftMatch: Addressing the Quantity-Quality Trade-off in Semi-supervised Learning" config (fun c -> c.FixMatch) (FixMatch.buildFamily (fun c -> c.FixMatch) weighing)
