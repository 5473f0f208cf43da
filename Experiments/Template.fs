/// The one run template every recipe goes through, and the spec a recipe is. A recipe file holds
/// its config record, its training step and a `Spec`; the template writes config.json, loads the
/// data, draws the few-label split, seeds, builds the step, places its modules on the device, runs
/// the trainer, computes the baselines and finishes (Pipeline.finish). DESIGN.md, style point 4.
module Ssl.Experiments.Template

open System
open System.Text.Json.Nodes
open TorchSharp
open Ssl.Core.Models
open Ssl.Host.Data
open Ssl.Host.Engine
open Ssl.Host.Runs
open Ssl.Host.Runtime
open Ssl.Experiments.Recipe
open Ssl.Experiments.Backbone
open Ssl.Experiments.Pipeline

/// Where a run's supervised-only baseline comes from.
type SupervisedOnly =
    /// Trained beside the run on its labels (SupervisedTraining.supervisedOnlyCached).
    | Trained
    /// The run itself, when it trains on `--labels N` (the supervised recipe).
    | OwnResult
    /// Not reported (generative and colour recipes, whose protocol differs).
    | NotReported

/// What a recipe is beyond its config: what data it needs and how `repro` and the report treat it.
type Traits =
    { /// Needs colour (3-channel) images: refuses grey data sets; `repro` and `bench` run it on a colour one.
      Colour: bool
      /// The label budgets (per class) a semi-supervised recipe trains at, the first the default;
      /// `repro` runs each. [] for recipes that train without a few-label split.
      LabelBudgets: int list
      SupervisedOnly: SupervisedOnly }

let selfSupervised = { Colour = false; LabelBudgets = []; SupervisedOnly = Trained }
let semiSupervised = { selfSupervised with LabelBudgets = [ 10; 100 ] }

/// What the template hands a recipe's `Build`.
type Context<'Config> =
    { Request: Request
      Env: RunEnvironment
      Folder: RunFolder
      Data: Data
      Config: 'Config
      /// The few-label split (labelled examples, unlabelled pool) of a semi-supervised recipe.
      Split: LabelSplit option
      /// A new, seeded-by-order encoder of the config's architecture (the spec's one factory).
      NewEncoder: unit -> Encoder }
    member c.Device = c.Env.Device
    member c.Seed = c.Request.Seed
    /// The split of a semi-supervised recipe (its traits name label budgets).
    member c.LabelSplit =
        match c.Split with
        | Some s -> s
        | None -> invalidOp $"{c.Request.Method}: no few-label split (the recipe's traits name no label budgets)"

/// What a recipe's `Build` returns: the training step and its schedule, and what to evaluate.
type Training =
    { Step: ITrainingStep
      Epochs: int
      BatchSize: int
      /// Examples an epoch walks (the step's `batch` indexes them): the training set or the pool.
      Examples: int64
      LogEvery: int
      /// The trained encoder every protocol evaluates (for EMA methods, the averaged copy).
      Evaluated: Encoder
      /// The representation the protocols read: "" (the encoder's output) or an inner layer ("branch":
      /// the layer IStagedEncoder names), average-pooled to this size (Pipeline.probed).
      Probe: string * int64
      /// The method's own classifier, whose test accuracy result.json reports.
      Classifier: (Encoder * LinearHead) option
      AfterEpoch: EpochHook
      /// After training, before the protocols: figures the method adds to result.json.
      Extra: unit -> (string * float) list
      /// Disposed after the run, in reverse order.
      Owned: IDisposable list }

/// A training with the defaults: an epoch over the training set, logged every 50 steps, the encoder's output probed.
let training (step: ITrainingStep) (epochs: int) (batchSize: int) (evaluated: Encoder) (context: Context<'Config>) =
    { Step = step; Epochs = epochs; BatchSize = batchSize; Examples = context.Data.Train.Count; LogEvery = 50
      Evaluated = evaluated; Probe = ("", 0L); Classifier = None; AfterEpoch = null; Extra = (fun () -> []); Owned = [] }

/// A recipe: one paper's method, as data.
type Spec<'Config> =
    { Name: string
      Paper: string
      Traits: Traits
      /// The config of each preset: the paper's defaults, scaled to our data where the config says so.
      Config: Preset -> 'Config
      /// The one encoder factory (training, baselines, export, `ssl eval`, `ssl bench`), from the
      /// config and the data (its channels; its pixel statistics where an encoder holds them).
      Encoder: 'Config -> Data -> Encoder
      /// The architecture's name in config.json and the baseline cache keys.
      EncoderName: 'Config -> string
      /// The backbone the config chooses (`--set Encoder=...`; the supervised-only baseline trains
      /// it too), or None where the method fixes its architecture.
      Backbone: 'Config -> Backbone option
      /// Checks the data (image size, square) before training: an invalidArg naming --dataset.
      CheckData: 'Config -> Data -> unit
      Build: Context<'Config> -> Training
      /// Registered variants `<name>-<suffix>`: (suffix, paper, change of the config).
      Variants: (string * string * ('Config -> 'Config)) list }

/// A spec with no data check and no variants; the rest as given.
let spec name paper traits (config: Preset -> 'Config) (encoder: 'Config -> Data -> Encoder) (backbone: 'Config -> Backbone option)
         (encoderName: 'Config -> string) (build: Context<'Config> -> Training) =
    { Name = name; Paper = paper; Traits = traits; Config = config; Encoder = encoder; EncoderName = encoderName
      Backbone = backbone; CheckData = (fun _ _ -> ()); Build = build; Variants = [] }

/// A spec whose encoder is the Backbone its config names (`backbone` reads it), at default batch-norm momentum.
let backboneSpec name paper traits (config: Preset -> 'Config) (backbone: 'Config -> Backbone) build =
    spec name paper traits config (fun c data -> instantiate None data.Train.Channels (backbone c)) (backbone >> Some)
        (backbone >> Backbone.name) build

/// A recipe as the command line, `repro` and `bench` see it, whatever its config type.
type Recipe =
    { Name: string
      Paper: string
      Traits: Traits
      Presets: Preset list
      /// The resolved config: a preset's, or `baseline` (a `--config` file's), then `--set` overrides.
      Resolve: Preset -> JsonObject option -> string list -> JsonObject
      /// Every settable field: (dotted path, expected type).
      Fields: (string * string) list
      Run: Request -> RunEnvironment -> RunFolder -> RunResult
      /// The encoder of a resolved config for the data (`ssl eval`, `ssl bench`).
      Encoder: JsonObject -> Data -> Encoder }

/// Square images, or an invalidArg naming --dataset and the recipe (`what`) that needs them.
let requireSquare (what: string) (data: Data) =
    if data.Train.Height <> data.Train.Width then
        invalidArg "--dataset" $"--dataset: {what} needs square images, found {data.Train.Height}x{data.Train.Width}"

/// Runs `spec` with `config` for `request`: the whole run, from config.json to result.json.
let run (spec: Spec<'Config>) (config: 'Config) (request: Request) (env: RunEnvironment) (folder: RunFolder) : RunResult =
    let semi = not spec.Traits.LabelBudgets.IsEmpty
    let request = if semi then { request with Labels = Some(defaultArg request.Labels spec.Traits.LabelBudgets.Head) } else request
    let configJson = Configs.toJson config
    if request.Resume && IO.File.Exists folder.ConfigPath then
        let before = JsonNode.Parse(IO.File.ReadAllText folder.ConfigPath)
        let same (key: string) (now: JsonNode) =
            let was = before[key]
            (if isNull was then "null" else was.ToJsonString()) = (if isNull now then "null" else now.ToJsonString())
        let labels = request.Labels |> Option.map (fun n -> JsonValue.Create n :> JsonNode) |> Option.toObj
        for key, now in [ "config", configJson :> JsonNode; "seed", JsonValue.Create request.Seed; "labels_per_class", labels ] do
            if not (same key now) then
                invalidArg "--resume"
                    $"--resume: {folder.ConfigPath} holds {key} {before[key]}, this command asks for {now}; resume with the run's own settings (--config {folder.ConfigPath}) or use another --out"
    folder.WriteConfig
        {| method = request.Method; preset = Preset.name request.Preset; dataset = request.Dataset
           eval_dataset = Option.toObj request.EvalDataset; image_size = Option.toNullable request.ImageSize
           labels_per_class = Option.toNullable request.Labels; seed = request.Seed; device = env.DeviceName; threads = env.Threads
           deterministic = env.Deterministic; encoder = spec.EncoderName config; overrides = request.Overrides; config = configJson |}
    use data = loadData request
    checkSkipped folder data |> ignore
    recordData folder data
    let needsLabels = semi || spec.Traits.SupervisedOnly = OwnResult
    if needsLabels && not data.Train.IsLabelled then
        invalidArg "--dataset"
            $"--dataset: {request.Method} trains on labels and '{request.Dataset}' holds none (images without class sub-folders); give it a class tree (one sub-folder per class) or a train/ + val/ folder of such trees"
    if spec.Traits.Colour && data.Train.Channels <> 3L then
        invalidArg "--dataset"
            $"--dataset: {request.Method} needs colour (3-channel) images such as cifar10, cifar100, stl10 or an image folder; '{request.Dataset}' has {data.Train.Channels} channel(s)"
    spec.CheckData config data
    let split =
        if semi then
            let perClass = request.Labels.Value
            let split = LabelSplitter.Draw(data.Train, perClass, request.Seed)
            if split.Unlabelled.Length = 0 then
                invalidArg "--labels" $"--labels: expected fewer labels per class than the training set holds, found {perClass} (nothing left unlabelled)"
            Some split
        else None
    torch.manual_seed(request.Seed) |> ignore
    let newEncoder () = spec.Encoder config data
    let context =
        { Request = request; Env = env; Folder = folder; Data = data; Config = config; Split = split; NewEncoder = newEncoder }
    let t = spec.Build context
    try
        for m in t.Step.Modules.Values do m.``to``(env.Device) |> ignore
        let options =
            TrainerOptions(Epochs = t.Epochs, BatchSize = t.BatchSize, ExampleCount = t.Examples, Seed = request.Seed,
                           Resume = request.Resume, LogEvery = t.LogEvery, Plan = data.Train,
                           ConfigDigest = $"{request.Method} {configJson.ToJsonString()} labels={request.Labels}")
        let summary = Trainer.Run(t.Step, options, folder, env.Device, ConsoleProgress(), t.AfterEpoch)
        let testAcc = t.Classifier |> Option.map (fun (e, h) -> SupervisedTraining.testAccuracy e h data env.Device)
        let supervisedOnly =
            match spec.Traits.SupervisedOnly with
            | Trained ->
                let backbone = spec.Backbone config |> Option.defaultValue (SupervisedTraining.config request.Preset).Encoder
                data.Probed
                |> Option.map (fun probe -> SupervisedTraining.supervisedOnlyCached request backbone probe (defaultArg request.Labels 10) folder env.Device)
            | OwnResult -> request.Labels |> Option.bind (fun _ -> testAcc)
            | NotReported -> None
        let extra = t.Extra()
        let layer, pool = t.Probe
        let evaluated, suffix = probed layer pool data t.Evaluated
        let makeEncoder () = fst (probed layer pool data (newEncoder ()))
        let result =
            finish request env folder data evaluated (spec.EncoderName config + suffix) makeEncoder summary testAcc supervisedOnly
        if extra.IsEmpty then result
        else
            let result = result.WithExtra(extra |> List.map (fun (k, v) -> Collections.Generic.KeyValuePair(k, Nullable v)))
            folder.WriteResult result
            result
    finally
        for d in List.rev t.Owned do d.Dispose()

let private resolve (spec: Spec<'Config>) (variant: 'Config -> 'Config) (preset: Preset) (baseline: JsonObject option) (overrides: string list) =
    let start =
        match baseline with
        | Some json -> Configs.ofJson<'Config> "--config" json
        | None -> variant (spec.Config preset)
    Configs.toJson (Configs.applyOverrides overrides start)

let private recipe (spec: Spec<'Config>) (name: string) (paper: string) (variant: 'Config -> 'Config) : Recipe =
    let typed (request: Request) =
        match request.Config with
        | Some json -> Configs.ofJson<'Config> $"{name} config" json
        | None -> variant (spec.Config request.Preset)
    { Name = name; Paper = paper; Traits = spec.Traits; Presets = Preset.all
      Resolve = resolve spec variant
      Fields = Configs.fields typeof<'Config>
      Run = fun request env folder -> run spec (typed request) request env folder
      Encoder = fun json data -> spec.Encoder (Configs.ofJson<'Config> $"{name} config" json) data }

/// The recipes of a spec: its own and one per variant.
let recipes (spec: Spec<'Config>) : Recipe list =
    recipe spec spec.Name spec.Paper id
    :: [ for suffix, paper, change in spec.Variants -> recipe spec $"{spec.Name}-{suffix}" paper change ]

/// The document `ssl config` prints: the recipe, its preset, the overrides and the resolved config
/// (what `ssl train --config` replays and the PyTorch twins of `ssl bench --peer` read).
let configDocument (recipe: Recipe) (preset: Preset) (overrides: string list) =
    let document = JsonObject()
    document["method"] <- JsonValue.Create recipe.Name
    document["preset"] <- JsonValue.Create(Preset.name preset)
    document["overrides"] <- JsonArray(overrides |> List.map (fun s -> JsonValue.Create s :> JsonNode) |> Array.ofList)
    document["config"] <- recipe.Resolve preset None overrides
    document
