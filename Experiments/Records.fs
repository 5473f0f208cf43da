/// Run records: one small JSON file per finished run under a committed `results/` folder (its
/// result.json with the config digest, commit, seed, label budget, machine and wall time; no
/// weights), and RESULTS.md generated from them: one row per (method, preset, label budget, config
/// digest) with mean ± std over seeds, the baselines the same way, and rows whose recipe resolves
/// to another digest today marked stale in a table of their own, never mixed with fresh ones.
module Ssl.Experiments.Records

open System
open System.IO
open System.Text
open System.Text.Json
open System.Text.Json.Nodes
open Ssl.Host.Reporting
open Ssl.Host.Runs
open Ssl.Host.Runtime
open Ssl.Experiments.Recipe

/// One record as read back.
type RunRecord =
    { File: string
      Method: string
      Preset: string
      Labels: int option
      Seed: int64
      Dataset: string
      Overrides: string list
      Encoder: string
      Digest: string
      Commit: string
      Machine: string
      /// `ssl train`'s whole command where a sweep stamped it, else the training loop's.
      CommandSeconds: float
      Result: RunResult }

let private readNode (path: string) = if File.Exists path then Some(JsonNode.Parse(File.ReadAllText path)) else None

/// Writes a record of every direct sub-folder of `runsDir` holding result.json and config.json into
/// `recordsDir` as `<method>[-<labels>]-<preset>-<digest>-seed<seed>.json` (a newer run of the same
/// digest and seed replaces the older record). Returns the paths written.
let record (runsDir: string) (recordsDir: string) : string list =
    if not (Directory.Exists runsDir) then
        raise (Ssl.Host.Data.DataException(runsDir, "a folder of run folders (each with a result.json)", "no such folder"))
    Directory.CreateDirectory recordsDir |> ignore
    let fallbackMachine =
        match readNode (Path.Combine(runsDir, "machine.json")) with
        | Some node -> JsonSerializer.Deserialize<MachineInfo>(node.ToJsonString())
        | None -> MachineInfo.Current()
    [ for dir in Directory.GetDirectories runsDir |> Array.sort do
          match readNode (Path.Combine(dir, "result.json")), readNode (Path.Combine(dir, "config.json")) with
          | Some result, Some config ->
              let get (key: string) = match config[key] with null -> None | v -> Some v
              let text key = get key |> Option.map (fun v -> v.GetValue<string>())
              let method = text "method" |> Option.defaultValue (result["method"].GetValue<string>())
              let labels = get "labels_per_class" |> Option.map (fun v -> v.GetValue<int>())
              let dataset = text "dataset" |> Option.defaultValue Sweep.defaultDataset
              let preset = text "preset" |> Option.defaultValue "quick"
              let seed = get "seed" |> Option.map (fun v -> v.GetValue<int64>()) |> Option.defaultValue 0L
              let resolved =
                  match get "config" with
                  | Some c -> c
                  | None -> raise (Ssl.Host.Data.DataException(Path.Combine(dir, "config.json"), "a config.json with its resolved 'config'", "none"))
              let digest = Sweep.digest method resolved labels dataset
              let stamp = readNode (Path.Combine(dir, Sweep.stampName))
              let machine =
                  match stamp |> Option.bind (fun s -> Option.ofObj s["machine"]) with
                  | Some m -> m.GetValue<string>()
                  | None -> Sweep.describe fallbackMachine
              let node = JsonObject()
              node["method"] <- JsonValue.Create method
              node["preset"] <- JsonValue.Create preset
              node["labels_per_class"] <- (labels |> Option.map (fun n -> JsonValue.Create n :> JsonNode) |> Option.toObj)
              node["seed"] <- JsonValue.Create seed
              node["dataset"] <- JsonValue.Create dataset
              node["overrides"] <- (match get "overrides" with Some o -> o.DeepClone() | None -> JsonArray())
              node["encoder"] <- JsonValue.Create(text "encoder" |> Option.defaultValue "")
              node["config_digest"] <- JsonValue.Create digest
              let versions = result["versions"]
              let commit: string = versions["commit"].GetValue<string>()
              node["commit"] <- JsonValue.Create commit
              node["machine"] <- JsonValue.Create machine
              node["command_s"] <-
                  (stamp |> Option.bind (fun s -> Option.ofObj s["wall_s"]) |> Option.map (fun v -> v.DeepClone()) |> Option.toObj)
              node["result"] <- result.DeepClone()
              let budget = labels |> Option.map (fun n -> $"-{n}") |> Option.defaultValue ""
              let path = Path.Combine(recordsDir, $"{method}{budget}-{preset}-{digest}-seed{seed}.json")
              RunFolder.WriteAtomically(path, node.ToJsonString(RunFolder.Json))
              yield path
          | _ -> () ]

/// Every record in `recordsDir` (*.json); a file that is not a record is an error naming it.
let load (recordsDir: string) : RunRecord list =
    if not (Directory.Exists recordsDir) then
        raise (Ssl.Host.Data.DataException(recordsDir, "a folder of run records (ssl report --record)", "no such folder"))
    [ for path in Directory.GetFiles(recordsDir, "*.json") |> Array.sort do
          let bad (found: string) = raise (Ssl.Host.Data.DataException(path, "a run record written by `ssl report --record`", found))
          let node = try JsonNode.Parse(File.ReadAllText path) with e -> bad e.Message
          let get (key: string) = match node[key] with null -> bad $"no '{key}'" | v -> v
          let result = try JsonSerializer.Deserialize<RunResult>(get("result").ToJsonString()) with e -> bad e.Message
          yield
              { File = path; Method = get("method").GetValue<string>(); Preset = get("preset").GetValue<string>()
                Labels = (match node["labels_per_class"] with null -> None | v -> Some(v.GetValue<int>()))
                Seed = get("seed").GetValue<int64>(); Dataset = get("dataset").GetValue<string>()
                Overrides = get("overrides").AsArray() |> Seq.map (fun o -> o.GetValue<string>()) |> List.ofSeq
                Encoder = get("encoder").GetValue<string>(); Digest = get("config_digest").GetValue<string>()
                Commit = get("commit").GetValue<string>(); Machine = get("machine").GetValue<string>()
                CommandSeconds =
                    (match node["command_s"] with null -> result.Train.WallSeconds | v -> v.GetValue<float>())
                Result = result } ]

/// What the recipe resolves the record's preset and overrides to today, as a digest; None when the
/// recipe is gone or its config no longer takes those overrides.
let currentDigest (recipes: Template.Recipe list) (r: RunRecord) =
    match recipes |> List.tryFind (fun x -> x.Name = r.Method), Preset.tryParse r.Preset with
    | Some recipe, Some preset ->
        try Some(Sweep.digest r.Method (recipe.Resolve preset None r.Overrides) r.Labels r.Dataset) with :? ArgumentException -> None
    | _ -> None

/// The representation a record's linear probe, kNN and baselines read, from its recipe's config
/// today (rows are only compared while fresh): "output", or the recipe's `Probe` (the pretext tasks
/// read an inner block, whose random-init baseline is stronger than the output's); "?" when the
/// recipe no longer resolves the record.
let probedAt (recipes: Template.Recipe list) (r: RunRecord) =
    match recipes |> List.tryFind (fun x -> x.Name = r.Method), Preset.tryParse r.Preset with
    | Some recipe, Some preset ->
        try
            let config = recipe.Resolve preset None r.Overrides
            match config["Probe"] |> Option.ofObj |> Option.bind (fun p -> Probe.TryParse(p.GetValue<string>())) with
            | None | Some Probe.Output -> "output"
            | Some(Probe.Branch pool) -> $"branch, pool {pool}"
            | Some(Probe.Layer(layer, pool)) -> $"{layer}, pool {pool}"
            | Some(Probe.ClassTokens(blocks, false)) -> $"class tokens of the last {blocks} blocks"
            | Some(Probe.ClassTokens(blocks, true)) -> $"class tokens of the last {blocks} blocks and the patch-token mean"
        with :? ArgumentException -> "?"
    | _ -> "?"

/// The overrides a row was run with, "—" when none or when today's preset alone resolves to the
/// row's digest (the overrides became the preset, as a trial run that set the new defaults).
let private overridesCell (recipes: Template.Recipe list) (r: RunRecord) =
    let presetAlone = currentDigest recipes { r with Overrides = [] }
    match r.Overrides with
    | [] -> Report.missing
    | _ when presetAlone = Some r.Digest -> Report.missing
    | os -> os |> List.map (fun o -> $"`{o}`") |> String.concat " "

/// A trial: a record run with overrides that today's preset does not set (a tried setting, not the
/// preset's figure). Trials get a table of their own so the methods table holds the presets alone.
let isTrial (recipes: Template.Recipe list) (r: RunRecord) = overridesCell recipes r <> Report.missing

/// Mean and sample standard deviation (n − 1) of the values present; None when there are none.
let meanStd (values: float option list) : (float * float * int) option =
    match List.choose id values with
    | [] -> None
    | xs ->
        let n = xs.Length
        let mean = List.average xs
        let std = if n < 2 then nan else sqrt (List.sumBy (fun x -> (x - mean) ** 2.0) xs / float (n - 1))
        Some(mean, std, n)

let private percent (v: Nullable<float>) = if v.HasValue then Some(100.0 * v.Value) else None

let private invariant (x: float) (digits: int) = x.ToString("F" + string digits, Globalization.CultureInfo.InvariantCulture)

/// "84.51 ± 0.73" (per cent), "84.51 (n = 1)" for one seed, "—" for none.
let formatMeanStd (values: float option list) =
    match meanStd values with
    | None -> Report.missing
    | Some(mean, _, 1) -> $"{invariant mean 2} (n = 1)"
    | Some(mean, std, _) -> $"{invariant mean 2} ± {invariant std 2}"

/// One row of the report: the records of one (method, preset, label budget, digest, data set).
type Row =
    { Key: string * string * int option * string * string
      Records: RunRecord list
      Stale: bool }

/// The records grouped into rows, by data set, then in the registry's order, each marked stale when
/// its recipe now resolves to another digest (or is gone).
let rows (recipes: Template.Recipe list) (records: RunRecord list) : Row list =
    let rank (m: string) = recipes |> List.tryFindIndex (fun r -> r.Name = m) |> Option.defaultValue recipes.Length
    records
    |> List.groupBy (fun r -> r.Method, r.Preset, r.Labels, r.Digest, r.Dataset)
    |> List.map (fun (key, group) ->
        let group = group |> List.sortBy (fun r -> r.Seed)
        { Key = key; Records = group; Stale = currentDigest recipes group.Head <> Some group.Head.Digest })
    |> List.sortBy (fun row -> let m, p, l, d, ds = row.Key in ds, rank m, m, p, l, d)

let private line (sb: StringBuilder) (cells: string list) = sb.AppendLine("| " + String.Join(" | ", cells) + " |") |> ignore

let private methodsTable (recipes: Template.Recipe list) (rows: Row list) =
    let sb = StringBuilder()
    let head = [ "data set"; "method"; "preset"; "labels/class"; "overrides"; "n"; "seeds"; "linear probe"; "kNN"; "probe, 10 labels/class"
                 "probe, 100 labels/class"; "test acc (own classifier)"; "supervised only"; "training s"; "digest"; "commits" ]
    line sb head
    line sb (head |> List.map (fun _ -> "---"))
    for row in rows do
        let method, preset, labels, digest, dataset = row.Key
        let rs = row.Records
        let few (n: int) (r: RunRecord) = match r.Result.Eval.FewLabelLinearAcc.TryGetValue(string n) with | true, v -> percent v | _ -> None
        let overrides = overridesCell recipes rs.Head
        let commits = rs |> List.map (fun r -> BuildInfo.Short r.Commit) |> List.distinct
        line sb
            [ dataset; method; preset; (labels |> Option.map string |> Option.defaultValue "all"); overrides; string rs.Length
              rs |> List.map (fun r -> string r.Seed) |> String.concat ","
              formatMeanStd [ for r in rs -> percent r.Result.Eval.LinearProbeAcc ]
              formatMeanStd [ for r in rs -> percent r.Result.Eval.KnnAcc ]
              formatMeanStd [ for r in rs -> few 10 r ]
              formatMeanStd [ for r in rs -> few 100 r ]
              formatMeanStd [ for r in rs -> percent r.Result.Eval.TestAcc ]
              formatMeanStd [ for r in rs -> percent r.Result.Baselines.SupervisedOnly.TestAcc ]
              (match meanStd [ for r in rs -> Some r.Result.Train.WallSeconds ] with Some(m, _, _) -> invariant m 0 | None -> Report.missing)
              $"`{digest}`"; commits |> String.concat ", " ]
    sb.ToString()

let private baselinesTable (recipes: Template.Recipe list) (records: RunRecord list) =
    let sb = StringBuilder()
    let head = [ "data set"; "preset"; "encoder"; "probed at"; "n (seeds)"; "random-init linear probe"; "random-init kNN"; "raw-pixel linear probe"; "raw-pixel kNN" ]
    line sb head
    line sb (head |> List.map (fun _ -> "---"))
    for (dataset, preset, encoder, at), group in records |> List.groupBy (fun r -> r.Dataset, r.Preset, r.Encoder, probedAt recipes r) do
        // One baseline per seed: every run of that seed on this encoder and layer shares it.
        let perSeed = group |> List.distinctBy (fun r -> r.Seed)
        let b (f: BaselineFigures -> Nullable<float>) = formatMeanStd [ for r in perSeed -> percent (f r.Result.Baselines) ]
        line sb [ dataset; preset; encoder; at; string perSeed.Length
                  b (fun x -> x.RandomInit.LinearProbeAcc); b (fun x -> x.RandomInit.KnnAcc)
                  b (fun x -> x.RawPixels.LinearProbeAcc); b (fun x -> x.RawPixels.KnnAcc) ]
    sb.ToString()

/// One bar chart per data set of the rows' means over seeds, `accuracy-<data set>.png` in
/// `figuresDir`, the data set in its title; returns (data set, path) of each.
let private accuracyFigures (rows: Row list) (figuresDir: string) =
    Directory.CreateDirectory figuresDir |> ignore
    [ for dataset, rows in rows |> List.groupBy (fun row -> let _, _, _, _, ds = row.Key in ds) do
          let path = Path.Combine(figuresDir, $"accuracy-{Report.fileSafe dataset}.png")
          let name (row: Row) = let m, _, l, _, _ = row.Key in m + (l |> Option.map (fun n -> $"-{n}") |> Option.defaultValue "")
          let mean (f: RunRecord -> Nullable<float>) (row: Row) =
              match meanStd [ for r in row.Records -> Option.ofNullable (f r) ] with Some(m, _, _) -> Nullable m | None -> Nullable()
          Plots.Bars(path, $"{dataset}: mean over seeds (test top-1)", "test top-1", [ for r in rows -> name r ],
                     readOnlyDict [ "linear probe", [| for r in rows -> mean (fun x -> x.Result.Eval.LinearProbeAcc) r |]
                                    "kNN", [| for r in rows -> mean (fun x -> x.Result.Eval.KnnAcc) r |]
                                    "own classifier", [| for r in rows -> mean (fun x -> x.Result.Eval.TestAcc) r |] ])
          yield dataset, path ]

/// The whole RESULTS.md from the records in `recordsDir`; draws the figure into `figuresDir`.
/// `notRun`: (run, reason) of the runs that could not be made where the records were gathered.
let render (recipes: Template.Recipe list) (recordsDir: string) (outPath: string) (figuresDir: string) (notRun: (string * string) list) =
    let records = load recordsDir
    let all = rows recipes records
    let fresh, trials =
        all |> List.filter (fun r -> not r.Stale) |> List.partition (fun r -> not (isTrial recipes r.Records.Head))
    let stale = all |> List.filter (fun r -> r.Stale)
    let outDir = Path.GetDirectoryName(Path.GetFullPath outPath)
    let relative (p: string) = Path.GetRelativePath(outDir, Path.GetFullPath p).Replace('\\', '/')
    let sb = StringBuilder()
    let say (text: string) = sb.AppendLine text |> ignore
    say "<!-- GENERATED by `ssl report --records`: never edit this file by hand; regenerate it (see below). -->"
    say "# Results"
    say ""
    say $"> **Generated** from the run records in `{relative recordsDir}/` (one JSON file per run: its result.json, config"
    say "> digest, commit, seed and machine); never edited by hand. Rebuild the runs with `dotnet fsi build.fsx repro`"
    say "> (or a slice of them per machine with `ssl repro --shard i/n`), or only this file with"
    say $"> `dotnet Experiments/bin/Release/net10.0/ssl.dll report --records {relative recordsDir} --out {Path.GetFileName outPath}`."
    say ""
    say "## Methods"
    say ""
    say "Test top-1 accuracy in per cent, **mean ± sample standard deviation over the seeds** (n of them); \"(n = 1)\""
    say "is one seed, not a claim. Linear probe and kNN use all training labels on frozen features; \"probe, N"
    say "labels/class\" fits the linear probe on N labels per class; \"test acc\" is the method's own classifier;"
    say "\"supervised only\" trains the same encoder on the run's labelled subset alone. A row is one config digest:"
    say "the recipe's resolved config, label budget and data set; rows are sorted by data set, then by recipe."
    say ""
    if fresh.IsEmpty then say "No fresh records." else sb.Append(methodsTable recipes fresh) |> ignore
    say ""
    say "## Baselines"
    say ""
    say "The same encoder randomly initialised, and raw pixels, through the same linear probe and kNN, per seed; \"probed"
    say "at\" is the representation both the method and its random-init baseline are read at (a recipe's Probe)."
    say ""
    sb.Append(baselinesTable recipes (fresh |> List.collect (fun r -> r.Records))) |> ignore
    say ""
    if not trials.IsEmpty then
        say "## Trials"
        say ""
        say "Runs with overrides on top of a preset (settings tried, as in docs/experiments): fresh, but not the"
        say "preset's figure, so kept out of the tables above; n is their own seed count."
        say ""
        sb.Append(methodsTable recipes trials) |> ignore
        say ""
    if not stale.IsEmpty then
        say "## Stale"
        say ""
        say "Records whose recipe resolves to another config today (its preset changed since, or it is gone): kept, not"
        say "compared with the rows above. Rerun them to refresh."
        say ""
        sb.Append(methodsTable recipes stale) |> ignore
        say ""
    if not fresh.IsEmpty then
        say "## Figures"
        say ""
        for dataset, path in accuracyFigures fresh figuresDir do
            say $"![{dataset}: mean linear probe, kNN and own-classifier accuracy of every fresh row]({relative path})"
            say ""
    let missing =
        [ for r in recipes do
              let budgets = if r.Traits.LabelBudgets.IsEmpty then [ None ] else List.map Some r.Traits.LabelBudgets
              for b in budgets do
                  if not (fresh |> List.exists (fun row -> let m, p, l, _, _ = row.Key in m = r.Name && p = "quick" && l = b)) then
                      yield r.Name + (b |> Option.map (fun n -> $"-{n}") |> Option.defaultValue "") ]
    if not missing.IsEmpty then
        say "## No fresh quick record yet"
        say ""
        say $"""{String.concat ", " (missing |> List.map (sprintf "`%s`"))}: `ssl repro --only <recipe>` (or a shard of the whole repro) makes them."""
        say ""
    if not notRun.IsEmpty then
        say "## Not run"
        say ""
        for name, why in notRun do say $"- `{name}`: {why}"
        say ""
    say "## Machines and versions"
    say ""
    for m in records |> List.map (fun r -> r.Machine) |> List.distinct do say $"- machine: {m}"
    let versions (f: RunResult -> string) = records |> List.map (fun r -> f r.Result) |> List.distinct |> List.map (sprintf "`%s`") |> String.concat ", "
    say $"- TorchSharp: {versions (fun r -> r.Versions.TorchSharp)}; libtorch: {versions (fun r -> r.Versions.LibTorch)}"
    let commits = records |> List.map (fun r -> BuildInfo.Short r.Commit) |> List.distinct |> String.concat ", "
    say $"- commits: {commits}"
    sb.ToString(), records.Length, stale.Length

/// Writes RESULTS.md from the records (atomically); returns (records, stale rows); trial rows are in
/// their own section.
let write (recipes: Template.Recipe list) (recordsDir: string) (outPath: string) (figuresDir: string) (notRun: (string * string) list) =
    let text, count, stale = render recipes recordsDir outPath figuresDir notRun
    let full = Path.GetFullPath outPath
    Directory.CreateDirectory(Path.GetDirectoryName full) |> ignore
    RunFolder.WriteAtomically(full, text)
    count, stale
