/// What a recipe is and what a run asks of it (DESIGN.md, Command line contract).
module Ssl.Experiments.Recipe

open Ssl.Core.Models
open Ssl.Host.Runs
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

/// One `ssl train` invocation, fully resolved.
type Request =
    { Method: string
      Preset: Preset
      Dataset: string
      DataRoot: string option
      /// Labels per class for few-label and semi-supervised runs; None = all labels.
      Labels: int option
      Seed: int64
      Device: DeviceRequest
      Threads: int
      Deterministic: bool
      Out: string
      Resume: bool }

/// A registered recipe: its contract name, its paper, its presets and how it runs.
type Recipe =
    { Name: string
      Paper: string
      Presets: Preset list
      Run: Request -> RunEnvironment -> RunFolder -> RunResult
      /// The encoder architecture a preset trains, for an input of the given channel count
      /// (`ssl eval` rebuilds it and loads the run's exported weights into it).
      Encoder: Preset -> int64 -> Encoder }

/// The recipe names of the command-line contract (DESIGN.md), in roadmap order.
let contractNames =
    [ "supervised"; "rotnet"; "relative-patch"; "jigsaw"; "colorization"; "exemplar"
      "nce"; "infonce"; "moco"; "cpc-v2"; "bigbigan"
      "s4l-rotation"; "s4l-exemplar"; "vat-entmin"; "mixmatch"; "enaet" ]

/// The recipes that need colour (3-channel) images: they refuse grey data sets such as Fashion-MNIST,
/// so `ssl repro` runs them only on a colour data set it is given and `ssl bench` times them on one
/// (the one place that says so).
let colourOnly = set [ "colorization" ]

/// Whether `name` is a contract name, or a registered variant of one (an ablation the paper
/// reports, named `<contract name>-<variant>`, e.g. `moco-no-shuffle`).
let isContractOrVariant (name: string) =
    contractNames |> List.exists (fun c -> name = c || name.StartsWith(c + "-"))
