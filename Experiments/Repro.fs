/// `ssl repro`: every registered recipe's preset (quick by default) on seeds 0, 1, 2 with its
/// baselines, as one sweep (Sweep: one child `ssl train` per run, runs done for this commit and
/// config skipped), optionally one shard of it; then the finished runs are recorded into results/
/// and RESULTS.md is written from every record there (Records), so the table can be rebuilt over
/// several sittings and machines and merged by the records.
module Ssl.Experiments.Repro

open System
open System.IO
open System.Text.Json
open Ssl.Host.Runs
open Ssl.Host.Runtime
open Ssl.Experiments.Recipe
open Ssl.Experiments.Template

/// Parses `--only a,b` against the registered names: an unknown name is a usage error naming them.
let parseOnly (recipes: Recipe list) (text: string) =
    let names = text.Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries) |> List.ofArray
    let known = recipes |> List.map (fun r -> r.Name)
    match names |> List.filter (fun n -> not (List.contains n known)) with
    | [] when names.IsEmpty -> invalidArg "--only" "--only: expected a comma-separated list of recipe names, found nothing"
    | [] -> names
    | unknown ->
        invalidArg "--only" $"""--only: expected registered recipes ({String.concat ", " known}), found {String.concat ", " unknown}"""

/// Parses `--shard i/n` (1 ≤ i ≤ n).
let parseShard (text: string) =
    match text.Split('/') with
    | [| i; n |] ->
        match Int32.TryParse i, Int32.TryParse n with
        | (true, i), (true, n) when n >= 1 && i >= 1 && i <= n -> i, n
        | _ -> invalidArg "--shard" $"--shard: expected i/n with 1 <= i <= n, found '{text}'"
    | _ -> invalidArg "--shard" $"--shard: expected i/n with 1 <= i <= n, found '{text}'"

/// The grid of a repro: the given recipes (all registered ones with this preset, or `only`), each
/// semi-supervised one at its traits' label budgets, on `seeds`.
let grid (recipes: Recipe list) (only: string list option) (preset: Preset) (seeds: int64 list) (colourDataset: string option) : Sweep.Grid =
    { Methods =
        [ for r in recipes do
              // An alias runs when asked for by name; the whole repro runs its recipe once, under the recipe's name.
              let asked = match only with Some names -> List.contains r.Name names | None -> r.AliasOf.IsNone
              if asked && List.contains preset r.Presets then r.Name ]
      Seeds = seeds; Labels = []; Preset = preset; Sets = []; Dataset = None; ColourDataset = colourDataset }

/// Shard i of n: every n-th run of the expanded grid, from the i-th (a stable slice: the shards of
/// one grid are disjoint and together are the grid).
let shard (i: int, n: int) (runs: Sweep.RunSpec list) =
    runs |> List.indexed |> List.filter (fun (k, _) -> k % n = i - 1) |> List.map snd

/// Records the machine (and torch's default thread count) beside the runs.
let writeMachine (runsDir: string) =
    let m = MachineInfo.Current()
    let node = JsonSerializer.SerializeToNode(m).AsObject()
    node["threads"] <- System.Text.Json.Nodes.JsonValue.Create(Environment.ProcessorCount)
    Directory.CreateDirectory runsDir |> ignore
    RunFolder.WriteAtomically(Path.Combine(runsDir, "machine.json"), node.ToJsonString(RunFolder.Json))

/// `ssl repro`: runs what is not up to date (of this shard), records every finished run of
/// `runsDir` into `recordsDir`, writes the report from all records. Exit code 1 when a run failed
/// (the report is written all the same).
let run (grid: Sweep.Grid) (shardOf: (int * int) option) (processes: int) (runsDir: string) (recordsDir: string)
        (reportPath: string) (figuresDir: string) =
    let commit = BuildInfo.Commit
    let runs, notRun = Sweep.expand Registry.recipes grid
    let mine = match shardOf with Some s -> shard s runs | None -> runs
    writeMachine runsDir
    let slice = match shardOf with Some(i, n) -> $" (shard {i}/{n}: {mine.Length} of {runs.Length})" | None -> ""
    printfn "ssl repro: %d runs of preset %s on seeds %s into %s%s" mine.Length (Preset.name grid.Preset)
        (grid.Seeds |> List.map string |> String.concat ",") runsDir slice
    for name, reason in notRun do printfn "not run %s: %s" name reason
    let code = Sweep.local runsDir commit processes mine
    let recorded = Records.record runsDir recordsDir
    let count, stale = Records.write Registry.recipes recordsDir reportPath figuresDir notRun
    printfn "ssl repro: %d runs recorded into %s; %s written from %d records (%d stale rows)" recorded.Length recordsDir reportPath count stale
    code
