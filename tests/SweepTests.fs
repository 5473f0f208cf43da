/// `ssl sweep`: the grid's expansion, the skip rule, the Slurm and Kubernetes files, run records and
/// RESULTS.md as mean ± std over seeds, repro's shards; a local sweep of real smoke runs, and the
/// same through a real single-node Slurm (scripts/slurm-local.sh) where it can be installed.
module Ssl.Tests.SweepTests

open System
open System.Diagnostics
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open Expecto
open Ssl.Core.Models
open Ssl.Host.Runs
open Ssl.Experiments
open Ssl.Experiments.Recipe

/// A recipe with `name`'s traits whose config is {"Epochs": n} plus its overrides, nothing runnable.
let private fakeRecipe (name: string) : Template.Recipe =
    let traits =
        match name with
        | "mixmatch" -> Template.semiSupervised
        | "colorization" -> { Template.selfSupervised with Colour = true }
        | _ -> Template.selfSupervised
    { Name = name; Paper = "test"; Traits = traits; AliasOf = None; Presets = [ Smoke; Quick ]
      Resolve =
        fun preset _ overrides ->
            let o = JsonObject()
            o["Epochs"] <- JsonValue.Create(if preset = Smoke then 1 else 10)
            // As the real RotNet: its probe and baselines read an inner block.
            if name = "rotnet" then
                o["Probe"] <- JsonValue.Create "branch:3"
            for a in overrides do
                match a.Split('=') with
                | [| "Epochs"; v |] -> o["Epochs"] <- JsonValue.Create(int v)
                | [| "CropScale"; v |] -> o["CropScale"] <- JsonValue.Create v
                | _ -> invalidArg "--set" $"--set: no field in '{a}'"
            o
      Fields = [ "Epochs", "integer"; "CropScale", "(number,number)" ]
      Run = (fun _ _ _ -> failwith "not run")
      RunObserved = (fun _ _ _ _ -> failwith "not run")
      Encoder = fun _ data _ -> new SmallConvNet(data.Train.Channels, 16L) }

let private recipes = [ fakeRecipe "rotnet"; fakeRecipe "mixmatch"; fakeRecipe "colorization" ]

let private grid methods : Sweep.Grid =
    { Methods = methods; Seeds = [ 0L; 1L ]; Labels = []; Preset = Quick; Sets = []; Dataset = None; ColourDataset = None }

/// A finished run folder as `ssl train` leaves it: config.json and result.json.
let private fakeRun (dir: string) (methodName: string) (seed: int64) (labels: int option) (linear: float) (commit: string) (epochs: int) =
    Directory.CreateDirectory dir |> ignore
    let result =
        RunResult(Method = methodName, Dataset = "fashion-mnist", Seed = seed, LabelsPerClass = Option.toNullable labels,
                  Eval = EvalFigures(LinearProbeAcc = Nullable linear, KnnAcc = Nullable 0.75),
                  Baselines = BaselineFigures(RandomInit = ProtocolFigures(LinearProbeAcc = Nullable(0.78 + 0.01 * float seed)),
                                              RawPixels = ProtocolFigures(LinearProbeAcc = Nullable 0.84)),
                  Train = TrainFigures(Epochs = epochs, Steps = 20L, WallSeconds = 10.0 + float seed),
                  Versions = VersionFigures(Commit = commit, TorchSharp = "0.107.0", LibTorch = "2.10.0.0"))
    File.WriteAllText(Path.Combine(dir, "result.json"), JsonSerializer.Serialize(result, RunFolder.Json))
    let config =
        {| ``method`` = methodName; preset = "quick"; dataset = "fashion-mnist"; labels_per_class = Option.toNullable labels; seed = seed
           encoder = "SmallConvNet16"; overrides = ([||]: string[]); config = (fakeRecipe methodName).Resolve Quick None [ $"Epochs={epochs}" ] |}
    File.WriteAllText(Path.Combine(dir, "config.json"), JsonSerializer.Serialize(config, RunFolder.Json))

let private run (args: string list) = Program.run (List.toArray args)

/// node[k1][k2]... (F# does not chain JsonNode's string indexers).
let rec private at (node: JsonNode) (keys: string list) = match keys with [] -> node | k :: rest -> at (node.[k]) rest

let private slurmScript = Path.GetFullPath(Path.Combine(__SOURCE_DIRECTORY__, "..", "scripts", "slurm-local.sh"))

/// Runs a shell command; (exit code, stdout + stderr).
let private sh (command: string) (env: (string * string) list) =
    let psi = ProcessStartInfo("bash", [| "-c"; command |], RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false)
    for k, v in env do psi.Environment[k] <- v
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEnd()
    p.WaitForExit()
    p.ExitCode, out.Result + err

[<Tests>]
let tests =
    testSequenced <| testList "sweep" [
        test "a grid expands to methods x label budgets x --set combinations x seeds, each config resolved" {
            let g = { grid [ "rotnet"; "mixmatch" ] with Sets = [ "Epochs", [ "2"; "3" ] ] }
            let runs, notRun = Sweep.expand recipes g
            Expect.isEmpty notRun "all can run"
            Expect.equal (runs |> List.map (fun r -> r.Name))
                [ "rotnet-Epochs-2-seed0"; "rotnet-Epochs-2-seed1"; "rotnet-Epochs-3-seed0"; "rotnet-Epochs-3-seed1"
                  "mixmatch-10-Epochs-2-seed0"; "mixmatch-10-Epochs-2-seed1"; "mixmatch-10-Epochs-3-seed0"; "mixmatch-10-Epochs-3-seed1"
                  "mixmatch-100-Epochs-2-seed0"; "mixmatch-100-Epochs-2-seed1"; "mixmatch-100-Epochs-3-seed0"; "mixmatch-100-Epochs-3-seed1" ]
                "names, in order; semi-supervised at its own budgets"
            let r = runs |> List.find (fun r -> r.Name = "mixmatch-100-Epochs-3-seed1")
            Expect.equal (Sweep.trainArgs r "d" (Some 1))
                [ "train"; "mixmatch"; "--preset"; "quick"; "--seed"; "1"; "--out"; "d"; "--force"; "--labels"; "100"; "--set"; "Epochs=3"; "--threads"; "1" ] "arguments"
            let digests = runs |> List.map (fun r -> r.Digest) |> List.distinct
            Expect.equal digests.Length 6 "one digest per (method, labels, config); seeds share it"
            let labelled, _ = Sweep.expand recipes { grid [ "mixmatch" ] with Labels = [ 40 ] }
            Expect.equal (labelled |> List.map (fun r -> r.Labels)) [ Some 40; Some 40 ] "--labels overrides the budgets"
        }
        test "--set alternatives split on commas, tuples on ';'; bad fields, methods and duplicates are usage errors" {
            let fields = [ "Epochs", "integer"; "CropScale", "(number,number)" ]
            Expect.equal (Sweep.parseSet fields "Epochs=1,2") ("Epochs", [ "1"; "2" ]) "commas"
            Expect.equal (Sweep.parseSet fields "CropScale=0.2,1") ("CropScale", [ "0.2,1" ]) "a tuple is one value"
            Expect.equal (Sweep.parseSet fields "CropScale=0.2,1;0.08,1") ("CropScale", [ "0.2,1"; "0.08,1" ]) "';' separates tuples"
            let e = Prop.throws<ArgumentException> (fun () -> Sweep.parseSet fields "Epochs" |> ignore)
            Expect.stringContains e.Message "expected Field=value" "no '='"
            let e = Prop.throws<ArgumentException> (fun () -> Sweep.expand recipes { grid [ "rotnet" ] with Sets = [ "Nope", [ "1" ] ] } |> ignore)
            Expect.stringContains e.Message "Nope" "the field named before anything runs"
            let e = Prop.throws<ArgumentException> (fun () -> Sweep.expand recipes (grid [ "byol2" ]) |> ignore)
            Expect.stringContains e.Message "found 'byol2'" "unknown method"
            let e = Prop.throws<ArgumentException> (fun () -> Sweep.expand recipes (grid [ "rotnet"; "rotnet" ]) |> ignore)
            Expect.stringContains e.Message "twice" "duplicates"
            let runs, notRun = Sweep.expand recipes (grid [ "colorization" ])
            Expect.isEmpty runs "no colour data: nothing to run"
            Expect.stringContains (snd notRun.Head) "needs colour" "the reason"
            let colour, _ = Sweep.expand recipes { grid [ "colorization" ] with ColourDataset = Some "cifar10" }
            Expect.equal colour.Head.Dataset (Some "cifar10") "colour recipes take --colour-dataset"
        }
        test "a JSON sweep file gives the same grid; unknown keys are named" {
            let dir = Fixtures.tempDir "sweep-file"
            let file = Path.Combine(dir, "sweep.json")
            File.WriteAllText(file, """{"methods": ["rotnet"], "seeds": [0, 1], "preset": "smoke", "set": {"Epochs": [2, 3]}}""")
            let g = Sweep.readGridFile file
            Expect.equal (g.Methods, g.Seeds, g.Preset, g.Sets) ([ "rotnet" ], [ 0L; 1L ], Smoke, [ "Epochs", [ "2"; "3" ] ]) "read"
            File.WriteAllText(file, """{"methods": ["rotnet"], "seed": [0]}""")
            let e = Prop.throws<Ssl.Host.Data.DataException> (fun () -> Sweep.readGridFile file |> ignore)
            Expect.stringContains e.Message "unknown key 'seed'" "named"
        }
        test "a run is skipped only with result.json of this commit and a stamp of this digest and exit code 0" {
            let root = Fixtures.tempDir "sweep-skip"
            let runs, _ = Sweep.expand recipes (grid [ "rotnet" ])
            let r = runs.Head
            let dir = Path.Combine(root, r.Name)
            Expect.isError (Sweep.upToDate dir "abc" r) "nothing yet"
            fakeRun dir "rotnet" 0L None 0.8 "abc" 10
            Expect.isError (Sweep.upToDate dir "abc" r) "no stamp"
            let stamp (digest: string) (code: int) =
                File.WriteAllText(Path.Combine(dir, Sweep.stampName), JsonSerializer.Serialize {| commit = "abc"; digest = digest; exit_code = code |})
            stamp r.Digest 0
            Expect.isOk (Sweep.upToDate dir "abc" r) "done: skip"
            Expect.isError (Sweep.upToDate dir "def" r) "another commit"
            stamp r.Digest 1
            Expect.isError (Sweep.upToDate dir "abc" r) "a failed attempt is retried"
            stamp "000000000000" 0
            Expect.isError (Sweep.upToDate dir "abc" r) "another config"
        }
        test "a dirty build's run is never done, nor any run for a build with no commit" {
            let root = Fixtures.tempDir "sweep-dirty"
            let runs, _ = Sweep.expand recipes (grid [ "rotnet" ])
            let r = runs.Head
            let dir = Path.Combine(root, r.Name)
            let commit = String('a', 40)
            fakeRun dir "rotnet" 0L None 0.8 $"{commit}-dirty" 10
            File.WriteAllText(Path.Combine(dir, Sweep.stampName), JsonSerializer.Serialize {| commit = commit; digest = r.Digest; exit_code = 0 |})
            Expect.isError (Sweep.upToDate dir commit r) "a dirty build's result is not this commit's"
            fakeRun dir "rotnet" 0L None 0.8 "unknown" 10
            File.WriteAllText(Path.Combine(dir, Sweep.stampName), JsonSerializer.Serialize {| commit = "unknown"; digest = r.Digest; exit_code = 0 |})
            Expect.isError (Sweep.upToDate dir "unknown" r) "no commit: nothing is done"
            Expect.equal (Ssl.Host.Runtime.BuildInfo.Short $"{commit}-dirty") "aaaaaaaaaa-dirty" "the short form keeps the mark"
            Expect.equal (Ssl.Host.Runtime.BuildInfo.Short commit) "aaaaaaaaaa" "10 digits"
        }
        test "BuildInfo.Commit is HEAD of the clone it was built in; result.json records it from any folder" {
            let repo = Path.GetFullPath(Path.Combine(__SOURCE_DIRECTORY__, ".."))
            let code, head = if Path.Exists(Path.Combine(repo, ".git")) then sh $"git -C '{repo}' rev-parse HEAD" [] else 1, "no .git"
            if code <> 0 then skiptestf "not built in a git clone with git on the path: %s" (head.Trim())
            let commit = Ssl.Host.Runtime.BuildInfo.Commit
            Expect.isTrue (Ssl.Host.Runtime.BuildInfo.IsCommit commit) $"40 hex digits, found '{commit}'"
            Expect.equal commit (head.Trim()) "HEAD at build time (rebuild after a commit)"
            let outside = Fixtures.tempDir "build-info"
            let code, _ = sh $"git -C '{outside}' rev-parse HEAD" []
            Expect.notEqual code 0 "the temp folder is outside any git repository"
            let before = Environment.CurrentDirectory
            let versions =
                try
                    Environment.CurrentDirectory <- outside
                    RunFolder.CurrentVersions()
                finally
                    Environment.CurrentDirectory <- before
            let expected = if Ssl.Host.Runtime.BuildInfo.Dirty then $"{commit}-dirty" else commit
            Expect.equal versions.Commit expected "the binary's commit, run from outside the clone"
        }
        test "--emit slurm writes an sbatch array over the pending runs; --emit k8s a valid Indexed Job" {
            let root = Fixtures.tempDir "sweep-emit"
            let runs, _ = Sweep.expand recipes { grid [ "rotnet"; "mixmatch" ] with Seeds = [ 0L ] }
            let resources: Sweep.Resources = { Cpus = 2; MemoryGb = 6; Hours = 3; RanksPerRun = 1 }
            let script = File.ReadAllText(Sweep.emitSlurm root "abc" runs resources "ssl")
            Expect.stringContains script "#SBATCH --array=0-2" "one task per run"
            Expect.stringContains script "#SBATCH --cpus-per-task=2" "CPUs"
            Expect.stringContains script "#SBATCH --mem=6G" "memory"
            Expect.stringContains script $"ssl sweep-task {Path.Combine(Path.GetFullPath root, Sweep.tasksName)} \"$SLURM_ARRAY_TASK_ID\"" "the task"
            let tasks = Sweep.readTasks (Path.Combine(root, Sweep.tasksName))
            Expect.equal tasks runs "tasks.json round-trips"
            let ranked = File.ReadAllText(Sweep.emitSlurm root "abc" runs { resources with RanksPerRun = 2 } "ssl")
            Expect.stringContains ranked "#SBATCH --ntasks=2" "--ranks-per-run: Slurm tasks of each array task"
            Expect.stringContains ranked "--ranks 2" "--ranks-per-run: each task's run on 2 ranks"
            Expect.isFalse (script.Contains "--ntasks") "one rank: no --ntasks"
            let manifest = JsonNode.Parse(File.ReadAllText(Sweep.emitKubernetes root "abcdef0123" runs resources "img:1" "pvc" 2))
            let items = manifest["items"].AsArray()
            let job = items |> Seq.find (fun i -> i["kind"].GetValue<string>() = "Job")
            Expect.equal ((at job [ "apiVersion" ]).GetValue<string>()) "batch/v1" "batch/v1"
            Expect.equal ((at job [ "spec"; "completionMode" ]).GetValue<string>()) "Indexed" "Indexed"
            Expect.equal ((at job [ "spec"; "completions" ]).GetValue<int>()) 3 "completions = runs"
            Expect.equal ((at job [ "spec"; "parallelism" ]).GetValue<int>()) 2 "parallelism"
            let container = (at job [ "spec"; "template"; "spec"; "containers" ]).AsArray()[0]
            let parts = (at container [ "command" ]).AsArray()
            let command = parts[2].GetValue<string>()
            Expect.stringContains command "sweep-task /sweep/tasks.json \"$JOB_COMPLETION_INDEX\" --root /runs" "the task"
            Expect.equal ((at job [ "spec"; "template"; "spec"; "restartPolicy" ]).GetValue<string>()) "Never" "restartPolicy"
            let configMap = items |> Seq.find (fun i -> i["kind"].GetValue<string>() = "ConfigMap")
            Expect.equal ((at configMap [ "metadata"; "name" ]).GetValue<string>()) ((at job [ "metadata"; "name" ]).GetValue<string>()) "the Job mounts its ConfigMap"
            Expect.stringStarts ((at job [ "metadata"; "name" ]).GetValue<string>()) "ssl-sweep-abcdef01-" "named by the commit, then the sweep"
            Expect.stringContains ((at configMap [ "data"; "tasks.json" ]).GetValue<string>()) "mixmatch-100-seed0" "the run list"
        }
        test "a sweep's Kubernetes name is of its commit and the sweep: two sweeps of one commit differ, one emitted twice keeps it" {
            let runs, _ = Sweep.expand recipes { grid [ "rotnet"; "mixmatch" ] with Seeds = [ 0L ] }
            let resources: Sweep.Resources = { Cpus = 1; MemoryGb = 2; Hours = 1; RanksPerRun = 1 }
            let commit = "0123456789abcdef0123456789abcdef01234567"
            let name (root: string) (pending: Sweep.RunSpec list) =
                let manifest = JsonNode.Parse(File.ReadAllText(Sweep.emitKubernetes root commit pending resources "img:1" "pvc" 1))
                let names = [ for i in manifest["items"].AsArray() -> (at i [ "metadata"; "name" ]).GetValue<string>() ] |> List.distinct
                Expect.equal names.Length 1 "the Job and its ConfigMap share the name"
                names.Head
            let one, other = Fixtures.tempDir "sweep-name-a", Fixtures.tempDir "sweep-name-b"
            let first = name one runs
            Expect.equal (name one runs) first "the same sweep emitted again: the same name"
            Expect.notEqual (name other runs) first "another sweep folder, one commit: another name"
            Expect.notEqual (name one runs.Tail) first "other pending runs: another name"
            for n in [ first; Sweep.kubernetesName one "Unknown_Build.x" "{}"; Sweep.kubernetesName one "" "{}" ] do
                Expect.isTrue (Text.RegularExpressions.Regex.IsMatch(n, "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$") && n.Length <= 63) $"a DNS-1123 label: {n}"
            Expect.stringStarts first "ssl-sweep-01234567-" "the commit's first 8 digits"
        }
        test "records hold each run; RESULTS.md shows mean ± std over seeds per digest and keeps trials and stale rows apart" {
            let runs = Fixtures.tempDir "records-runs"
            let records = Path.Combine(Fixtures.tempDir "records", "results")
            for seed, acc in [ 0L, 0.80; 1L, 0.82; 2L, 0.84 ] do fakeRun (Path.Combine(runs, $"rotnet-seed{seed}")) "rotnet" seed None acc "abc" 10
            fakeRun (Path.Combine(runs, "rotnet-old")) "rotnet" 0L None 0.5 "old" 7
            // A trial run whose override is today's preset value: the same digest as the preset.
            let trial = Path.Combine(runs, "colorization-seed0")
            fakeRun trial "colorization" 0L None 0.70 "abc" 10
            let config = JsonNode.Parse(File.ReadAllText(Path.Combine(trial, "config.json")))
            config["overrides"] <- JsonArray(JsonValue.Create "Epochs=10")
            File.WriteAllText(Path.Combine(trial, "config.json"), config.ToJsonString())
            // A trial proper: an override today's preset does not set.
            let tried = Path.Combine(runs, "rotnet-epochs12")
            fakeRun tried "rotnet" 0L None 0.60 "abc" 12
            let config = JsonNode.Parse(File.ReadAllText(Path.Combine(tried, "config.json")))
            config["overrides"] <- JsonArray(JsonValue.Create "Epochs=12")
            File.WriteAllText(Path.Combine(tried, "config.json"), config.ToJsonString())
            let written = Records.record runs records
            Expect.equal written.Length 6 "one record per run"
            Expect.isTrue (written |> List.forall (fun p -> FileInfo(p).Length < 4096L)) "kilobytes"
            let out = Path.Combine(Fixtures.tempDir "records-out", "RESULTS.md")
            let count, stale = Records.write recipes records out (Path.Combine(Path.GetDirectoryName out, "figures")) []
            Expect.equal (count, stale) (6, 1) "six records, the 7-epoch config stale"
            let text = File.ReadAllText out
            let fresh = text.Split('\n') |> Array.find (fun l -> l.StartsWith "| fashion-mnist | rotnet | quick | all | — | 3 |")
            Expect.stringContains fresh "| 82.00 ± 2.00 |" "linear probe mean ± sample std over 3 seeds"
            Expect.stringContains fresh "| 0,1,2 |" "the seeds"
            Expect.stringContains text "## Stale" "a stale section"
            let staleRow = text.Substring(text.IndexOf "## Stale").Split('\n') |> Array.find (fun l -> l.StartsWith "| fashion-mnist | rotnet |")
            Expect.stringContains staleRow "50.00 (n = 1)" "one seed said as such"
            Expect.isFalse (text.Substring(0, text.IndexOf "## Stale").Contains "50.00") "never mixed with fresh rows"
            let methods = text.Substring(0, text.IndexOf "## Baselines")
            Expect.isFalse (methods.Contains "60.00") "a trial is not a row of the methods table"
            let trials = text.Substring(text.IndexOf "## Trials", text.IndexOf "## Stale" - text.IndexOf "## Trials")
            Expect.isTrue (trials.Split('\n') |> Array.exists (fun l -> l.StartsWith "| fashion-mnist | rotnet | quick | all | `Epochs=12` | 1 |" && l.Contains "60.00 (n = 1)")) "it is in the trials table"
            Expect.stringContains text "| fashion-mnist | quick | SmallConvNet16 | branch, pool 3 | 3 | 79.00 ± 1.00 |" "baselines over seeds, at the probed layer"
            Expect.stringContains text "| fashion-mnist | quick | SmallConvNet16 | output | 1 | 78.00 (n = 1) |" "another layer, another baseline row"
            Expect.isTrue (text.Split('\n') |> Array.exists (fun l -> l.StartsWith "| fashion-mnist | colorization | quick | all | — | 1 |")) "an override that is the preset's own value is not shown"
        }
        test "repro's shards are disjoint and together the whole grid; --shard is checked" {
            let runs, _ = Sweep.expand recipes { grid [ "rotnet"; "mixmatch" ] with Seeds = [ 0L; 1L; 2L ] }
            let shards = [ for i in 1 .. 4 -> Repro.shard (i, 4) runs ]
            Expect.equal (shards |> List.concat |> List.sortBy (fun r -> r.Name)) (runs |> List.sortBy (fun r -> r.Name)) "cover"
            Expect.equal (shards |> List.concat |> List.length) runs.Length "disjoint"
            Expect.equal (Repro.parseShard "2/3") (2, 3) "parsed"
            let e = Prop.throws<ArgumentException> (fun () -> Repro.parseShard "4/3" |> ignore)
            Expect.stringContains e.Message "--shard: expected i/n with 1 <= i <= n, found '4/3'" "checked"
        }
        test "a local sweep's heartbeat shows each running run's own bar from its train.log" {
            let root = Fixtures.tempDir "sweep-heartbeat"
            let runs, _ = Sweep.expand recipes { grid [ "rotnet" ] with Seeds = [ 0L ] }
            let log = Path.Combine(root, runs.Head.Name, "train.log")
            Directory.CreateDirectory(Path.GetDirectoryName log) |> ignore
            File.WriteAllText(log, "training rotnet\nepoch 1/1 [##----] 10% loss 1.0 ETA 00:09:00\nepoch 1/1 [###---] 20% loss 0.9 ETA 00:08:00\n")
            Expect.equal (Sweep.lastProgress log) (Some "epoch 1/1 [###---] 20% loss 0.9 ETA 00:08:00") "the last bar"
            Expect.equal (Sweep.lastProgress (Path.Combine(root, "none.log"))) None "no log yet"
        }
        test "ssl sweep runs rotnet and jigsaw with 2 local processes; a second call skips both" {
            let root = Path.Combine(Fixtures.tempDir "sweep-local", "sweep")
            let args = [ "sweep"; "--method"; "rotnet,jigsaw"; "--seeds"; "1"; "--preset"; "smoke"; "--local"; "2"; "--out"; root ]
            Expect.equal (run args) 0 "the sweep"
            for name in [ "rotnet-seed1"; "jigsaw-seed1" ] do
                let result = JsonNode.Parse(File.ReadAllText(Path.Combine(root, name, "result.json")))
                Expect.equal (result["seed"].GetValue<int64>()) 1L $"{name}: its seed"
                Expect.isTrue (File.Exists(Path.Combine(root, name, "train.log"))) $"{name}: its log"
            // Two at once: some run started (its config.json) before another one ended (its stamp).
            let spans = [ for d in Directory.GetDirectories root ->
                              File.GetLastWriteTimeUtc(Path.Combine(d, "config.json")), File.GetLastWriteTimeUtc(Path.Combine(d, Sweep.stampName)) ]
            let overlap = spans |> List.exists (fun (s1, e1) -> spans |> List.exists (fun (s2, e2) -> (s1, e1) <> (s2, e2) && s2 < e1 && s1 < e2))
            Expect.isTrue overlap "two runs trained at the same time"
            let stamps = [ for d in Directory.GetDirectories root -> File.GetLastWriteTimeUtc(Path.Combine(d, Sweep.stampName)) ]
            Expect.equal (run args) 0 "the second call"
            let again = [ for d in Directory.GetDirectories root -> File.GetLastWriteTimeUtc(Path.Combine(d, Sweep.stampName)) ]
            // A build of a dirty tree, or of no known commit, never counts a run as done.
            if Ssl.Host.Runtime.BuildInfo.Dirty || Ssl.Host.Runtime.BuildInfo.Commit = "unknown" then
                Expect.equal (List.zip again stamps |> List.filter (fun (a, b) -> a <> b) |> List.length) 2 "both reran"
            else Expect.equal again stamps "nothing reran"
        }
        test "a real single-node Slurm runs a 3-task array of smoke runs; their records report n = 3" {
            let code, output = sh $"'{slurmScript}' start" []
            if code = 77 then skiptestf "Slurm cannot be installed or started here: %s" (output.Trim())
            Expect.equal code 0 $"slurm-local.sh start: {output}"
            let env = [ "SLURM_CONF", "/tmp/ssl-slurm/slurm.conf" ]
            try
                let root = Path.Combine(Fixtures.tempDir "sweep-slurm", "sweep")
                let args = [ "sweep"; "--method"; "rotnet"; "--seeds"; "0,1,2"; "--preset"; "smoke"; "--emit"; "slurm"; "--cpus"; "1"; "--mem-gb"; "2"; "--out"; root ]
                Expect.equal (run args) 0 "emit"
                let script = Path.Combine(root, "sweep.sbatch")
                let code, submitted = sh $"sbatch --parsable '{script}'" env
                Expect.equal code 0 $"sbatch: {submitted}"
                let job = submitted.Trim().Split(';')[0]
                let clock = Stopwatch.StartNew()
                let mutable queued = true
                while queued && clock.Elapsed < TimeSpan.FromMinutes 8.0 do
                    Threading.Thread.Sleep 2000
                    let _, q = sh $"squeue -h -j {job}" env
                    queued <- q.Trim() <> ""
                Expect.isFalse queued "the array finished within 8 minutes"
                let logs = Directory.GetFiles(Path.Combine(root, "logs"))
                Expect.equal logs.Length 3 "one log per task"
                for seed in 0 .. 2 do
                    let result = Path.Combine(root, $"rotnet-seed{seed}", "result.json")
                    let text = String.Join(" ", logs |> Array.map File.ReadAllText)
                    Expect.isTrue (File.Exists result) $"seed {seed}: result.json (logs: {text})"
                let records = Path.Combine(Fixtures.tempDir "sweep-slurm-records", "results")
                let out = Path.Combine(Path.GetDirectoryName records, "RESULTS.md")
                Expect.equal (run [ "report"; root; "--record"; records; "--out"; out ]) 0 "record and report"
                let row = File.ReadAllLines out |> Array.find (fun l -> l.StartsWith "| fashion-mnist | rotnet | smoke |")
                Expect.stringContains row "| 3 | 0,1,2 |" "n = 3 over the three tasks"
                Expect.stringContains row "±" "with a std"
            finally
                sh $"'{slurmScript}' stop" [] |> ignore
        }
    ]
