/// What each `ssl` command does, given its parsed arguments. Each returns the process exit code.
module Ssl.Experiments.Commands

open System
open System.Diagnostics
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open Argu
open Spectre.Console
open TorchSharp
open Ssl.Host.Data
open Ssl.Host.Engine
open Ssl.Host.Eval
open Ssl.Host.Native
open Ssl.Host.Runtime
open Ssl.Experiments.Cli

let methods () =
    let table = Table().AddColumns("recipe", "paper", "presets", "traits")
    for r in Registry.all () do
        let traits =
            [ if r.Traits.Colour then "colour images"
              if not r.Traits.LabelBudgets.IsEmpty then
                  let budgets = r.Traits.LabelBudgets |> List.map string |> String.concat ", "
                  $"semi-supervised ({budgets} labels/class)" ]
            |> String.concat "; "
        table.AddRow(r.Name, Markup.Escape r.Paper, r.Presets |> List.map Recipe.Preset.name |> String.concat ", ", traits) |> ignore
    AnsiConsole.Write table
    AnsiConsole.MarkupLine $"{(Registry.all ()).Length} recipes registered; `ssl config <recipe>` prints one's config, `--set Field=value` changes it."
    0

let private formatAcc (v: Nullable<float>) = if v.HasValue then $"{v.Value:P2}" else "-"

/// Prints the result beside its baselines, and where the plots are.
let private report (folder: Ssl.Host.Runs.RunFolder) (r: Ssl.Host.Runs.RunResult) =
    let table = Table().AddColumns("", "linear probe", "kNN", "test acc", "10 labels/class", "100 labels/class")
    let few k = match r.Eval.FewLabelLinearAcc.TryGetValue k with | true, v -> formatAcc v | _ -> "-"
    table.AddRow(r.Method, formatAcc r.Eval.LinearProbeAcc, formatAcc r.Eval.KnnAcc, formatAcc r.Eval.TestAcc, few "10", few "100") |> ignore
    table.AddRow("random-init encoder", formatAcc r.Baselines.RandomInit.LinearProbeAcc, formatAcc r.Baselines.RandomInit.KnnAcc, "-", "-", "-") |> ignore
    table.AddRow("raw pixels", formatAcc r.Baselines.RawPixels.LinearProbeAcc, formatAcc r.Baselines.RawPixels.KnnAcc, "-", "-", "-") |> ignore
    if r.Baselines.SupervisedOnly.TestAcc.HasValue then
        table.AddRow("supervised only", "-", "-", formatAcc r.Baselines.SupervisedOnly.TestAcc, "-", "-") |> ignore
    AnsiConsole.Write table
    AnsiConsole.MarkupLine $"trained {r.Train.Epochs} epochs, {r.Train.Steps} steps in {r.Train.WallSeconds:F0} s at {r.Train.ImagesPerSecond:N0} img/s; peak RSS {r.Train.PeakRssMb:N0} MiB"
    AnsiConsole.MarkupLine $"result: {Markup.Escape folder.ResultPath}"
    for png in IO.Directory.GetFiles(folder.PlotsDir, "*.png") |> Array.sort do
        AnsiConsole.MarkupLine $"plot:   {Markup.Escape png}"

/// A registered recipe by name, or a usage error listing them.
let private findRecipe (flag: string) (name: string) =
    match Registry.tryFind name with
    | Some r -> r
    | None ->
        let known = Registry.recipes |> List.map (fun r -> r.Name) |> String.concat ", "
        invalidArg flag $"{flag}: expected one of {known} (see `ssl methods`), found '{name}'"

let private parsePreset (recipe: Template.Recipe) (text: string) =
    match Recipe.Preset.tryParse text with
    | Some p when List.contains p recipe.Presets -> p
    | _ ->
        let known = recipe.Presets |> List.map Recipe.Preset.name |> String.concat ", "
        invalidArg "--preset" $"--preset: expected one of {known} for {recipe.Name}, found '{text}'"

/// A `--config` file: a run's config.json (its "config" object and the run's method, preset, data
/// set, labels, seed and overrides) or a bare config object. Returns (run fields, config).
let private readConfigFile (path: string) : JsonObject * JsonObject =
    if not (IO.File.Exists path) then
        raise (DataException(path, "a JSON config (a run's config.json, or what `ssl config` prints)", "no such file"))
    let o = Template.readJsonObject path "a JSON object (a run's config.json, or what `ssl config` prints)"
    match (if o.ContainsKey "config" then Some o["config"] else None) with
    | Some(:? JsonObject as config) -> o, config
    | Some _ -> raise (DataException(path, "\"config\": a JSON object", o["config"].ToJsonString()))
    | None -> JsonObject(), o

/// The run-time options of a command: its --memory-format and --side-thread, each defaulting to
/// the environment's documented default (RuntimeOptions), and its --threads.
let runtimeOptions (memoryFormat: string option) (sideThread: string option) (threads: int) =
    let defaults = RuntimeOptions.FromEnvironment()
    RuntimeOptions(
        MemoryFormat = (memoryFormat |> Option.map (fun f -> RuntimeOptions.ParseMemoryFormat(f, "--memory-format")) |> Option.defaultValue defaults.MemoryFormat),
        SideThread = (sideThread |> Option.map (fun s -> RuntimeOptions.ParseSwitch(s, "--side-thread")) |> Option.defaultValue defaults.SideThread),
        Threads = threads)

/// The largest --image-size: a side of 4,096 pixels is 48 MiB a colour image, past what a batch of them can hold.
[<Literal>]
let maxImageSize = 4096

/// The run folder `ssl train` writes when --out is not given: runs/<method>-<preset>, then whatever
/// sets this run apart from the preset's defaults (data set, labels, seed, a digest of the
/// overrides), so two runs that differ never share a folder by default.
let defaultOut (request: Recipe.Request) =
    let safe (text: string) = String(text |> Seq.map (fun ch -> if Char.IsLetterOrDigit ch || ch = '-' || ch = '.' then ch else '_') |> Array.ofSeq)
    let digest (texts: string list) =
        let bytes = Text.Encoding.UTF8.GetBytes(String.concat "\n" texts)
        Convert.ToHexString(Security.Cryptography.SHA256.HashData bytes).Substring(0, 8).ToLowerInvariant()
    let dataName (d: string) = safe (IO.Path.GetFileName(IO.Path.TrimEndingDirectorySeparator d))
    let parts =
        [ request.Method; Recipe.Preset.name request.Preset
          if request.Dataset <> "fashion-mnist" then dataName request.Dataset
          match request.EvalDataset with Some e -> $"eval-{dataName e}" | None -> ()
          match request.ImageSize with Some n -> $"{n}px" | None -> ()
          match request.Labels with Some n -> $"labels{n}" | None -> ()
          if request.Seed <> 0L then $"seed{request.Seed}"
          if not request.Overrides.IsEmpty then $"set-{digest request.Overrides}" ]
    IO.Path.Combine("runs", String.concat "-" parts)

/// The weights a run starts from: --init's file, else the one a replayed config.json records
/// (`init`), which must still be the same bytes (its SHA-256).
let private initOf (given: string option) (configPath: string) (recorded: JsonObject) =
    match given, (if recorded.ContainsKey "init" then recorded["init"] else null) with
    | Some path, _ -> Some(InitFile.Of path)
    | None, (:? JsonObject as was) ->
        let field key = TrainedRun.field<string> configPath was key
        let init = InitFile.Of(defaultArg (field "path") "")
        match field "sha256" with
        | Some sha when sha <> init.Sha256 ->
            raise (DataException(init.Path, $"the weights {configPath} records as its init (SHA-256 {sha})", $"SHA-256 {init.Sha256}; pass --init to start from it anyway"))
        | _ -> Some init
    | None, _ -> None

let private trainHere (args: ParseResults<TrainArgs>) =
    let file = args.TryGetResult TrainArgs.Config |> Option.map (fun p -> p, readConfigFile p)
    let run = file |> Option.map (fun (_, (r, _)) -> r) |> Option.defaultWith (fun () -> JsonObject())
    let filePath = file |> Option.map fst |> Option.defaultValue "--config"
    let text key = TrainedRun.field<string> filePath run key
    let name =
        match args.TryGetResult TrainArgs.Method, text "method" with
        | Some n, Some m when m <> n -> invalidArg "method" $"method: {n} given, but --config {filePath} is a config of {m}"
        | Some n, _ -> n
        | None, Some m -> m
        | None, None -> invalidArg "method" "method: expected a recipe name (see `ssl methods`), or --config with a run's config.json"
    let recipe = findRecipe "method" name
    let preset =
        args.TryGetResult TrainArgs.Preset
        |> Option.orElse (text "preset")
        |> Option.defaultValue "quick"
        |> parsePreset recipe
    let labels = args.TryGetResult TrainArgs.Labels |> Option.orElse (TrainedRun.field<int> filePath run "labels_per_class")
    match labels with
    | Some n when n <= 0 -> invalidArg "--labels" $"--labels: expected a positive number of labels per class, found {n}"
    | _ -> ()
    let sets = args.GetResults TrainArgs.Set
    let recorded =
        match (if run.ContainsKey "overrides" then run["overrides"] else null) with
        | null -> []
        | :? JsonArray as list when list |> Seq.forall (fun v -> not (isNull v) && v.GetValueKind() = JsonValueKind.String) ->
            [ for v in list -> v.GetValue<string>() ]
        | other -> raise (DataException(filePath, "\"overrides\": a list of Field=value texts", other.ToJsonString()))
    let config = recipe.Resolve preset (file |> Option.map (fun (_, (_, c)) -> c)) sets
    let request: Recipe.Request =
        { Method = name; Preset = preset
          Dataset = args.TryGetResult TrainArgs.Dataset |> Option.orElse (text "dataset") |> Option.defaultValue "fashion-mnist"
          EvalDataset = args.TryGetResult TrainArgs.Eval_Dataset |> Option.orElse (text "eval_dataset")
          ImageSize =
            match args.TryGetResult TrainArgs.Image_Size |> Option.orElse (TrainedRun.field<int> filePath run "image_size") with
            | Some n when n < 1 || n > maxImageSize ->
                invalidArg "--image-size" $"--image-size: expected a size of 1 to {maxImageSize} pixels, found {n}"
            | size -> size
          DataMemoryMb =
            match args.TryGetResult TrainArgs.Data_Memory_Mb with
            | Some n when n < 0L -> invalidArg "--data-memory-mb" $"--data-memory-mb: expected a size in MiB, 0 or more (0 streams every image folder), found {n}"
            | n -> defaultArg n Recipe.defaultDataMemoryMb
          Workers =
            match args.TryGetResult TrainArgs.Workers with
            | Some n when n < 1 -> invalidArg "--workers" $"--workers: expected at least 1 decoding thread, found {n}"
            | n -> defaultArg n 0
          Layout =
            args.TryGetResult TrainArgs.Layout |> Option.orElse (text "layout")
            |> Option.map ImageFolder.ParseLayout |> Option.defaultValue FolderLayout.Auto
          DataRoot = args.TryGetResult TrainArgs.Data_Root
          Labels = labels
          Seed = args.TryGetResult TrainArgs.Seed |> Option.orElse (TrainedRun.field<int64> filePath run "seed") |> Option.defaultValue 0L
          Device = DeviceSetup.Parse(args.GetResult(TrainArgs.Device, defaultValue = "cpu"))
          Threads = args.GetResult(TrainArgs.Threads, defaultValue = 0)
          Deterministic = args.Contains TrainArgs.Deterministic
          Out = ""
          Resume = args.Contains TrainArgs.Resume
          Force = args.Contains TrainArgs.Force
          Config = Some config
          Overrides = recorded @ sets
          Init = initOf (args.TryGetResult TrainArgs.Init) filePath run }
    let request = { request with Out = args.TryGetResult TrainArgs.Out |> Option.defaultWith (fun () -> defaultOut request) }
    let runtime = runtimeOptions (args.TryGetResult TrainArgs.Memory_Format) (args.TryGetResult TrainArgs.Side_Thread) request.Threads
    let runtime = runtime.WithBatchNorm(RuntimeOptions.ParseBatchNorm(args.TryGetResult TrainArgs.Batch_Norm |> Option.toObj, "--batch-norm"))
    let env = DeviceSetup.Configure(request.Device, request.Threads, request.Seed, request.Deterministic, runtime)
    for note in env.Notes do AnsiConsole.MarkupLine $"[yellow]{Markup.Escape note}[/]"
    // Rank 0 alone claims and writes the folder (docs/distributed.md).
    let writer = Ssl.Host.Distributed.World.IsWriter
    let folder = if writer then Ssl.Host.Runs.RunFolder.Claim(request.Out) else Ssl.Host.Runs.RunFolder.Follow(request.Out)
    try
        let changed = if request.Overrides.IsEmpty then "" else " with " + String.concat " " request.Overrides
        let ranks = Ssl.Host.Distributed.World.LaunchedSize
        let where = if ranks > 1 then $"{ranks} ranks x {env.Threads} threads" else $"{env.Threads} threads"
        if writer then
            AnsiConsole.MarkupLine $"training [bold]{name}[/] ({Recipe.Preset.name preset}{Markup.Escape changed}) on {Markup.Escape request.Dataset}, {env.DeviceName}, {where}, seed {request.Seed} -> {Markup.Escape folder.Root}"
        let result = recipe.Run request env folder
        if writer then report folder result
        0
    finally
        if writer then folder.Release()

/// This command again without `--ranks N` on `ranks` processes under mpirun (Launcher.Run): ssl's own
/// command (Sweep.selfCommand) and this process's arguments.
let private underMpirun (ranks: int) =
    let rec without (rest: string list) =
        match rest with
        | "--ranks" :: _ :: tail -> without tail
        | head :: tail -> head :: without tail
        | [] -> []
    let host, prefix = Sweep.selfCommand ()
    Ssl.Host.Distributed.Launcher.Run(ranks, host :: prefix @ without (List.ofArray (Environment.GetCommandLineArgs() |> Array.skip 1)))

/// `ssl train`: here, or with `--ranks N` (N > 1, no launcher around it) under mpirun on N processes.
let train (args: ParseResults<TrainArgs>) =
    let launched = Ssl.Host.Distributed.World.LaunchedSize
    match args.TryGetResult TrainArgs.Ranks with
    | Some n when n < 1 -> invalidArg "--ranks" $"--ranks: expected 1 or more processes, found {n}"
    | Some n when n > 1 && launched = 1 ->
        underMpirun n
    | Some n when n <> launched ->
        invalidArg "--ranks" $"--ranks: expected {launched}, the processes its launcher started, found {n}"
    | _ -> trainHere args

/// `ssl config <method>`: the resolved config as JSON that `ssl train --config` reads back, or its fields.
let config (args: ParseResults<ConfigArgs>) =
    let recipe = findRecipe "method" (args.GetResult ConfigArgs.Method)
    let preset = parsePreset recipe (args.GetResult(ConfigArgs.Preset, defaultValue = "quick"))
    let sets = args.GetResults ConfigArgs.Set
    let resolved = recipe.Resolve preset None sets
    if args.Contains ConfigArgs.Fields then
        let valueAt (path: string) = (path.Split('.') |> Array.fold (fun (n: JsonNode) key -> n[key]) (resolved :> JsonNode)).ToJsonString()
        for path, kind in recipe.Fields do printfn "%s: %s = %s" path kind (valueAt path)
    else
        printfn "%s" ((Template.configDocument recipe preset sets).ToJsonString(JsonSerializerOptions(WriteIndented = true)))
    0

let private parseSplit (text: string) =
    match text.ToLowerInvariant() with
    | "train" -> Split.Train
    | "test" -> Split.Test
    | "unlabelled" | "unlabeled" -> Split.Unlabelled
    | other -> invalidArg "--split" $"--split: expected train, test or unlabelled, found '{other}'"

/// Up to `perClass` images of every class, class by class (the first ones, for a stable picture).
/// The rows of a labelled data set's sample grid: each class that has images, by name, with the
/// indices of its first `perClass` images; none for an unlabelled one.
let classRows (data: ImageDataset) perClass =
    if not data.IsLabelled then []
    else
        let labels = data.Labels.data<int64>().ToArray()
        [ for c in 0 .. data.ClassNames.Count - 1 do
              let picks = labels |> Seq.indexed |> Seq.filter (fun (_, l) -> l = int64 c) |> Seq.truncate perClass |> Seq.map (fst >> int64) |> Seq.toArray
              if picks.Length > 0 then yield data.ClassNames[c], picks ]

let data (args: ParseResults<DataArgs>) =
    let name = args.GetResult(DataArgs.Dataset, defaultValue = "fashion-mnist")
    let split = args.TryGetResult DataArgs.Split |> Option.map parseSplit |> Option.defaultValue Split.Train
    let env = DeviceSetup.Configure(DeviceRequest.Cpu, threads = args.GetResult(DataArgs.Threads, defaultValue = 0))
    let clock = Stopwatch.StartNew()
    let layout = args.TryGetResult DataArgs.Layout |> Option.map ImageFolder.ParseLayout |> Option.defaultValue FolderLayout.Auto
    let root = args.TryGetResult DataArgs.Data_Root |> Option.toObj
    use dataset = DataCatalog.Load(name, split, root, folder = ImageFolderOptions(Layout = layout))
    if not (isNull dataset.LayoutNote) then eprintfn "data: %s" dataset.LayoutNote
    let loadSeconds = clock.Elapsed.TotalSeconds
    // A built-in set read without --split: the test split's class counts beside the training split's.
    let testCounts =
        if args.Contains DataArgs.Split || DataCatalog.IsFolder name || not dataset.IsLabelled then None
        else
            use test = DataCatalog.Load(name, Split.Test, root)
            Some(test.ClassCounts())
    let struct (mean, std) = dataset.ChannelStatistics()
    let counts = dataset.ClassCounts()
    let fmt (xs: float[]) = xs |> Array.map (sprintf "%.4f") |> String.concat ", "

    let summary = Table().HideHeaders().AddColumns("", "")
    summary.AddRow("data set", $"{dataset.Name} ({split})") |> ignore
    summary.AddRow("images", $"{dataset.Count} x {dataset.Channels} x {dataset.Height} x {dataset.Width} (uint8)") |> ignore
    summary.AddRow("read in", $"%.3f{loadSeconds} s ({float dataset.Count / loadSeconds:N0} img/s, {env.Threads} threads)") |> ignore
    summary.AddRow("pixel mean", fmt mean) |> ignore
    summary.AddRow("pixel std", fmt std) |> ignore
    summary.AddRow("files", Markup.Escape(String.Join("\n", dataset.Sources))) |> ignore
    AnsiConsole.Write summary
    let classes =
        match testCounts with
        | Some _ -> Table().AddColumns("class", "name", "train", "test")
        | None -> Table().AddColumns("class", "name", "images")
    let row (cells: string list) = classes.AddRow(Array.ofList cells) |> ignore
    let column (c: int) = match testCounts with Some test -> [ string test[c] ] | None -> []
    counts |> Array.iteri (fun c n -> row ([ string c; Markup.Escape dataset.ClassNames[c]; string n ] @ column c))
    row ([ ""; "all"; string (Array.sum counts) ] @ (testCounts |> Option.map (Array.sum >> string) |> Option.toList))
    if dataset.IsLabelled then AnsiConsole.Write classes

    match args.TryGetResult DataArgs.Grid with
    | Some png ->
        let scale = if dataset.Height <= 32L then 3 else 1
        match classRows dataset 10 with
        | [] ->
            use images = dataset.Batch(Array.init (min 100 (int dataset.Count)) int64)
            ImageGrid.SavePng(images, png, columns = 10, scale = scale)
        | rows ->
            let batches = [ for name, picks in rows -> struct (name, dataset.Batch picks) ]
            try ImageGrid.SaveLabelledRows(ResizeArray batches, png, scale = scale) |> ignore
            finally for struct (_, images) in batches do images.Dispose()
        AnsiConsole.MarkupLine $"sample grid: [link]{Markup.Escape(Path.GetFullPath png)}[/]"
    | None -> ()

    match args.TryGetResult DataArgs.Json with
    | Some path ->
        let report =
            {| dataset = dataset.Name; split = string split; count = dataset.Count
               shape = [| dataset.Channels; dataset.Height; dataset.Width |]
               class_names = dataset.ClassNames; class_counts = counts; test_class_counts = Option.toObj testCounts
               pixel_mean = mean; pixel_std = std
               load_seconds = loadSeconds; threads = env.Threads; sources = dataset.Sources |}
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath path)) |> ignore
        File.WriteAllText(path, JsonSerializer.Serialize(report, JsonSerializerOptions(WriteIndented = true)))
    | None -> ()
    0

let info (args: ParseResults<InfoArgs>) =
    let env =
        DeviceSetup.Configure(
            DeviceSetup.Parse(args.GetResult(InfoArgs.Device, defaultValue = "cpu")),
            threads = args.GetResult(InfoArgs.Threads, defaultValue = 0),
            seed = args.GetResult(InfoArgs.Seed, defaultValue = 0L),
            deterministic = args.Contains InfoArgs.Deterministic,
            runtime = runtimeOptions (args.TryGetResult InfoArgs.Memory_Format) (args.TryGetResult InfoArgs.Side_Thread) 0)
    for note in env.Notes do AnsiConsole.MarkupLine $"[yellow]{Markup.Escape note}[/]"
    let struct (ts, lt) = TorchRuntime.Versions()
    let table = Table().HideHeaders().AddColumns("", "")
    table.AddRow("device", env.DeviceName) |> ignore
    table.AddRow("threads", string env.Threads) |> ignore
    table.AddRow("seed", string env.Seed) |> ignore
    table.AddRow("deterministic", string env.Deterministic) |> ignore
    table.AddRow("memory format", RuntimeOptions.Name env.Runtime.MemoryFormat) |> ignore
    table.AddRow("side thread", (if env.Runtime.SideThread then "on" else "off")) |> ignore
    table.AddRow("precision", env.Runtime.Precision) |> ignore
    table.AddRow("TorchSharp", ts) |> ignore
    table.AddRow("libtorch", lt) |> ignore
    table.AddRow("natives preloaded from", TorchRuntime.PreloadedFrom |> Option.ofObj |> Option.defaultValue "(found by the .NET host)") |> ignore
    AnsiConsole.Write table
    0

let version () =
    TorchRuntime.EnsureLoaded()
    let struct (ts, lt) = TorchRuntime.Versions()
    let ssl = typeof<Recipe.Request>.Assembly.GetName().Version
    printfn "ssl %O, TorchSharp %s, libtorch %s" ssl ts lt
    0

/// `ssl eval <run-dir>`: rebuilds the run's encoder, loads its exported weights and applies one
/// protocol to the representation the run's own evaluation read (config.json's probe: layer and
/// pool), unless --layer names another; prints the figure and writes it to
/// eval-<protocol>[-<labels>][-<layer>].json in the run folder.
let eval (args: ParseResults<EvalArgs>) =
    let run = TrainedRun.read (args.GetResult EvalArgs.Run_Dir)
    let dir = run.Dir
    let seed = run.Seed
    let protocol = args.GetResult(EvalArgs.Protocol, defaultValue = "linear").ToLowerInvariant()
    if not (List.contains protocol [ "linear"; "knn"; "finetune" ]) then
        invalidArg "--protocol" $"--protocol: expected linear, knn or finetune, found '{protocol}'"
    let labels = args.TryGetResult EvalArgs.Labels
    match labels with
    | Some n when n <= 0 -> invalidArg "--labels" $"--labels: expected a positive number of labels per class, found {n}"
    | _ -> ()
    let env = DeviceSetup.Configure(DeviceSetup.Parse(args.GetResult(EvalArgs.Device, defaultValue = "cpu")),
                                    threads = args.GetResult(EvalArgs.Threads, defaultValue = 0), seed = seed,
                                    runtime = runtimeOptions run.MemoryFormat None 0)
    let request =
        { TrainedRun.request run env.Threads with
            Labels = labels
            EvalDataset = args.TryGetResult EvalArgs.Eval_Dataset |> Option.orElse run.EvalDataset }
    let runLayer, runPool = run.ProbeLayer, run.ProbePool
    let layer, pool =
        match args.TryGetResult EvalArgs.Layer with
        | Some "output" -> "", 0L
        | Some l -> l, int64 (args.GetResult(EvalArgs.Pool, defaultValue = 2))
        | None ->
            if args.Contains EvalArgs.Pool then invalidArg "--pool" "--pool: sets the pooling of --layer; expected --layer with it, found none"
            runLayer, runPool
    let randomInit = args.Contains EvalArgs.Random_Init
    let init = args.TryGetResult EvalArgs.Init |> Option.map InitFile.Of
    if randomInit && init.IsSome then
        invalidArg "--init" "--init: evaluates the given weights, --random-init a random start; expected one of them, found both"
    if layer <> "" && protocol = "finetune" then
        if args.Contains EvalArgs.Layer then invalidArg "--layer" "--layer: probes an inner layer with the linear or knn protocol, not finetune"
    if layer <> "" && pool < 1L then invalidArg "--pool" $"--pool: expected a positive size, found {pool}"
    if args.Contains EvalArgs.Layer then
        let runs = if runLayer = "" then "its encoder's output" else $"layer '{runLayer}' pooled {runPool}"
        eprintfn "--layer: reading '%s' pooled %d instead of what the run's evaluation read (%s); figures differ from result.json's" layer pool runs
    use all = Pipeline.loadData request
    let data =
        match all.Probed with
        | Some d -> d
        | None -> raise (DataException(request.Dataset, "labelled images to evaluate on (give --eval-dataset <a labelled set>)", "unlabelled images"))
    let trained =
        match init with
        | Some file -> TrainedRun.encoderFrom run data env.Runtime.ConvLayout file
        | None -> TrainedRun.encoder run data env.Runtime.ConvLayout randomInit
    let encoder: Ssl.Core.Models.Encoder =
        if protocol = "finetune" || layer = "" then trained
        else fst (Pipeline.probed layer pool data trained)
    encoder.``to``(env.Device) |> ignore
    let examples = SupervisedTraining.labelledExamples data.Train labels seed
    let accuracy =
        match protocol with
        | "finetune" ->
            let folder = Ssl.Host.Runs.RunFolder(IO.Path.Combine(dir, "finetune" + (labels |> Option.map (sprintf "-%d") |> Option.defaultValue "")))
            let head, _ =
                SupervisedTraining.trainWith encoder (SupervisedTraining.fineTuneConfig run.Preset) data examples seed false folder env.Device (ConsoleProgress())
            use tuned = encoder
            use head = head
            SupervisedTraining.testAccuracy tuned head data env.Device
        | _ ->
            use encoder = encoder
            let trainFeatures, testFeatures = Pipeline.extract encoder data env.Device
            use trainFeatures = trainFeatures
            use testFeatures = testFeatures
            use idx = torch.tensor(examples)
            use x = trainFeatures.index_select(0L, idx)
            use y = data.Train.Labels.index_select(0L, idx)
            if protocol = "knn" then Knn.Accuracy(x, y, testFeatures, data.Test.Labels, data.Classes)
            else LinearProbe.Evaluate(x, y, testFeatures, data.Test.Labels, data.Classes, seed).TestAccuracy
    let suffix =
        (labels |> Option.map (sprintf "-%d") |> Option.defaultValue "")
        + (match args.TryGetResult EvalArgs.Layer with
           | Some "output" -> "-output"
           | Some _ -> $"-{layer}-pool{pool}"
           | None -> "")
        + (if randomInit then "-random-init" else "")
        + (match init with Some file -> "-init-" + IO.Path.GetFileNameWithoutExtension file.Path | None -> "")
    let out = IO.Path.Combine(dir, $"eval-{protocol}{suffix}.json")
    Ssl.Host.Runs.RunFolder.WriteAtomically(
        out,
        JsonSerializer.Serialize
            {| protocol = protocol; labels_per_class = Option.toNullable labels; layer = (if layer = "" || protocol = "finetune" then null else layer)
               pool = (if layer = "" || protocol = "finetune" then Nullable() else Nullable pool); weights = (if randomInit then "random-init" elif init.IsSome then "init" else "trained")
               init = Template.initJson init; feature_dim = encoder.FeatureDim; test_acc = accuracy |})
    let budget = labels |> Option.map (sprintf " with %d labels per class") |> Option.defaultValue ""
    AnsiConsole.MarkupLine $"{protocol}{budget}: test top-1 [bold]{accuracy:P2}[/] -> {Markup.Escape out}"
    0

let private presetArg (text: string) =
    match Recipe.Preset.tryParse text with
    | Some p -> p
    | None -> invalidArg "--preset" $"--preset: expected smoke, quick or paper, found '{text}'"

let private defaultFigures (out: string) = IO.Path.Combine(IO.Path.GetDirectoryName(IO.Path.GetFullPath out), "docs", "results")

/// `ssl report <runs-dir>`: RESULTS.md from the run folders' result.json files; with `--record
/// results/` the runs are recorded first and the report comes from every record; `--records
/// results/` reports the records alone.
let reportRuns (args: ParseResults<ReportArgs>) =
    let out = args.GetResult(ReportArgs.Out, defaultValue = "RESULTS.md")
    let figures = args.GetResult(ReportArgs.Figures, defaultValue = defaultFigures out)
    let fromRecords (records: string) =
        let count, stale = Records.write Registry.recipes records out figures []
        AnsiConsole.MarkupLine $"{Markup.Escape out}: {count} records from {Markup.Escape records} ({stale} stale rows), figures in {Markup.Escape figures}"
        0
    match args.TryGetResult ReportArgs.Runs_Dir, args.TryGetResult ReportArgs.Record, args.TryGetResult ReportArgs.Records with
    | _, Some _, Some _ -> invalidArg "--records" "--records: reports a records folder alone; --record already reports the folder it records into"
    | Some runsDir, Some records, None ->
        let written = Records.record runsDir records
        AnsiConsole.MarkupLine $"recorded {written.Length} runs of {Markup.Escape runsDir} into {Markup.Escape records}"
        fromRecords records
    | None, Some _, None -> invalidArg "--record" "--record: expected a runs folder to record (ssl report <runs-dir> --record results)"
    | _, None, Some records -> fromRecords records
    | Some runsDir, None, None ->
        let count = Report.write runsDir out figures
        AnsiConsole.MarkupLine $"{Markup.Escape out}: {count} runs from {Markup.Escape runsDir}, figures in {Markup.Escape figures}"
        0
    | None, None, None -> invalidArg "runs-dir" "runs-dir: expected a folder of run folders, or --records <folder>"

let private numbers (flag: string) (parse: string -> 'T option) (text: string) =
    let items = text.Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries) |> List.ofArray
    if items.IsEmpty then invalidArg flag $"{flag}: expected a comma-separated list, found '{text}'"
    [ for i in items -> match parse i with Some v -> v | None -> invalidArg flag $"{flag}: expected whole numbers, found '{i}'" ]

let private int64Of (s: string) = match Int64.TryParse s with | true, v when v >= 0L -> Some v | _ -> None
let private positiveInt (s: string) = match Int32.TryParse s with | true, v when v > 0 -> Some v | _ -> None

/// `ssl repro`: every registered recipe's preset on seeds 0,1,2 (or a shard of them), recorded, then the report.
let repro (args: ParseResults<ReproArgs>) =
    let only = args.TryGetResult ReproArgs.Only |> Option.map (Repro.parseOnly Registry.recipes)
    let out = args.GetResult(ReproArgs.Out, defaultValue = "RESULTS.md")
    let seeds = numbers "--seeds" int64Of (args.GetResult(ReproArgs.Seeds, defaultValue = "0,1,2"))
    let preset = presetArg (args.GetResult(ReproArgs.Preset, defaultValue = "quick"))
    let grid = Repro.grid Registry.recipes only preset seeds (args.TryGetResult ReproArgs.Colour_Dataset)
    Repro.run grid (args.TryGetResult ReproArgs.Shard |> Option.map Repro.parseShard) (args.GetResult(ReproArgs.Local, defaultValue = 1))
        (args.GetResult(ReproArgs.Runs_Dir, defaultValue = IO.Path.Combine("runs", "repro")))
        (args.GetResult(ReproArgs.Records, defaultValue = "results")) out
        (args.GetResult(ReproArgs.Figures, defaultValue = defaultFigures out))

/// `ssl sweep`: expands the grid, then runs it locally or emits it for a scheduler.
let sweep (args: ParseResults<SweepArgs>) =
    let grid =
        match args.TryGetResult SweepArgs.File with
        | Some file ->
            if args.Contains SweepArgs.Method || args.Contains SweepArgs.Seeds || args.Contains SweepArgs.Set || args.Contains SweepArgs.Labels then
                invalidArg "--file" "--file: the sweep file holds the grid; leave out --method, --seeds, --labels and --set"
            let g = Sweep.readGridFile file
            { g with Seeds = (if g.Seeds.IsEmpty then [ 0L ] else g.Seeds) }
        | None ->
            let methods =
                args.TryGetResult SweepArgs.Method
                |> Option.map (fun m -> m.Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries) |> List.ofArray)
                |> Option.defaultValue []
            let fields =
                methods |> List.collect (fun m -> match Registry.tryFind m with Some r -> r.Fields | None -> [])
            { Methods = methods
              Seeds = numbers "--seeds" int64Of (args.GetResult(SweepArgs.Seeds, defaultValue = "0"))
              Labels = args.TryGetResult SweepArgs.Labels |> Option.map (numbers "--labels" positiveInt) |> Option.defaultValue []
              Preset = presetArg (args.GetResult(SweepArgs.Preset, defaultValue = "quick"))
              Sets = args.GetResults SweepArgs.Set |> List.map (Sweep.parseSet fields)
              Dataset = args.TryGetResult SweepArgs.Dataset
              ColourDataset = args.TryGetResult SweepArgs.Colour_Dataset }
    let root = args.GetResult(SweepArgs.Out, defaultValue = IO.Path.Combine("runs", "sweep"))
    let runs, notRun = Sweep.expand Registry.recipes grid
    for name, reason in notRun do printfn "not run %s: %s" name reason
    let commit = Ssl.Host.Runtime.BuildInfo.Commit
    let resources: Sweep.Resources =
        { Cpus = args.GetResult(SweepArgs.Cpus, defaultValue = 2); MemoryGb = args.GetResult(SweepArgs.Mem_Gb, defaultValue = 8)
          Hours = args.GetResult(SweepArgs.Hours, defaultValue = 4)
          RanksPerRun =
            match args.GetResult(SweepArgs.Ranks_Per_Run, defaultValue = 1) with
            | n when n < 1 -> invalidArg "--ranks-per-run" $"--ranks-per-run: expected 1 or more processes, found {n}"
            | n when n > 1 && args.GetResult(SweepArgs.Emit, defaultValue = "") <> "slurm" ->
                invalidArg "--ranks-per-run" $"--ranks-per-run: expected --emit slurm (runs of several ranks go to Slurm), found {n} without it"
            | n -> n }
    match args.TryGetResult SweepArgs.Emit, args.TryGetResult SweepArgs.Local with
    | Some _, Some _ -> invalidArg "--emit" "--emit: writes a job for a scheduler instead of running; leave out --local"
    | Some scheduler, None ->
        let todo = Sweep.pendingOf root commit runs
        printfn "ssl sweep: %d runs, %d done already, %d in the job" runs.Length (runs.Length - todo.Length) todo.Length
        if todo.IsEmpty then 0
        else
            match scheduler.ToLowerInvariant() with
            | "slurm" ->
                let ssl = args.GetResult(SweepArgs.Ssl_Command, defaultValue = Sweep.selfCommandLine ())
                let script = Sweep.emitSlurm root commit todo resources ssl
                printfn "wrote %s (sbatch %s)" script script
                0
            | "k8s" | "kubernetes" ->
                let manifest =
                    Sweep.emitKubernetes root commit todo resources (args.GetResult(SweepArgs.Image, defaultValue = "ssl:latest"))
                        (args.GetResult(SweepArgs.Claim, defaultValue = "ssl-runs")) (args.GetResult(SweepArgs.Parallelism, defaultValue = 4))
                printfn "wrote %s (kubectl apply -f %s)" manifest manifest
                0
            | other -> invalidArg "--emit" $"--emit: expected slurm or k8s, found '{other}'"
    | None, local -> Sweep.local root commit (defaultArg local 1) runs

/// `ssl sweep-task <tasks.json> <index>`: one run of an emitted sweep.
let sweepTask (args: ParseResults<SweepTaskArgs>) =
    let tasks, index = args.GetResult SweepTaskArgs.Task
    Sweep.runTask tasks index (args.TryGetResult SweepTaskArgs.Root) (args.TryGetResult SweepTaskArgs.Threads)
        (args.GetResult(SweepTaskArgs.Ranks, defaultValue = 1))

/// `ssl bench`: step throughput and achieved GFLOP/s of each recipe (one child process each).
let bench (args: ParseResults<BenchArgs>) =
    let preset = presetArg (args.GetResult(BenchArgs.Preset, defaultValue = "quick"))
    let warmup = args.GetResult(BenchArgs.Warmup, defaultValue = 5)
    let steps = args.GetResult(BenchArgs.Steps, defaultValue = 30)
    let threads = args.GetResult(BenchArgs.Threads, defaultValue = 0)
    let out = args.GetResult(BenchArgs.Out, defaultValue = IO.Path.Combine("runs", "bench"))
    let peer = args.Contains BenchArgs.Peer
    match args.TryGetResult BenchArgs.Data with
    | Some _ when peer -> invalidArg "--peer" "--peer: expected a training-step bench, found --data (decoding has no twin)"
    | Some path when not (IO.Directory.Exists path) ->
        invalidArg "--data" $"--data: expected an image folder, found '{path}' (no such folder)"
    | Some path when not (args.Contains BenchArgs.In_Process) ->
        let pairs = args.GetResult(BenchArgs.Pairs, defaultValue = 3)
        if pairs < 1 then invalidArg "--pairs" $"--pairs: expected at least 1, found {pairs}"
        let recipe = findRecipe "--method" (args.GetResult(BenchArgs.Method, defaultValue = "moco"))
        Bench.data path (args.TryGetResult BenchArgs.Image_Size) recipe preset warmup steps threads pairs
                   (args.TryGetResult BenchArgs.Data_Memory_Mb) out (args.TryGetResult BenchArgs.Readme)
    | data ->
    let ranks = args.GetResult(BenchArgs.Ranks, defaultValue = 1)
    if ranks < 1 then invalidArg "--ranks" $"--ranks: expected 1 or more processes, found {ranks}"
    if ranks > 1 && (peer || data.IsSome) then invalidArg "--ranks" "--ranks: expected a training-step bench without --peer or --data"
    match args.TryGetResult BenchArgs.Method with
    | Some _ when peer -> invalidArg "--peer" "--peer: expected the whole bench (it starts ours and the twin as children), found --method"
    | Some _ when ranks > 1 && Ssl.Host.Distributed.World.LaunchedSize = 1 ->
        underMpirun ranks
    | Some name ->
        let reading: Bench.FolderReading =
            { ImageSize = args.TryGetResult BenchArgs.Image_Size
              DataMemoryMb = args.GetResult(BenchArgs.Data_Memory_Mb, defaultValue = Recipe.defaultDataMemoryMb) }
        match Registry.tryFind name with
        | Some recipe -> Bench.runMethod recipe preset warmup steps threads (args.TryGetResult BenchArgs.Colour_Dataset) data reading out
        | None -> findRecipe "--method" name |> ignore; 2
    | None when ranks > 1 ->
        let only = args.TryGetResult BenchArgs.Only |> Option.map (Repro.parseOnly Registry.recipes)
        let pairs = args.GetResult(BenchArgs.Pairs, defaultValue = 3)
        if pairs < 1 then invalidArg "--pairs" $"--pairs: expected at least 1, found {pairs}"
        Bench.ranks only preset warmup steps threads ranks pairs (args.TryGetResult BenchArgs.Colour_Dataset) out (args.TryGetResult BenchArgs.Readme)
    | None ->
        let only = args.TryGetResult BenchArgs.Only |> Option.map (Repro.parseOnly Registry.recipes)
        Bench.run only preset warmup steps threads (args.TryGetResult BenchArgs.Colour_Dataset) out (args.TryGetResult BenchArgs.Readme) peer
