/// `ssl repro`: every registered recipe's preset (quick by default) trained with its baselines into
/// one runs folder, one child `ssl train` process per run (so each run's peak RSS is its own), runs
/// already done for this commit and config skipped; then RESULTS.md (`Report`).
module Ssl.Experiments.Repro

open System
open System.Diagnostics
open System.IO
open System.Security.Cryptography
open System.Text.Json
open System.Text.Json.Nodes
open Ssl.Host.Runs
open Ssl.Host.Runtime
open Ssl.Experiments.Recipe
open Ssl.Experiments.Template

/// One planned `ssl train` run.
type PlannedRun =
    { Method: string
      Labels: int option
      Dir: string
      /// The arguments after `ssl`.
      Args: string list
      /// Why this run cannot be made here (a colour-only recipe without a colour data set):
      /// `ssl repro` records the reason in the run folder's repro.json and the report lists it.
      NotRun: string option }

/// The file `ssl repro` leaves in a run folder it ran: the command, the commit, a digest of the
/// config.json the run wrote, the command's wall time and exit code.
let stampName = "repro.json"

/// Parses `--only a,b` against the registered names: an unknown name is a usage error naming them.
let parseOnly (recipes: Recipe list) (text: string) =
    let names = text.Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries) |> List.ofArray
    let known = recipes |> List.map (fun r -> r.Name)
    match names |> List.filter (fun n -> not (List.contains n known)) with
    | [] when names.IsEmpty -> invalidArg "--only" "--only: expected a comma-separated list of recipe names, found nothing"
    | [] -> names
    | unknown ->
        invalidArg "--only" $"""--only: expected registered recipes ({String.concat ", " known}), found {String.concat ", " unknown}"""

/// The runs for the given recipes (all registered ones, or `only`), in registry order: a
/// semi-supervised recipe once per label budget of its traits, into `<runs>/<method>-<N>/`.
/// Colour-only recipes (Traits.Colour) train on `colourDataset` (a data-set name or image-folder path);
/// without one they are planned as not run, with the reason.
let plan (recipes: Recipe list) (only: string list option) (runsDir: string) (preset: Preset) (colourDataset: string option)
    : PlannedRun list =
    [ for r in recipes do
          if only |> Option.forall (List.contains r.Name) && List.contains preset r.Presets then
              let labelsList = if r.Traits.LabelBudgets.IsEmpty then [ None ] else List.map Some r.Traits.LabelBudgets
              let colour = r.Traits.Colour
              for labels in labelsList do
                  let folder = match labels with Some n -> $"{r.Name}-{n}" | None -> r.Name
                  let dir = Path.Combine(runsDir, folder)
                  yield
                      { Method = r.Name; Labels = labels; Dir = dir
                        Args =
                            [ "train"; r.Name; "--preset"; Preset.name preset; "--out"; dir ]
                            @ (labels |> Option.map (fun n -> [ "--labels"; string n ]) |> Option.defaultValue [])
                            @ (if colour then colourDataset |> Option.map (fun d -> [ "--dataset"; d ]) |> Option.defaultValue [] else [])
                        NotRun =
                            if colour && colourDataset.IsNone then
                                Some $"{r.Name} needs colour (3-channel) images and Fashion-MNIST is grey; give `ssl repro --colour-dataset cifar10|stl10|<image folder>`"
                            else None } ]

let private sha256 (path: string) =
    use stream = File.OpenRead path
    Convert.ToHexString(SHA256.HashData stream).ToLowerInvariant()

/// Whether `run` is done for `commit`: Ok () to skip it, Error with the reason to run it. Done means
/// result.json exists and names this commit, and repro.json records this commit, these arguments,
/// a zero exit code and the digest of the config.json that is there now (a run rewritten by hand
/// with other flags is not taken for this one).
let upToDate (run: PlannedRun) (commit: string) : Result<unit, string> =
    let result = Path.Combine(run.Dir, "result.json")
    let config = Path.Combine(run.Dir, "config.json")
    let stamp = Path.Combine(run.Dir, stampName)
    let text (node: JsonNode) (key: string) = match node[key] with null -> "" | v -> v.ToJsonString().Trim('"')
    if not (File.Exists result) then Error "no result.json"
    elif not (File.Exists config) then Error "no config.json"
    elif not (File.Exists stamp) then Error $"no {stampName} (not run by `ssl repro`)"
    else
        let resultCommit = text (JsonNode.Parse(File.ReadAllText result)["versions"]) "commit"
        let s = JsonNode.Parse(File.ReadAllText stamp)
        let args = s["args"].AsArray() |> Seq.map (fun a -> a.GetValue<string>()) |> List.ofSeq
        if resultCommit <> commit then Error $"result.json is of commit {resultCommit}, HEAD is {commit}"
        elif text s "commit" <> commit then Error $"""{stampName} is of commit {text s "commit"}, HEAD is {commit}"""
        elif args <> run.Args then Error "other arguments"
        elif text s "exit_code" <> "0" then Error "the last attempt failed"
        elif text s "config_sha256" <> sha256 config then Error "config.json changed since"
        else Ok()

/// The command line that runs this very `ssl` again (as `dotnet ssl.dll` or the app host).
let selfCommand () =
    let host = Environment.ProcessPath
    let dll = typeof<Request>.Assembly.Location
    if Path.GetFileNameWithoutExtension host = "dotnet" then host, [ dll ] else host, []

/// Runs `ssl <args>` as a child process with the console inherited; returns (exit code, seconds).
let runChild (args: string list) =
    let host, prefix = selfCommand ()
    let psi = ProcessStartInfo(host, UseShellExecute = false)
    for a in prefix @ args do psi.ArgumentList.Add a
    let clock = Stopwatch.StartNew()
    use p = Process.Start psi
    p.WaitForExit()
    p.ExitCode, clock.Elapsed.TotalSeconds

/// Records the machine (and torch's default thread count) beside the runs, for the report.
let writeMachine (runsDir: string) =
    let m = MachineInfo.Current()
    let node = JsonSerializer.SerializeToNode(m).AsObject()
    node["threads"] <- JsonValue.Create(Environment.ProcessorCount)
    Directory.CreateDirectory runsDir |> ignore
    RunFolder.WriteAtomically(Path.Combine(runsDir, "machine.json"), node.ToJsonString(RunFolder.Json))

/// `ssl repro`: runs what is not up to date, then writes the report. Exit code 1 when a run failed
/// (the report is written all the same, from the runs that exist).
let run (only: string list option) (runsDir: string) (preset: Preset) (colourDataset: string option) (reportPath: string)
        (figuresDir: string) =
    let commit = RunFolder.GitCommit() |> Option.ofObj |> Option.defaultValue "unknown"
    let runs = plan Registry.recipes only runsDir preset colourDataset
    writeMachine runsDir
    printfn "ssl repro: %d runs of preset %s into %s (commit %s)" runs.Length (Preset.name preset) runsDir commit
    let attempt (r: PlannedRun) =
        match upToDate r commit with
        | Ok() ->
            printfn "skip %s: done for this commit and config" (Path.GetFileName r.Dir)
            true
        | Error reason ->
            printfn "run  %s (%s): ssl %s" (Path.GetFileName r.Dir) reason (String.concat " " r.Args)
            Directory.CreateDirectory r.Dir |> ignore
            let code, seconds = runChild r.Args
            let config = Path.Combine(r.Dir, "config.json")
            let stamp =
                {| commit = commit; args = r.Args; exit_code = code; wall_s = seconds
                   config_sha256 = (if File.Exists config then sha256 config else "") |}
            RunFolder.WriteAtomically(Path.Combine(r.Dir, stampName), JsonSerializer.Serialize(stamp, RunFolder.Json))
            if code <> 0 then eprintfn "ssl repro: %s failed with exit code %d" (Path.GetFileName r.Dir) code
            code = 0
    /// A run that cannot be made here: its reason goes into repro.json for the report, unless the
    /// folder holds an earlier run's result.json (which stays, with its own commit).
    let record (r: PlannedRun) (reason: string) =
        printfn "not run %s: %s" (Path.GetFileName r.Dir) reason
        if File.Exists(Path.Combine(r.Dir, "result.json")) then
            printfn "         (keeping the earlier result.json in %s)" r.Dir
        else
            Directory.CreateDirectory r.Dir |> ignore
            RunFolder.WriteAtomically(Path.Combine(r.Dir, stampName),
                                      JsonSerializer.Serialize({| commit = commit; args = r.Args; not_run = reason |}, RunFolder.Json))
    let failures =
        [ for r in runs do
              match r.NotRun with
              | Some reason -> record r reason
              | None -> if not (attempt r) then yield r ]
    let count = Report.write runsDir reportPath figuresDir
    printfn "ssl repro: %s written from %d runs (figures in %s)" reportPath count figuresDir
    if failures.IsEmpty then 0 else 1
