/// The one place recipes are registered: `ssl methods` and `ssl train` read it.
module Ssl.Experiments.Registry

/// A preset: `smoke` proves the wiring in under a minute, `quick` gives real numbers on a 2-core
/// CPU, `paper` is the paper's own schedule (DESIGN.md, Command line contract).
type Preset =
    | Smoke
    | Quick
    | Paper

/// A registered recipe: its contract name, the paper it implements and the presets it offers.
type Recipe =
    { Name: string
      Paper: string
      Presets: Preset list }

/// The recipe names of the command-line contract (DESIGN.md), in the order of the roadmap.
let contractNames =
    [ "supervised"; "rotnet"; "relative-patch"; "jigsaw"; "colorization"; "exemplar"
      "nce"; "infonce"; "moco"; "cpc-v2"; "bigbigan"
      "s4l-rotation"; "s4l-exemplar"; "vat-entmin"; "mixmatch"; "enaet" ]

/// Recipes that are implemented. A name joins this list only together with its recipe file.
let recipes: Recipe list = []

let tryFind name = recipes |> List.tryFind (fun r -> r.Name = name)
