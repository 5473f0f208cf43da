module Ssl.Tests.EngineTests

open System
open System.Collections.Generic
open System.Diagnostics
open System.IO
open Expecto
open TorchSharp
open TorchSharp.Modules
open Ssl.Host.Engine
open Ssl.Host.Runs
open Ssl.Tests.Prop
open FsCheck

/// A softmax regression on fixed synthetic data: small enough to train in milliseconds.
/// With `parts`, the batch's loss is the sum of its two halves' shares, each half through the model on
/// its own (StepContext.Optimize of parts: two backward passes side by side).
type LinearTask(seed: int64, ?lr: float, ?poison: bool, ?parts: bool) =
    let gen = new torch.Generator(uint64 seed)
    let x = torch.randn([| 256L; 8L |], generator = gen)
    let truth = torch.randn([| 8L; 3L |], generator = gen)
    let y = x.mm(truth).argmax(1L)
    let model = torch.nn.Linear(8L, 3L)
    let modules = readOnlyDict [ "model", (model :> torch.nn.Module) ]
    member _.Model = model
    interface ITrainingStep with
        member _.Modules = modules
        member _.Optimizers =
            [| struct ("main",
                       OptimizerSpec(Kind = OptimizerKind.Sgd, LearningRate = defaultArg lr 0.5, WeightDecay = 1e-4, WarmupEpochs = 1.0),
                       model.named_parameters ()) |] :> IReadOnlyList<_>
        member _.State = Dictionary<string, torch.Tensor>() :> IReadOnlyDictionary<_, _>
        member _.Step(ctx, batch) =
            use idx = torch.tensor(batch)
            let poisoned (loss: torch.Tensor) = if defaultArg poison false && ctx.Epoch = 1 then loss * Double.NaN else loss
            let value =
                if defaultArg parts false then
                    let n = float batch.Length
                    let terms =
                        idx.chunk(2L) |> Array.map (fun half ->
                            let loss = torch.nn.functional.cross_entropy(model.forward(x.index_select(0L, half)), y.index_select(0L, half))
                            poisoned (loss * (float half.shape[0] / n)))
                    ctx.Optimize("main", terms)
                else
                    let logits = model.forward(x.index_select(0L, idx))
                    ctx.Optimize("main", poisoned (torch.nn.functional.cross_entropy(logits, y.index_select(0L, idx))))
            readOnlyDict [ "loss", value ]

/// LinearTask's step with ~1 MiB of small managed garbage per step, recording for each step whether a
/// no-GC region was open when it began and how many gen-0 collections ran while it was running.
type GarbageTask(seed: int64) =
    let inner = LinearTask(seed) :> ITrainingStep
    let mutable sink : obj = null
    member val Fenced = ResizeArray<bool>()
    member val CollectionsInside = ResizeArray<int>()
    interface ITrainingStep with
        member _.Modules = inner.Modules
        member _.Optimizers = inner.Optimizers
        member _.State = inner.State
        member this.Step(ctx, batch) =
            this.Fenced.Add GcFence.Active
            let before = GC.CollectionCount 0
            for _ in 1 .. 4096 do sink <- Array.zeroCreate<byte> 256
            let figures = inner.Step(ctx, batch)
            this.CollectionsInside.Add(GC.CollectionCount 0 - before)
            figures

/// An observer that counts the steps and phases it is told of, and the threads that told it, and
/// stops the run after `stopAfter` steps (never: 0).
type CountingObserver(stopAfter: int) =
    member val Steps = 0 with get, set
    member val Images = 0L with get, set
    member val Phases = Dictionary<string, int>()
    member val Threads = HashSet<int>()
    interface ITrainingObserver with
        member this.BeforeStep(_) = this.Threads.Add Threading.Thread.CurrentThread.ManagedThreadId |> ignore
        member this.AfterStep(_, images, _) =
            this.Steps <- this.Steps + 1
            this.Images <- this.Images + int64 images
            if this.Steps = stopAfter then StepVerdict.Stop else StepVerdict.Continue
        member this.Phase(name, _) = this.Phases[name] <- (match this.Phases.TryGetValue name with | true, n -> n + 1 | _ -> 1)

let private optionsWith epochs (stopAfter: int option) resume digest =
    TrainerOptions(Epochs = epochs, BatchSize = 32, ExampleCount = 256L, Seed = 11L, ConfigDigest = digest, LogEvery = 4,
                   Resume = resume, StopAfterEpochs = Option.toNullable stopAfter)

let private options epochs = optionsWith epochs None false "test"

let private epochLosses (folder: RunFolder) =
    folder.ReadMetrics()
    |> Seq.filter (fun r -> r.ContainsKey "summary")
    |> Seq.map (fun r -> r["loss"].GetValue<float>())
    |> Seq.toArray

let private weights (m: torch.nn.Module) =
    m.parameters () |> Seq.collect (fun p -> p.data<float32>().ToArray()) |> Seq.toArray

let scheduleTests =
    testList "schedule" [
        test "warm-up rises linearly, then cosine falls to the final fraction" {
            let spec = OptimizerSpec(WarmupEpochs = 2.0, FinalLrFraction = 0.1)
            Expect.floatClose Accuracy.high (spec.Factor(1.0, 10.0)) 0.5 "half-way through warm-up"
            Expect.floatClose Accuracy.high (spec.Factor(2.0, 10.0)) 1.0 "end of warm-up"
            Expect.floatClose Accuracy.high (spec.Factor(6.0, 10.0)) 0.55 "cosine mid-point: 0.1 + 0.9 / 2"
            Expect.floatClose Accuracy.high (spec.Factor(10.0, 10.0)) 0.1 "final fraction"
        }
        prop "after warm-up the factor never rises" (fun (NormalFloat a) (NormalFloat b) ->
            let spec = OptimizerSpec()
            let p, q = abs a % 10.0, abs b % 10.0
            let lo, hi = min p q, max p q
            spec.Factor(lo, 10.0) >= spec.Factor(hi, 10.0))
        test "a constant schedule stays at 1" {
            Expect.equal (OptimizerSpec(Cosine = false).Factor(7.0, 10.0)) 1.0 "constant"
        }
    ]

let optimizerTests =
    testList "optimizer" [
        test "1-D parameters (norm scales, biases) get no weight decay" {
            use model = torch.nn.Sequential(torch.nn.Linear(4L, 4L), torch.nn.BatchNorm1d(4L))
            use opt = new TrainingOptimizer("o", OptimizerSpec(WeightDecay = 0.1), model.named_parameters ())
            let groups = opt.Optimizer.ParamGroups |> Seq.map (fun g -> g :?> SGD.ParamGroup) |> Seq.toArray
            Expect.equal groups.Length 2 "two groups"
            Expect.equal (groups |> Array.map (fun g -> Seq.length g.Parameters)) [| 1; 3 |] "the weight matrix alone is decayed"
            Expect.equal (groups |> Array.map (fun g -> g.Options.weight_decay.Value)) [| 0.1; 0.0 |] "decays"
        }
        test "clipping limits the global gradient norm before the step" {
            use w = new Parameter(torch.zeros(1L, 2L))
            let spec = OptimizerSpec(Kind = OptimizerKind.Sgd, LearningRate = 1.0, Momentum = 0.0, ClipGradNorm = Nullable 1.0)
            use opt = new TrainingOptimizer("o", spec, [ struct ("w", w) ])
            w.grad <- torch.tensor([| 3.0f; 4.0f |]).reshape(1L, 2L)
            let norm = opt.Step()
            Expect.floatClose Accuracy.medium norm 5.0 "the norm before clipping is reported"
            // clipped to norm 1: g = [0.6, 0.8]; w = 0 - 1.0 * g
            let moved = w.data<float32>().ToArray() |> Array.map float
            Expect.floatClose Accuracy.medium moved[0] -0.6 "w0"
            Expect.floatClose Accuracy.medium moved[1] -0.8 "w1"
        }
        test "LARS scales a step by the trust ratio η‖w‖ / (‖g‖ + β‖w‖)" {
            use w = new Parameter(torch.tensor([| 3.0f; 4.0f |]).reshape(1L, 2L))
            let spec = OptimizerSpec(Kind = OptimizerKind.Lars, LearningRate = 1.0, Momentum = 0.0, WeightDecay = 0.5, LarsEta = 0.01)
            use opt = new TrainingOptimizer("o", spec, [ struct ("w", w) ])
            w.grad <- torch.tensor([| 0.0f; 1.0f |]).reshape(1L, 2L)
            opt.Step() |> ignore
            // ‖w‖ = 5, ‖g‖ = 1: ratio = 0.01 · 5 / (1 + 2.5); update = ratio · (g + 0.5 w) = ratio · [1.5, 3].
            let ratio = 0.01 * 5.0 / 3.5
            let expected = [| 3.0 - ratio * 1.5; 4.0 - ratio * 3.0 |]
            let actual = w.data<float32>().ToArray() |> Array.map float
            Expect.floatClose Accuracy.medium actual[0] expected[0] "w0"
            Expect.floatClose Accuracy.medium actual[1] expected[1] "w1"
        }
    ]

/// Two modules with an optimizer each, stepped in one training step (the GAN / teacher pattern).
type TwoOptimizerTask() =
    let a = torch.nn.Linear(2L, 1L)
    let b = torch.nn.Linear(2L, 1L)
    let x = torch.ones(4L, 2L)
    member _.A = a
    member _.B = b
    interface ITrainingStep with
        member _.Modules = readOnlyDict [ "a", (a :> torch.nn.Module); "b", (b :> torch.nn.Module) ]
        member _.Optimizers =
            [| struct ("a", OptimizerSpec(Kind = OptimizerKind.Adam, LearningRate = 0.01, Cosine = false), a.named_parameters ())
               struct ("b", OptimizerSpec(Kind = OptimizerKind.Sgd, LearningRate = 0.1, Momentum = 0.0, Cosine = false), b.named_parameters ()) |]
            :> IReadOnlyList<_>
        member _.State = readOnlyDict []
        member _.Step(ctx, _) =
            let lossA = ctx.Optimize("a", a.forward(x).pow(torch.tensor(2.0f)).mean())
            let lossB = ctx.Optimize("b", b.forward(x).sub(torch.tensor(1.0f)).pow(torch.tensor(2.0f)).mean())
            readOnlyDict [ "loss_a", lossA; "loss_b", lossB ]

let trainerTests =
    testList "trainer" [
        test "redirected progress: a line at each tenth of a one-epoch run and one at its end, each with its ETA" {
            let writer = new StringWriter()
            let progress = ConsoleProgress(writer)
            let task = LinearTask(3L)
            Trainer.Run(task, TrainerOptions(Epochs = 1, BatchSize = 8, ExampleCount = 200L, Seed = 1L, LogEvery = 100), RunFolder(Fixtures.tempDir "progress"),
                        torch.CPU, progress) |> ignore
            let lines = writer.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries)
            Expect.equal lines.Length 10 "25 steps: 9 tenths mid-epoch and the epoch's end"
            Expect.isTrue (lines |> Array.forall (fun l -> l.StartsWith "epoch 1/1 [" && l.Contains "ETA")) "bar, rate and ETA"
            Expect.stringContains lines[0] "] 12" "the first past a tenth (3 of 25 steps: 12 per cent)"
            Expect.stringContains lines[9] "] 100" "the end"
        }
        test "several optimizers step in one training step, each on its own parameters" {
            let folder = RunFolder(Fixtures.tempDir "two")
            let task = TwoOptimizerTask()
            let b0 = weights task.B
            let a0 = weights task.A
            Trainer.Run(task, TrainerOptions(Epochs = 3, BatchSize = 2, ExampleCount = 8L, Seed = 1L, LogEvery = 1), folder, torch.CPU, SilentProgress()) |> ignore
            let losses = folder.ReadMetrics() |> Seq.filter (fun r -> r.ContainsKey "summary") |> Seq.map (fun r -> r["loss_a"].GetValue<float>(), r["loss_b"].GetValue<float>()) |> Seq.toArray
            Expect.isLessThan (fst losses[2]) (fst losses[0]) "A's loss falls (Adam)"
            Expect.isLessThan (snd losses[2]) (snd losses[0]) "B's loss falls (SGD)"
            Expect.notEqual (weights task.A) a0 "A moved"
            Expect.notEqual (weights task.B) b0 "B moved"
            let metric = folder.ReadMetrics() |> Seq.find (fun r -> r.ContainsKey "lr/a")
            Expect.equal (metric["lr/a"].GetValue<float>(), metric["lr/b"].GetValue<float>()) (0.01, 0.1) "each optimizer's rate is logged"
        }

        test "trains, logs metrics per step and per epoch, and checkpoints" {
            let folder = RunFolder(Fixtures.tempDir "trainer")
            let task = LinearTask(1L)
            let summary = Trainer.Run(task, options 4, folder, torch.CPU, SilentProgress())
            let losses = epochLosses folder
            Expect.equal losses.Length 4 "one summary per epoch"
            Expect.isLessThan losses[3] (losses[0] * 0.7) "the loss falls"
            Expect.equal summary.Steps 32L "8 batches x 4 epochs"
            Expect.isTrue summary.Finished "finished"
            Expect.isTrue (File.Exists(Path.Combine(folder.CheckpointsDir, Trainer.CheckpointName))) "checkpoint"
            Expect.isGreaterThan (folder.ReadMetrics().Count) 4 "step lines too"
            Expect.isNonEmpty (Directory.GetFiles(Path.Combine(folder.Root, "tensorboard"), "*", SearchOption.AllDirectories)) "TensorBoard events"
        }

        test "a run stopped and resumed logs the same metrics and ends with the same weights" {
            Ssl.Host.Runtime.DeviceSetup.Configure(Ssl.Host.Runtime.DeviceRequest.Cpu, seed = 5L, deterministic = true) |> ignore
            let straight = RunFolder(Fixtures.tempDir "straight")
            torch.manual_seed(5L) |> ignore
            let a = LinearTask(2L)
            Trainer.Run(a, options 5, straight, torch.CPU, SilentProgress()) |> ignore

            let resumed = RunFolder(Fixtures.tempDir "resumed")
            torch.manual_seed(5L) |> ignore
            let first = LinearTask(2L)
            let part = Trainer.Run(first, (optionsWith 5 (Some 2) false "test"), resumed, torch.CPU, SilentProgress())
            Expect.isFalse part.Finished "stopped early"
            torch.manual_seed(99L) |> ignore // a fresh process would start from other weights: the checkpoint must restore them
            let second = LinearTask(2L)
            Trainer.Run(second, (optionsWith 5 None true "test"), resumed, torch.CPU, SilentProgress()) |> ignore

            Expect.sequenceEqual (epochLosses resumed) (epochLosses straight) "same epoch losses"
            Expect.sequenceEqual (weights second.Model) (weights a.Model) "same final weights"
        }

        test "a NaN loss stops with a clear message and the last good checkpoint loads" {
            let folder = RunFolder(Fixtures.tempDir "nan")
            let e = Prop.throws<NonFiniteLossException> (fun () ->
                Trainer.Run(LinearTask(3L, poison = true), options 3, folder, torch.CPU, SilentProgress()) |> ignore)
            printfn "    message: %s" e.Message
            Expect.stringContains e.Message "loss of optimizer 'main' is NaN at epoch 1" "names the optimizer and epoch"
            let fresh = LinearTask(3L)
            let restored = Trainer.Run(fresh, (optionsWith 1 None true "test"), folder, torch.CPU, SilentProgress())
            Expect.equal restored.Epochs 1 "the epoch-0 checkpoint was loaded: nothing left to train"
        }

        test "no garbage collection runs inside a step (GcFence), and collections run again after training" {
            let folder = RunFolder(Fixtures.tempDir "fence")
            let task = GarbageTask(7L)
            let before = GC.CollectionCount 0
            // 8 epochs x 8 steps x 1 MiB: unfenced, gen 0 (a few MiB here) would be collected inside steps.
            Trainer.Run(task, options 8, folder, torch.CPU, SilentProgress()) |> ignore
            Expect.equal task.Fenced.Count 64 "64 steps"
            Expect.allEqual task.Fenced true "a no-GC region is open when each step begins"
            Expect.allEqual task.CollectionsInside 0 "no gen-0 collection inside any step"
            Expect.isGreaterThan (GC.CollectionCount 0 - before) 0 "collections ran (at renewals and epoch ends)"
            Expect.isFalse GcFence.Active "the region is closed after training"
        }

        test "a fence whose budget a step overruns opens a new region at the next boundary" {
            use fence = new GcFence(1L <<< 20)
            Expect.isTrue (fence.Renew()) "a region opens"
            let mutable sink : obj = null
            for _ in 1 .. 16384 do sink <- Array.zeroCreate<byte> 256 // 4 MiB: the runtime ends the region
            Expect.isFalse GcFence.Active "the overrun ended the region"
            Expect.isTrue (fence.Renew()) "renewed at the boundary"
            Expect.equal fence.Renewals 2 "two regions opened"
            fence.Close()
            Expect.isFalse GcFence.Active "closed"
            fence.Close() // closing twice is harmless
            Prop.throws<ArgumentOutOfRangeException> (fun () -> new GcFence(1024L) |> ignore) |> ignore
        }

        test "an observer stops the trainer after its step, as a normal return whose summary says so" {
            let folder = RunFolder(Fixtures.tempDir "observer-stop")
            let observer = CountingObserver(11)
            // 8 steps an epoch: the 11th is the third of the second epoch.
            let observed = TrainerOptions(Epochs = 3, BatchSize = 32, ExampleCount = 256L, Seed = 11L, ConfigDigest = "test", LogEvery = 4, Observer = observer)
            let summary = Trainer.Run(LinearTask(1L), observed, folder, torch.CPU, SilentProgress())
            Expect.equal summary.StoppedBy StopReason.Observer "stopped by the observer"
            Expect.isFalse summary.Finished "not finished"
            Expect.equal summary.Steps 11L "the step it stopped at ran, no later one"
            Expect.equal summary.Epochs 1 "one whole epoch"
            Expect.isGreaterThan summary.ImagesPerSecond 0.0 "the cut epoch's steps are in the rate"
            Expect.equal observer.Steps 11 "told of every step"
            Expect.equal (observer.Phases["backward"], observer.Phases["optimizer"]) (11, 11) "one phase pair per optimizer step"
            Expect.equal (epochLosses folder).Length 1 "no epoch row for the cut epoch"
            let resumed = Trainer.Run(LinearTask(1L), optionsWith 3 None true "test", folder, torch.CPU, SilentProgress())
            Expect.isTrue resumed.Finished "a resume continues from the last whole epoch's checkpoint"
            Expect.equal resumed.Steps 24L "all steps"
        }

        test "trainers with different observers in one process see only their own steps" {
            let a, b = CountingObserver(0), CountingObserver(0)
            let run (observer: CountingObserver) epochs batch name =
                Threading.Tasks.Task.Run(fun () ->
                    Trainer.Run(LinearTask(2L), TrainerOptions(Epochs = epochs, BatchSize = batch, ExampleCount = 256L, Seed = 3L, Observer = observer),
                                RunFolder(Fixtures.tempDir name), torch.CPU, SilentProgress()))
            let runs = [| run a 3 32 "observer-a"; run b 2 64 "observer-b" |]
            Threading.Tasks.Task.WaitAll(runs |> Array.map (fun t -> t :> Threading.Tasks.Task))
            Expect.equal (runs |> Array.map (fun t -> t.Result.Steps, t.Result.Finished)) [| 24L, true; 8L, true |] "both ran to their end"
            Expect.equal (a.Steps, a.Images) (24, 768L) "A: its 3 epochs of 8 steps of 32"
            Expect.equal (b.Steps, b.Images) (8, 512L) "B: its 2 epochs of 4 steps of 64"
            Expect.equal (a.Phases["backward"], b.Phases["backward"]) (24, 8) "each its own phases"
            Expect.equal (a.Threads.Count, b.Threads.Count) (1, 1) "each told on its own trainer's thread"
        }

        test "a resume with another config is refused" {
            let folder = RunFolder(Fixtures.tempDir "digest")
            Trainer.Run(LinearTask(4L), options 1, folder, torch.CPU, SilentProgress()) |> ignore
            let e = Prop.throws<InvalidDataException> (fun () ->
                Trainer.Run(LinearTask(4L), (optionsWith 2 None true "other"), folder, torch.CPU, SilentProgress()) |> ignore)
            Expect.stringContains e.Message "expected a checkpoint of this config" "message"
        }
    ]

/// The child-process side of the kill -9 test: writes checkpoints of a growing model forever.
let checkpointWriterLoop (dir: string) =
    let task = LinearTask(6L)
    let step = task :> ITrainingStep
    let optimizers = Dictionary<string, TrainingOptimizer>()
    let path = Path.Combine(dir, "last.ckpt")
    let mutable i = 0L
    while true do
        Checkpoint.Save(path, TrainingPosition(int i, i, 0L, "kill"), step, optimizers)
        i <- i + 1L

let killTests =
    testList "checkpoint" [
        test "kill -9 during checkpoint writes leaves the previous checkpoint loadable" {
            let dir = Fixtures.tempDir "kill"
            let path = Path.Combine(dir, "last.ckpt")
            let exe = Path.Combine(AppContext.BaseDirectory, "Ssl.Tests.dll")
            let rng = Random(7)
            for round in 1 .. 5 do
                let before = if File.Exists path then File.GetLastWriteTimeUtc path else DateTime.MinValue
                use child = Process.Start(ProcessStartInfo("dotnet", $"\"{exe}\" --checkpoint-writer \"{dir}\"", UseShellExecute = false))
                let sw = Stopwatch.StartNew()
                // Wait until this child has replaced the checkpoint at least once, then kill it mid-stream.
                while (not (File.Exists path) || File.GetLastWriteTimeUtc path = before) && sw.Elapsed.TotalSeconds < 30.0 do
                    Threading.Thread.Sleep 10
                Expect.isLessThan sw.Elapsed.TotalSeconds 30.0 "the child wrote a checkpoint"
                Threading.Thread.Sleep(rng.Next(50, 400))
                child.Kill(true) // SIGKILL: no clean-up runs
                child.WaitForExit()
                let task = LinearTask(6L)
                let position = Checkpoint.Load(path, task, Dictionary<string, TrainingOptimizer>())
                Expect.equal position.ConfigDigest "kill" $"round {round}: the checkpoint loads"
        }
        test "a truncated checkpoint is a clear error" {
            let dir = Fixtures.tempDir "ckpt"
            let path = Path.Combine(dir, "c.ckpt")
            File.WriteAllBytes(path, [| 1uy; 2uy |])
            let e = Prop.throws<exn> (fun () -> Checkpoint.Load(path, LinearTask(1L), Dictionary<string, TrainingOptimizer>()) |> ignore)
            Expect.stringContains e.Message path "names the file"
        }
    ]

/// Runs `f` with `n` intra-op threads, restoring the count after.
let private withThreads (n: int) (f: unit -> unit) =
    let before = torch.get_num_threads ()
    torch.set_num_threads n
    try f () finally torch.set_num_threads before

let sideThreadTests =
    // Two SmallConvNets in training mode (batch norm updates its buffers), made from one seed.
    let pair () =
        torch.manual_seed 5L |> ignore
        let a = new Ssl.Core.Models.SmallConvNet(1L, 8L)
        torch.manual_seed 6L |> ignore
        let b = new Ssl.Core.Models.SmallConvNet(1L, 8L)
        a.train ()
        b.train ()
        a, b
    let gen = new torch.Generator(3UL)
    let x1 = torch.randn([| 16L; 1L; 28L; 28L |], generator = gen)
    let x2 = torch.randn([| 16L; 1L; 28L; 28L |], generator = gen)
    let keys (b: Ssl.Core.Models.SmallConvNet) () =
        use _ = torch.no_grad ()
        b.forward x2
    let maxDiff (u: torch.Tensor) (v: torch.Tensor) = (u - v).abs().max().item<float32> () |> float
    testSequenced <| testList "side thread" [
        test "two forwards side by side give what one after the other gives, each on its own thread with half the threads" {
            withThreads 2 (fun () ->
                let a0, b0 = pair ()
                let q0 = a0.forward x1
                let k0 = keys b0 ()
                q0.sum().backward ()
                let owner = obj ()
                let caller = Threading.Thread.CurrentThread.ManagedThreadId
                let mutable sideThread, sideThreads, mainThreads = caller, 0, 0
                let run (a: Ssl.Core.Models.SmallConvNet) b =
                    SideThread.Run(torch.CPU, owner, "x1",
                                   (fun () -> sideThread <- Threading.Thread.CurrentThread.ManagedThreadId
                                              sideThreads <- torch.get_num_threads ()
                                              keys b ()),
                                   (fun () -> mainThreads <- torch.get_num_threads ()
                                              a.forward x1))
                // The owner's first call runs one after the other (another pair, whose batch-norm buffers it moves).
                let aw, bw = pair ()
                run aw bw |> ignore
                let a1, b1 = pair ()
                let struct (k1, q1) = run a1 b1
                q1.sum().backward ()
                Expect.notEqual sideThread caller "the side ran on another thread"
                Expect.equal (sideThreads, mainThreads) (1, 1) "each with one of the two threads"
                Expect.equal (torch.get_num_threads ()) 2 "the caller's count is restored"
                Expect.isLessThan (maxDiff q0 q1) 1e-5 "the main forward's output"
                Expect.isLessThan (maxDiff k0 k1) 1e-5 "the side forward's output"
                Expect.isFalse k1.requires_grad "the side's gradient mode is its own (no_grad inside)"
                for (n, p0), (_, p1) in Seq.zip (a0.named_parameters () |> Seq.map (fun struct (n, p) -> n, p)) (a1.named_parameters () |> Seq.map (fun struct (n, p) -> n, p)) do
                    // Relative, and loose: one thread sums batch norm's statistics in another order than two, and
                    // a batch-norm weight's gradient is a sum of 12,544 terms that cancel to about 1.
                    let scale = 1.0 + (p0.grad.abs().max().item<float32> () |> float)
                    Expect.isLessThan (maxDiff p0.grad p1.grad / scale) 1e-3 $"gradient of {n}"
                for (n, u0), (_, u1) in Seq.zip (b0.named_buffers () |> Seq.map (fun struct (n, p) -> n, p)) (b1.named_buffers () |> Seq.map (fun struct (n, p) -> n, p)) do
                    Expect.isLessThan (maxDiff (u0.to_type torch.ScalarType.Float32) (u1.to_type torch.ScalarType.Float32)) 1e-5 $"side buffer {n}")
        }
        test "the side's result joins the caller's dispose scope and the rest of what it made is freed" {
            withThreads 2 (fun () ->
                let mutable inner: torch.Tensor = null
                let mutable result: torch.Tensor = null
                do
                    use scope = torch.NewDisposeScope ()
                    let struct (side, _) =
                        SideThread.Run(torch.CPU, obj (), "scope",
                                       (fun () -> inner <- x2 * 2.0
                                                  inner + 1.0),
                                       (fun () -> x1 * 3.0))
                    result <- side
                    Expect.isTrue inner.IsInvalid "the side's intermediate is freed when it returns"
                    Expect.isFalse result.IsInvalid "its result lives on in the caller's scope"
                Expect.isTrue result.IsInvalid "the result is freed with the caller's scope")
        }
        test "an error on either side reaches the caller and the thread count is restored" {
            withThreads 2 (fun () ->
                let owner = obj ()
                for call in [ "first"; "later" ] do
                    let e = Prop.throws<InvalidOperationException> (fun () ->
                        SideThread.Run(torch.CPU, owner, "side", (fun () -> raise (InvalidOperationException "side failed")), (fun () -> x1 * 1.0)) |> ignore)
                    Expect.equal e.Message "side failed" $"the side's own exception ({call} call)"
                    Expect.equal (torch.get_num_threads ()) 2 $"count restored after a side error ({call} call)"
                    let e = Prop.throws<ArgumentException> (fun () ->
                        SideThread.Run(torch.CPU, owner, "main", (fun () -> x2 * 1.0), (fun () -> raise (ArgumentException "main failed"))) |> ignore)
                    Expect.stringContains e.Message "main failed" $"the main's own exception ({call} call)"
                    Expect.equal (torch.get_num_threads ()) 2 $"count restored after a main error ({call} call)")
        }
        test "with one intra-op thread both run on the caller, main first" {
            withThreads 1 (fun () ->
                let caller = Threading.Thread.CurrentThread.ManagedThreadId
                let order = ResizeArray<string * int>()
                SideThread.Run(torch.CPU, obj (), "one thread", (fun () -> order.Add("side", Threading.Thread.CurrentThread.ManagedThreadId); x2 * 1.0),
                               (fun () -> order.Add("main", Threading.Thread.CurrentThread.ManagedThreadId); x1 * 1.0)) |> ignore
                Expect.sequenceEqual order [ "main", caller; "side", caller ] "main, then side, on the caller")
        }
        test "the first call of an owner and signature runs main, then side; later calls overlap" {
            withThreads 2 (fun () ->
                let owner = obj ()
                // Whether the side had started when main ended (main waits up to `patience` for it).
                let overlapped signature (patience: TimeSpan) =
                    use started = new Threading.ManualResetEventSlim(false)
                    let mutable sideThreads = 0
                    let mutable seen = false
                    SideThread.Run(torch.CPU, owner, signature,
                                   (fun () -> sideThreads <- torch.get_num_threads (); started.Set()),
                                   (fun () -> seen <- started.Wait patience)) |> ignore
                    Expect.equal sideThreads 1 $"{signature}: the side ran with its own count"
                    seen
                Expect.isFalse (overlapped "a" (TimeSpan.FromMilliseconds 200.0)) "first call of a: one after the other"
                Expect.isTrue (overlapped "a" (TimeSpan.FromSeconds 30.0)) "second call of a: side by side"
                Expect.isFalse (overlapped "b" (TimeSpan.FromMilliseconds 200.0)) "first call of another signature: one after the other"
                Expect.isFalse (SideThread.Run(torch.CPU, obj (), "a", (fun () -> null), (fun () -> true)) |> fun struct (s, _) -> not (isNull s))
                    "a side without a result gives null")
        }
        test "a loss in parts trains as the whole loss does, its backward passes side by side, and repeats bit for bit" {
            withThreads 2 (fun () ->
                Ssl.Host.Runtime.DeviceSetup.Configure(Ssl.Host.Runtime.DeviceRequest.Cpu, threads = 2, seed = 5L, deterministic = true) |> ignore
                let train (parts: bool) =
                    torch.manual_seed 5L |> ignore
                    let task = LinearTask(4L, parts = parts)
                    let folder = RunFolder(Fixtures.tempDir "parts")
                    Trainer.Run(task, options 3, folder, torch.CPU, SilentProgress()) |> ignore
                    epochLosses folder, weights task.Model
                let wholeLosses, whole = train false
                let partLosses, parted = train true
                let _, again = train true
                Expect.sequenceEqual again parted "two runs in parts end with the same weights, bit for bit"
                let gap = Array.map2 (fun (u: float32) v -> abs (u - v)) whole parted |> Array.max
                Expect.isLessThan (float gap) 1e-5 "the weights of the whole loss's run"
                for u, v in Array.zip wholeLosses partLosses do Expect.floatClose Accuracy.medium v u "the epoch losses (the parts' sums)"
                Expect.equal (torch.get_num_threads ()) 2 "the count is restored"
                let e = Prop.throws<NonFiniteLossException> (fun () ->
                    Trainer.Run(LinearTask(3L, poison = true, parts = true), options 3, RunFolder(Fixtures.tempDir "nan-parts"), torch.CPU, SilentProgress()) |> ignore)
                Expect.stringContains e.Message "main" "a NaN part stops training, naming the optimizer")
        }
    ]

[<Tests>]
let tests = testList "engine" [ scheduleTests; optimizerTests; trainerTests; killTests; sideThreadTests ]
