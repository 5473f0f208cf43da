/// A finished run folder as the commands that use its encoder read it (`ssl eval`, `ssl embed`,
/// `ssl neighbours`): config.json's method, config, data and probe, and the exported weights
/// (export/encoder.dat), the encoder rebuilt from them by this build.
module Ssl.Experiments.TrainedRun

open System
open System.Text.Json.Nodes
open TorchSharp
open Ssl.Host.Data
open Ssl.Host.Runtime

/// The first line of a message (native libraries append their traces below it), or the whole
/// message where that line is empty.
let firstLine (message: string) =
    let line = message.Split('\n', 2).[0].Trim()
    if line.Length > 0 then line else message.Trim()

/// A field of a JSON object read as 'T, or None where absent or null; a value of another type is an
/// error naming the file and the field.
let field<'T> (path: string) (o: JsonObject) (key: string) : 'T option =
    if o.ContainsKey key && not (isNull o[key]) then
        try Some(o[key].GetValue<'T>())
        with :? InvalidOperationException | :? FormatException ->
            let kind = if typeof<'T> = typeof<string> then "text" else "an integer"
            raise (DataException(path, $"\"{key}\": {kind}", o[key].ToJsonString()))
    else None

/// A run's recorded data set as it can be read from any folder: a built-in name as it is; a folder
/// by its recorded absolute path, else as written relative to the shell's folder, else relative to
/// the run folder.
let locateData (runDir: string) (given: string) (recordedPath: string option) =
    if List.contains given (List.ofArray DataCatalog.Names) then given
    else
        [ yield! Option.toList recordedPath; given; IO.Path.Combine(runDir, given) ]
        |> List.tryFind IO.Directory.Exists
        |> Option.defaultValue given

/// What config.json says of a finished run.
type Run =
    { Dir: string
      ConfigPath: string
      /// export/encoder.dat: the trained encoder's weights.
      Weights: string
      Recipe: Template.Recipe
      /// The recipe's resolved config (config.json's "config").
      Config: JsonObject
      Preset: Preset
      Seed: int64
      Dataset: string
      EvalDataset: string option
      ImageSize: int option
      Layout: FolderLayout
      /// The representation the run's protocols read (config.json's "probe"; "" = the encoder's output).
      ProbeLayer: string
      ProbePool: int64
      /// The run's convolution memory format (config.json's runtime), so features are computed as the run computed them.
      MemoryFormat: string option }

/// Reads the run folder `dir`: a missing config.json or export, or a config this build cannot
/// read, is a DataException naming the file.
let read (dir: string) : Run =
    let dir = IO.Path.GetFullPath dir
    let configPath = IO.Path.Combine(dir, "config.json")
    let weights = IO.Path.Combine(dir, "export", "encoder.dat")
    if not (IO.Directory.Exists dir) then
        raise (DataException(dir, "a run folder written by `ssl train`", "no such folder"))
    for path in [ configPath; weights ] do
        if not (IO.File.Exists path) then
            raise (DataException(path, "a file written by `ssl train` (a finished run folder)", "no such file"))
    let recorded = Template.readJsonObject configPath "a JSON object (the config.json `ssl train` wrote)"
    let field (key: string) : 'T option = field configPath recorded key
    let required key what : 'T = match field key with Some v -> v | None -> raise (DataException(configPath, $"\"{key}\": {what}", "none"))
    let methodName = required "method" "a recipe name"
    let recipe =
        match Registry.tryFind methodName with
        | Some r -> r
        | None -> raise (DataException(configPath, "a method registered in this build", methodName))
    let recipeConfig =
        match recorded["config"] with
        | :? JsonObject as c -> c
        | _ -> raise (DataException(configPath, "a \"config\" object (a config.json written by `ssl train`)", "none"))
    let preset =
        let name = required "preset" "smoke, quick or paper"
        match Preset.tryParse name with
        | Some p -> p
        | None -> raise (DataException(configPath, "preset smoke, quick or paper", name))
    // The run's own representation: config.json's "probe", or (runs before it was recorded) the
    // recipe config's ProbeLayer and ProbePool.
    let probeLayer, probePool =
        let probe = match recorded["probe"] with :? JsonObject as p -> Some p | _ -> None
        let fromProbe (key: string) = probe |> Option.bind (fun p -> Option.ofObj p[key])
        let fromConfig (key: string) = Option.ofObj recipeConfig[key]
        let layer = fromProbe "layer" |> Option.orElse (fromConfig "ProbeLayer") |> Option.map (fun v -> v.GetValue<string>()) |> Option.defaultValue ""
        let pool = fromProbe "pool" |> Option.orElse (fromConfig "ProbePool") |> Option.map (fun v -> v.GetValue<int64>()) |> Option.defaultValue 0L
        layer, pool
    { Dir = dir; ConfigPath = configPath; Weights = weights; Recipe = recipe; Config = recipeConfig; Preset = preset
      Seed = required "seed" "an integer"
      Dataset = locateData dir (required "dataset" "a data set name or folder") (field "dataset_path")
      EvalDataset = field "eval_dataset" |> Option.map (fun d -> locateData dir d (field "eval_dataset_path"))
      ImageSize = field "image_size"
      Layout = field "layout" |> Option.map ImageFolder.ParseLayout |> Option.defaultValue FolderLayout.Auto
      ProbeLayer = probeLayer; ProbePool = probePool
      MemoryFormat =
        match recorded["runtime"] with
        | :? JsonObject as r when not (isNull r["memory_format"]) -> Some(r["memory_format"].GetValue<string>())
        | _ -> None }

/// The request that reads the run's data as its run did (its data set, evaluation set, image size,
/// layout, preset and seed), with the folder `dir` as its output.
let request (run: Run) (threads: int) : Request =
    { Method = run.Recipe.Name; Preset = run.Preset; Dataset = run.Dataset; EvalDataset = run.EvalDataset
      ImageSize = run.ImageSize; DataMemoryMb = defaultDataMemoryMb; Workers = 0; DataRoot = None; Labels = None; Seed = run.Seed
      Layout = run.Layout; Device = DeviceRequest.Cpu; Threads = threads; Deterministic = false; Out = run.Dir
      Resume = false; Force = false; Config = Some run.Config; Overrides = []; Init = None }

/// The run's encoder for `data` (whose training set fixes its input channels and size), seeded by the
/// run's seed as the run's random-initialised baseline was: with the exported weights loaded, or
/// without them (`randomInit`: that baseline's encoder).
let private build (run: Run) (data: Data) (layout: Ssl.Core.Models.SafeConv.ConvLayout) =
    torch.manual_seed(run.Seed) |> ignore
    try run.Recipe.Encoder run.Config data layout
    with :? ArgumentException as e -> raise (DataException(run.ConfigPath, $"a {run.Recipe.Name} config of this build", e.Message))

let encoder (run: Run) (data: Data) (layout: Ssl.Core.Models.SafeConv.ConvLayout) (randomInit: bool) : Ssl.Core.Models.Encoder =
    let built = build run data layout
    if not randomInit then
        try Ssl.Host.Export.EncoderExport.Load(built, run.Weights)
        with e when not (e :? OutOfMemoryException) ->
            built.Dispose()
            raise (DataException(run.Weights, $"the {run.Recipe.Name} encoder `ssl train` exported for this config", firstLine e.Message))
    built

/// The run's architecture for `data`, holding the weights of `init` instead of its export
/// (`ssl eval --init`): loaded as `ssl train --init` loads them.
let encoderFrom (run: Run) (data: Data) (layout: Ssl.Core.Models.SafeConv.ConvLayout) (init: InitFile) : Ssl.Core.Models.Encoder =
    let built = build run data layout
    let architecture =
        match run.Config["Encoder"] with
        | :? JsonValue as v when v.GetValueKind() = Text.Json.JsonValueKind.String -> v.GetValue<string>()
        | _ -> run.Recipe.Name + "'s"
    try Template.loadInit init architecture true built
    with _ -> built.Dispose(); reraise ()
    built
