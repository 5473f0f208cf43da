/// Configs as data: `--set` overrides typed against a recipe's config record, JSON both ways, and
/// `ssl config` / `--config` on the command line.
module Ssl.Tests.ConfigTests

open System
open System.IO
open System.Text.Json.Nodes
open Expecto
open Ssl.Experiments
open Ssl.Experiments.Backbone

let private moco = Recipes.MoCo.config Recipe.Quick

type Form =
    | Round
    | Square

type Sample = { Form: Form; Size: int }

let private message (f: unit -> obj) =
    let e = Expect.throwsC (f >> ignore) id
    match e with
    | :? ArgumentException as a -> a.Message
    | other -> failtestf "expected an ArgumentException, found %s" (other.GetType().Name)

[<Tests>]
let tests =
    testList "configs" [
        test "--set changes the named fields, nested and tuple ones too, and nothing else" {
            let changed =
                Configs.applyOverrides [ "Epochs=2"; "QueueSize=2048"; "Augmentation.Jitter=0.2"; "Augmentation.CropScale=0.4,1"
                                         "Encoder=resnet18"; "ShuffleBn=false" ] moco
            Expect.equal changed
                { moco with Schedule = { moco.Schedule with Epochs = 2 }; QueueSize = 2048L; ShuffleBn = false; Encoder = ResNet18
                            Augmentation = { moco.Augmentation with Jitter = 0.2; CropScale = (0.4, 1.0) } } "the changed record"
            Expect.equal (Configs.applyOverrides [ "Schedule.Epochs=2"; "Epochs=3" ] moco).Schedule.Epochs 3 "a later override wins"
        }
        test "a nested field may be named alone where no other field ends so; the probe is config text" {
            Expect.equal (Configs.resolvePath typeof<Recipes.MoCo.Config> "Epochs") "Schedule.Epochs" "the one Epochs"
            Expect.equal (Configs.resolvePath typeof<Recipes.MoCo.Config> "Jitter") "Augmentation.Jitter" "any group"
            Expect.equal (Configs.resolvePath typeof<Recipes.MoCo.Config> "Encoder") "Encoder" "a top-level field is itself"
            Expect.equal (Configs.resolvePath typeof<Recipes.MoCo.Config> "Nope") "Nope" "an unknown name is left to the error"
            let rotnet = Recipes.RotNet.config Recipe.Quick
            for text, probe in [ "output", Probe.Output; "branch:2", Probe.Branch 2L; "layer:features.block3b_relu:2", Probe.Layer("features.block3b_relu", 2L)
                                 "class-tokens:4", Probe.ClassTokens(4L, false); "class-tokens-patch-mean:2", Probe.ClassTokens(2L, true) ] do
                Expect.equal (Configs.applyOverrides [ $"Probe={text}" ] rotnet).Probe probe text
                Expect.equal (string probe) text $"{text} reads back"
            let m = message (fun () -> box (Configs.applyOverrides [ "Probe=branch" ] rotnet))
            for part in [ "Probe"; "branch:<pool>"; "'branch'" ] do Expect.stringContains m part $"a bad probe: says {part}"
        }
        test "an unknown field names itself and lists the valid fields with their types" {
            let m = message (fun () -> box (Configs.applyOverrides [ "Nope=1" ] moco))
            Expect.stringContains m "no field 'Nope'" "names the field"
            Expect.stringContains m "QueueSize (integer)" "lists the fields"
            Expect.stringContains m "Augmentation.CropScale ((number,number))" "nested fields with their types"
            Expect.stringContains (message (fun () -> box (Configs.applyOverrides [ "Augmentation.Nope=1" ] moco))) "Augmentation.Nope" "a nested unknown"
        }
        test "a wrong type or an out-of-range value names the field, what it expects and what it found" {
            let cases =
                [ "Epochs=two", [ "Epochs"; "integer"; "'two'" ]
                  "Momentum=1.5", [ "Momentum"; "in [0, 1]"; "1.5" ]
                  "BatchSize=0", [ "BatchSize"; ">= 1"; "0" ]
                  "Augmentation.CropScale=0.4", [ "Augmentation.CropScale"; "(number,number)"; "'0.4'" ]
                  "Encoder=vgg16", [ "Encoder"; "resnet18"; "'vgg16'" ]
                  "ShuffleBn=yes", [ "ShuffleBn"; "true or false" ]
                  "Epochs", [ "Field=value" ] ]
            for o, parts in cases do
                let m = message (fun () -> box (Configs.applyOverrides [ o ] moco))
                for part in parts do Expect.stringContains m part $"{o}: says {part}"
        }
        test "a fieldless union is set by its case name, in JSON too" {
            let sample = { Form = Round; Size = 1 }
            Expect.equal (Configs.applyOverrides [ "Form=square" ] sample) { sample with Form = Square } "case name, any case"
            Expect.stringContains (message (fun () -> box (Configs.applyOverrides [ "Form=oval" ] sample))) "Round|Square" "lists the cases"
            let json = Configs.toJson { sample with Form = Square }
            Expect.equal (json.ToJsonString()) """{"Form":"Square","Size":1}""" "JSON"
            Expect.equal (Configs.ofJson<Sample> "test" json) { sample with Form = Square } "and back"
        }
        test "every registered recipe's preset configs go to JSON and back unchanged, and reject unknown or missing fields" {
            for r in Registry.recipes do
                for preset in r.Presets do
                    let json = r.Resolve preset None []
                    let again = r.Resolve preset (Some(json.DeepClone().AsObject())) []
                    Expect.equal (again.ToJsonString()) (json.ToJsonString()) $"{r.Name} {preset}: round trip"
                    let extra = json.DeepClone().AsObject()
                    extra["Bogus"] <- JsonValue.Create 1
                    Expect.stringContains (message (fun () -> box (r.Resolve preset (Some extra) []))) "unknown field 'Bogus'" $"{r.Name}: unknown"
                    let missing = json.DeepClone().AsObject()
                    let first = (Seq.head missing).Key
                    missing.Remove first |> ignore
                    Expect.stringContains (message (fun () -> box (r.Resolve preset (Some missing) []))) $"missing field '{first}'" $"{r.Name}: missing"
        }
        test "backbones read and write their text form" {
            for b in [ SmallConvNet 16L; ResNet18; ResNet18ImageNet; WideResNet(28, 2L) ] do
                Expect.equal (Backbone.TryParse(string b)) (Some b) $"{b}"
            for bad in [ "smallconvnet"; "smallconvnet-0"; "wrn-27-2"; "resnet50"; "" ] do
                Expect.isNone (Backbone.TryParse bad) $"'{bad}' refused"
            Expect.equal (featureDim (WideResNet(28, 2L))) 128L "WRN-28-2 features"
        }
        test "ViT-Tiny backbones read and write vit-tiny-<patch>[-<depth>], 192 features" {
            for b in [ VitTiny(4L, 12); VitTiny(7L, 4) ] do
                Expect.equal (Backbone.TryParse(string b)) (Some b) $"{b}"
            Expect.equal (string (VitTiny(4L, 12))) "vit-tiny-4" "depth 12 is the default form"
            Expect.equal (Backbone.TryParse "vit-tiny-4-12") (Some(VitTiny(4L, 12))) "explicit depth 12"
            for bad in [ "vit-tiny"; "vit-tiny-0"; "vit-tiny-4-0"; "vit-small-4"; "vit-tiny-4-2-1" ] do
                Expect.isNone (Backbone.TryParse bad) $"'{bad}' refused"
            Expect.equal (featureDim (VitTiny(7L, 4))) 192L "ViT-Tiny features"
            Expect.equal (name (VitTiny(7L, 4))) "ViT-Tiny-p7-d4" "name"
            use vit = instantiate Ssl.Core.Models.SafeConv.ChannelsLast None 1L (VitTiny(7L, 1))
            Expect.equal vit.FeatureDim (featureDim (VitTiny(7L, 1))) "instantiated features"
        }
        test "recipes state their paper: median under 80 non-blank lines, comments at most a third, no plumbing by hand" {
            let files = Directory.GetFiles(Path.Combine(__SOURCE_DIRECTORY__, "..", "Experiments", "Recipes"), "*.fs")
            Expect.isNonEmpty files "recipe files found"
            let lengths =
                [ for f in files ->
                      let lines = File.ReadAllLines f |> Array.filter (fun l -> l.Trim() <> "")
                      let comments = lines |> Array.filter (fun l -> l.TrimStart().StartsWith "//") |> Array.length
                      Expect.isLessThanOrEqual (3 * comments) lines.Length $"{Path.GetFileName f}: {comments} comment lines of {lines.Length} non-blank"
                      // The step builder (Template.stepOf, Context.Train) derives these; a recipe never writes them.
                      for plumbing in [ "ITrainingStep"; "Owned ="; "member _.State"; "member _.Modules"; "named_parameters ()" ] do
                          for l in lines do
                              Expect.isFalse (l.Contains plumbing) $"{Path.GetFileName f}: '{plumbing}' by hand: {l.Trim()}"
                      float lines.Length ]
                |> List.sort
            let n = lengths.Length
            let median = if n % 2 = 1 then lengths[n / 2] else (lengths[n / 2 - 1] + lengths[n / 2]) / 2.0
            Expect.isLessThan median 80.0 "median recipe file length, non-blank lines"
        }
        test "registry names are unique and every variant is <recipe>-<suffix> of a registered recipe" {
            let names = Registry.recipes |> List.map (fun r -> r.Name)
            Expect.equal (List.distinct names) names "unique"
            Expect.contains names "moco-v2" "MoCo v2 is a variant"
        }
        test "a config written before Schedule and Probe reads as today's: fields moved, renamed, nested, defaults kept" {
            let resolves (name: string) (text: string) =
                let recipe = (Registry.tryFind name).Value
                recipe.Resolve Recipe.Quick (Some(JsonNode.Parse(text).AsObject())) [], recipe.Resolve Recipe.Quick None []
            // RotNet's quick config as config.json held it; WarmupEpochs (0) it never had comes from today's preset.
            let old, today =
                resolves "rotnet" """{"Encoder": "smallconvnet-16", "Epochs": 3, "BatchSize": 128, "LearningRate": 0.1, "WeightDecay": 0.0005, "FlipProbability": 0.5, "ProbeLayer": "branch", "ProbePool": 3}"""
            Expect.isTrue (JsonNode.DeepEquals(old, today)) $"rotnet: {old.ToJsonString()} against {today.ToJsonString()}"
            let old, today =
                resolves "s4l-rotation" """{"Encoder": "smallconvnet-16", "Epochs": 1, "LabelledBatch": 64, "UnlabelledBatch": 64, "RotationWeight": 1, "LearningRate": 0.1, "WeightDecay": 0.0005, "WarmupEpochs": 0.05}"""
            Expect.isTrue (JsonNode.DeepEquals(old, today)) $"s4l-rotation (LabelledBatch): {old.ToJsonString()} against {today.ToJsonString()}"
            // EnAET nests MixMatch's config: its old Epochs sat in MixMatch, today in MixMatch.Schedule.
            let enaet = (Registry.tryFind "enaet").Value.Resolve Recipe.Quick None []
            let flat = enaet.DeepClone().AsObject()
            let mixmatch = flat["MixMatch"].AsObject()
            let schedule = mixmatch["Schedule"].AsObject()
            mixmatch.Remove "Schedule" |> ignore
            for kv in [ for kv in schedule -> kv.Key, kv.Value.DeepClone() ] do
                if fst kv <> "WarmupEpochs" then mixmatch[fst kv] <- snd kv
            let old, today = resolves "enaet" (flat.ToJsonString())
            Expect.isTrue (JsonNode.DeepEquals(old, today)) "enaet: the nested schedule"
            // A field today's shape has nowhere is still refused, by name.
            let e = Expect.throwsC (fun () -> resolves "rotnet" """{"Epochs": 3, "Nope": 1}""" |> ignore) id
            Expect.stringContains e.Message "Nope" "the unknown field"
        }
        test "ssl train --set of an unknown field exits 2; ssl config prints JSON that --config accepts back" {
            Expect.equal (Program.run [| "train"; "moco"; "--set"; "Nope=1" |]) 2 "unknown field"
            Expect.equal (Program.run [| "train"; "moco"; "--set"; "Momentum=2" |]) 2 "out of range"
            Expect.equal (Program.run [| "config"; "mixmatch"; "--preset"; "quick"; "--set"; "Epochs=2" |]) 0 "config"
            Expect.equal (Program.run [| "config"; "mixmatch"; "--fields" |]) 0 "fields"
            let file = Path.Combine(Fixtures.tempDir "config-file", "mixmatch.json")
            let recipe = (Registry.tryFind "mixmatch").Value
            let document = JsonObject()
            document["method"] <- JsonValue.Create "mixmatch"
            document["preset"] <- JsonValue.Create "quick"
            document["config"] <- recipe.Resolve Recipe.Quick None [ "Epochs=2" ]
            File.WriteAllText(file, document.ToJsonString())
            Expect.equal (Program.run [| "train"; "--config"; file; "--set"; "Nope=3" |]) 2 "the file is read, then the override checked"
            File.WriteAllText(file, "{ not json")
            Expect.equal (Program.run [| "train"; "mixmatch"; "--config"; file |]) 1 "a corrupt file names itself (exit 1)"
            Expect.equal (Program.run [| "train"; "mixmatch"; "--config"; file + ".missing" |]) 1 "a missing file"
        }
    ]
