/// Bad input and faults, as a user meets them: every case ends in one clear line and the right exit
/// code, and leaves a run folder's files as they were; a run killed at any point and resumed ends as
/// an uninterrupted one; a full disk ends in a clear error and a folder that resumes. The `ssl`
/// commands run as child processes, so exit codes, the terminal's text and kill -9 are real.
/// docs/reliability.md lists what each case answers.
module Ssl.Tests.ReliabilityTests

open System
open System.Diagnostics
open System.IO
open System.Security.Cryptography
open System.Text.Json
open System.Text.Json.Nodes
open Expecto
open Ssl.Host.Runs

/// `ssl <args>` as a child process (this build's ssl.dll), with `env` added: (exit code, stdout, stderr).
let ssl (env: (string * string) list) (args: string list) =
    let host, prefix = Ssl.Experiments.Sweep.selfCommand ()
    let psi = ProcessStartInfo(host, UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true)
    for a in prefix @ args do psi.ArgumentList.Add a
    for k, v in env do psi.Environment[k] <- v
    use p = new Process(StartInfo = psi)
    let out = Text.StringBuilder()
    let err = Text.StringBuilder()
    p.OutputDataReceived.Add(fun e -> if not (isNull e.Data) then lock out (fun () -> out.AppendLine e.Data |> ignore))
    p.ErrorDataReceived.Add(fun e -> if not (isNull e.Data) then lock err (fun () -> err.AppendLine e.Data |> ignore))
    p.Start() |> ignore
    p.BeginOutputReadLine()
    p.BeginErrorReadLine()
    p.WaitForExit()
    p.ExitCode, string out, string err

/// Every file under `dir` (but the lock, which names its last holder) with a hash of its bytes.
let snapshot (dir: string) =
    if not (Directory.Exists dir) then Map.empty
    else
        Directory.GetFiles(dir, "*", SearchOption.AllDirectories)
        |> Array.filter (fun f -> Path.GetFileName f <> RunLock.FileName)
        |> Array.map (fun f -> Path.GetRelativePath(dir, f), Convert.ToHexString(SHA256.HashData(File.ReadAllBytes f)))
        |> Map.ofArray

/// A copy of the folder `source` (without its lock) at `target`.
let copyRun (source: string) (target: string) =
    for f in Directory.GetFiles(source, "*", SearchOption.AllDirectories) do
        if Path.GetFileName f <> RunLock.FileName then
            let to' = Path.Combine(target, Path.GetRelativePath(source, f))
            Directory.CreateDirectory(Path.GetDirectoryName to') |> ignore
            File.Copy(f, to')
    target

/// The parent of every run here (one baseline cache, .cache, for all of them).
let root = lazy (Fixtures.tempDir "reliability")

/// The arguments of the reference run: supervised smoke, three epochs, deterministic.
let runArgs (dir: string) = [ "train"; "supervised"; "--preset"; "smoke"; "--deterministic"; "--set"; "Epochs=3"; "--out"; dir ]

/// One finished run, uninterrupted: the folder the bad-input cases aim at, and what every
/// interrupted-and-resumed run must equal.
let finished =
    lazy (
        let dir = Path.Combine(root.Force(), "finished")
        let code, _, err = ssl [] (runArgs dir)
        if code <> 0 then failwith $"the reference run failed (exit {code}): {err}"
        dir)

/// The figures of result.json that must not depend on interruptions (not the timings).
let figures (dir: string) =
    let node = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "result.json")))
    let text (n: JsonNode) = n.ToJsonString()
    let train = node["train"]
    text (node["eval"]), text (node["baselines"]), text (train["epochs"]), text (train["steps"])

/// metrics.jsonl without what measures the machine (rates, memory) rather than the training.
let metricRows (dir: string) =
    [ for line in File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")) do
          let row = JsonNode.Parse(line).AsObject()
          for key in [ "images_per_s"; "rss_mb"; "peak_rss_mb"; "live_tensors" ] do row.Remove key |> ignore
          row.ToJsonString() ]

/// The messages a command printed: lines that start with "error:" or "usage error:".
let errorLines (err: string) =
    err.Split('\n') |> Array.map (fun l -> l.Trim()) |> Array.filter (fun l -> l.StartsWith "error:" || l.StartsWith "usage error:")

/// Checks one failed command: its exit code, one error line naming every `culprits`, no stack trace.
let expectClearError (code: int, _: string, err: string) (expectedCode: int) (culprits: string list) (what: string) =
    Expect.equal code expectedCode $"{what}: exit code (stderr: {err})"
    let lines = errorLines err
    Expect.equal lines.Length 1 $"{what}: one error line, found {lines.Length}: {err}"
    for c in culprits do Expect.stringContains lines[0] c $"{what}: the error names '{c}'"
    Expect.isFalse (err.Contains "   at ") $"{what}: no stack trace: {err}"
    Expect.isFalse (err |> Seq.exists (fun ch -> ch = '\000' || ch = '\uFFFD')) $"{what}: no raw bytes echoed"

let isRoot () = Environment.UserName = "root"

/// Runs `mount` with `args`; true when it worked (root in a sandbox that allows it).
let mount (args: string list) =
    try
        let psi = ProcessStartInfo("mount", UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true)
        for a in args do psi.ArgumentList.Add a
        use p = Process.Start psi
        p.WaitForExit()
        p.ExitCode = 0
    with _ -> false

let umount (dir: string) =
    let psi = ProcessStartInfo("umount", UseShellExecute = false, RedirectStandardError = true)
    psi.ArgumentList.Add dir
    use p = Process.Start psi
    p.WaitForExit()

/// A class tree of `classes` classes of `perClass` 28 x 28 PNGs.
let smallTree (dir: string) (classes: int) (perClass: int) =
    for c in 0 .. classes - 1 do
        let classDir = Path.Combine(dir, $"class{c}")
        Directory.CreateDirectory classDir |> ignore
        for i in 0 .. perClass - 1 do Fixtures.writeImage (Path.Combine(classDir, $"{i}.png")) (c * 100 + i) 28 28
    dir

/// One bad input: a name, the folder it aims at (made by `prepare`), the command, the exit code and
/// what its one error line names.
type Case =
    { Name: string
      Prepare: unit -> string
      Args: string -> string list
      Code: int
      Names: string -> string list }

let cases () =
    let finished () = finished.Force()
    let copy (name: string) (change: string -> unit) () =
        let dir = copyRun (finished ()) (Path.Combine(root.Force(), "cases", name))
        change dir
        dir
    let fresh (name: string) () = Path.Combine(root.Force(), "cases", name)
    let train dir = [ "train"; "supervised"; "--preset"; "smoke"; "--out"; dir ]
    let resume dir = runArgs dir @ [ "--resume" ]
    let ckpt dir = Path.Combine(dir, "checkpoints", "last.ckpt")
    let dropResult dir = File.Delete(Path.Combine(dir, "result.json"))
    [ { Name = "a second train into a finished run"; Prepare = finished; Args = train; Code = 1; Names = fun d -> [ d; "finished run"; "--resume"; "--force" ] }
      { Name = "a wrong --dataset into a finished run"; Prepare = finished; Args = (fun d -> train d @ [ "--dataset"; "mnist" ]); Code = 1; Names = fun d -> [ d; "finished run" ] }
      { Name = "--resume with another seed"; Prepare = finished; Args = (fun d -> resume d @ [ "--seed"; "5" ]); Code = 2; Names = fun _ -> [ "--resume"; "seed" ] }
      { Name = "--resume with another data set"; Prepare = finished; Args = (fun d -> resume d @ [ "--dataset"; "mnist" ]); Code = 2; Names = fun _ -> [ "--resume"; "dataset" ] }
      { Name = "--resume with another config"; Prepare = finished; Args = (fun d -> resume d @ [ "--set"; "LearningRate=0.5" ]); Code = 2; Names = fun _ -> [ "--resume"; "config" ] }
      { Name = "--resume with another --memory-format"; Prepare = finished; Args = (fun d -> resume d @ [ "--memory-format"; "nchw" ]); Code = 2
        Names = fun _ -> [ "--memory-format"; "channels-last" ] }
      { Name = "--resume and --force together"; Prepare = finished; Args = (fun d -> resume d @ [ "--force" ]); Code = 2; Names = fun _ -> [ "--force"; "--resume" ] }
      { Name = "--resume after config.json was deleted"; Prepare = copy "no-config" (fun d -> dropResult d; File.Delete(Path.Combine(d, "config.json")))
        Args = resume; Code = 1; Names = fun d -> [ Path.Combine(d, "config.json") ] }
      { Name = "--resume from a truncated checkpoint"; Prepare = copy "truncated" (fun d -> dropResult d; Fixtures.truncate (ckpt d) 3000)
        Args = resume; Code = 1; Names = fun d -> [ ckpt d; "checkpoint" ] }
      { Name = "--resume from a checkpoint of garbage bytes"
        Prepare = copy "garbage" (fun d -> dropResult d; File.WriteAllBytes(ckpt d, Array.init 5000 (fun i -> byte (i * 7919 % 251))))
        Args = resume; Code = 1; Names = fun d -> [ ckpt d; "checkpoint" ] }
      { Name = "--out that is a file"; Prepare = (fun () -> Path.Combine(finished (), "config.json")); Args = train; Code = 1; Names = fun d -> [ d; "a file" ] }
      { Name = "--out where no folder can be made"; Prepare = (fun () -> "/proc/ssl-no-such/run"); Args = train; Code = 1; Names = fun _ -> [ "/proc/ssl-no-such/run" ] }
      { Name = "--image-size past what a batch holds"; Prepare = fresh "huge-size"; Args = (fun d -> train d @ [ "--image-size"; "100000" ]); Code = 2; Names = fun _ -> [ "--image-size"; "100000" ] }
      { Name = "--set LearningRate=NaN"; Prepare = fresh "nan-lr"; Args = (fun d -> train d @ [ "--set"; "LearningRate=NaN" ]); Code = 2; Names = fun _ -> [ "LearningRate"; "finite" ] }
      { Name = "--set of an unknown field"; Prepare = fresh "no-field"; Args = (fun d -> train d @ [ "--set"; "NoSuchField=1" ]); Code = 2; Names = fun _ -> [ "NoSuchField" ] }
      { Name = "an unknown --layout"; Prepare = fresh "bad-layout"; Args = (fun d -> train d @ [ "--layout"; "flat" ]); Code = 2; Names = fun _ -> [ "--layout"; "flat" ] }
      { Name = "a probe layer that does not exist, before training"; Prepare = fresh "probe-typo"
        Args = (fun d -> [ "train"; "rotnet"; "--preset"; "smoke"; "--set"; "Probe=layer:features.nope:3"; "--out"; d ]); Code = 2; Names = fun _ -> [ "features.nope" ] }
      { Name = "a probe pool past the images' side, before training"; Prepare = fresh "probe-pool"
        Args = (fun d -> [ "train"; "rotnet"; "--preset"; "smoke"; "--set"; "Probe=branch:1000"; "--out"; d ]); Code = 2; Names = fun _ -> [ "Probe"; "1000" ] }
      { Name = "an unknown --eval-dataset, named as such"; Prepare = fresh "bad-eval-set"
        Args = (fun d -> [ "train"; "rotnet"; "--preset"; "smoke"; "--eval-dataset"; "imagenet"; "--out"; d ]); Code = 2; Names = fun _ -> [ "--eval-dataset"; "imagenet" ] }
      { Name = "--config of a file that is not JSON"
        Prepare = (fun () -> let d = fresh "bad-config" () in Directory.CreateDirectory d |> ignore; File.WriteAllText(Path.Combine(d, "in.json"), "{ not json"); d)
        Args = (fun d -> [ "train"; "--config"; Path.Combine(d, "in.json"); "--out"; Path.Combine(d, "run") ]); Code = 1; Names = fun d -> [ Path.Combine(d, "in.json"); "JSON" ] }
      { Name = "--labels above what a class holds, before training"
        Prepare = (fun () -> smallTree (fresh "small-tree" ()) 2 12)
        Args = (fun d -> [ "train"; "rotnet"; "--preset"; "smoke"; "--dataset"; d; "--labels"; "20"; "--out"; Path.Combine(d, "..", "small-tree-run") ])
        Code = 2; Names = fun _ -> [ "--labels"; "at most 12" ] }
      { Name = "a one-class tree asked for as classes"
        Prepare = (fun () -> smallTree (fresh "one-class" ()) 1 12)
        Args = (fun d -> [ "train"; "rotnet"; "--preset"; "smoke"; "--dataset"; d; "--layout"; "classes"; "--out"; Path.Combine(d, "..", "one-class-run") ])
        Code = 1; Names = fun _ -> [ "2 classes" ] }
      { Name = "ssl eval of a corrupt config.json"; Prepare = copy "eval-config" (fun d -> File.WriteAllText(Path.Combine(d, "config.json"), "{\"method\": "))
        Args = (fun d -> [ "eval"; d ]); Code = 1; Names = fun d -> [ Path.Combine(d, "config.json") ] }
      { Name = "ssl eval of a garbage encoder file"
        Prepare = copy "eval-weights" (fun d -> File.WriteAllBytes(Path.Combine(d, "export", "encoder.dat"), Array.init 3000 (fun i -> byte (i % 256))))
        Args = (fun d -> [ "eval"; d; "--protocol"; "knn" ]); Code = 1; Names = fun d -> [ Path.Combine(d, "export", "encoder.dat") ] }
      { Name = "ssl eval of a folder without a run"; Prepare = (fun () -> let d = fresh "no-run" () in Directory.CreateDirectory d |> ignore; d)
        Args = (fun d -> [ "eval"; d ]); Code = 1; Names = fun d -> [ Path.Combine(d, "config.json") ] }
      { Name = "ssl data --layout split of a folder without train/"
        Prepare = (fun () -> smallTree (fresh "no-split" ()) 2 3)
        Args = (fun d -> [ "data"; "--dataset"; d; "--layout"; "split" ]); Code = 1; Names = fun d -> [ "train/" ] }
      { Name = "a batch larger than the data set, before training"
        Prepare = (fun () -> smallTree (fresh "tiny-tree" ()) 2 10)
        Args = (fun d -> [ "train"; "rotnet"; "--preset"; "smoke"; "--dataset"; d; "--out"; Path.Combine(d, "..", "tiny-tree-run") ])
        Code = 2; Names = fun _ -> [ "BatchSize"; "at most 20" ] }
      { Name = "an unknown method"; Prepare = fresh "no-method"; Args = (fun d -> [ "train"; "no-such-method"; "--out"; d ]); Code = 2; Names = fun _ -> [ "no-such-method" ] } ]

[<Tests>]
let tests =
    testList "reliability" [
        testSequenced <| testList "bad input" [
            test "every bad input of the table ends in one clear line and the right exit code, leaving the folder as it was" {
                let cases = cases ()
                for case in cases do
                    let dir = case.Prepare ()
                    let before = snapshot dir
                    let result = ssl [] (case.Args dir)
                    expectClearError result case.Code (case.Names dir) case.Name
                    Expect.equal (snapshot dir) before $"{case.Name}: the folder's files are byte-identical"
                printfn "    %d bad-input cases" cases.Length
            }
            test "a folder another process writes is refused, naming its PID" {
                let dir = Path.Combine(root.Force(), "locked")
                Directory.CreateDirectory dir |> ignore
                use held = RunLock.Acquire dir
                expectClearError (ssl [] [ "train"; "supervised"; "--preset"; "smoke"; "--out"; dir ]) 1 [ dir; $"PID {Environment.ProcessId}" ] "locked"
                Expect.equal (snapshot dir) Map.empty "nothing written"
            }
            test "a read-only file system as --out is a clear error" {
                if isRoot () then
                    let dir = Path.Combine(root.Force(), "read-only")
                    Directory.CreateDirectory dir |> ignore
                    if mount [ "-t"; "tmpfs"; "-o"; "ro,size=1m"; "tmpfs"; dir ] then
                        try expectClearError (ssl [] [ "train"; "supervised"; "--preset"; "smoke"; "--out"; Path.Combine(dir, "run") ]) 1 [ dir; "read-only" ] "read-only"
                        finally umount dir
                    else printfn "    skipped: tmpfs cannot be mounted here"
            }
            test "--version answers with exit code 0" {
                let code, out, _ = ssl [] [ "--version" ]
                Expect.equal code 0 "exit code"
                Expect.stringContains out "TorchSharp" "versions"
            }
        ]
        testSequenced <| testList "faults" [
            // kill -9 (SSL_TEST_KILL_AT) during a step of epoch 2, during the second checkpoint's
            // write, between an epoch's metrics row and its checkpoint, and during the evaluation.
            for point in [ "step:20"; "checkpoint-write:2"; "metrics-row:2"; "eval:1" ] do
                test $"a run killed at {point} and resumed ends as the uninterrupted run" {
                    let reference = finished.Force()
                    let dir = Path.Combine(root.Force(), "killed-" + point.Replace(':', '-'))
                    let code, _, err = ssl [ Ssl.Host.Runtime.FaultInjection.Variable, point ] (runArgs dir)
                    Expect.equal code 137 $"killed by SIGKILL ({err})"
                    Expect.isFalse (File.Exists(Path.Combine(dir, "result.json"))) "no result yet"
                    let code, _, err = ssl [] (runArgs dir @ [ "--resume" ])
                    Expect.equal code 0 $"the resume finishes ({err})"
                    Expect.equal (figures dir) (figures reference) "result.json's figures"
                    Expect.sequenceEqual (metricRows dir) (metricRows reference) "metrics.jsonl rows"
                    Expect.isFalse (File.Exists(Path.Combine(dir, "checkpoints", "last.ckpt.tmp"))) "no temporary checkpoint left"
                }
            test "FreeMatch killed in its second epoch and resumed logs the uninterrupted run's figures, threshold state included" {
                // Both runs stop at the evaluation (killed there), so only training is compared: epoch 2's
                // thresholds and mask rate read τ_t, p̃_t and h̃_t, which the resume must take from the checkpoint.
                let args dir = [ "train"; "freematch"; "--preset"; "smoke"; "--deterministic"; "--set"; "Epochs=2"; "--out"; dir ]
                let kill = Ssl.Host.Runtime.FaultInjection.Variable
                let straight = Path.Combine(root.Force(), "freematch-straight")
                let code, _, err = ssl [ kill, "eval:1" ] (args straight)
                Expect.equal code 137 $"the uninterrupted run reaches the evaluation ({err})"
                let dir = Path.Combine(root.Force(), "freematch-killed")
                let code, _, err = ssl [ kill, "step:20" ] (args dir)
                Expect.equal code 137 $"killed in epoch 2 ({err})"
                let code, _, err = ssl [ kill, "eval:1" ] (args dir @ [ "--resume" ])
                Expect.equal code 137 $"the resume reaches the evaluation ({err})"
                let rows = metricRows dir
                let epochRows = rows |> List.filter (fun r -> r.Contains "\"summary\"")
                Expect.equal epochRows.Length 2 "two epoch rows"
                Expect.stringContains epochRows[1] "\"threshold/0\"" "epoch 2 logs the class thresholds"
                Expect.sequenceEqual rows (metricRows straight) "metrics.jsonl rows"
            }
            test "a full disk ends in a clear error, keeps the last checkpoint and resumes once space is freed" {
                if isRoot () then
                    let disk = Path.Combine(root.Force(), "small-disk")
                    Directory.CreateDirectory disk |> ignore
                    if mount [ "-t"; "tmpfs"; "-o"; "size=48m"; "tmpfs"; disk ] then
                        try
                            let dir = Path.Combine(disk, "run")
                            let filler = Path.Combine(disk, "filler")
                            // Fill the disk as soon as the first checkpoint is there: the second epoch's writes fail.
                            let fill =
                                async {
                                    let checkpoint = Path.Combine(dir, "checkpoints", "last.ckpt")
                                    let clock = Stopwatch.StartNew()
                                    while not (File.Exists checkpoint) && clock.Elapsed.TotalMinutes < 3.0 do do! Async.Sleep 20
                                    use f = new FileStream(filler, FileMode.Create)
                                    let block = Array.zeroCreate<byte> (1 <<< 16)
                                    try
                                        while true do f.Write(block, 0, block.Length)
                                    with :? IOException -> ()
                                }
                                |> Async.StartAsTask
                            let result = ssl [] (runArgs dir)
                            fill.Wait()
                            expectClearError result 1 [ "space" ] "disk full"
                            Expect.isFalse (File.Exists(Path.Combine(dir, "checkpoints", "last.ckpt.tmp"))) "no temporary checkpoint left"
                            Expect.isTrue (File.Exists(Path.Combine(dir, "checkpoints", "last.ckpt"))) "the first epoch's checkpoint kept"
                            File.Delete filler
                            let code, _, err = ssl [] (runArgs dir @ [ "--resume" ])
                            Expect.equal code 0 $"resumes once space is freed ({err})"
                            Expect.equal (figures dir) (figures (finished.Force())) "then ends as the uninterrupted run"
                        finally umount disk
                    else printfn "    skipped: tmpfs cannot be mounted here"
            }
        ]
        test "ssl eval reads what the run's evaluation read, so its kNN equals result.json's" {
            let dir = copyRun (finished.Force()) (Path.Combine(root.Force(), "eval-agrees"))
            let code, _, err = ssl [] [ "eval"; dir; "--protocol"; "knn" ]
            Expect.equal code 0 err
            let read (file: string) = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, file)))
            let result = read "result.json"
            let trained = (result["eval"]["knn_acc"]).GetValue<float>()
            let figure = read "eval-knn.json"
            let again = (figure["test_acc"]).GetValue<float>()
            Expect.equal again trained "the same figure"
            let runtime = (read "config.json")["runtime"]
            Expect.equal (runtime["memory_format"].GetValue<string>()) "channels-last" "config.json records the memory format"
            Expect.equal (runtime["side_thread"].GetValue<bool>()) true "and the side thread"
        }
        test "an own-image tree with fewer images per class than a probe needs finishes, the probe left out with a note" {
            let tree = smallTree (Path.Combine(root.Force(), "small-classes")) 2 30
            let dir = Path.Combine(root.Force(), "small-classes-run")
            let code, _, err = ssl [] [ "train"; "rotnet"; "--preset"; "smoke"; "--set"; "Epochs=1"; "--set"; "BatchSize=16"; "--dataset"; tree; "--out"; dir ]
            Expect.equal code 0 err
            let result = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "result.json")))
            let few = result["eval"]["few_label_linear_acc"]
            Expect.isNull few["100"] "no 100-label figure"
            Expect.isNotNull few["10"] "the 10-label figure"
            let notes = result["notes"].AsArray() |> Seq.map (fun n -> n.GetValue<string>()) |> String.concat " | "
            Expect.stringContains notes "few_label_linear_acc 100" "a note says why"
            Expect.stringContains err "data: image folder" "the layout said out loud"
        }
    ]
