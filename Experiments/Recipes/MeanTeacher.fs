/// Mean Teacher: weight-averaged consistency targets improve semi-supervised deep learning results
/// (Tarvainen & Valpola, NeurIPS 2017, Sec. 2): the teacher is the EMA of the student's weights
/// (eq. 1); the consistency loss is the squared difference of the student's class probabilities on
/// one view and the teacher's on another, its weight ramped up. USB's meanteacher.py takes both
/// sides from the teacher's pass (its `logits_x_ulb_s = outs_x_ulb_w['logits']`), which leaves the
/// student no consistency gradient; this follows the paper. Measured runs: docs/experiments/mean-teacher.md.
module Ssl.Experiments.Recipes.MeanTeacher

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Experiments

/// USB's meanteacher_cifar10 settings: λ_u = 50, μ = 1, the teacher's decay 0.999 (ConsistencySettings).
type Config = { Consistency: ConsistencySettings }

let config preset = { Consistency = consistencySettings 50.0 preset }

/// ‖softmax(student(x₂)) − softmax(teacher(x₁))‖² / C (MixMatch.consistencyL2, USB's 'mse'); the
/// teacher's pass leaves its batch-norm statistics alone.
let private unlabelled (p: Parts) (teacher: EmaClassifier) (_: StepContext) (first: torch.Tensor) (second: torch.Tensor) =
    let target =
        use _ = torch.no_grad()
        BatchNorms.withoutRunningUpdates [ teacher.Encoder :> torch.nn.Module ] (fun () -> teacher.Head.forward(teacher.Encoder.forward first).softmax(1L))
    use target = target
    MixMatch.consistencyL2 (p.Classifier.forward(p.Encoder.forward second)) target, []

let build (ctx: Context<Config>) =
    let settings = ctx.Config.Consistency
    let p = parts ctx
    snd (ctx.TrainWithEma(p, settings.Schedule.BatchSize * settings.UnlabelledRatio, FixMatch.optimizerSpec settings.Schedule, settings.EmaMomentum,
                          (fun teacher -> consistencyLoss settings ctx.Data p (unlabelled p teacher))))

let spec = consistencySpec "mean-teacher" "Tarvainen & Valpola 2017, Mean teachers are better role models" config (fun c -> c.Consistency) build
