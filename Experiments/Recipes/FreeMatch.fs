/// FreeMatch: self-adaptive thresholding for semi-supervised learning (Wang, Chen, Heng, Hou, Fan,
/// Wu, Wang, Savvides, Shinozaki, Raj, Schiele & Xie, ICLR 2023). FixMatch with a self-adaptive
/// global threshold τ_t (EMA of the confidence) scaled per class by the EMA of the class
/// probabilities, and the self-adaptive fairness loss L_f weighted by λ_f (Core's
/// Losses/AdaptiveThresholds.fs, in USB's order: update with the batch, then mask). Everything
/// else is FixMatch's recipe. Measured runs: docs/experiments/freematch.md.
module Ssl.Experiments.Recipes.FreeMatch

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Experiments

/// USB's freematch_cifar10 settings: FixMatch's (μ = 7, λ_u = 1, hard pseudo-labels; τ unused),
/// EMA momentum 0.999, λ_f = 0.001 (ent_loss_ratio), the mean confidence (use_quantile off).
type Config =
    { FixMatch: FixMatch.Config
      /// The EMA momentum of τ_t, p̃_t and h̃_t: 0.999 over USB's 2^20 steps; 0.99 at quick and
      /// smoke, whose ~1,340 and ~100 steps would otherwise leave the state at its start.
      [<Range(0.0, 1.0)>] Momentum: float
      /// λ_f, the weight of the fairness loss.
      [<Range(0.0)>] FairnessWeight: float }

let config preset =
    { FixMatch = FixMatch.config preset; FairnessWeight = 0.001
      Momentum = match preset with Paper -> 0.999 | Quick | Smoke -> 0.99 }

/// τ_t, p̃_t and h̃_t as USB's time_p, p_model and label_hist; τ_t logged as threshold and each
/// class's threshold τ_t·p̃_t(c)/max p̃_t as threshold/<c>.
let private weighing (ctx: Context<Config>) (_: Parts) =
    let start = FreeMatch.initial (int64 ctx.Data.Classes) torch.ScalarType.Float32
    let state = { Threshold = ctx.Own(start.Threshold.``to``(ctx.Device)); ClassProbabilities = ctx.Own(start.ClassProbabilities.``to``(ctx.Device))
                  Histogram = ctx.Own(start.Histogram.``to``(ctx.Device)) } : FreeMatch.State
    let weigh (_: Batches) (probs: torch.Tensor) (strongLogits: torch.Tensor) =
        let mask, next = FreeMatch.step ctx.Config.Momentum state probs
        for target, value in [ state.Threshold, next.Threshold; state.ClassProbabilities, next.ClassProbabilities; state.Histogram, next.Histogram ] do
            target.copy_(value) |> ignore
            value.Dispose()
        let fairness = FreeMatch.fairnessLoss state mask strongLogits
        let perClass = (state.ClassProbabilities / state.ClassProbabilities.max() * state.Threshold).cpu().data<float32>().ToArray()
        { Weights = mask; Added = Some(fairness * ctx.Config.FairnessWeight)
          Figures = [ yield "loss_fairness", float (fairness.item<float32>())
                      yield "threshold", float (state.Threshold.item<float32>())
                      for c in 0 .. perClass.Length - 1 -> $"threshold/{c}", float perClass[c] ] }
    weigh, (fun () -> [ "time_p", state.Threshold; "p_model", state.ClassProbabilities; "label_hist", state.Histogram ])

let spec =
    FixMatch.familySpec "freematch" "Wang et al. 2023, FreeMatch: Self-adaptive Thresholding for Semi-supervised Learning" config (fun c -> c.FixMatch) (FixMatch.buildFamily (fun c -> c.FixMatch) weighing)
