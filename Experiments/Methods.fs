/// A recipe defined from C#: the same `Template.Spec` and run template as the F# recipes, built
/// from C# types (Func and Action delegates, arrays, null for "none", object initialisers) and
/// PascalCase names. A C# method is a config (a C# record: Configs reads and writes its
/// properties), an `ITrainingStep`, and a `MethodSpec<TConfig>` naming both; `Train` runs it through
/// `Template.run`, `Recipes` are what `Registry.Register` adds for `ssl train`.
/// Experiments/examples/MethodCs is such a method, and its README the route step by step.
namespace Ssl.Experiments

open System
open System.Collections.Generic
open Ssl.Core.Models
open Ssl.Host.Engine
open Ssl.Host.Runs
open Ssl.Host.Runtime
open Ssl.Experiments.Recipe
open Ssl.Experiments.Backbone
open Ssl.Experiments.Pipeline

/// What a method needs of its data and how the report treats it (Template.Traits from C#).
[<AllowNullLiteral>]
type MethodTraits() =
    /// Needs colour (3-channel) images: grey data sets are refused.
    member val Colour = false with get, set
    /// Labels per class a semi-supervised method trains at, the first the default; empty for a
    /// method that trains without a few-label split.
    member val LabelBudgets: int[] = [||] with get, set
    /// Where the supervised-only baseline comes from (trained beside the run by default).
    member val SupervisedOnly = Template.Trained with get, set
    /// Its paper synchronises batch norm across devices: on several ranks, normalise over the global batch.
    member val SyncBatchNorm = false with get, set
    /// A self-supervised method: no few-label split, the supervised-only baseline trained beside it.
    static member SelfSupervised = MethodTraits()
    /// A semi-supervised method: trained at 10 labels per class by default, 100 the other budget.
    static member SemiSupervised = MethodTraits(LabelBudgets = [| 10; 100 |])
    member internal t.ToTraits() : Template.Traits =
        { Colour = t.Colour; LabelBudgets = List.ofArray (if isNull t.LabelBudgets then [||] else t.LabelBudgets)
          SupervisedOnly = t.SupervisedOnly; SyncBatchNorm = t.SyncBatchNorm }

/// What a method's `Build` receives from the template: the config, the data, the device and seed,
/// the run folder, and the one encoder factory.
type MethodContext<'Config> internal (context: Template.Context<'Config>) =
    member _.Config = context.Config
    member _.Data = context.Data
    member _.Request = context.Request
    member _.Environment = context.Env
    member _.Folder = context.Folder
    member _.Device = context.Device
    member _.Seed = context.Seed
    /// Examples in the training set (what an epoch walks unless the plan says otherwise).
    member _.TrainCount = context.Data.Train.Count
    /// A new encoder of the config's architecture, seeded by the order of calls.
    member _.NewEncoder() : Encoder = context.NewEncoder()
    /// Whether the run has a few-label split (the traits name label budgets).
    member _.HasLabelSplit = context.Split.IsSome
    /// The few-label split; an InvalidOperationException for a method without label budgets.
    member _.LabelSplit = context.LabelSplit

/// What a method's `Build` returns (Template.Training from C#): the step and its schedule, and
/// what the protocols evaluate. Step, Epochs, BatchSize and Evaluated are required; the rest
/// default to an epoch over the training set, logged every 50 steps, the encoder's output probed.
[<AllowNullLiteral>]
type TrainingPlan() =
    member val Step: ITrainingStep = null with get, set
    member val Epochs = 0 with get, set
    member val BatchSize = 0 with get, set
    /// The trained encoder every protocol evaluates (for EMA methods, the averaged copy).
    member val Evaluated: Encoder = Unchecked.defaultof<Encoder> with get, set
    /// Examples an epoch walks (the step's batch indexes them); null = the training set.
    member val Examples = Nullable<int64>() with get, set
    member val LogEvery = 50 with get, set
    /// The layer the protocols read: "" (the encoder's output) or "branch" (the layer an
    /// IStagedEncoder names), average-pooled to ProbePool (0: not pooled).
    member val ProbeLayer = "" with get, set
    member val ProbePool = 0L with get, set
    /// The method's own classifier on the evaluated encoder, whose test accuracy result.json reports; null = none.
    member val Classifier: LinearHead = Unchecked.defaultof<LinearHead> with get, set
    /// Runs after every epoch; null = none.
    member val AfterEpoch: EpochHook = null with get, set
    /// After training, before the protocols: figures the method adds to result.json; null = none.
    member val Extra: Func<IReadOnlyDictionary<string, float>> = null with get, set
    /// Disposed after the run, in reverse order (the encoder, heads, the step's tensors).
    member val Owned = List<IDisposable>() with get

    member internal plan.ToTraining(method: string, context: Template.Context<'Config>) : Template.Training =
        let required (what: string) (value: obj) =
            if isNull value then invalidOp $"{method}: the TrainingPlan its Build returns has no {what}"
        required "Step" (box plan.Step)
        required "Evaluated encoder" (box plan.Evaluated)
        if plan.Epochs < 1 then invalidOp $"{method}: TrainingPlan.Epochs: expected at least 1, found {plan.Epochs}"
        if plan.BatchSize < 1 then invalidOp $"{method}: TrainingPlan.BatchSize: expected at least 1, found {plan.BatchSize}"
        let t = Template.training plan.Step plan.Epochs plan.BatchSize plan.Evaluated context
        { t with
            Examples = (if plan.Examples.HasValue then plan.Examples.Value else t.Examples)
            LogEvery = plan.LogEvery
            Probe = Probe.OfLayer(plan.ProbeLayer, plan.ProbePool)
            Classifier = (if isNull (box plan.Classifier) then None else Some(plan.Evaluated, plan.Classifier))
            AfterEpoch = plan.AfterEpoch
            Extra =
                match plan.Extra with
                | null -> t.Extra
                | extra -> fun () -> [ for kv in extra.Invoke() -> kv.Key, kv.Value ]
            Owned = List.ofSeq plan.Owned }

/// A method defined from C#: its name and paper, its config per preset, its encoder, and the
/// `Build` that makes its training step. Set `Backbone` (the encoder is the Backbone the config
/// names) or `Encoder` with `EncoderName`; `Config` and `Build` are required.
type MethodSpec<'Config>(name: string, paper: string) =
    let variants = List<string * string * Func<'Config, 'Config>>()
    let text (value: string) (what: string) = if String.IsNullOrWhiteSpace value then invalidArg what $"{what}: expected a non-empty text, found '{value}'" else value
    let name = text name "name"
    let paper = text paper "paper"
    member _.Name = name
    member _.Paper = paper
    member val Traits = MethodTraits.SelfSupervised with get, set
    /// The config of each preset (smoke, quick, paper).
    member val Config: Func<Preset, 'Config> = null with get, set
    /// The backbone the config names (`--set` can change it; the supervised-only baseline trains it
    /// too): the encoder is that backbone, at default batch-norm momentum.
    member val Backbone: Func<'Config, Backbone> = null with get, set
    /// The encoder of a config for the data, where the method fixes its own architecture (with EncoderName).
    member val Encoder: Func<'Config, Data, Encoder> = null with get, set
    /// The architecture's name in config.json and the baseline cache keys (with Encoder).
    member val EncoderName: Func<'Config, string> = null with get, set
    /// Checks the data before training (throw an ArgumentException naming --dataset); null = none.
    member val CheckData: Action<'Config, Data> = null with get, set
    /// The training of one run: the step, its schedule and the encoder the protocols evaluate.
    member val Build: Func<MethodContext<'Config>, TrainingPlan> = null with get, set

    /// Registers the variant `<name>-<suffix>`: the method with its config changed by `change`.
    member this.AddVariant(suffix: string, paper: string, change: Func<'Config, 'Config>) =
        if isNull change then nullArg "change"
        variants.Add(text suffix "suffix", text paper "paper", change)
        this

    /// The spec the template runs (Template.Spec).
    member this.ToSpec() : Template.Spec<'Config> =
        let need (what: string) (value: obj) =
            if isNull value then invalidOp $"{name}: MethodSpec.{what} is not set"
        need "Config" this.Config
        need "Build" this.Build
        let build = this.Build
        let build (context: Template.Context<'Config>) =
            match build.Invoke(MethodContext context) with
            | null -> invalidOp $"{name}: its Build returned no TrainingPlan"
            | plan -> plan.ToTraining(name, context)
        let traits = (if isNull this.Traits then MethodTraits.SelfSupervised else this.Traits).ToTraits()
        let config = this.Config
        let spec =
            match this.Backbone, this.Encoder, this.EncoderName with
            | null, null, _ | null, _, null -> invalidOp $"{name}: set MethodSpec.Backbone, or MethodSpec.Encoder with MethodSpec.EncoderName"
            | null, encoder, encoderName ->
                Template.spec name paper traits config.Invoke (fun c data _ -> encoder.Invoke(c, data)) (fun _ -> None) encoderName.Invoke build
            | backbone, _, _ -> Template.backboneSpec name paper traits config.Invoke backbone.Invoke build
        { spec with
            CheckData = (match this.CheckData with null -> spec.CheckData | check -> fun c data -> check.Invoke(c, data))
            Variants = [ for suffix, paper, change in variants -> suffix, paper, change.Invoke ] }

    /// The method's recipes, its own then one per variant: what `Registry.Register` takes.
    member this.Recipes : IReadOnlyList<Template.Recipe> = Template.recipes (this.ToSpec()) |> Array.ofList :> _

    /// Trains and evaluates the recipe `request.Method` names (the method or one of its variants)
    /// at the request's preset, as `ssl train` does: config.json, checkpoints, result.json with its
    /// baselines in the folder `request.Out`, claimed for the run.
    member this.Train(request: Request, environment: RunEnvironment) : RunResult =
        let recipes = this.Recipes
        match recipes |> Seq.tryFind (fun r -> r.Name = request.Method) with
        | None ->
            let names = recipes |> Seq.map (fun r -> r.Name) |> String.concat ", "
            invalidArg "request" $"request.Method: expected one of {names}, found '{request.Method}'"
        | Some recipe ->
            let folder = RunFolder.Claim request.Out
            try recipe.Run request environment folder finally folder.Release()

    /// Trains and evaluates the method with `config` (a preset's, changed) instead of the preset's own.
    member this.Train(request: Request, environment: RunEnvironment, config: 'Config) : RunResult =
        let request = { request with Config = Some(Configs.toJson config) }
        if request.Method <> name then
            invalidArg "request" $"request.Method: expected '{name}' (a config is the method's own), found '{request.Method}'"
        this.Train(request, environment)

/// Backbones by their command-line names (the `Encoder=` of `--set`), for C# configs.
[<AbstractClass; Sealed>]
type Backbones =
    /// The backbone `text` names ("smallconvnet-16", "resnet18", "wrn-28-2", "vit-tiny-4"); an
    /// ArgumentException listing the forms otherwise.
    static member Parse(text: string) : Backbone =
        match (if isNull text then None else Backbone.TryParse text) with
        | Some b -> b
        | None -> invalidArg "text" $"backbone: expected {Backbone.Forms}, found '{text}'"
    /// A new encoder of `backbone` for images of `channels` channels, its convolutions channels-last.
    static member Create(backbone: Backbone, channels: int64) : Encoder = instantiate SafeConv.ChannelsLast None channels backbone
    /// A new encoder of `backbone` for images of `channels` channels, its convolutions in `layout`
    /// (a run's RuntimeOptions.ConvLayout).
    static member Create(backbone: Backbone, channels: int64, layout: SafeConv.ConvLayout) : Encoder = instantiate layout None channels backbone
