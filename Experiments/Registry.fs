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
          recipes Recipes.SimSiam.spec
          recipes Recipes.Byol.spec
          recipes Recipes.BarlowTwins.spec
          recipes Recipes.Dino.spec
          recipes Recipes.Nce.spec
          recipes Recipes.CpcV2.spec
          recipes Recipes.RelativePatch.spec
          recipes Recipes.Jigsaw.spec
          recipes Recipes.Colorization.spec
          recipes Recipes.Exemplar.spec
          recipes Recipes.BigBiGan.spec
          recipes Recipes.MixMatch.spec
          recipes Recipes.FixMatch.spec
          recipes Recipes.EnAET.spec
          recipes Recipes.S4LRotation.spec
          recipes Recipes.S4LExemplar.spec
          recipes Recipes.VatEntMin.spec ]

let tryFind name = recipes |> List.tryFind (fun r -> r.Name = name)
