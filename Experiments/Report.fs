/// `ssl report <runs-dir>`: RESULTS.md from the result.json files of run folders. Every figure in
/// it is read from a run's files (result.json, config.json, metrics.jsonl, sweep.json) or the
/// machine record; nothing is typed by hand, and a figure that does not apply is shown as "—".
module Ssl.Experiments.Report

open System
open System.IO
open System.Text
open System.Text.Json
open System.Text.Json.Nodes
open Ssl.Host.Reporting
open Ssl.Host.Runs
open Ssl.Host.Runtime

/// One run folder as the report sees it.
type RunEntry =
    { /// The folder's name (e.g. `rotnet`, `mixmatch-10`).
      Name: string
      Dir: string
      Result: RunResult
      Preset: string option
      Encoder: string option
      /// Wall time of the whole `ssl train` command (training, evaluation, baselines, plots), where
      /// a sweep (or `ssl repro`) ran it and stamped it in sweep.json.
      CommandSeconds: float option
      /// (epoch as a fraction, loss) from metrics.jsonl's step records, and (epoch, mean loss) from
      /// its epoch summaries.
      LossCurve: (float[] * float[]) * (float[] * float[]) }

/// What a figure that does not apply shows: never 0.
let missing = "—"

/// An accuracy as a percentage with two decimals, or "—" for null.
let formatAcc (v: Nullable<float>) = if v.HasValue then (100.0 * v.Value).ToString("F2", Globalization.CultureInfo.InvariantCulture) else missing

let private formatNumber (digits: int) (v: float option) =
    match v with
    | Some x when Double.IsFinite x -> x.ToString("N" + string digits, Globalization.CultureInfo.InvariantCulture)
    | _ -> missing

let private fewLabel (r: RunResult) (n: int) =
    match r.Eval.FewLabelLinearAcc.TryGetValue(string n) with
    | true, v -> formatAcc v
    | _ -> missing

let private optionText (text: string) = if String.IsNullOrWhiteSpace text then None else Some text

let private readJson (path: string) =
    if File.Exists path then Some(JsonNode.Parse(File.ReadAllText path)) else None

let private stringField (node: JsonNode option) (key: string) =
    node
    |> Option.bind (fun n -> match n[key] with null -> None | v -> (try Some(v.GetValue<string>()) with _ -> None))

let private floatField (node: JsonNode option) (key: string) =
    node
    |> Option.bind (fun n -> match n[key] with null -> None | v -> (try Some(v.GetValue<float>()) with _ -> None))

/// The logged steps' loss of the run in `dir` at fractional epochs and its epoch means
/// (Pipeline.curveSeries), read without touching the folder.
let private lossCurve (dir: string) (result: RunResult) =
    let path = Path.Combine(dir, "metrics.jsonl")
    let rows = if File.Exists path then File.ReadLines path |> Seq.filter (fun l -> l.Length > 0) |> Seq.map (fun l -> JsonNode.Parse(l).AsObject()) |> Seq.toArray else [||]
    match Pipeline.curveSeries (Pipeline.stepsPerEpoch result.Train) rows |> List.tryFind (fun (key, _, _) -> key = "loss") with
    | Some(_, logged, means) -> logged, means
    | None -> ([||], [||]), ([||], [||])

/// Where a recipe name sits in the registry's order (unknown names go last, by name).
let private contractRank (name: string) =
    match Registry.recipes |> List.tryFindIndex (fun r -> r.Name = name) with
    | Some i -> i
    | None -> Registry.recipes.Length

/// Reads every direct sub-folder of `runsDir` that holds a result.json, by data set, then in the
/// contract's order of methods, then by labels per class. A result.json that cannot be read is an error naming it.
let loadRuns (runsDir: string) : RunEntry list =
    if not (Directory.Exists runsDir) then
        raise (Ssl.Host.Data.DataException(runsDir, "a folder of run folders (each with a result.json)", "no such folder"))
    [ for dir in Directory.GetDirectories runsDir do
          let resultPath = Path.Combine(dir, "result.json")
          if File.Exists resultPath then
              let result =
                  try JsonSerializer.Deserialize<RunResult>(File.ReadAllText resultPath)
                  with e -> raise (Ssl.Host.Data.DataException(resultPath, "a result.json of the run-folder contract", e.Message))
              if isNull (box result) then raise (Ssl.Host.Data.DataException(resultPath, "a result object", "null"))
              let config = readJson (Path.Combine(dir, "config.json"))
              let stamp = readJson (Path.Combine(dir, "sweep.json"))
              yield
                  { Name = Path.GetFileName dir; Dir = dir; Result = result
                    Preset = stringField config "preset"; Encoder = stringField config "encoder"
                    CommandSeconds = floatField stamp "wall_s"
                    LossCurve = lossCurve dir result } ]
    |> List.sortBy (fun e -> e.Result.Dataset, contractRank e.Result.Method, e.Result.Method, Option.ofNullable e.Result.LabelsPerClass, e.Name)

/// The run folders `ssl repro` recorded without a result.json: (folder name, why), the reason being
/// sweep.json's `not_run` or the failed attempt's exit code.
let loadUnfinished (runsDir: string) : (string * string) list =
    if not (Directory.Exists runsDir) then []
    else
        [ for dir in Directory.GetDirectories runsDir |> Array.sort do
              let stampPath = Path.Combine(dir, "sweep.json")
              if not (File.Exists(Path.Combine(dir, "result.json"))) && File.Exists stampPath then
                  let stamp = readJson stampPath
                  let why =
                      match stringField stamp "not_run", floatField stamp "exit_code" with
                      | Some reason, _ -> $"not run: {reason}"
                      | None, Some code -> $"failed with exit code {code} (its folder holds what it wrote)"
                      | None, None -> "no result.json"
                  yield Path.GetFileName dir, why ]

let private row (cells: string seq) = "| " + String.Join(" | ", cells) + " |"

let private header (cells: string list) =
    row cells + "\n" + row (cells |> List.map (fun _ -> "---"))

let private shortCommit (c: string) = if String.IsNullOrEmpty c then missing else BuildInfo.Short c

/// The table of every run: protocols, the method's own test accuracy, its supervised-only baseline
/// and what training cost.
let methodsTable (entries: RunEntry list) =
    let sb = StringBuilder()
    sb.AppendLine(header [ "run"; "data set"; "method"; "preset"; "labels/class"; "linear probe"; "kNN"; "probe, 10 labels/class"; "probe, 100 labels/class"
                           "test acc (own classifier)"; "supervised only"; "epochs"; "training s"; "command s"; "img/s"; "peak RSS MiB"; "commit" ]) |> ignore
    for e in entries do
        let r = e.Result
        let labels = if r.LabelsPerClass.HasValue then string r.LabelsPerClass.Value else "all"
        sb.AppendLine(
            row [ e.Name; r.Dataset; r.Method; defaultArg e.Preset missing; labels
                  formatAcc r.Eval.LinearProbeAcc; formatAcc r.Eval.KnnAcc; fewLabel r 10; fewLabel r 100
                  formatAcc r.Eval.TestAcc; formatAcc r.Baselines.SupervisedOnly.TestAcc
                  string r.Train.Epochs; formatNumber 0 (Some r.Train.WallSeconds); formatNumber 0 e.CommandSeconds
                  formatNumber 0 (Some r.Train.ImagesPerSecond); formatNumber 0 (Some r.Train.PeakRssMb); shortCommit r.Versions.Commit ])
        |> ignore
    sb.ToString()

/// The baselines beside the runs: one row per distinct (data set, preset, encoder, seed) — every
/// run on the same protocol shares them — with the runs they stand beside.
let baselinesTable (entries: RunEntry list) =
    let sb = StringBuilder()
    sb.AppendLine(header [ "data set"; "preset"; "encoder"; "seed"; "random-init linear probe"; "random-init kNN"; "raw-pixel linear probe"
                           "raw-pixel kNN"; "runs" ]) |> ignore
    entries
    |> List.groupBy (fun e ->
        let b = e.Result.Baselines
        e.Result.Dataset, e.Preset, e.Encoder, e.Result.Seed,
        formatAcc b.RandomInit.LinearProbeAcc, formatAcc b.RandomInit.KnnAcc, formatAcc b.RawPixels.LinearProbeAcc, formatAcc b.RawPixels.KnnAcc)
    |> List.iter (fun ((dataset, preset, encoder, seed, rl, rk, pl, pk), group) ->
        sb.AppendLine(row [ dataset; defaultArg preset missing; defaultArg encoder missing; string seed; rl; rk; pl; pk
                            group |> List.map (fun e -> e.Name) |> String.concat ", " ]) |> ignore)
    sb.ToString()

/// The machine the runs were made on: `<runs-dir>/machine.json` (written by `ssl repro`), or this
/// machine at report time, said as such.
let machineSection (runsDir: string) =
    let path = Path.Combine(runsDir, "machine.json")
    let machine, source =
        match readJson path with
        | Some node ->
            JsonSerializer.Deserialize<MachineInfo>(node.ToJsonString()), $"recorded by `ssl repro` in `{Path.GetFileName runsDir}/machine.json`"
        | None -> MachineInfo.Current(), "no machine.json in the runs folder: the machine that wrote this report"
    let threads = floatField (readJson path) "threads"
    let sb = StringBuilder()
    sb.AppendLine(header [ "CPU"; "logical cores"; "memory GiB"; "OS"; "torch threads" ]) |> ignore
    sb.AppendLine(row [ machine.CpuModel; string machine.Cores; formatNumber 1 (Some machine.MemoryGiB); machine.Os
                        threads |> Option.map (int >> string) |> Option.defaultValue missing ]) |> ignore
    sb.AppendLine() |> ignore
    sb.AppendLine($"Source: {source}.") |> ignore
    sb.ToString()

let private versionsSection (entries: RunEntry list) =
    let distinct f = entries |> List.map f |> List.distinct |> List.filter (String.IsNullOrEmpty >> not)
    let list xs = if List.isEmpty xs then missing else String.Join(", ", xs |> List.map (sprintf "`%s`"))
    $"- commit: {list (distinct (fun e -> e.Result.Versions.Commit))}\n" +
    $"- TorchSharp: {list (distinct (fun e -> e.Result.Versions.TorchSharp))}\n" +
    $"- libtorch: {list (distinct (fun e -> e.Result.Versions.LibTorch))}\n"

/// `name` with every character but letters, digits, '-' and '_' replaced by '_', for a file name.
let fileSafe (name: string) =
    String(name |> Seq.map (fun c -> if Char.IsLetterOrDigit c || c = '-' || c = '_' then c else '_') |> Seq.toArray)

/// Draws the figures into `figuresDir` and returns (title, path) of each.
let writeFigures (entries: RunEntry list) (figuresDir: string) =
    Directory.CreateDirectory figuresDir |> ignore
    let figures = Collections.Generic.List<string * string>()
    for dataset, entries in entries |> List.groupBy (fun e -> e.Result.Dataset) do
        // Methods against the baselines: each run's linear probe and kNN, then each distinct baseline set.
        let baselineGroups =
            entries
            |> List.distinctBy (fun e -> e.Encoder, e.Preset, e.Result.Seed)
        let many = baselineGroups.Length > 1
        let groups =
            [ for e in entries -> e.Name ]
            @ [ for b in baselineGroups do
                    let suffix = if many then $" ({defaultArg b.Encoder b.Name})" else ""
                    yield "random init" + suffix
                    yield "raw pixels" + suffix ]
        let values (methodValue: RunResult -> Nullable<float>) (randomValue: ProtocolFigures -> Nullable<float>) =
            [| for e in entries -> methodValue e.Result |> Option.ofNullable
               for b in baselineGroups do
                   yield randomValue b.Result.Baselines.RandomInit |> Option.ofNullable
                   yield randomValue b.Result.Baselines.RawPixels |> Option.ofNullable |]
            |> Array.map Option.toNullable
        let accuracy = Path.Combine(figuresDir, $"accuracy-{fileSafe dataset}.png")
        Plots.Bars(accuracy, $"{dataset}: methods against the baselines (test top-1)", "test top-1", groups,
                   readOnlyDict [ "linear probe", values (fun r -> r.Eval.LinearProbeAcc) (fun p -> p.LinearProbeAcc)
                                  "kNN", values (fun r -> r.Eval.KnnAcc) (fun p -> p.KnnAcc) ])
        figures.Add($"{dataset}: linear probe and kNN of every run beside the random-initialised encoder and raw pixels", accuracy)

        let few = Path.Combine(figuresDir, $"few-labels-{fileSafe dataset}.png")
        let pick n (r: RunResult) = match r.Eval.FewLabelLinearAcc.TryGetValue(string n) with | true, v -> v | _ -> Nullable()
        Plots.Bars(few, $"{dataset}: few labels (test top-1)", "test top-1", [ for e in entries -> e.Name ],
                   readOnlyDict [ "probe, 10 labels/class", [| for e in entries -> pick 10 e.Result |]
                                  "probe, 100 labels/class", [| for e in entries -> pick 100 e.Result |]
                                  "own classifier", [| for e in entries -> e.Result.Eval.TestAcc |]
                                  "supervised only", [| for e in entries -> e.Result.Baselines.SupervisedOnly.TestAcc |] ])
        figures.Add($"{dataset}: few-label probes, the method's own classifier and the supervised-only baseline", few)

        for e in entries do
            let (stepX, stepY), (epochX, epochY) = e.LossCurve
            if stepX.Length + epochX.Length > 0 then
                let path = Path.Combine(figuresDir, "curves", fileSafe e.Name + ".png")
                Plots.Curves(path, $"{e.Name} on {dataset}: training loss", "epoch", "loss", readOnlyDict [ "logged steps", struct (stepX, stepY); "epoch mean", struct (epochX, epochY) ])
                figures.Add($"{e.Name} on {dataset}: training loss", path)
    List.ofSeq figures

/// The whole RESULTS.md text; draws its figures into `figuresDir` (linked relative to `outPath`).
let render (runsDir: string) (outPath: string) (figuresDir: string) =
    let entries = loadRuns runsDir
    let outDir = Path.GetDirectoryName(Path.GetFullPath outPath)
    let link (path: string) = Path.GetRelativePath(outDir, Path.GetFullPath path).Replace('\\', '/')
    let runsText = Path.GetRelativePath(outDir, Path.GetFullPath runsDir).Replace('\\', '/')
    let figures = writeFigures entries figuresDir
    let sb = StringBuilder()
    let line (text: string) = sb.AppendLine text |> ignore
    line "<!-- GENERATED by `ssl report`: never edit this file by hand; regenerate it (see below). -->"
    line "# Results"
    line ""
    line $"> **Generated** by `ssl report {runsText} --out {Path.GetFileName outPath}` from the `result.json` of every run folder in"
    line $"> `{runsText}/`; never edited by hand. Regenerate with `dotnet fsi build.fsx repro` (trains what is missing or"
    line "> stale for this commit, then writes this file), or only the report with"
    line $"> `dotnet Experiments/bin/Release/net10.0/ssl.dll report {runsText} --out {Path.GetFileName outPath}`."
    line ""
    if entries.IsEmpty then
        line $"No run folder with a result.json in `{runsText}/` yet."
    else
        line "## Methods"
        line ""
        line "Test top-1 accuracy in per cent on the data set's test split; \"—\": the figure does not apply to the run."
        line "Linear probe and kNN use all training labels on frozen features; \"probe, N labels/class\" fits the linear"
        line "probe on N labels per class; \"test acc\" is the method's own classifier (supervised and semi-supervised"
        line "methods); \"supervised only\" trains the same encoder on the run's labelled subset alone. \"training s\" is the"
        line "training loop; \"command s\" the whole `ssl train` command (training, evaluation, baselines, plots) where"
        line "`ssl repro` ran it; peak RSS is the process's high-water mark."
        line ""
        sb.Append(methodsTable entries) |> ignore
        line ""
        line "## Baselines"
        line ""
        line "The same encoder architecture randomly initialised, and raw pixels, through the same linear probe and kNN."
        line ""
        sb.Append(baselinesTable entries) |> ignore
        line ""
        line "## Figures"
        line ""
        for title, path in figures do
            line $"![{title}]({link path})"
            line ""
    match loadUnfinished runsDir with
    | [] -> ()
    | unfinished ->
        line "## Not run or failed"
        line ""
        for name, why in unfinished do line $"- `{name}`: {why}"
        line ""
    line "## Machine"
    line ""
    sb.Append(machineSection runsDir) |> ignore
    line ""
    line "## Versions"
    line ""
    sb.Append(versionsSection entries) |> ignore
    sb.ToString()

/// Writes RESULTS.md (atomically) and returns the number of runs it reports.
let write (runsDir: string) (outPath: string) (figuresDir: string) =
    let text = render runsDir outPath figuresDir
    let full = Path.GetFullPath outPath
    Directory.CreateDirectory(Path.GetDirectoryName full) |> ignore
    RunFolder.WriteAtomically(full, text)
    (loadRuns runsDir).Length
