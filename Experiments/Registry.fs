/// The one place recipes are registered: `ssl methods` and `ssl train` read it.
module Ssl.Experiments.Registry

open Ssl.Experiments.Recipe

/// Recipes that are implemented. A name joins this list only together with its recipe file.
let recipes: Recipe list =
    [ Recipes.Supervised.recipe
      Recipes.RotNet.recipe
      Recipes.RelativePatch.recipe
      Recipes.Jigsaw.recipe
      Recipes.Colorization.recipe
      Recipes.Exemplar.recipe
      Recipes.Nce.recipe
      Recipes.InfoNce.recipe
      Recipes.MoCo.recipe
      Recipes.MoCo.noShuffleRecipe
      Recipes.MoCo.v2Recipe
      Recipes.CpcV2.recipe
      Recipes.BigBiGan.recipe
      Recipes.S4LRotation.recipe
      Recipes.S4LExemplar.recipe
      Recipes.VatEntMin.recipe
      Recipes.MixMatch.recipe
      Recipes.EnAET.recipe ]

let tryFind name = recipes |> List.tryFind (fun r -> r.Name = name)
