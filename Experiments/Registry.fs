/// The one place recipes are registered: `ssl methods`, `ssl train`, `repro` and `bench` read it,
/// in this order. A spec's variants (`<name>-<suffix>`) follow it.
module Ssl.Experiments.Registry

open Ssl.Experiments.Template

let recipes: Recipe list =
    List.collect id
        [ recipes Recipes.Supervised.spec
          recipes Recipes.RotNet.spec
          recipes Recipes.InfoNce.spec
          recipes Recipes.MoCo.spec
          recipes Recipes.Nce.spec
          recipes Recipes.CpcV2.spec
          recipes Recipes.Colorization.spec ]

let tryFind name = recipes |> List.tryFind (fun r -> r.Name = name)
