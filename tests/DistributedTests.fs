/// One run on several processes (docs/distributed.md): Open MPI's collectives through P/Invoke, the
/// gradient of a gathered loss, the engine at 2 ranks against one process at the same global batch,
/// and `ssl train --ranks 2` / `mpirun -n 2 ssl train` / kill -9 of a rank. The ranks are child
/// processes under mpirun: this test program in its `--rank-case` mode, or ssl itself.
module Ssl.Tests.DistributedTests

open System
open System.Collections.Generic
open System.Diagnostics
open System.IO
open System.Text.Json.Nodes
open Expecto
open TorchSharp
open Ssl.Host.Engine
open Ssl.Host.Runs
open Ssl.Host.Distributed
open Ssl.Core.Losses

/// A 2-layer classifier with batch norm on fixed synthetic data. `groups` > 1: one process normalises
/// each of `groups` consecutive slices of its batch on its own, as that many ranks would (per-rank
/// batch norm), so one process at global batch B reproduces `groups` ranks at B / groups each.
type BatchNormTask(groups: int) =
    let gen = new torch.Generator(7UL)
    let x = torch.randn([| 256L; 8L |], generator = gen)
    let y = x.mm(torch.randn([| 8L; 3L |], generator = gen)).argmax(1L)
    do torch.manual_seed 11L |> ignore
    let first = torch.nn.Linear(8L, 16L)
    let norm = torch.nn.BatchNorm1d(16L)
    let last = torch.nn.Linear(16L, 3L)
    let model = torch.nn.Sequential(("first", first :> torch.nn.Module<_, _>), ("norm", norm :> torch.nn.Module<_, _>), ("last", last :> torch.nn.Module<_, _>))
    member _.Model = model
    interface ITrainingStep with
        member _.Modules = readOnlyDict [ "model", (model :> torch.nn.Module) ]
        member _.Optimizers =
            [| struct ("main", OptimizerSpec(Kind = OptimizerKind.Sgd, LearningRate = 0.2, Momentum = 0.9, WeightDecay = 1e-4, WarmupEpochs = 0.0),
                       model.named_parameters ()) |] :> IReadOnlyList<_>
        member _.State = Dictionary<string, torch.Tensor>() :> IReadOnlyDictionary<_, _>
        member _.Step(ctx, batch) =
            use idx = torch.tensor(batch)
            let h = first.call(x.index_select(0L, idx))
            // call, not forward: hooks (synchronised batch norm) run on call, as in Core's models.
            let normed = if groups = 1 then norm.call h else torch.cat(h.chunk(int64 groups) |> Array.map norm.call, 0L)
            let loss = torch.nn.functional.cross_entropy(last.forward(torch.nn.functional.relu normed), y.index_select(0L, idx))
            readOnlyDict [ "loss", ctx.Optimize("main", loss) ]

let private parameters (model: torch.nn.Module) =
    [| for KeyValue(_, p) in model.state_dict() do yield! p.detach().reshape(-1L).to_type(torch.ScalarType.Float64).data<float>().ToArray() |]

let private write (path: string) (values: float seq) =
    File.WriteAllLines(path, values |> Seq.map (fun v -> v.ToString("R", Globalization.CultureInfo.InvariantCulture)))

let private read (path: string) =
    File.ReadAllLines path |> Array.map (fun l -> Double.Parse(l, Globalization.CultureInfo.InvariantCulture))

/// The engine's settings of the equivalence case: 256 examples, global batch 32, 3 epochs (24 steps), a line a step.
let private engineOptions (world: ICollectives option) =
    TrainerOptions(Epochs = 3, BatchSize = 32, ExampleCount = 256L, Seed = 5L, LogEvery = 1, World = Option.toObj world)

/// The gathered losses of the gradient case: NT-Xent, Barlow Twins and VICReg over z = x W of the global batch's two views.
let private gatheredLosses (gather: torch.Tensor -> torch.Tensor) (w: torch.Tensor) (x1: torch.Tensor) (x2: torch.Tensor) =
    let z1, z2 = gather (x1.mm w), gather (x2.mm w)
    [ "nt-xent", Contrastive.infoNceInBatch 0.5 (Contrastive.normalize z1) (Contrastive.normalize z2)
      "barlow-twins", Siamese.barlowTwinsOf 5e-3 (Siamese.crossCorrelation z1 z2)
      "vicreg", Vicreg.weighted 25.0 25.0 1.0 (Vicreg.terms 1e-4 z1 z2) ]

let private gradientInputs () =
    let gen = new torch.Generator(3UL)
    torch.randn([| 16L; 6L |], generator = gen), torch.randn([| 16L; 6L |], generator = gen), torch.randn([| 6L; 5L |], generator = gen)

/// Each step's loss (as logged: the ranks' mean) and every module's state in name order before the
/// first step and after `steps` steps, batch-norm running statistics only where `statistics` (a
/// rank's own under per-rank or per-group batch norm); then it stops the run (nothing is evaluated).
type private StepRecorder(steps: int, statistics: bool) =
    let losses = ResizeArray<float>()
    let stateOf (step: ITrainingStep) =
        let running (name: string) = [ "running_mean"; "running_var"; "num_batches_tracked" ] |> List.exists name.EndsWith
        [| for KeyValue(_, m) in step.Modules |> Seq.sortBy (fun kv -> kv.Key) do
             for KeyValue(name, t) in m.state_dict() do
                 if statistics || not (running name) then
                     yield! t.detach().reshape(-1L).to_type(torch.ScalarType.Float64).data<float>().ToArray() |]
    member val Initial: float[] = [||] with get, set
    member val State: float[] = [||] with get, set
    member _.Losses = losses.ToArray()
    interface ITrainingObserver with
        member this.BeforeStep(step) = if this.Initial.Length = 0 then this.Initial <- stateOf step
        member _.Figures(_, figures) = losses.Add figures["loss"]
        member this.AfterStep(step, _, _) =
            if losses.Count < steps then StepVerdict.Continue
            else
                this.State <- stateOf step
                StepVerdict.Stop

/// The recipes of the equivalence case, each with the batch-norm mode that makes 2 ranks one
/// process's global-batch maths: synchronised where a model normalises its whole batch, the
/// recipe's own groups (per group at any world size) for SimCLR and MoCo, whose smoke presets
/// normalise 8 and 4 groups (MoCo's keys shuffled across the ranks). Global batch 32 (62 steps an
/// epoch of smoke's 2,000 images) and narrower heads, to keep the suite short; FixMatch's 16
/// labelled + 112 unlabelled a step take 2 epochs.
let private equivalenceCases =
    [ "supervised", "sync", [ "BatchSize=32" ]
      "simclr", "paper", [ "Schedule.BatchSize=32" ]
      "moco", "paper", [ "Schedule.BatchSize=32" ]
      "byol", "sync", [ "Schedule.BatchSize=32"; "HiddenDim=256"; "ProjectionDim=64" ]
      "barlow-twins", "sync", [ "Schedule.BatchSize=32"; "ProjectionDim=128" ]
      "fixmatch", "sync", [ "Schedule.Epochs=2" ] ]

/// The steps each equivalence case compares.
let private equivalenceSteps = 20

/// `name`'s smoke step for `equivalenceSteps` steps in this process (at whatever rank it is), one
/// thread, deterministic, seed 0: (losses, state after the last step).
let private recipeSteps (name: string) (batchNorm: string) (overrides: string list) (out: string) =
    let recipe = (Ssl.Experiments.Registry.tryFind name).Value
    let runtime = Ssl.Host.Runtime.RuntimeOptions.FromEnvironment().WithBatchNorm(Ssl.Host.Runtime.RuntimeOptions.ParseBatchNorm(batchNorm, "--batch-norm"))
    let threads = torch.get_num_threads ()
    try
        let env = Ssl.Host.Runtime.DeviceSetup.Configure(Ssl.Host.Runtime.DeviceRequest.Cpu, 1, 0L, true, runtime)
        let request =
            { Ssl.Experiments.Recipe.Request.Create(name, Ssl.Experiments.Recipe.Smoke, labels = (List.tryHead recipe.Traits.LabelBudgets |> Option.defaultValue 0)) with
                Threads = 1; Deterministic = true; Out = out; Force = true
                Config = Some(recipe.Resolve Ssl.Experiments.Recipe.Smoke None overrides); Overrides = overrides }
        let recorder = StepRecorder(equivalenceSteps, (batchNorm = "sync"))
        let folder = if World.IsWriter then RunFolder(out) else RunFolder.Follow(out)
        match recipe.RunObserved recorder request env folder with
        | Ssl.Experiments.Template.StoppedByObserver _ -> recorder.Losses, recorder.Initial, recorder.State
        | _ -> failwith $"{name}: the run ended before {equivalenceSteps} steps"
    finally torch.set_num_threads threads

/// The child side: what one rank of `case` does, writing its figures under `dir`.
let rankCase (case: string) (dir: string) =
    let world = World.Current
    let r = world.Rank
    match case with
    | "collectives" ->
        use t = torch.full([| 3L |], Scalar.op_Implicit (float (r + 1)))
        world.AllReduceSum t
        use g = world.AllGather(torch.full([| 2L; 2L |], Scalar.op_Implicit (float r)))
        use b = torch.full([| 4L |], Scalar.op_Implicit (float (10 * (r + 1))))
        world.Broadcast(b, 1)
        write (Path.Combine(dir, $"collectives-{r}.txt"))
            (Seq.concat [ t.to_type(torch.ScalarType.Float64).data<float>().ToArray() :> seq<_>
                          g.reshape(-1L).to_type(torch.ScalarType.Float64).data<float>().ToArray()
                          b.to_type(torch.ScalarType.Float64).data<float>().ToArray() ])
    | "gradient" ->
        let x1, x2, w0 = gradientInputs ()
        let rows = x1.shape[0] / int64 world.Size
        for name, _ in gatheredLosses id w0 x1 x2 do
            let w = w0.clone().requires_grad_(true)
            let loss = gatheredLosses (fun z -> GatherFunction.Gather(world, z)) w (x1.narrow(0L, int64 r * rows, rows)) (x2.narrow(0L, int64 r * rows, rows))
                       |> List.find (fst >> (=) name) |> snd
            loss.backward()
            GradientAverage.Apply(world, [ torch.nn.Parameter(w.detach()) ] |> List.map (fun p -> p.grad <- w.grad; p))
            write (Path.Combine(dir, $"gradient-{name}-{r}.txt")) (w.grad.reshape(-1L).to_type(torch.ScalarType.Float64).data<float>().ToArray())
    | "engine" | "engine-sync" ->
        torch.set_num_threads 1
        let task = BatchNormTask(1)
        let hooks = if case = "engine-sync" then SyncBatchNorm.Attach(world, [ task.Model ]) else [||]
        let folder = if r = 0 then RunFolder(dir) else RunFolder.Follow(dir)
        Trainer.Run(task, engineOptions (Some world), folder, torch.CPU, SilentProgress()) |> ignore
        for h in hooks do h.Dispose()
        write (Path.Combine(dir, $"parameters-{r}.txt")) (parameters task.Model)
    | "recipes" ->
        for name, batchNorm, overrides in equivalenceCases do
            let losses, _, state = recipeSteps name batchNorm overrides (Path.Combine(dir, name))
            write (Path.Combine(dir, $"{name}-losses-{r}.txt")) losses
            write (Path.Combine(dir, $"{name}-state-{r}.txt")) state
    | other -> failwith $"--rank-case: expected collectives, gradient, engine, engine-sync or recipes, found '{other}'"
    World.Leave()

/// `mpirun -n 2` of this test program's `--rank-case case dir`: (exit code, output).
let private underMpirun (case: string) (dir: string) =
    let exe = Reflection.Assembly.GetExecutingAssembly().Location
    let psi = ProcessStartInfo("mpirun", UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true)
    for a in [ "-n"; "2"; "--oversubscribe"; "--bind-to"; "none"; "dotnet"; exe; "--rank-case"; case; dir ] do psi.ArgumentList.Add a
    psi.Environment["OMPI_ALLOW_RUN_AS_ROOT"] <- "1"
    psi.Environment["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] <- "1"
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEnd()
    p.WaitForExit()
    p.ExitCode, out.Result + err

let private close (what: string) (tolerance: float) (expected: float[]) (actual: float[]) =
    Expect.equal actual.Length expected.Length $"{what}: count"
    let scale = max 1.0 (expected |> Array.map abs |> Array.max)
    let worst = Array.map2 (fun a e -> abs (a - e)) actual expected |> Array.max
    Expect.isLessThanOrEqual worst (tolerance * scale) $"{what}: largest difference {worst:E2} (scale {scale:G3})"

let private losses (dir: string) =
    RunFolder(dir).ReadMetrics() |> Seq.filter (fun row -> not (row.ContainsKey "summary"))
    |> Seq.map (fun row -> row["loss"].GetValue<float>()) |> Array.ofSeq

/// The engine case `case` at 2 ranks and BatchNormTask(groups) in this process: (the ranks' folder,
/// the one process's folder, its parameters and buffers).
let private engineAgainstOneProcess (case: string) (groups: int) =
    let dir = Fixtures.tempDir $"ranks-{case}"
    let code, output = underMpirun case dir
    Expect.equal code 0 $"mpirun: {output}"
    torch.set_num_threads 1
    let reference = Fixtures.tempDir $"ranks-{case}-one"
    let task = BatchNormTask(groups)
    Trainer.Run(task, engineOptions None, RunFolder(reference), torch.CPU, SilentProgress()) |> ignore
    dir, reference, parameters task.Model

/// The parent of every ssl run here: one baseline cache (.cache) for all of them.
let private runs = lazy (Fixtures.tempDir "ranks-runs")

/// A 2-epoch supervised smoke run into runs/<name> (deterministic: a resumed run must equal it).
let private smokeArgs (name: string) =
    [ "train"; "supervised"; "--preset"; "smoke"; "--deterministic"; "--set"; "Epochs=2"; "--out"; Path.Combine(runs.Force(), name) ]

/// A finished 2-rank run: result.json written once by rank 0, config.json recording 2 ranks, one
/// metrics row a logged step (rank 0's alone).
let private expectTwoRankRun (dir: string) =
    let folder = RunFolder(dir)
    Expect.isTrue (File.Exists folder.ResultPath) "result.json"
    let config = JsonNode.Parse(File.ReadAllText folder.ConfigPath)
    let ranks = config["runtime"]["ranks"]
    Expect.equal (ranks.GetValue<int>()) 2 "config.json's runtime.ranks"
    let steps = folder.ReadMetrics() |> Seq.filter (fun r -> not (r.ContainsKey "summary")) |> Seq.map (fun r -> r["step"].GetValue<int64>()) |> List.ofSeq
    Expect.equal steps (List.sort (List.distinct steps)) "each logged step once, in order"
    Expect.isGreaterThan steps.Length 0 "logged steps"

let private figures (dir: string) =
    let r = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "result.json")))
    [ for key in [ "linear_probe_acc"; "knn_acc"; "test_acc" ] ->
          let figure = r["eval"][key]
          key, figure.GetValue<float>() ]

/// One uninterrupted 2-rank smoke run: the --ranks case checks it, the kill -9 case resumes to its figures.
let private twoRankRun =
    lazy
        (let code, out, err = ReliabilityTests.ssl [] (smokeArgs "whole" @ [ "--ranks"; "2" ])
         Path.Combine(runs.Force(), "whole"), code, out + err)

let private cliTests =
    [ test "ssl train --ranks 2 trains a smoke run to result.json under mpirun, rank 0 writing" {
          let dir, code, output = twoRankRun.Force()
          Expect.equal code 0 $"ssl train --ranks 2: {output}"
          Expect.stringContains output "2 ranks x" "the run line names the ranks"
          expectTwoRankRun dir }

      test "mpirun -n 2 ssl train takes its ranks from the launcher; --batch-norm sync synchronises supervised's batch norm" {
          let dir = Path.Combine(runs.Force(), "mpirun")
          let host, prefix = Ssl.Experiments.Sweep.selfCommand ()
          let psi = ProcessStartInfo("mpirun", UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true)
          for a in [ "-n"; "2"; "--oversubscribe"; "--bind-to"; "none"; host ] @ prefix @ smokeArgs "mpirun" @ [ "--batch-norm"; "sync" ] do psi.ArgumentList.Add a
          psi.Environment["OMPI_ALLOW_RUN_AS_ROOT"] <- "1"
          psi.Environment["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] <- "1"
          use p = Process.Start psi
          let out = p.StandardOutput.ReadToEndAsync()
          let err = p.StandardError.ReadToEnd()
          p.WaitForExit()
          Expect.equal p.ExitCode 0 $"mpirun: {out.Result}{err}"
          expectTwoRankRun dir
          let runtime = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))["runtime"]
          Expect.equal (runtime["batch_norm"].GetValue<string>()) "sync" "config.json records --batch-norm" }

      test "kill -9 of one of 2 ranks stops the other within 60 s naming it; --resume ends as an uninterrupted run" {
          let whole, code, output = twoRankRun.Force()
          Expect.equal code 0 $"uninterrupted: {output}"
          let killed = Path.Combine(runs.Force(), "killed")
          let clock = Stopwatch.StartNew()
          // Smoke has 15 steps an epoch: step 20 is in the second epoch, after the first checkpoint.
          let code, out, err = ReliabilityTests.ssl [ "SSL_TEST_KILL_AT", "step:20"; "SSL_TEST_KILL_RANK", "1" ] (smokeArgs "killed" @ [ "--ranks"; "2" ])
          Expect.notEqual code 0 "a lost rank fails the run"
          Expect.isLessThan clock.Elapsed.TotalSeconds 60.0 "the other rank stopped within 60 s"
          Expect.stringContains (out + err) "rank 1" "the message names the lost rank"
          Expect.isTrue (File.Exists(Path.Combine(killed, "checkpoints", "last.ckpt"))) "the first epoch's checkpoint is intact"
          let code, out, err = ReliabilityTests.ssl [] (smokeArgs "killed" @ [ "--ranks"; "2"; "--resume" ])
          Expect.equal code 0 $"--resume: {out}{err}"
          Expect.equal (figures killed) (figures whole) "the same figures as the uninterrupted run" }

      test "srun -n 2 --mpi=pmix ssl train on the single-node Slurm of scripts/slurm-local.sh" {
          let script = Path.GetFullPath(Path.Combine(__SOURCE_DIRECTORY__, "..", "scripts", "slurm-local.sh"))
          let sh (command: string) =
              let psi = ProcessStartInfo("bash", [| "-c"; command |], RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false)
              psi.Environment["SLURM_CONF"] <- "/tmp/ssl-slurm/slurm.conf"
              use p = Process.Start psi
              let out = p.StandardOutput.ReadToEndAsync()
              let err = p.StandardError.ReadToEnd()
              p.WaitForExit()
              p.ExitCode, out.Result + err
          let code, output = sh $"'{script}' start"
          if code = 77 then skiptestf "Slurm cannot be installed or started here: %s" (output.Trim())
          Expect.equal code 0 $"slurm-local.sh start: {output}"
          let dir = Path.Combine(runs.Force(), "srun")
          let host, prefix = Ssl.Experiments.Sweep.selfCommand ()
          let args = String.concat " " [ for a in [ host ] @ prefix @ smokeArgs "srun" -> $"'{a}'" ]
          let code, output = sh $"timeout 300 srun -n 2 --mpi=pmix --kill-on-bad-exit=1 {args}"
          Expect.equal code 0 $"srun: {output}"
          expectTwoRankRun dir } ]

[<Tests>]
let tests =
    testList "distributed" [
        yield! cliTests
        test "NCCL: where its library is missing, the CUDA backend names it; a world of CPU tensors is MPI's alone" {
            if NcclCollectives.Available then skiptest "NCCL is installed here: the CUDA backend can start"
            let e = Expect.throwsC (fun () -> new NcclCollectives(SingleProcess.Instance) |> ignore) id
            Expect.isTrue (e :? RanksException) $"a RanksException, found {e.GetType().Name}"
            Expect.stringContains e.Message "libnccl.so.2" "the message names the library"
            use routed = new NcclCollectives.Routed(SingleProcess.Instance)
            use t = torch.ones(3L)
            routed.AllReduceSum t
            Expect.equal routed.Backend "none" "CPU tensors never start NCCL"
        }

        test "collectives at 2 ranks: all-reduce sums, all-gather keeps rank order, broadcast copies the root's" {
            let dir = Fixtures.tempDir "ranks-collectives"
            let code, output = underMpirun "collectives" dir
            Expect.equal code 0 $"mpirun: {output}"
            for r in 0 .. 1 do
                Expect.sequenceEqual (read (Path.Combine(dir, $"collectives-{r}.txt")))
                    [| 3.0; 3.0; 3.0; 0.0; 0.0; 0.0; 0.0; 1.0; 1.0; 1.0; 1.0; 20.0; 20.0; 20.0; 20.0 |] $"rank {r}"
        }

        test "a gathered loss's gradient at 2 ranks, averaged, equals the one-process gradient (NT-Xent, Barlow Twins, VICReg)" {
            let dir = Fixtures.tempDir "ranks-gradient"
            let code, output = underMpirun "gradient" dir
            Expect.equal code 0 $"mpirun: {output}"
            let x1, x2, w0 = gradientInputs ()
            for name, _ in gatheredLosses id w0 x1 x2 do
                let w = w0.clone().requires_grad_(true)
                (gatheredLosses id w x1 x2 |> List.find (fst >> (=) name) |> snd).backward()
                let expected = w.grad.reshape(-1L).to_type(torch.ScalarType.Float64).data<float>().ToArray()
                // float32 sums in another order: a few ulps of the gradient's scale.
                for r in 0 .. 1 do close $"{name}, rank {r}" 1e-5 expected (read (Path.Combine(dir, $"gradient-{name}-{r}.txt")))
        }

        test "the engine at 2 ranks logs the losses and ends with the parameters of one process at the same global batch" {
            let dir, reference, expected = engineAgainstOneProcess "engine" 2
            // Per-rank batch norm against the same per-group statistics; float32 sums in another order over 24 steps.
            close "losses" 1e-5 (losses reference) (losses dir)
            Expect.equal (losses dir).Length 24 "a metrics row a step, written once"
            let rank0, rank1 = read (Path.Combine(dir, "parameters-0.txt")), read (Path.Combine(dir, "parameters-1.txt"))
            let trainable = expected.Length - 16 - 16 - 1 // the running mean and variance and the batch count are per rank's
            close "parameters" 1e-5 expected.[.. trainable - 1] rank0.[.. trainable - 1]
            Expect.sequenceEqual rank1.[.. trainable - 1] rank0.[.. trainable - 1] "every rank holds the same parameters"
        }

        test "supervised, SimCLR, MoCo, BYOL, Barlow Twins and FixMatch at 2 ranks: one process's losses and state over 20 steps" {
            let dir = Fixtures.tempDir "ranks-recipes"
            let code, output = underMpirun "recipes" dir
            Expect.equal code 0 $"mpirun: {output}"
            let distance (a: float[]) (b: float[]) = Array.fold2 (fun s x y -> s + (x - y) * (x - y)) 0.0 a b |> sqrt
            for name, batchNorm, overrides in equivalenceCases do
                let losses, initial, state = recipeSteps name batchNorm overrides (Path.Combine(dir, name + "-one"))
                write (Path.Combine(dir, $"{name}-losses-one.txt")) losses
                write (Path.Combine(dir, $"{name}-state-one.txt")) state
                write (Path.Combine(dir, $"{name}-initial-one.txt")) initial
                Expect.equal losses.Length equivalenceSteps $"{name}: a loss a step"
                // The bounds are float32 round-off as training amplifies it: one process at 2 threads
                // drifts from itself at 1 thread as far (docs/distributed.md, "Equivalence"). The first
                // two losses (the same images and parameters, then one update) hold to 2e-4; a wrong
                // shard, gather or batch-norm group moves them by 1e-3 or more.
                let ranks = read (Path.Combine(dir, $"{name}-losses-0.txt"))
                for k in 0 .. 1 do
                    let relative = abs (ranks[k] - losses[k]) / abs losses[k]
                    Expect.isLessThanOrEqual relative 2e-4 $"{name}: step {k + 1}'s loss {ranks[k]} at 2 ranks, {losses[k]} in one process"
                let rank0, rank1 = read (Path.Combine(dir, $"{name}-state-0.txt")), read (Path.Combine(dir, $"{name}-state-1.txt"))
                Expect.sequenceEqual rank1 rank0 $"{name}: both ranks hold the same state"
                let drift, moved = distance rank0 state, distance state initial
                Expect.isLessThanOrEqual drift (0.1 * moved) $"{name}: the state at 2 ranks is {drift:G3} from one process's, which moved {moved:G3} in {equivalenceSteps} steps"
        }

        test "with synchronised batch norm, 2 ranks log the losses and end with the parameters and running statistics of one process" {
            let dir, reference, expected = engineAgainstOneProcess "engine-sync" 1
            // Exact global-batch statistics; float32 sums in another order over 24 steps.
            close "losses" 1e-5 (losses reference) (losses dir)
            for r in 0 .. 1 do close $"rank {r}: parameters, running mean and variance" 1e-5 expected (read (Path.Combine(dir, $"parameters-{r}.txt")))
        }
    ]
