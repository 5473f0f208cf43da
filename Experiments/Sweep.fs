/// `ssl sweep`: a grid of runs (methods × seeds × label budgets × `--set` alternatives) expanded to
/// one `ssl train` command each, with its own run folder under the sweep folder, and executed by
/// the scheduler the user has: N local processes, a Slurm array job, or a Kubernetes Indexed Job.
/// Every executor runs the same unit, `ssl sweep-task <tasks.json> <i>`: skip the run when its
/// result.json is of this commit and its config digest, else train it and stamp the attempt
/// (sweep.json: commit, digest, arguments, exit code, wall time), so a failed run is retried by the
/// next call and never dropped.
module Ssl.Experiments.Sweep

open System
open System.Diagnostics
open System.IO
open System.Security.Cryptography
open System.Text
open System.Text.Json
open System.Text.Json.Nodes
open System.Threading.Tasks
open Ssl.Host.Runs
open Ssl.Experiments.Recipe
open Ssl.Experiments.Template

/// One run of a sweep: what `ssl train` is asked, the folder name under the sweep folder, and the
/// digest of its resolved config.
type RunSpec =
    { Name: string
      Method: string
      Preset: Preset
      Seed: int64
      Labels: int option
      Overrides: string list
      Dataset: string option
      Digest: string }

/// The default data set's name: a run without --dataset trains on it.
let defaultDataset = "fashion-mnist"

/// The config digest: 12 hex digits of SHA-256 over the method, its resolved config (compact JSON),
/// the label budget and the data set. Two runs with one digest train the same thing; a record whose
/// digest differs from what the recipe resolves to today is stale.
let digest (method: string) (config: JsonNode) (labels: int option) (dataset: string) =
    let canonical = JsonNode.Parse(config.ToJsonString()).ToJsonString()
    let budget = labels |> Option.map string |> Option.defaultValue "all"
    let text = $"{method}\n{canonical}\nlabels={budget}\ndataset={dataset}"
    Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes text)).ToLowerInvariant().Substring(0, 12)

/// The grid a sweep expands.
type Grid =
    { Methods: string list
      Seeds: int64 list
      /// Label budgets of the semi-supervised recipes; empty = each recipe's own (its traits).
      Labels: int list
      Preset: Preset
      /// `--set Field=a,b`: a field and its alternatives; the runs take every combination.
      Sets: (string * string list) list
      Dataset: string option
      /// The data set of colour-only recipes where --dataset is not given (cifar10, an image folder).
      ColourDataset: string option }

let private recipeNamed (recipes: Recipe list) (name: string) =
    match recipes |> List.tryFind (fun r -> r.Name = name) with
    | Some r -> r
    | None ->
        let known = recipes |> List.map (fun r -> r.Name) |> String.concat ", "
        invalidArg "--method" $"--method: expected registered recipes ({known}), found '{name}'"

/// Splits `Field=a,b` into the field and its alternatives. Alternatives are separated by ';' when
/// the text holds one, else by ',' unless the field is a tuple (whose own values are a,b): then
/// `--set CropScale=0.2,1;0.08,1` sweeps two tuples.
let parseSet (fields: (string * string) list) (text: string) : string * string list =
    match text.IndexOf '=' with
    | i when i > 0 ->
        let field, values = text.Substring(0, i).Trim(), text.Substring(i + 1)
        let named (name: string) = name = field || name.EndsWith("." + field, StringComparison.Ordinal)
        let tuple = fields |> List.exists (fun (name, kind) -> named name && kind.StartsWith "(")
        let separator = if values.Contains ';' then ';' elif tuple then '\000' else ','
        let alternatives = values.Split(separator, StringSplitOptions.TrimEntries) |> List.ofArray
        if alternatives |> List.exists String.IsNullOrEmpty then
            invalidArg "--set" $"--set: expected Field=value[,value...], found an empty value in '{text}'"
        field, alternatives
    | _ -> invalidArg "--set" $"--set: expected Field=value[,value...], found '{text}'"

/// Every combination of the alternatives, in the order given: [[a=1; b=x]; [a=1; b=y]; ...].
let rec private combinations (sets: (string * string list) list) : string list list =
    match sets with
    | [] -> [ [] ]
    | (field, values) :: rest -> [ for v in values do for tail in combinations rest -> $"{field}={v}" :: tail ]

let private fileSafe (text: string) =
    String(text |> Seq.map (fun c -> if Char.IsLetterOrDigit c || c = '.' || c = '-' || c = '_' then c else '_') |> Seq.toArray)

/// The runs of `grid`, in the order methods, label budgets, `--set` combinations, seeds; and the
/// runs that cannot be made here with the reason (a colour-only recipe without colour data). Each
/// run's config is resolved now, so a bad field or value is a usage error before anything runs.
let expand (recipes: Recipe list) (grid: Grid) : RunSpec list * (string * string) list =
    if grid.Methods.IsEmpty then invalidArg "--method" "--method: expected at least one recipe name, found none"
    if grid.Seeds.IsEmpty then invalidArg "--seeds" "--seeds: expected at least one seed, found none"
    let results =
        [ for name in grid.Methods do
              let recipe = recipeNamed recipes name
              let budgets =
                  if recipe.Traits.LabelBudgets.IsEmpty then [ None ]
                  elif grid.Labels.IsEmpty then List.map Some recipe.Traits.LabelBudgets
                  else List.map Some grid.Labels
              let dataset = if recipe.Traits.Colour then Option.orElse grid.ColourDataset grid.Dataset else grid.Dataset
              for labels in budgets do
                  for overrides in combinations grid.Sets do
                      let config = recipe.Resolve grid.Preset None overrides
                      for seed in grid.Seeds do
                          let parts =
                              [ name
                                yield! labels |> Option.map string |> Option.toList
                                yield! overrides |> List.map (fun o -> fileSafe (o.Replace('=', '-')))
                                $"seed{seed}" ]
                          let run =
                              { Name = String.concat "-" parts; Method = name; Preset = grid.Preset; Seed = seed; Labels = labels
                                Overrides = overrides; Dataset = dataset
                                Digest = digest name config labels (defaultArg dataset defaultDataset) }
                          if recipe.Traits.Colour && dataset.IsNone then
                              yield Error(run.Name, $"{name} needs colour (3-channel) images and {defaultDataset} is grey; give --colour-dataset or --dataset")
                          else yield Ok run ]
    let runs = results |> List.choose (function Ok r -> Some r | Error _ -> None)
    let notRun = results |> List.choose (function Error e -> Some e | Ok _ -> None)
    match runs |> List.countBy (fun r -> r.Name) |> List.filter (fun (_, n) -> n > 1) with
    | (name, _) :: _ -> invalidArg "--method" $"--method: expected distinct runs, found '{name}' twice (a method or seed listed twice)"
    | [] -> runs, notRun

/// The `ssl train` arguments of `run` into `dir`, with `threads` torch threads where given. A run
/// the sweep starts is one it found not done (upToDate), so it replaces what the folder holds (--force).
let trainArgs (run: RunSpec) (dir: string) (threads: int option) =
    [ "train"; run.Method; "--preset"; Preset.name run.Preset; "--seed"; string run.Seed; "--out"; dir; "--force" ]
    @ (run.Labels |> Option.map (fun n -> [ "--labels"; string n ]) |> Option.defaultValue [])
    @ (run.Dataset |> Option.map (fun d -> [ "--dataset"; d ]) |> Option.defaultValue [])
    @ (run.Overrides |> List.collect (fun o -> [ "--set"; o ]))
    @ (threads |> Option.map (fun t -> [ "--threads"; string t ]) |> Option.defaultValue [])

/// A machine in one line, for stamps and records: CPU, cores, memory.
let describe (m: Ssl.Host.Runtime.MachineInfo) =
    let memory = m.MemoryGiB.ToString("F0", Globalization.CultureInfo.InvariantCulture)
    $"{m.CpuModel}, {m.Cores} cores, {memory} GiB"

/// The attempt stamp a sweep leaves in each run folder it ran.
let stampName = "sweep.json"

let private readNode (path: string) = if File.Exists path then Some(JsonNode.Parse(File.ReadAllText path)) else None

let private text (node: JsonNode) (key: string) = match node[key] with null -> "" | v -> v.ToJsonString().Trim('"')

/// Whether the run in `dir` is done: Ok () to skip it, Error with the reason to (re)run it. Done
/// means result.json names `commit` (the build's, BuildInfo.Commit) and sweep.json records this
/// digest, this commit and exit code 0. A run of a dirty build (result.json's commit ends in
/// "-dirty") or of a build with no known commit is never done: its code is not known to be any
/// commit's.
let upToDate (dir: string) (commit: string) (run: RunSpec) : Result<unit, string> =
    match readNode (Path.Combine(dir, "result.json")), readNode (Path.Combine(dir, stampName)) with
    | None, _ -> Error "no result.json"
    | Some _, None -> Error $"no {stampName}"
    | _ when commit = "unknown" -> Error "this build records no commit (built outside a git clone)"
    | Some result, Some stamp ->
        let resultCommit = text result["versions"] "commit"
        if resultCommit <> commit then Error $"result.json is of commit {resultCommit}, this build of {commit}"
        elif text stamp "digest" <> run.Digest then Error $"""another config (digest {text stamp "digest"}, now {run.Digest})"""
        elif text stamp "commit" <> commit then Error $"""{stampName} is of commit {text stamp "commit"}"""
        elif text stamp "exit_code" <> "0" then Error $"""the last attempt failed (exit code {text stamp "exit_code"})"""
        else Ok()

/// The runs of `runs` not done yet in `root` for `commit` (upToDate), in order.
let pendingOf (root: string) (commit: string) (runs: RunSpec list) =
    runs |> List.filter (fun r -> Result.isError (upToDate (Path.Combine(root, r.Name)) commit r))

/// The command that runs this very `ssl` again: (program, leading arguments).
let selfCommand () =
    let host = Environment.ProcessPath
    let dll = typeof<Request>.Assembly.Location
    if Path.GetFileNameWithoutExtension host = "dotnet" then host, [ dll ] else host, []

/// The same as one shell word list, for generated scripts.
let selfCommandLine () =
    let host, prefix = selfCommand ()
    host :: prefix |> List.map (fun a -> if a.Contains ' ' then $"'{a}'" else a) |> String.concat " "

/// Runs `ssl <args>` as a child process, its output to `log` (appended) or inherited when None;
/// returns (exit code, seconds).
let runChild (args: string list) (log: string option) =
    let host, prefix = selfCommand ()
    let psi = ProcessStartInfo(host, UseShellExecute = false)
    for a in prefix @ args do psi.ArgumentList.Add a
    let clock = Stopwatch.StartNew()
    match log with
    | None ->
        use p = Process.Start psi
        p.WaitForExit()
        p.ExitCode, clock.Elapsed.TotalSeconds
    | Some path ->
        psi.RedirectStandardOutput <- true
        psi.RedirectStandardError <- true
        use writer = new StreamWriter(path, true, AutoFlush = true)
        let gate = obj ()
        let write (line: string) = if not (isNull line) then lock gate (fun () -> writer.WriteLine line)
        use p = new Process(StartInfo = psi)
        p.OutputDataReceived.Add(fun e -> write e.Data)
        p.ErrorDataReceived.Add(fun e -> write e.Data)
        p.Start() |> ignore
        p.BeginOutputReadLine()
        p.BeginErrorReadLine()
        p.WaitForExit()
        p.ExitCode, clock.Elapsed.TotalSeconds

/// Runs one run unless it is done; stamps the attempt. Returns (exit code, Some seconds) or (0, None) when skipped.
let runOne (root: string) (commit: string) (threads: int option) (ranks: int) (log: bool) (run: RunSpec) =
    let dir = Path.Combine(root, run.Name)
    match upToDate dir commit run with
    | Ok() -> 0, None
    | Error _ ->
        Directory.CreateDirectory dir |> ignore
        let args = trainArgs run dir threads @ (if ranks > 1 then [ "--ranks"; string ranks ] else [])
        let code, seconds = runChild args (if log then Some(Path.Combine(dir, "train.log")) else None)
        let stamp =
            {| commit = commit; digest = run.Digest; args = args; exit_code = code; wall_s = seconds; host = Environment.MachineName
               machine = describe (Ssl.Host.Runtime.MachineInfo.Current()) |}
        RunFolder.WriteAtomically(Path.Combine(dir, stampName), JsonSerializer.Serialize(stamp, RunFolder.Json))
        code, Some seconds

/// The task list an executor indexes (tasks.json): the runs still to do, index 0 first.
let tasksName = "tasks.json"

let private specNode (r: RunSpec) =
    JsonSerializer.SerializeToNode
        {| name = r.Name; ``method`` = r.Method; preset = Preset.name r.Preset; seed = r.Seed; labels = Option.toNullable r.Labels
           overrides = r.Overrides; dataset = Option.toObj r.Dataset; digest = r.Digest |}

let tasksJson (commit: string) (runs: RunSpec list) =
    let node = JsonObject()
    node["commit"] <- JsonValue.Create commit
    node["runs"] <- JsonArray(runs |> List.map specNode |> List.toArray)
    node.ToJsonString(RunFolder.Json)

/// Reads tasks.json back; a file of another shape is an error naming it.
let readTasks (path: string) : RunSpec list =
    let bad (found: string) = raise (Ssl.Host.Data.DataException(path, "a tasks.json written by `ssl sweep`", found))
    let node = try JsonNode.Parse(File.ReadAllText path) with e -> bad e.Message
    match node["runs"] with
    | :? JsonArray as runs ->
        [ for r in runs ->
              let get (key: string) = match r[key] with null -> bad $"a run without '{key}'" | v -> v
              { Name = get("name").GetValue<string>(); Method = get("method").GetValue<string>()
                Preset = (match Preset.tryParse (get("preset").GetValue<string>()) with Some p -> p | None -> bad "an unknown preset")
                Seed = get("seed").GetValue<int64>()
                Labels = (match r["labels"] with null -> None | v -> Some(v.GetValue<int>()))
                Overrides = get("overrides").AsArray() |> Seq.map (fun o -> o.GetValue<string>()) |> List.ofSeq
                Dataset = (match r["dataset"] with null -> None | v -> Some(v.GetValue<string>()))
                Digest = get("digest").GetValue<string>() } ]
    | _ -> bad "no 'runs' array"

/// `ssl sweep-task <tasks.json> <index>`: the unit every executor runs. Exit code: the run's.
let runTask (tasksPath: string) (index: int) (root: string option) (threads: int option) (ranks: int) =
    let runs = readTasks tasksPath
    if index < 0 || index >= runs.Length then
        invalidArg "index" $"index: expected 0 to {runs.Length - 1} ({tasksPath} lists {runs.Length} runs), found {index}"
    let run = runs[index]
    let root = defaultArg root (Path.GetDirectoryName(Path.GetFullPath tasksPath))
    let commit = Ssl.Host.Runtime.BuildInfo.Commit
    printfn "ssl sweep-task: %s (%d of %d) into %s" run.Name (index + 1) runs.Length root
    match runOne root commit threads ranks false run with
    | _, None ->
        printfn "skip %s: done for this commit and config" run.Name
        0
    | code, Some seconds ->
        printfn "%s: exit code %d after %.0f s" run.Name code seconds
        code

let private clock (seconds: float) = TimeSpan.FromSeconds(Math.Round seconds).ToString(@"hh\:mm\:ss")

/// The last progress line of a run's train.log ("epoch 1/1 [##--] 42% loss … img/s ETA …"), if any.
let lastProgress (log: string) =
    try
        use stream = new FileStream(log, FileMode.Open, FileAccess.Read, FileShare.ReadWrite)
        use reader = new StreamReader(stream)
        reader.ReadToEnd().Split('\n') |> Array.map (fun l -> l.Trim()) |> Array.filter (fun l -> l.StartsWith "epoch ") |> Array.tryLast
    with :? IOException -> None

/// Runs the pending runs on `processes` local processes at once, each with cores / processes torch
/// threads and its output in <run>/train.log; prints one progress line per change, and every
/// `heartbeat` the running runs' own progress (their train.log's last bar: done, rate, ETA). Exit
/// code 1 when a run failed (they are listed; the next call retries them).
let localWith (heartbeat: TimeSpan) (root: string) (commit: string) (processes: int) (runs: RunSpec list) =
    if processes < 1 then invalidArg "--local" $"--local: expected at least 1 process, found {processes}"
    let threads = max 1 (Environment.ProcessorCount / processes)
    let pending = pendingOf root commit runs
    let skipped = runs.Length - pending.Length
    printfn "ssl sweep: %d runs, %d done already (skipped), %d to run on %d processes of %d threads (commit %s)"
        runs.Length skipped pending.Length processes threads commit
    if Ssl.Host.Runtime.BuildInfo.Dirty then
        printfn "ssl sweep: this build is of a dirty tree; its runs record commit %s and are never counted as done"
            Ssl.Host.Runtime.BuildInfo.Described
    let started = Stopwatch.StartNew()
    let gate = obj ()
    let mutable finished, failed, seconds, running = 0, [], 0.0, Set.empty<string>
    let progress (event: string) =
        lock gate (fun () ->
            let running = min processes (pending.Length - finished)
            let eta = if finished = 0 then "—" else clock (started.Elapsed.TotalSeconds / float finished * float (pending.Length - finished))
            printfn "[%d/%d] %d running · %d failed · %s elapsed · ETA %s · %s"
                finished pending.Length running failed.Length (clock started.Elapsed.TotalSeconds) eta event)
    let beat _ =
        let now = lock gate (fun () -> running)
        if not now.IsEmpty then
            [ for name in now ->
                  match lastProgress (Path.Combine(root, name, "train.log")) with
                  | Some bar -> $"{name}: {bar}"
                  | None -> $"{name}: starting" ]
            |> String.concat " | "
            |> progress
    use _timer = new Threading.Timer(beat, null, heartbeat, heartbeat)
    use slots = new Threading.SemaphoreSlim(processes)
    // Each run on a pool thread of its own (Task.Run): the slots bound how many train at once.
    let work (r: RunSpec) : Task =
        Task.Run(fun () ->
            slots.Wait()
            try
                progress $"start {r.Name}"
                lock gate (fun () -> running <- running.Add r.Name)
                let code, took = runOne root commit (Some threads) 1 true r
                lock gate (fun () ->
                    running <- running.Remove r.Name
                    finished <- finished + 1
                    seconds <- seconds + defaultArg took 0.0
                    if code <> 0 then failed <- r.Name :: failed)
                let log = Path.Combine(root, r.Name, "train.log")
                progress (if code = 0 then $"done {r.Name}" else $"FAILED {r.Name} (exit code {code}; {log})")
            finally
                slots.Release() |> ignore)
    Task.WaitAll(pending |> List.map work |> List.toArray)
    match failed with
    | [] ->
        printfn "ssl sweep: %d run, %d skipped, 0 failed in %s" pending.Length skipped (clock started.Elapsed.TotalSeconds)
        0
    | names ->
        eprintfn "ssl sweep: %d failed (the next call retries them): %s" names.Length (String.concat ", " (List.rev names))
        1

/// `localWith` with a heartbeat every 2 minutes.
let local root commit processes runs = localWith (TimeSpan.FromMinutes 2.0) root commit processes runs

/// What the emitted job asks of each task.
type Resources =
    { Cpus: int
      MemoryGb: int
      Hours: int
      /// Processes of one run (`ssl train --ranks`), each with Cpus threads: Slurm tasks of one array task.
      RanksPerRun: int }

/// Writes <root>/tasks.json and <root>/sweep.sbatch: a Slurm array with one task per pending run,
/// each `ssl sweep-task` of its index with the task's CPUs as torch threads, logs in <root>/logs.
/// `ssl`: the command line of ssl on the cluster's nodes. Returns the script's path.
let emitSlurm (root: string) (commit: string) (pending: RunSpec list) (resources: Resources) (ssl: string) =
    let root = Path.GetFullPath root
    Directory.CreateDirectory(Path.Combine(root, "logs")) |> ignore
    let tasks = Path.Combine(root, tasksName)
    RunFolder.WriteAtomically(tasks, tasksJson commit pending)
    let script = Path.Combine(root, "sweep.sbatch")
    let lines =
        [ "#!/bin/bash"
          $"# Generated by `ssl sweep --emit slurm` at commit {commit}: one array task per run of {tasksName}."
          "# Submit with `sbatch sweep.sbatch`; then `ssl report <this folder> --record results/` gathers the runs."
          "#SBATCH --job-name=ssl-sweep"
          $"#SBATCH --array=0-{pending.Length - 1}"
          if resources.RanksPerRun > 1 then $"#SBATCH --ntasks={resources.RanksPerRun}"
          $"#SBATCH --cpus-per-task={resources.Cpus}"
          $"#SBATCH --mem={resources.MemoryGb}G"
          $"#SBATCH --time={resources.Hours}:00:00"
          $"#SBATCH --output={root}/logs/%%A_%%a.out"
          $"#SBATCH --chdir={Environment.CurrentDirectory}"
          "set -euo pipefail"
          // A run of several ranks: `ssl train --ranks N` starts them with mpirun, which places them on the job's tasks.
          let ranks = if resources.RanksPerRun > 1 then $" --ranks {resources.RanksPerRun}" else ""
          $"exec {ssl} sweep-task {tasks} \"$SLURM_ARRAY_TASK_ID\" --threads \"${{SLURM_CPUS_PER_TASK:-1}}\"{ranks}" ]
    RunFolder.WriteAtomically(script, String.concat "\n" lines + "\n")
    script

/// The name of a sweep's Kubernetes Job and ConfigMap: "ssl-sweep-<commit's first 8>-<sweep's 8>",
/// the sweep's part a hash of the sweep folder's full path and its tasks.json (commit and pending
/// runs): two sweeps of one commit never share a name, and one sweep emitted again keeps its name.
/// A valid DNS-1123 label: lowercase letters, digits and '-', at most 28 characters.
let kubernetesName (root: string) (commit: string) (tasks: string) =
    let clean = commit.ToLowerInvariant() |> String.map (fun c -> if Char.IsAsciiLetterOrDigit c then c else '-')
    let sweep = SHA256.HashData(Encoding.UTF8.GetBytes $"{Path.GetFullPath root}\n{tasks}") |> Convert.ToHexString
    $"ssl-sweep-{clean.Substring(0, min 8 clean.Length)}-{sweep.Substring(0, 8).ToLowerInvariant()}"

/// Writes <root>/sweep-job.json: a Kubernetes List of a ConfigMap holding tasks.json and a batch/v1
/// Indexed Job (completions = pending runs) whose pod k runs `ssl sweep-task /sweep/tasks.json k`
/// with the run folders on the PersistentVolumeClaim `claim` at /runs. JSON is what kubectl applies
/// as readily as YAML. Returns the manifest's path.
let emitKubernetes (root: string) (commit: string) (pending: RunSpec list) (resources: Resources) (image: string) (claim: string)
                   (parallelism: int) =
    let root = Path.GetFullPath root
    Directory.CreateDirectory root |> ignore
    let tasks = tasksJson commit pending
    let name = kubernetesName root commit tasks
    RunFolder.WriteAtomically(Path.Combine(root, tasksName), tasks)
    let command =
        $"exec ssl sweep-task /sweep/{tasksName} \"$JOB_COMPLETION_INDEX\" --root /runs --threads {resources.Cpus}"
    let quantity = {| cpu = string resources.Cpus; memory = $"{resources.MemoryGb}Gi" |}
    let manifest =
        {| apiVersion = "v1"
           kind = "List"
           items =
            [| JsonSerializer.SerializeToNode
                   {| apiVersion = "v1"; kind = "ConfigMap"; metadata = {| name = name |}; data = dict [ tasksName, tasks ] |}
               JsonSerializer.SerializeToNode
                   {| apiVersion = "batch/v1"
                      kind = "Job"
                      metadata = {| name = name |}
                      spec =
                       {| completions = pending.Length
                          parallelism = max 1 (min parallelism pending.Length)
                          completionMode = "Indexed"
                          backoffLimit = pending.Length
                          template =
                           {| spec =
                               {| restartPolicy = "Never"
                                  containers =
                                   [| {| name = "ssl"; image = image; command = [| "/bin/sh"; "-c"; command |]
                                         resources = {| requests = quantity; limits = quantity |}
                                         volumeMounts = [| {| name = "runs"; mountPath = "/runs" |}; {| name = "sweep"; mountPath = "/sweep" |} |] |} |]
                                  volumes =
                                   [| JsonSerializer.SerializeToNode {| name = "runs"; persistentVolumeClaim = {| claimName = claim |} |}
                                      JsonSerializer.SerializeToNode {| name = "sweep"; configMap = {| name = name |} |} |] |} |} |} |} |] |}
    let path = Path.Combine(root, "sweep-job.json")
    RunFolder.WriteAtomically(path, JsonSerializer.Serialize(manifest, RunFolder.Json))
    path

/// Reads a JSON sweep file: {"methods": [...], "seeds": [...], "labels": [...], "preset": "quick",
/// "set": {"Field": ["a", "b"]}, "dataset": "...", "colour_dataset": "..."}; unknown keys are errors.
let readGridFile (path: string) : Grid =
    let bad (found: string) = raise (Ssl.Host.Data.DataException(path, "a sweep file {methods, seeds, labels, preset, set, dataset, colour_dataset}", found))
    let node = try JsonNode.Parse(File.ReadAllText path).AsObject() with e -> bad e.Message
    let known = [ "methods"; "seeds"; "labels"; "preset"; "set"; "dataset"; "colour_dataset" ]
    for KeyValue(key, _) in node do if not (List.contains key known) then bad $"unknown key '{key}'"
    let list (key: string) (read: JsonNode -> 'T) =
        match node[key] with
        | null -> []
        | :? JsonArray as a -> [ for v in a -> try read v with _ -> bad $"'{key}' holds {v.ToJsonString()}" ]
        | v -> bad $"'{key}' is {v.ToJsonString()}, not an array"
    let textOf (v: JsonNode) = match v.GetValueKind() with JsonValueKind.String -> v.GetValue<string>() | _ -> v.ToJsonString()
    { Methods = list "methods" (fun v -> v.GetValue<string>())
      Seeds = list "seeds" (fun v -> v.GetValue<int64>())
      Labels = list "labels" (fun v -> v.GetValue<int>())
      Preset =
        match node["preset"] with
        | null -> Quick
        | v -> match Preset.tryParse (textOf v) with Some p -> p | None -> bad $"preset '{textOf v}'"
      Sets =
        match node["set"] with
        | null -> []
        | :? JsonObject as o ->
            [ for KeyValue(field, values) in o ->
                  match values with
                  | :? JsonArray as a -> field, [ for v in a -> textOf v ]
                  | v -> field, [ textOf v ] ]
        | v -> bad $"'set' is {v.ToJsonString()}, not an object"
      Dataset = node["dataset"] |> Option.ofObj |> Option.map textOf
      ColourDataset = node["colour_dataset"] |> Option.ofObj |> Option.map textOf }
