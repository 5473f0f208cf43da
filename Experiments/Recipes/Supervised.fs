/// Supervised training: cross-entropy on all labels or on N per class. It exercises the engine end
/// to end, and it is the "supervised-only" baseline every semi-supervised result stands beside;
/// config, step and schedule are in SupervisedTraining, which the baselines share.
module Ssl.Experiments.Recipes.Supervised

open TorchSharp
open Ssl.Core.Models
open Ssl.Host.Data
open Ssl.Experiments.Backbone
open Ssl.Experiments.Template
open Ssl.Experiments.SupervisedTraining

type Config = Ssl.Experiments.SupervisedTraining.Config

let config = Ssl.Experiments.SupervisedTraining.config

/// All labels, or `--labels N` per class (then this run is itself the supervised-only result).
let build (c: Context<Config>) =
    let examples =
        match c.Request.Labels with
        | Some n -> (LabelSplitter.Draw(c.Data.Train, n, c.Seed)).Labelled
        | None -> Array.init (int c.Data.Train.Count) int64
    let encoder = c.NewEncoder()
    torch.manual_seed(c.Seed) |> ignore
    let head = new LinearHead(encoder.FeatureDim, int64 c.Data.Classes)
    let epochs, batch = schedule c.Config examples.Length
    { training (Step(encoder, head, c.Data, examples, c.Config)) epochs batch encoder c with
        Examples = int64 examples.Length; LogEvery = 20; Classifier = Some(encoder, head); Owned = [ encoder; head ] }

let spec =
    backboneSpec "supervised" "supervised baseline (cross-entropy; SGD + Nesterov, cosine)"
        { selfSupervised with SupervisedOnly = OwnResult } config (fun c -> c.Encoder) build
