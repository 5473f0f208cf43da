/// FlexMatch: boosting semi-supervised learning with curriculum pseudo labeling (Zhang, Wang, Hou,
/// Wu, Wang, Okumura & Shinozaki, NeurIPS 2021). FixMatch with class-wise thresholds τ·M(β_c) from
/// each class's learning status β_c (Sec. 3.2-3.3, Core's Losses/AdaptiveThresholds.fs), in USB's
/// order (semilearn/algorithms/flexmatch: the mask from the status before the batch, then the
/// update). Everything else is FixMatch's recipe. Measured runs: docs/experiments/flexmatch.md.
module Ssl.Experiments.Recipes.FlexMatch

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Experiments

/// USB's flexmatch_cifar10 settings: FixMatch's (τ = 0.95, μ = 7, λ_u = 1, hard pseudo-labels)
/// with the threshold warm-up on.
type Config =
    { /// FixMatch's settings and presets, which FlexMatch keeps.
      FixMatch: FixMatch.Config
      /// The threshold warm-up: unselected images count in β's normaliser (USB's thresh_warmup).
      Warmup: bool }

let config preset = { FixMatch = FixMatch.config preset; Warmup = true }

/// The status β (C) and the per-image selections (pool size, -1 where none yet), as USB's
/// classwise_acc and selected_label; each class's threshold τ·M(β_c) logged as threshold/<c>.
let private weighing (ctx: Context<Config>) (p: Parts) =
    let fixMatch = ctx.Config.FixMatch
    let status = ctx.Own(torch.zeros([| int64 ctx.Data.Classes |], device = ctx.Device))
    let selected = ctx.Own(torch.full([| int64 p.Split.Unlabelled.Length |], FlexMatch.unselected.ToScalar(), device = ctx.Device))
    let weigh (batches: Batches) (probs: torch.Tensor) _ =
        use pool = torch.tensor(batches.Pool, device = probs.device)
        let mask, statusNext, selectedNext = FlexMatch.step ctx.Config.Warmup fixMatch.Threshold status selected pool probs
        status.copy_(statusNext) |> ignore
        selected.copy_(selectedNext) |> ignore
        let thresholds = (statusNext / (2.0 - statusNext) * fixMatch.Threshold).cpu().data<float32>().ToArray()
        { Weights = mask; Added = None; Figures = [ for c in 0 .. thresholds.Length - 1 -> $"threshold/{c}", float thresholds[c] ] }
    weigh, (fun () -> [ "classwise_acc", status; "selected_label", selected ])

let spec =
    FixMatch.familySpec "flexmatch" "Zhang et al. 2021, FlexMatch: Boosting Semi-Supervised Learning with Curriculum Pseudo Labeling" config (fun c -> c.FixMatch) (FixMatch.buildFamily (fun c -> c.FixMatch) weighing)
