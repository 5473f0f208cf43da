/// The one place recipes are registered: `ssl methods`, `ssl train`, `repro` and `bench` read it,
/// in this order. A spec's variants (`<name>-<suffix>`) follow it.
module Ssl.Experiments.Registry

open System.Collections.Generic
open Ssl.Experiments.Template

let recipes: Recipe list =
    List.collect id
        [ recipes Recipes.Supervised.spec
          recipes Recipes.RotNet.spec
          recipes Recipes.SimClr.spec
          [ alias "infonce" Recipes.SimClr.spec ]
          recipes Recipes.MoCo.spec
          recipes Recipes.SimSiam.spec
          recipes Recipes.Byol.spec
          recipes Recipes.BarlowTwins.spec
          recipes Recipes.Vicreg.spec
          recipes Recipes.Nnclr.spec
          recipes Recipes.Dino.spec
          recipes Recipes.MocoV3.spec
          recipes Recipes.Swav.spec
          recipes Recipes.Mae.spec
          recipes Recipes.Nce.spec
          recipes Recipes.CpcV2.spec
          recipes Recipes.RelativePatch.spec
          recipes Recipes.Jigsaw.spec
          recipes Recipes.Colorization.spec
          recipes Recipes.Exemplar.spec
          recipes Recipes.BigBiGan.spec
          recipes Recipes.MixMatch.spec
          recipes Recipes.FixMatch.spec
          recipes Recipes.FlexMatch.spec
          recipes Recipes.FreeMatch.spec
          recipes Recipes.SoftMatch.spec
          recipes Recipes.Uda.spec
          recipes Recipes.PseudoLabel.spec
          recipes Recipes.PiModel.spec
          recipes Recipes.MeanTeacher.spec
          recipes Recipes.EnAET.spec
          recipes Recipes.S4LRotation.spec
          recipes Recipes.S4LExemplar.spec
          recipes Recipes.VatEntMin.spec ]

/// Recipes a program adds after the built-in ones (a C# method's: `Registry.Register(method.Recipes)`),
/// in the order added; `ssl train`, `ssl config` and `ssl eval` find them when that program runs the
/// command line (`CommandLine.Run`). Names are unique across both lists.
let private added = System.Collections.Generic.List<Recipe>()

/// The built-in recipes, then the added ones.
let all () = recipes @ lock added (fun () -> List.ofSeq added)

let tryFind name = all () |> List.tryFind (fun r -> r.Name = name)

/// Whether a recipe of this name is registered, built in or added.
let Contains (name: string) = (tryFind name).IsSome

/// Adds `recipes` after the built-in ones, all or none: an ArgumentException names a recipe whose
/// name is taken or repeated.
let Register (recipes: Recipe seq) =
    if isNull (box recipes) then nullArg "recipes"
    lock added (fun () ->
        let recipes = List.ofSeq recipes
        let taken = HashSet<string>(all () |> List.map (fun r -> r.Name))
        for r in recipes do
            if not (taken.Add r.Name) then
                invalidArg "recipes" $"recipes: expected names not yet registered, found '{r.Name}' again"
        added.AddRange recipes)
