// Carries results/ over a change of config shape that leaves training unchanged (the Schedule and
// Probe sub-records): each record's config digest and overrides are rewritten to today's shape.
// A record is migrated only when the build before the change (OLD_SSL) resolves its method, preset
// and overrides to the record's digest, and today's build reads that old config (ConfigParts.upgrade,
// as `ssl train --config` does) to exactly the config today's preset and overrides resolve to; the
// training being unchanged is shown separately by scripts/smoke-identical.sh. Others are left as
// they are (and say so). Build first, then:
//     dotnet fsi scripts/migrate-records.fsx <old ssl.dll> [results]
#r "../Experiments/bin/Release/net10.0/TorchSharp.dll"
#r "../Experiments/bin/Release/net10.0/Ssl.Host.dll"
#r "../Experiments/bin/Release/net10.0/Ssl.Core.dll"
#r "../Experiments/bin/Release/net10.0/ssl.dll"

open System
open System.Diagnostics
open System.IO
open System.Text.Json.Nodes
open Ssl.Experiments

let args = fsi.CommandLineArgs |> Array.skip 1
let oldSsl, resultsDir =
    match args with
    | [| old |] -> old, Path.Combine(__SOURCE_DIRECTORY__, "..", "results")
    | [| old; dir |] -> old, dir
    | _ -> failwith "usage: dotnet fsi scripts/migrate-records.fsx <old ssl.dll> [results]"

/// The config the old build resolves a method, preset and overrides to (`ssl config`).
let oldConfig (methodName: string) (preset: string) (overrides: string list) =
    let psi = ProcessStartInfo("dotnet", UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true)
    for a in [ oldSsl; "config"; methodName; "--preset"; preset ] @ (overrides |> List.collect (fun o -> [ "--set"; o ])) do
        psi.ArgumentList.Add a
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEnd()
    p.WaitForExit()
    if p.ExitCode <> 0 then Error(p.StandardError.ReadToEnd().Trim())
    else
        let document = JsonNode.Parse out
        Ok(document["config"].AsObject())

/// The overrides in today's fields: ProbeLayer and ProbePool as one Probe (their values in `old`,
/// the old resolved config), DINO's LearningRatePer256 and the semi-supervised LabelledBatch and Exemplar's ImagesPerBatch as the
/// Schedule's LearningRate and BatchSize; the rest as given.
let todays (old: JsonObject) (overrides: string list) =
    let probe = overrides |> List.exists (fun o -> o.StartsWith "ProbeLayer=" || o.StartsWith "ProbePool=")
    [ for o in overrides do
          if o.StartsWith "LearningRatePer256=" then "Schedule.LearningRate=" + o.Substring(o.IndexOf '=' + 1)
          elif o.StartsWith "LabelledBatch=" || o.StartsWith "ImagesPerBatch=" then "Schedule.BatchSize=" + o.Substring(o.IndexOf '=' + 1)
          elif not (o.StartsWith "ProbeLayer=" || o.StartsWith "ProbePool=") then o
      if probe then
          let layer, pool = old["ProbeLayer"].GetValue<string>(), old["ProbePool"].GetValue<int64>()
          "Probe=" + string (Probe.OfLayer(layer, pool)) ]

/// An override in today's full path (`Epochs=20` → `Schedule.Epochs=20`).
let canonical (recipe: Template.Recipe) (o: string) =
    let i = o.IndexOf '='
    let path = o.Substring(0, i)
    match recipe.Fields |> List.map fst |> List.filter (fun f -> f = path || f.EndsWith("." + path)) with
    | [ full ] -> full + o.Substring i
    | _ -> o

let mutable migrated, kept = 0, 0
for file in Directory.GetFiles(resultsDir, "*.json") |> Array.sort do
    let node = (JsonNode.Parse(File.ReadAllText file)).AsObject()
    let methodName = node["method"].GetValue<string>()
    let preset = node["preset"].GetValue<string>()
    let labels = match node["labels_per_class"] with null -> None | v -> Some(v.GetValue<int>())
    let dataset = node["dataset"].GetValue<string>()
    let digest = node["config_digest"].GetValue<string>()
    let overrides = [ for o in node["overrides"].AsArray() -> o.GetValue<string>() ]
    let keep (why: string) =
        kept <- kept + 1
        printfn "%s: kept as it is (%s)" (Path.GetFileName file) why
    match Registry.tryFind methodName, Recipe.Preset.tryParse preset with
    | Some recipe, Some p ->
        match oldConfig methodName preset overrides with
        | Error e -> keep $"the old build does not resolve it: {e}"
        | Ok old when Sweep.digest methodName old labels dataset <> digest -> keep "stale before the change already"
        | Ok old ->
            let overrides = todays old overrides
            let fromOld = try Some(recipe.Resolve p (Some old) []) with :? ArgumentException -> None
            let today = try Some(recipe.Resolve p None overrides) with :? ArgumentException -> None
            if fromOld.IsNone || today.IsNone || not (JsonNode.DeepEquals(fromOld.Value, today.Value)) then keep "the old config reads to another config today"
            else
                let newDigest = Sweep.digest methodName today.Value labels dataset
                node["config_digest"] <- JsonValue.Create newDigest
                node["overrides"] <- JsonArray([| for o in overrides -> JsonValue.Create(canonical recipe o) :> JsonNode |])
                let name = Path.GetFileName(file).Replace(digest, newDigest)
                Ssl.Host.Runs.RunFolder.WriteAtomically(Path.Combine(Path.GetDirectoryName file, name), node.ToJsonString(Ssl.Host.Runs.RunFolder.Json))
                if name <> Path.GetFileName file then File.Delete file
                migrated <- migrated + 1
                printfn "%s -> %s" (Path.GetFileName file) name
    | _ -> keep "no such recipe or preset today"
printfn "%d records migrated, %d kept as they were" migrated kept
