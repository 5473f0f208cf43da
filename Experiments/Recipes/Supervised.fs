/// Supervised training: cross-entropy on all labels or on N per class. It exercises the engine end
/// to end, and it is the "supervised-only" baseline every semi-supervised result stands beside;
/// config, step and schedule are in SupervisedTraining, which the baselines share.
module Ssl.Experiments.Recipes.Supervised

open TorchSharp
open Ssl.Core.Models
open Ssl.Host.Data
open Ssl.Experiments

type Config = SupervisedTraining.Config

let config = SupervisedTraining.config

/// All labels, or `--labels N` per class (then this run is itself the supervised-only result), for
/// at least MinSteps steps (SupervisedTraining.schedule), logged every 20.
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let examples = SupervisedTraining.labelledExamples ctx.Data.Train ctx.Request.Labels ctx.Seed
    let encoder = ctx.NewEncoder()
    torch.manual_seed(ctx.Seed) |> ignore
    let head = new LinearHead(encoder.FeatureDim, int64 ctx.Data.Classes)
    let epochs, batch = SupervisedTraining.schedule config examples.Length
    let def =
        stepOf [ "encoder" => encoder; "head" => head ] [ optimizer "main" (Optim.nesterov config.Schedule) [ encoder; head ] ]
            (SupervisedTraining.run config ctx.Data examples encoder head)
    { ctx.Train(encoder, def) with
        Epochs = epochs; BatchSize = batch; Examples = int64 examples.Length; LogEvery = 20; Classifier = Some(encoder, head) }

let spec =
    backboneSpec "supervised" "supervised baseline (cross-entropy; SGD + Nesterov, cosine)"
        { selfSupervised with SupervisedOnly = OwnResult } config (fun config -> config.Encoder) build
