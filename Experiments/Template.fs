/// The one run template every recipe goes through, and the spec a recipe is. A recipe file holds
/// its config record, its training step and a `Spec`; the template writes config.json, loads the
/// data, draws the few-label split, seeds, builds the step, places its modules on the device, runs
/// the trainer, computes the baselines and finishes (Pipeline.finish). DESIGN.md, style point 4.
[<AutoOpen>]
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
      SupervisedOnly: SupervisedOnly
      /// Its paper synchronises batch norm across devices: on several ranks, every batch-norm layer
      /// normalises over the global batch (Ssl.Host.Distributed.SyncBatchNorm); else per rank.
      SyncBatchNorm: bool }

let selfSupervised = { Colour = false; LabelBudgets = []; SupervisedOnly = Trained; SyncBatchNorm = false }
/// A self-supervised recipe whose paper synchronises batch norm across devices (SimCLR, BYOL, Barlow Twins).
let synchronisedBatchNorm = { selfSupervised with SyncBatchNorm = true }
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
      NewEncoder: unit -> Encoder
      /// What the recipe built beside its step's modules (generators, helpers): disposed after the run.
      Owned: Collections.Generic.List<IDisposable> }
    member c.Device = c.Env.Device
    /// The layout the run's convolutions read (its --memory-format): for models a recipe builds itself.
    member c.Layout = c.Env.Runtime.ConvLayout
    /// `resource`, disposed after the run (after the step's modules, in reverse order of `Own`).
    member c.Own(resource: #IDisposable) =
        c.Owned.Add resource
        resource
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
      /// The representation the protocols read (Pipeline.probed): the config's Probe field, else the output.
      Probe: Probe
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
      Evaluated = evaluated; Probe = Probe.Output; Classifier = None; AfterEpoch = null; Extra = (fun () -> []); Owned = [] }

/// A module under its checkpoint name: `"encoder" => encoder`.
let (=>) (name: string) (m: #torch.nn.Module) = name, (m :> torch.nn.Module)

/// One optimizer of a step: its name, its spec, and the modules whose parameters it steps (in order).
type Optimiser =
    { Name: string
      Spec: OptimizerSpec
      Over: torch.nn.Module list }

/// The optimizer `name` with `spec` over the parameters of `modules`, in their order.
let optimizer (name: string) (spec: OptimizerSpec) (modules: torch.nn.Module list) = { Name = name; Spec = spec; Over = modules }

/// A training step as a recipe states it: its modules, optimizers and state, and one step's work.
/// `Template.step` makes the engine's ITrainingStep of it; the template disposes the modules.
type StepDef<'Batch> =
    { /// Checkpointed, moved to the device and disposed after the run, by name, in this order.
      Modules: (string * torch.nn.Module) list
      Optimizers: Optimiser list
      /// Long-lived tensors that are not module state (queues, banks), read at each checkpoint.
      State: unit -> (string * torch.Tensor) list
      /// One step on `batch` (the examples' indices; a semi-supervised step's SemiSupervised.Batches):
      /// losses through StepContext.Optimize; returns the figures to log.
      Run: StepContext -> 'Batch -> (string * float) list }

/// A step of these modules and optimizers, without state of its own.
let stepOf (modules: (string * torch.nn.Module) list) (optimizers: Optimiser list) (run: StepContext -> 'Batch -> (string * float) list) =
    { Modules = modules; Optimizers = optimizers; State = (fun () -> []); Run = run }

/// The engine's ITrainingStep of a StepDef whose batches `batchOf` makes of the engine's.
type DefinedStep<'Batch>(def: StepDef<'Batch>, batchOf: StepContext -> int64[] -> 'Batch) =
    let modules = readOnlyDict def.Modules
    interface ITrainingStep with
        member _.Modules = modules
        member _.Optimizers =
            [| for o in def.Optimizers -> struct (o.Name, o.Spec, o.Over |> Seq.collect (fun m -> m.named_parameters ())) |]
            :> Collections.Generic.IReadOnlyList<_>
        member _.State = readOnlyDict (def.State())
        member _.Step(context, batch) = readOnlyDict (def.Run context (batchOf context batch))

/// The engine's step of a StepDef over the training set, for Trainer.Run outside the template (compose.fsx).
let engineStep (def: StepDef<int64[]>) : ITrainingStep = DefinedStep(def, fun _ batch -> batch)

/// The config's field of type `'Field` (Schedule, Probe): a top-level one, else the first found in
/// its nested records (EnAET's MixMatch settings hold its schedule), if any.
let rec private fieldOf<'Field> (config: obj) : 'Field option =
    let fields =
        config.GetType().GetProperties(Reflection.BindingFlags.Public ||| Reflection.BindingFlags.Instance)
        |> Array.filter (fun p -> p.GetIndexParameters().Length = 0)
    match fields |> Array.tryFind (fun p -> p.PropertyType = typeof<'Field>) with
    | Some p -> Some(p.GetValue config :?> 'Field)
    | None ->
        fields |> Array.tryPick (fun p ->
            if Microsoft.FSharp.Reflection.FSharpType.IsRecord p.PropertyType then fieldOf<'Field> (p.GetValue config) else None)

/// The config's Schedule field.
let private scheduleOf (c: Context<'Config>) =
    match fieldOf<TrainingSchedule> (box c.Config) with
    | Some s -> s
    | None -> invalidOp $"{c.Request.Method}: its config holds no Schedule field"

/// The training of `def`, evaluating `evaluated`, its batches made of the engine's by `batchOf`: the
/// config's Schedule (epochs, batch) over the training set, its Probe (else the output); the step's
/// modules, then what `Own` took, disposed after the run.
let trainOn (c: Context<'Config>) (evaluated: Encoder) (def: StepDef<'Batch>) (batchOf: StepContext -> int64[] -> 'Batch) =
    let schedule = scheduleOf c
    { training (DefinedStep(def, batchOf)) schedule.Epochs schedule.BatchSize evaluated c with
        Probe = defaultArg (fieldOf<Probe> (box c.Config)) Probe.Output
        Owned = [ for _, m in def.Modules -> m :> IDisposable ] @ List.ofSeq c.Owned }

type Context<'Config> with
    /// The config's Schedule field.
    member c.Schedule = scheduleOf c

    /// The training of `def` on the training set, evaluating `evaluated` (trainOn).
    member c.Train(evaluated: Encoder, def: StepDef<int64[]>) = trainOn c evaluated def (fun _ batch -> batch)

/// A recipe: one paper's method, as data.
type Spec<'Config> =
    { Name: string
      Paper: string
      Traits: Traits
      /// The config of each preset: the paper's defaults, scaled to our data where the config says so.
      Config: Preset -> 'Config
      /// The one encoder factory (training, baselines, export, `ssl eval`, `ssl bench`), from the
      /// config, the data (its channels; its pixel statistics where an encoder holds them) and the
      /// layout its convolutions read (the run's --memory-format, RuntimeOptions.ConvLayout).
      Encoder: 'Config -> Data -> SafeConv.ConvLayout -> Encoder
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
let spec name paper traits (config: Preset -> 'Config) (encoder: 'Config -> Data -> SafeConv.ConvLayout -> Encoder) (backbone: 'Config -> Backbone option)
         (encoderName: 'Config -> string) (build: Context<'Config> -> Training) =
    { Name = name; Paper = paper; Traits = traits; Config = config; Encoder = encoder; EncoderName = encoderName
      Backbone = backbone; CheckData = (fun _ _ -> ()); Build = build; Variants = [] }

/// A spec whose encoder is the Backbone its config names (`backbone` reads it), at default batch-norm momentum.
let backboneSpec name paper traits (config: Preset -> 'Config) (backbone: 'Config -> Backbone) build =
    spec name paper traits config (fun c data layout -> instantiate layout None data.Train.Channels (backbone c)) (backbone >> Some)
        (backbone >> Backbone.name) build

/// What a run with a training observer came to.
type Observed =
    /// It trained to its end and was evaluated (result.json, export).
    | Evaluated of RunResult
    /// The observer stopped its training: nothing evaluated or exported, no result.json.
    | StoppedByObserver of TrainSummary
    /// A rank other than 0 of a run on several processes: it trained; rank 0 evaluates and writes.
    | TrainedOnly of TrainSummary

/// A recipe as the command line, `repro` and `bench` see it, whatever its config type.
type Recipe =
    { Name: string
      Paper: string
      Traits: Traits
      /// The recipe this one is under an earlier name (`alias`): the same config, steps and figures.
      AliasOf: string option
      Presets: Preset list
      /// The resolved config: a preset's, or `baseline` (a `--config` file's), then `--set` overrides.
      Resolve: Preset -> JsonObject option -> string list -> JsonObject
      /// Every settable field: (dotted path, expected type).
      Fields: (string * string) list
      Run: Request -> RunEnvironment -> RunFolder -> RunResult
      /// `Run` with an observer of its training steps that may stop it (`ssl bench`'s StepBenchmark).
      RunObserved: ITrainingObserver -> Request -> RunEnvironment -> RunFolder -> Observed
      /// The encoder of a resolved config for the data, its convolutions in the layout (`ssl eval`, `ssl bench`).
      Encoder: JsonObject -> Data -> SafeConv.ConvLayout -> Encoder }

/// Square images, or an invalidArg naming --dataset and the recipe (`what`) that needs them.
let requireSquare (what: string) (data: Data) =
    if data.Train.Height <> data.Train.Width then
        invalidArg "--dataset" $"--dataset: {what} needs square images, found {data.Train.Height}x{data.Train.Width}"

/// Images of at least `side` x `side` pixels, or an invalidArg naming --dataset and what (`what`) needs them.
let requireSide (what: string) (side: int64) (data: Data) =
    if data.Train.Height < side || data.Train.Width < side then
        invalidArg "--dataset" $"--dataset: {what} needs images of at least {side}x{side}, found {data.Train.Height}x{data.Train.Width}"

/// The JSON object in the file `path` (`what` it should be, for errors): a file that does not parse,
/// or holds something else, is a DataException naming the file, what was expected and what was found.
let readJsonObject (path: string) (what: string) : JsonObject =
    let node =
        try JsonNode.Parse(IO.File.ReadAllText path)
        with :? Text.Json.JsonException as e -> raise (DataException(path, what, e.Message.Split('\n')[0]))
    match node with
    | :? JsonObject as o -> o
    | _ -> raise (DataException(path, what, if isNull node then "null" else node.ToJsonString()))

/// config.json's "init": the file the encoder starts from (path, sha256), or null for a random start.
let initJson (init: InitFile option) : JsonNode =
    match init with
    | Some file -> JsonObject(dict [ "path", JsonValue.Create file.Path :> JsonNode; "sha256", JsonValue.Create file.Sha256 ])
    | None -> null

/// Loads `init` into `encoder` (EncoderInit.Load; `architecture` names it in a refusal) and, where
/// `report` (the run's first load: a momentum encoder loads the same file again), says on stdout what
/// of the file it left aside.
let loadInit (init: InitFile) (architecture: string) (report: bool) (encoder: Encoder) =
    let loaded = Ssl.Host.Export.EncoderInit.Load(encoder, init.Path, architecture)
    if report then
        let under = if loaded.Prefix = "" then "" else $" (names under '{loaded.Prefix}')"
        printfn "init: %d tensors from %s%s" loaded.Loaded init.Path under
        let listed (names: string seq) = String.Join(", ", Seq.truncate 4 names) + (if Seq.length names > 4 then ", ..." else "")
        if loaded.IgnoredHeads.Count > 0 then
            printfn "init: ignored %d tensors of the file's classifier head (%s)" loaded.IgnoredHeads.Count (listed loaded.IgnoredHeads)
        if loaded.IgnoredOutsidePrefix.Count > 0 then
            printfn "init: ignored %d tensors outside '%s' (%s)" loaded.IgnoredOutsidePrefix.Count loaded.Prefix (listed loaded.IgnoredOutsidePrefix)

/// The checks of `folder` before a run starts in it (nothing is written): a finished run is
/// refused unless --resume (re-evaluate) or --force (replace); an unfinished one unless --resume or
/// --force; --resume needs the run's config.json and asks for the same config, seed and labels.
/// Returns whether the run resumes (false when --resume finds no run yet, which starts one).
let checkFolder (request: Request) (env: RunEnvironment) (configJson: JsonObject) (folder: RunFolder) =
    let state = folder.State
    if request.Resume && request.Force then
        invalidArg "--force" "--force: replaces a run folder's run, --resume continues it; expected one of them, found both"
    match state, request.Resume, request.Force with
    | _, false, true -> false
    | RunState.Finished, false, false ->
        raise (RunFolderException(folder.Root, "a folder without a run (--out)",
                                  "a finished run (result.json); pass --resume to evaluate it again, --force to replace it, or another --out"))
    | RunState.Unfinished, false, false ->
        raise (RunFolderException(folder.Root, "a folder without a run (--out)",
                                  "an unfinished run; pass --resume to continue it, --force to replace it, or another --out"))
    | RunState.Empty, true, _ ->
        eprintfn "--resume: %s holds no run yet; starting one" folder.Root
        false
    | _, true, _ when not (IO.File.Exists folder.ConfigPath) ->
        raise (RunFolderException(folder.ConfigPath, "the config.json of the run to resume",
                                  "no such file (the folder holds a checkpoint or metrics without it); start again with --force, or use another --out"))
    | _, true, _ ->
        let before = readJsonObject folder.ConfigPath "the JSON object config.json `ssl train` wrote"
        let text (node: JsonNode) = if isNull node then "null" else node.ToJsonString()
        let same (key: string) (now: JsonNode) = text before[key] = text now
        let labels = request.Labels |> Option.map (fun n -> JsonValue.Create n :> JsonNode) |> Option.toObj
        for key, now in [ "method", JsonValue.Create request.Method :> JsonNode; "dataset", JsonValue.Create request.Dataset
                          "config", configJson :> JsonNode
                          "seed", JsonValue.Create request.Seed; "labels_per_class", labels; "init", initJson request.Init ] do
            if not (same key now) then
                invalidArg "--resume"
                    $"--resume: {folder.ConfigPath} holds {key} {text before[key]}, this command asks for {text now}; resume with the run's own settings (--config {folder.ConfigPath}) or use another --out"
        // The run-time options that change results: the same as the run's (runs before they were recorded: unchecked).
        match before["runtime"] with
        | :? JsonObject as was ->
            let now = env.Runtime.ToJson(env.Threads)
            let keys = [ "memory_format", "--memory-format"; "side_thread", "--side-thread"; "batch_norm", "--batch-norm" ] @ (if env.Deterministic then [ "threads", "--threads" ] else [])
            // A key the run did not record yet (batch_norm before it existed) is not checked.
            for key, flag in keys |> List.filter (fun (key, _) -> key <> "batch_norm" || was.ContainsKey key) do
                let w = if isNull was[key] then "null" else was[key].ToJsonString()
                if w <> now[key].ToJsonString() then
                    invalidArg flag $"{flag}: {folder.ConfigPath} ran with {key} {w}, this command asks for {now[key].ToJsonString()}; resume with the run's own {flag}"
        | _ -> ()
        true
    // An empty folder without --resume or --force: a fresh run.
    | _ -> false

/// Bytes a checkpoint of these modules and optimizers takes at most: every parameter and buffer,
/// and up to two optimizer moments per parameter, as float32 (4 bytes), with a margin for the rest.
let checkpointBytes (step: ITrainingStep) =
    let count (t: torch.Tensor) = t.numel() * 4L
    let parameters = step.Modules.Values |> Seq.sumBy (fun m -> m.parameters() |> Seq.sumBy count)
    let buffers = step.Modules.Values |> Seq.sumBy (fun m -> m.buffers() |> Seq.sumBy count)
    let state = step.State.Values |> Seq.sumBy count
    (3L * parameters + buffers + state) + (16L <<< 20)

/// Runs `spec` with `config` for `request`: the whole run, from config.json to result.json. Every
/// check (the folder, the data, the labels each probe needs, the probed layer) comes before the
/// first byte goes into the run folder (docs/reliability.md). `observer`, if any, watches the
/// training steps; when it stops them the run ends there, unevaluated.
let runObserved (spec: Spec<'Config>) (config: 'Config) (request: Request) (env: RunEnvironment) (folder: RunFolder)
                (observer: ITrainingObserver option) : Observed =
    let semi = not spec.Traits.LabelBudgets.IsEmpty
    let request = if semi then { request with Labels = Some(defaultArg request.Labels spec.Traits.LabelBudgets.Head) } else request
    let configJson = Configs.toJson config
    // Rank 0 checks and writes the folder; the others take its answer (docs/distributed.md).
    let world = Ssl.Host.Distributed.World.Current
    let writer = world.Rank = 0
    let resuming = if writer then checkFolder request env configJson folder else false
    let resuming = Ssl.Host.Distributed.CollectiveExtensions.Broadcast(world, (if resuming then 1L else 0L)) = 1L
    let request = { request with Resume = resuming }
    use data = loadData request
    let skipped = checkSkipped folder data
    let needsLabels = semi || spec.Traits.SupervisedOnly = OwnResult
    if needsLabels && not data.Train.IsLabelled then
        invalidArg "--dataset"
            $"--dataset: {request.Method} trains on labels and '{request.Dataset}' holds none (images without class sub-folders); give it a class tree (one sub-folder per class) or a train/ + val/ folder of such trees"
    if spec.Traits.Colour && data.Train.Channels <> 3L then
        invalidArg "--dataset"
            $"--dataset: {request.Method} needs colour (3-channel) images such as emoji, cifar10, cifar100, stl10 or an image folder; '{request.Dataset}' has {data.Train.Channels} channel(s)"
    match data.Probed with
    | Some probe when probe.Classes < 2 ->
        let flag = if data.Eval.IsSome then "--eval-dataset" else "--dataset"
        invalidArg flag $"{flag}: expected labelled images of at least 2 classes to probe, found {probe.Classes} class in '{probe.Name}'"
    | _ -> ()
    spec.CheckData config data
    let split =
        if semi then
            let perClass = request.Labels.Value
            let split = LabelSplitter.Draw(data.Train, perClass, request.Seed)
            if split.Unlabelled.Length = 0 then
                invalidArg "--labels" $"--labels: expected fewer labels per class than the training set holds, found {perClass} (nothing left unlabelled)"
            Some split
        else None
    // What the evaluation will need, checked now rather than after training.
    let notes = Collections.Generic.List<string>()
    data.Probed |> Option.iter (fun probe -> notes.AddRange(snd (feasibleBudgets probe)))
    let supervisedLabels =
        match spec.Traits.SupervisedOnly, data.Probed with
        | Trained, Some probe ->
            let perClass = defaultArg request.Labels 10
            let smallest, name = smallestClass probe
            if int64 perClass <= smallest then Some perClass
            elif request.Labels.IsSome then
                invalidArg "--labels" $"--labels: expected at most {smallest} per class (class '{name}' of {probe.Name} has {smallest} training images), found {perClass}"
            else
                notes.Add $"supervised_only: not run, class '{name}' of {probe.Name} has {smallest} training images (fewer than {perClass} per class)"
                None
        | _ -> None
    let newEncoder () = spec.Encoder config data env.Runtime.ConvLayout
    // The encoders the recipe builds start from --init; the random-init baseline and checks do not.
    let architecture = spec.Backbone config |> Option.map string |> Option.defaultWith (fun () -> spec.EncoderName config)
    let initLoads = ref 0
    let initialised () =
        let encoder = newEncoder ()
        request.Init |> Option.iter (fun init ->
            try loadInit init architecture (initLoads.Value = 0) encoder
            with _ -> encoder.Dispose(); reraise ()
            initLoads.Value <- initLoads.Value + 1)
        encoder
    torch.manual_seed(request.Seed) |> ignore
    let context =
        { Request = request; Env = env; Folder = folder; Data = data; Config = config; Split = split; NewEncoder = initialised
          Owned = Collections.Generic.List() }
    let t = spec.Build context
    try
        if request.Init.IsSome && initLoads.Value = 0 then
            invalidArg "--init" $"--init: expected a recipe whose encoder the template builds (ctx.NewEncoder), found {request.Method}, which builds its own"
        let layer, pool = t.Probe.LayerAndPool
        // The probed layer exists (a typo fails now, not after training); built on a copy of the
        // trained encoder's architecture, after Build so the run's random draws are unchanged.
        (let state = torch.get_rng_state()
         try
            use check = newEncoder ()
            let probedCheck, _ = probed layer pool data check
            if not (Object.ReferenceEquals(probedCheck, check)) then probedCheck.Dispose()
         finally
            torch.set_rng_state state
            state.Dispose())
        if t.Examples < int64 t.BatchSize then
            invalidArg "BatchSize"
                $"BatchSize: expected at most {t.Examples} (the examples an epoch walks of {data.Name}; every batch is whole), found {t.BatchSize}; --set BatchSize=N"
        folder.RequireFreeSpace(checkpointBytes t.Step, "a checkpoint of this run")
        // Every check passed: the folder is written from here on.
        if writer && request.Force then folder.ClearRun()
        if writer then folder.CreateLayout()
        if writer then writeSkipped folder skipped |> ignore
        if writer then
          folder.WriteConfig
            {| method = request.Method; preset = Preset.name request.Preset; dataset = request.Dataset
               dataset_path = (if DataCatalog.IsFolder request.Dataset then IO.Path.GetFullPath request.Dataset else null)
               eval_dataset = Option.toObj request.EvalDataset
               eval_dataset_path =
                   (match request.EvalDataset with Some d when DataCatalog.IsFolder d -> IO.Path.GetFullPath d | _ -> null)
               image_size = Option.toNullable request.ImageSize
               layout = (match request.Layout with FolderLayout.Auto -> null | l -> l.ToString().ToLowerInvariant())
               labels_per_class = Option.toNullable request.Labels; seed = request.Seed; device = env.DeviceName; threads = env.Threads
               deterministic = env.Deterministic; runtime = env.Runtime.ToJson(env.Threads); encoder = spec.EncoderName config
               probe = {| layer = layer; pool = pool |}
               overrides = request.Overrides; config = configJson; data = describeData data; init = initJson request.Init |}
        for m in t.Step.Modules.Values do m.``to``(env.Device) |> ignore
        let synchronised =
            let synchronise =
                match env.Runtime.BatchNorm with
                | BatchNormMode.PerRank -> false
                | BatchNormMode.Synchronised -> true
                | _ -> spec.Traits.SyncBatchNorm
            if synchronise then Array.ofSeq (Ssl.Host.Distributed.SyncBatchNorm.Attach(world, t.Step.Modules.Values)) else [||]
        use _ = { new IDisposable with member _.Dispose() = for h in synchronised do h.Dispose() }
        let options =
            TrainerOptions(Epochs = t.Epochs, BatchSize = t.BatchSize, ExampleCount = t.Examples, Seed = request.Seed,
                           Resume = request.Resume, LogEvery = t.LogEvery, Plan = data.Train, Observer = Option.toObj observer,
                           ConfigDigest = $"{request.Method} {configJson.ToJsonString()} labels={request.Labels}")
        let summary = Trainer.Run(t.Step, options, folder, env.Device, ConsoleProgress(), t.AfterEpoch)
        if summary.StoppedBy = StopReason.Observer then StoppedByObserver summary
        elif not writer then TrainedOnly summary else
        // Rank 0 evaluates alone: baselines and fine-tuning train as one process.
        use _ = Ssl.Host.Distributed.World.Alone()
        let testAcc = t.Classifier |> Option.map (fun (e, h) -> SupervisedTraining.testAccuracy e h data env.Device)
        let supervisedOnly =
            match spec.Traits.SupervisedOnly with
            | Trained ->
                let backbone = spec.Backbone config |> Option.defaultValue (SupervisedTraining.config request.Preset).Encoder
                match data.Probed, supervisedLabels with
                | Some probe, Some perClass ->
                    Some(phase $"supervised-only baseline on {perClass} labels/class" (fun () ->
                        SupervisedTraining.supervisedOnlyCached request backbone probe perClass folder env.Device env.Runtime.ConvLayout))
                | _ -> None
            | OwnResult -> request.Labels |> Option.bind (fun _ -> testAcc)
            | NotReported -> None
        let extra = t.Extra()
        let evaluated, suffix = probed layer pool data t.Evaluated
        let makeEncoder () = fst (probed layer pool data (newEncoder ()))
        finish request env folder data evaluated (spec.EncoderName config + suffix) makeEncoder summary testAcc supervisedOnly
            extra (List.ofSeq notes) (exportMetadata request data architecture (string t.Probe))
        |> Evaluated
    finally
        for d in List.rev t.Owned do d.Dispose()

/// `runObserved` without an observer: the run `ssl train` makes. Null on a rank other than 0 of a run
/// on several processes (rank 0 evaluates and writes the result).
let run (spec: Spec<'Config>) (config: 'Config) (request: Request) (env: RunEnvironment) (folder: RunFolder) : RunResult =
    match runObserved spec config request env folder None with
    | Evaluated result -> result
    | StoppedByObserver _ -> invalidOp $"{request.Method}: a run without an observer was stopped by one"
    | TrainedOnly _ -> null

/// A config read from JSON, one written before Schedule and Probe in today's shape (ConfigParts.upgrade,
/// with the preset's config as the template).
let private read (spec: Spec<'Config>) (variant: 'Config -> 'Config) (preset: Preset) (source: string) (json: JsonObject) =
    let template = Configs.toJson (variant (spec.Config preset))
    Configs.ofJson<'Config> source (upgrade typeof<'Config> template json)

let private resolve (spec: Spec<'Config>) (variant: 'Config -> 'Config) (preset: Preset) (baseline: JsonObject option) (overrides: string list) =
    let start =
        match baseline with
        | Some json -> read spec variant preset "--config" json
        | None -> variant (spec.Config preset)
    Configs.toJson (Configs.applyOverrides overrides start)

let private recipe (spec: Spec<'Config>) (name: string) (paper: string) (variant: 'Config -> 'Config) : Recipe =
    let typed (request: Request) =
        match request.Config with
        | Some json -> read spec variant request.Preset $"{name} config" json
        | None -> variant (spec.Config request.Preset)
    { Name = name; Paper = paper; Traits = spec.Traits; AliasOf = None; Presets = Preset.all
      Resolve = resolve spec variant
      Fields = Configs.fields typeof<'Config>
      Run = fun request env folder -> run spec (typed request) request env folder
      RunObserved = fun observer request env folder -> runObserved spec (typed request) request env folder (Some observer)
      Encoder = fun json data layout -> spec.Encoder (read spec variant Quick $"{name} config" json) data layout }

/// The recipes of a spec: its own and one per variant.
let recipes (spec: Spec<'Config>) : Recipe list =
    recipe spec spec.Name spec.Paper id
    :: [ for suffix, paper, change in spec.Variants -> recipe spec $"{spec.Name}-{suffix}" paper change ]

/// The spec's own recipe under another name as well (`alias`): an earlier name kept so that its runs, `--config` replays
/// and records still resolve; `ssl methods` shows it as the spec's recipe under that name.
let alias (alias: string) (spec: Spec<'Config>) : Recipe =
    { recipe spec alias $"{spec.Name} under its earlier name: {spec.Paper}" id with AliasOf = Some spec.Name }

/// The document `ssl config` prints: the recipe, its preset, the overrides and the resolved config
/// (what `ssl train --config` replays and the PyTorch twins of `ssl bench --peer` read).
let configDocument (recipe: Recipe) (preset: Preset) (overrides: string list) =
    let document = JsonObject()
    document["method"] <- JsonValue.Create recipe.Name
    document["preset"] <- JsonValue.Create(Preset.name preset)
    document["overrides"] <- JsonArray(overrides |> List.map (fun s -> JsonValue.Create s :> JsonNode) |> Array.ofList)
    document["config"] <- recipe.Resolve preset None overrides
    document
