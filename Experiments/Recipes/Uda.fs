/// UDA: unsupervised data augmentation for consistency training (Xie, Dai, Hovy, Luong & Le,
/// NeurIPS 2020). The strongly augmented view of an unlabelled image is trained towards the
/// sharpened prediction on its weak view where that prediction is confident (Sec. 3.2), beside the
/// labelled cross-entropy under training-signal annealing (TSA); Core's Losses/Uda.fs. Batches,
/// views and optimiser are FixMatch's recipe's, as USB's uda.py shares them. USB passes the weak
/// prediction unsharpened (its `softmax=False` path ignores T); this sharpens, as the paper and
/// google-research/uda do. Measured runs: docs/experiments/uda.md.
module Ssl.Experiments.Recipes.Uda

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Experiments

/// USB's uda_cifar10 settings: FixMatch's batches and views (μ = 7, RandAugment), β = 0.8 as the
/// FixMatch settings' Threshold, T = 0.4, λ_u = 1, TSA off (tsa_schedule none).
type Config =
    { FixMatch: FixMatch.Config
      /// T, the sharpening temperature of the targets.
      [<Range(0.0)>] Temperature: float
      /// TSA's schedule: none, linear, exp or log.
      Annealing: string }

let config preset = { FixMatch = { FixMatch.config preset with Threshold = 0.8 }; Temperature = 0.4; Annealing = "none" }

let private schedule (text: string) =
    match text with
    | "none" -> Uda.NoAnnealing
    | "linear" -> Uda.Linear
    | "exp" -> Uda.Exponential
    | "log" -> Uda.Logarithmic
    | other -> invalidArg "Annealing" $"Annealing: expected none, linear, exp or log, found '{other}'"

/// One pass over the labelled batch and the weak and strong views; the supervised loss keeps the
/// labelled images whose predicted probability of their class is at most TSA's η_t.
let private loss (config: Config) (data: Data) (p: Parts) (step: StepContext) (batches: Batches) =
    let settings = config.FixMatch
    let weak x = weakAugment settings.TranslatePixels settings.FlipProbability step.Generator x
    let x = pixels data.Train batches.Labelled step.Device |> weak
    let y = labelsOf data step.Device batches.Labelled
    let raw = pixels data.Train batches.Unlabelled step.Device
    let strong = weak raw |> RandAugment.strongAugment settings.StrongOperations settings.CutoutFraction 0.5 step.Generator
    let logits = p.Classifier.forward(p.Encoder.forward(standardise data (torch.cat([| x; weak raw; strong |], 0L))))
    let b, u = x.shape[0], raw.shape[0]
    let labelled = logits.narrow(0L, 0L, b)
    let eta = Uda.tsaThreshold (schedule config.Annealing) (min 1.0 (float step.GlobalStep / float step.TotalSteps)) data.Classes
    let kept = labelled.detach().softmax(1L).gather(1L, y.unsqueeze(1L)).squeeze(1L).le(eta.ToScalar()).to_type(logits.dtype)
    let supervised = (torch.nn.functional.cross_entropy(labelled, y, reduction = torch.nn.Reduction.None) * kept).mean()
    let soft, mask = Uda.targets config.Temperature settings.Threshold (logits.narrow(0L, b, u))
    let unlabelled = Uda.consistencyLoss mask soft (logits.narrow(0L, b + u, u))
    supervised + unlabelled * settings.UnlabelledWeight,
    [ "loss_x", float (supervised.item<float32>()); "loss_u", float (unlabelled.item<float32>()); "tsa_threshold", eta
      "tsa_kept", float (kept.mean().item<float32>()); "mask_rate", float (mask.mean().item<float32>()); "train_acc", accuracy labelled y ]

let build (ctx: Context<Config>) =
    let settings = ctx.Config.FixMatch
    schedule ctx.Config.Annealing |> ignore
    let p = parts ctx
    snd (ctx.TrainWithEma(p, settings.Schedule.BatchSize * settings.UnlabelledRatio, FixMatch.optimizerSpec settings.Schedule, settings.EmaMomentum,
                          (fun _ -> loss ctx.Config ctx.Data p)))

let spec =
    FixMatch.familySpec "uda" "Xie et al. 2020, Unsupervised Data Augmentation for Consistency Training" config (fun c -> c.FixMatch) build
