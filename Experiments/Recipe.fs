/// What a run asks of a recipe (DESIGN.md, Command line contract).
[<AutoOpen>]
module Ssl.Experiments.Recipe

open System.Runtime.InteropServices
open System.Text.Json.Nodes
open Ssl.Host.Runtime

/// `smoke` proves the wiring in under a minute (tests use it); `quick` gives real numbers on
/// Fashion-MNIST on a 2-core CPU; `paper` is the paper's own schedule, for users with a GPU.
type Preset =
    | Smoke
    | Quick
    | Paper

module Preset =
    let name = function Smoke -> "smoke" | Quick -> "quick" | Paper -> "paper"
    let all = [ Smoke; Quick; Paper ]
    let tryParse (text: string) = all |> List.tryFind (fun p -> name p = text.ToLowerInvariant())

/// `--data-memory-mb`'s default: image folders up to 2 GiB of decoded pixels are held in memory.
[<Literal>]
let defaultDataMemoryMb = 2048L

/// The weights a run's encoder starts from (--init): the file's absolute path and the SHA-256 of its
/// bytes, as config.json records them (a replay or a --resume checks the file is the same).
type InitFile =
    { Path: string
      Sha256: string }

    /// The file at `path` (a missing one: a DataException naming it).
    static member Of(path: string) =
        let path = System.IO.Path.GetFullPath path
        if not (System.IO.File.Exists path) then
            raise (Ssl.Host.Data.DataException(path, $"a state dict file ({Ssl.Host.Export.EncoderInit.Formats})", "no such file"))
        { Path = path; Sha256 = Ssl.Host.Export.EncoderInit.Sha256 path }

/// One `ssl train` invocation, fully resolved.
type Request =
    { Method: string
      Preset: Preset
      Dataset: string
      /// The labelled set the protocols read when `Dataset` is unlabelled or differs (--eval-dataset).
      EvalDataset: string option
      /// Image folders: shorter side resized to N and centre-cropped N x N at load (--image-size).
      ImageSize: int option
      /// Image folders whose decoded pixels exceed this many MiB are streamed from their files (--data-memory-mb).
      DataMemoryMb: int64
      /// Image decoding threads; 0 = the cores (--workers).
      Workers: int
      /// How an image folder is read: auto, unlabelled, classes or split (--layout).
      Layout: Ssl.Host.Data.FolderLayout
      DataRoot: string option
      /// Labels per class for few-label and semi-supervised runs; None = all labels.
      Labels: int option
      Seed: int64
      Device: DeviceRequest
      Threads: int
      Deterministic: bool
      Out: string
      Resume: bool
      /// Replace the run a folder holds (--force); without it a folder holding a run is refused.
      Force: bool
      /// The recipe's resolved config (Configs.toJson of its record); None = the preset's own.
      Config: JsonObject option
      /// The `--set` overrides the config holds, as given (config.json lists them).
      Overrides: string list
      /// The weights the encoder starts from (--init); None = random (seeded).
      Init: InitFile option }

    /// A request with the defaults of `ssl train` for everything not given (the C# surface).
    static member Create(method: string, preset: Preset, [<Optional; DefaultParameterValue("fashion-mnist")>] dataset: string,
                         [<Optional; DefaultParameterValue(0L)>] seed: int64, [<Optional; DefaultParameterValue(null: string)>] folder: string,
                         [<Optional; DefaultParameterValue(0)>] labels: int) =
        { Method = method; Preset = preset; Dataset = dataset; EvalDataset = None; ImageSize = None; DataMemoryMb = defaultDataMemoryMb; Workers = 0; Layout = Ssl.Host.Data.FolderLayout.Auto; DataRoot = None
          Labels = (if labels > 0 then Some labels else None); Seed = seed; Device = DeviceRequest.Cpu; Threads = 0
          Deterministic = false; Out = (if isNull folder then System.IO.Path.Combine("runs", $"{method}-{Preset.name preset}") else folder)
          Resume = false; Force = false; Config = None; Overrides = []; Init = None }
