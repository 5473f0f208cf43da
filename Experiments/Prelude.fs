/// A recipe's imports are one block: TorchSharp, Ssl.Core.Models, Ssl.Core.Losses, Ssl.Core.Transforms
/// and Ssl.Experiments, which opens this module (the Host types a step uses) and the Experiments
/// modules a recipe is written with (Recipe, Configs, ConfigParts, Backbone, Pipeline, Views,
/// Template, SemiSupervised). CONTRIBUTING.md, "A recipe".
[<AutoOpen>]
module Ssl.Experiments.Prelude


type OptimizerSpec = Ssl.Host.Engine.OptimizerSpec
type OptimizerKind = Ssl.Host.Engine.OptimizerKind
type StepContext = Ssl.Host.Engine.StepContext
type EpochHook = Ssl.Host.Engine.EpochHook
type Features = Ssl.Host.Eval.Features
