using System.Diagnostics;
using TorchSharp;
using Ssl.Host.Data;
using Ssl.Host.Runs;
using Ssl.Host.Runtime;
using static TorchSharp.torch;

namespace Ssl.Host.Engine;

/// <summary>How long and on what a recipe trains.</summary>
public sealed record TrainerOptions
{
    public required int Epochs { get; init; }
    public required int BatchSize { get; init; }
    public required long ExampleCount { get; init; }
    public long Seed { get; init; }
    public bool Resume { get; init; }
    /// <summary>A metrics line every this many steps, or more often in a short run (<see cref="LogInterval"/>);
    /// epoch summaries are always written.</summary>
    public int LogEvery { get; init; } = 50;

    /// <summary>Step lines a run logs at least where it has that many steps, so that its curve shows
    /// the course of training even when it is one epoch short.</summary>
    public const int MinLoggedSteps = 20;

    /// <summary>The steps between two metrics lines of a run of <paramref name="totalSteps"/>: LogEvery,
    /// or fewer where that would log less than <see cref="MinLoggedSteps"/> lines (every step at worst).</summary>
    public int LogInterval(long totalSteps) => (int)Math.Max(1, Math.Min(LogEvery, totalSteps / MinLoggedSteps));
    /// <summary>Identifies the resolved config; a resume with another digest is refused.</summary>
    public string ConfigDigest { get; init; } = "";
    /// <summary>Stop (as if interrupted) after this many epochs of this process; null = train to the end.</summary>
    public int? StopAfterEpochs { get; init; }
    /// <summary>Told each epoch's batches before they run (a streamed data set decodes them ahead); null: nothing to tell.</summary>
    public IBatchPlan? Plan { get; init; }
    /// <summary>Told of every step of this run, and may stop it (<see cref="ITrainingObserver"/>); null: none.</summary>
    public ITrainingObserver? Observer { get; init; }
    /// <summary>The ranks the run spans; null: the process's (<see cref="Distributed.World.Current"/>).
    /// <see cref="BatchSize"/> is the global batch, shared evenly by the ranks.</summary>
    public Distributed.ICollectives? World { get; init; }
}

/// <summary>What an observer tells the trainer after a step.</summary>
public enum StepVerdict { Continue, Stop }

/// <summary>
/// Watches one trainer run step by step (<c>ssl bench</c>'s <see cref="StepBenchmark"/>): the trainer
/// calls it on the training thread, and it sees only the run whose <see cref="TrainerOptions.Observer"/>
/// it is. A <see cref="StepVerdict.Stop"/> ends the run after that step, as a normal return whose
/// summary says so (<see cref="StopReason.Observer"/>): no epoch end, hook or checkpoint follows.
/// </summary>
public interface ITrainingObserver
{
    /// <summary>Before each step, outside its timing: the step's modules may be hooked here.</summary>
    void BeforeStep(ITrainingStep step) { }

    /// <summary>After each step: its examples and its seconds (schedule, step and dispose scope).</summary>
    StepVerdict AfterStep(ITrainingStep step, int batchImages, double seconds);

    /// <summary>Each step's figures (losses, accuracies), as logged: means over the ranks. Before <see cref="AfterStep"/>.</summary>
    void Figures(long step, IReadOnlyDictionary<string, double> figures) { }

    /// <summary>
    /// Seconds of one phase inside a step, from <see cref="StepContext"/>: "backward", and "optimizer"
    /// (zero_grad and step), once per optimizer step.
    /// </summary>
    void Phase(string name, double seconds) { }
}

/// <summary>Why a run ended before its last epoch.</summary>
public enum StopReason
{
    /// <summary>It did not: every epoch ran.</summary>
    None,
    /// <summary><see cref="TrainerOptions.StopAfterEpochs"/> epochs ran in this process.</summary>
    StopAfterEpochs,
    /// <summary>The <see cref="TrainerOptions.Observer"/> said <see cref="StepVerdict.Stop"/>, mid-epoch.</summary>
    Observer,
}

/// <summary>
/// What a training run measured (result.json's <c>train</c> block). <paramref name="Epochs"/> counts
/// whole epochs; <paramref name="Steps"/> and <paramref name="ImagesPerSecond"/> include the steps of
/// an epoch an observer cut short.
/// </summary>
public sealed record TrainSummary(int Epochs, long Steps, double WallSeconds, double ImagesPerSecond, double PeakRssMb, bool Finished)
{
    /// <summary>Why the run stopped early; <see cref="StopReason.None"/> when <see cref="Finished"/>.</summary>
    public StopReason StoppedBy { get; init; }
}

/// <summary>Called after every epoch (kNN monitors, sample grids); runs outside the training scope.</summary>
public delegate void EpochHook(int epoch, IReadOnlyDictionary<string, double> epochMeans);

/// <summary>
/// The training loop every recipe runs on: one dispose scope per batch, per-step schedules and
/// seeds, no garbage collection inside a step (<see cref="GcFence"/>), NaN/Inf detection, a
/// checkpoint after every epoch (atomic), resume, metrics.jsonl,
/// TensorBoard scalars and a progress line with rate and ETA; an optional observer sees each step
/// and may stop the run (<see cref="TrainerOptions.Observer"/>).
/// </summary>
public static class Trainer
{
    public const string CheckpointName = "last.ckpt";

    public static TrainSummary Run(ITrainingStep step, TrainerOptions options, RunFolder folder, Device device,
                                   IProgressReporter? progress = null, EpochHook? afterEpoch = null)
    {
        var world = options.World ?? Distributed.World.Current;
        if (options.BatchSize % world.Size != 0)
            throw new ArgumentException(
                $"BatchSize: expected a global batch that {world.Size} ranks share evenly (a multiple of {world.Size}), found {options.BatchSize}; --set BatchSize=N");
        // Rank 0 alone writes (docs/distributed.md): the others report nothing and keep no hook.
        if (world.Rank != 0) (progress, afterEpoch) = (new SilentProgress(), null);
        progress ??= new ConsoleProgress();
        var optimizers = step.Optimizers.ToDictionary(o => o.Name, o => new TrainingOptimizer(o.Name, o.Spec, o.Parameters));
        using var fence = new GcFence();
        try
        {
            return Loop(step, options, folder, device, progress, afterEpoch, optimizers, fence, world);
        }
        finally
        {
            foreach (var o in optimizers.Values) o.Dispose();
        }
    }

    static TrainSummary Loop(ITrainingStep step, TrainerOptions options, RunFolder folder, Device device, IProgressReporter progress,
                             EpochHook? afterEpoch, Dictionary<string, TrainingOptimizer> optimizers, GcFence fence, Distributed.ICollectives world)
    {
        var writer = world.Rank == 0;
        var checkpoint = Path.Combine(folder.CheckpointsDir, CheckpointName);
        var startEpoch = 0;
        long globalStep = 0;
        TrainingPosition? resumed = null;
        if (options.Resume && File.Exists(checkpoint))
        {
            var position = Checkpoint.ReadPosition(checkpoint);
            if (position.Seed != options.Seed || position.ConfigDigest != options.ConfigDigest)
                throw new InvalidDataException(
                    $"{checkpoint}: expected a checkpoint of this config (seed {options.Seed}, digest {options.ConfigDigest}), " +
                    $"found seed {position.Seed}, digest {position.ConfigDigest}; use another --out folder or drop --resume");
            resumed = Checkpoint.Load(checkpoint, step, optimizers);
            (startEpoch, globalStep) = (resumed.NextEpoch, resumed.GlobalStep);
            // Rows the dead process wrote after this checkpoint (and a half-written last line) go: the
            // resumed run writes them again.
            if (writer) folder.TrimMetrics(startEpoch, globalStep);
        }
        else if (options.Resume && writer)
            folder.TrimMetrics(0, 0);
        // Every rank starts from rank 0's state: the same parameters, buffers, queues and teachers.
        Distributed.GradientAverage.BroadcastState(world, step.Modules.Values, step.State.Values);

        var sampler = new BatchSampler(options.ExampleCount, options.BatchSize, options.Seed);
        var stepsPerEpoch = sampler.BatchesPerEpoch;
        var tensorboard = writer ? utils.tensorboard.SummaryWriter(Path.Combine(folder.Root, "tensorboard")) : null;
        var localBatch = options.BatchSize / world.Size;
        progress.Start(options.Epochs, stepsPerEpoch, startEpoch);
        var logEvery = options.LogInterval((long)options.Epochs * stepsPerEpoch);
        var clock = Stopwatch.StartNew();
        var wallBefore = resumed?.WallSeconds ?? 0.0;
        var trainingSeconds = resumed?.TrainingSeconds ?? 0.0;
        long imagesSeen = resumed?.ImagesSeen ?? 0;
        var peakBefore = resumed?.PeakRssMb ?? 0.0;
        var epochsRun = 0;
        var lastEpoch = startEpoch;
        var observer = options.Observer;
        var stoppedBy = StopReason.None;

        for (var epoch = startEpoch; epoch < options.Epochs; epoch++)
        {
            if (options.StopAfterEpochs is { } stop && epochsRun >= stop)
            {
                stoppedBy = StopReason.StopAfterEpochs;
                break;
            }
            foreach (var module in step.Modules.Values) module.train();
            var sums = new Dictionary<string, double>();
            var epochClock = Stopwatch.StartNew();
            long epochImages = 0;
            long b = 0;
            // Each rank's shard of every global batch: the same images per step as one process.
            // (Every batch is whole: the sampler drops the last partial one.)
            var batches = sampler.Batches(epoch)
                .Select(global => world.Size == 1 ? global : global.AsSpan(world.Rank * localBatch, localBatch).ToArray()).ToArray();
            options.Plan?.Plan(batches);
            foreach (var batch in batches)
            {
                observer?.BeforeStep(step);
                var stepClock = Stopwatch.StartNew();
                var at = epoch + (double)b / stepsPerEpoch;
                foreach (var o in optimizers.Values) o.Schedule(at, options.Epochs);
                fence.Renew();
                IReadOnlyDictionary<string, double> figures;
                using (var scope = NewDisposeScope())
                {
                    manual_seed(Seeds.Derive(options.Seed, globalStep));
                    var context = new StepContext(epoch, globalStep, options.Epochs * stepsPerEpoch, options.Seed, device, optimizers, batch.Length, observer, step, world);
                    try { figures = step.Step(context, batch); }
                    catch (NonFiniteLossException e)
                    {
                        var kept = File.Exists(checkpoint)
                            ? $"{checkpoint} holds the state after {epoch} of {options.Epochs} epochs; --resume continues from there"
                            : "no checkpoint was written yet (it stopped in the first epoch)";
                        throw new NonFiniteLossException($"{e.Message} Training stopped; {kept}.");
                    }
                    finally { context.Generator.Dispose(); }
                }
                if (world.Size > 1) figures = Mean(world, figures);
                observer?.Figures(globalStep, figures);
                var verdict = observer?.AfterStep(step, batch.Length * world.Size, stepClock.Elapsed.TotalSeconds) ?? StepVerdict.Continue;
                FaultInjection.At("step");
                foreach (var (k, v) in figures) sums[k] = sums.GetValueOrDefault(k) + v;
                globalStep++;
                b++;
                epochImages += batch.Length * world.Size;
                var rate = epochImages / Math.Max(epochClock.Elapsed.TotalSeconds, 1e-9);
                if (globalStep % logEvery == 0 && writer)
                {
                    var record = new Dictionary<string, object?> { ["epoch"] = epoch, ["step"] = globalStep, ["images_per_s"] = rate };
                    foreach (var (name, o) in optimizers) record[$"lr/{name}"] = o.LearningRate;
                    foreach (var (k, v) in figures) record[k] = v;
                    folder.AppendMetrics(record);
                    foreach (var (k, v) in figures) tensorboard!.add_scalar($"train/{k}", (float)v, (int)globalStep);
                }
                progress.Step(epoch, b, figures, rate);
                if (verdict == StepVerdict.Stop)
                {
                    stoppedBy = StopReason.Observer;
                    break;
                }
            }
            fence.Close();
            options.Plan?.Plan(Array.Empty<long[]>());
            trainingSeconds += epochClock.Elapsed.TotalSeconds;
            imagesSeen += epochImages;
            if (stoppedBy == StopReason.Observer) break;
            var means = sums.ToDictionary(kv => kv.Key, kv => kv.Value / Math.Max(b, 1));
            // Order (docs/reliability.md): the epoch's hook and metrics row first, then the checkpoint
            // that covers them, so a process killed in between loses no row a resume would not write again.
            afterEpoch?.Invoke(epoch, means);
            var summary = new Dictionary<string, object?>
            {
                ["epoch"] = epoch, ["step"] = globalStep, ["summary"] = "epoch",
                ["images_per_s"] = epochImages / Math.Max(epochClock.Elapsed.TotalSeconds, 1e-9),
                ["rss_mb"] = ProcessStats.RssMb(), ["peak_rss_mb"] = ProcessStats.PeakRssMb(),
                ["live_tensors"] = DisposeScopeManager.Statistics.ThreadTotalLiveCount,
            };
            foreach (var (k, v) in means) summary[k] = v;
            var peak = Math.Max(peakBefore, ProcessStats.PeakRssMb());
            if (writer)
            {
                folder.AppendMetrics(summary);
                FaultInjection.At("metrics-row");
                Checkpoint.Save(checkpoint, new TrainingPosition(epoch + 1, globalStep, options.Seed, options.ConfigDigest,
                    trainingSeconds, wallBefore + clock.Elapsed.TotalSeconds, imagesSeen, peak), step, optimizers);
                foreach (var (k, v) in means) tensorboard!.add_scalar($"epoch/{k}", (float)v, epoch);
            }
            progress.EpochEnd(epoch, means, epochImages / Math.Max(epochClock.Elapsed.TotalSeconds, 1e-9));
            epochsRun++;
            lastEpoch = epoch + 1;
        }
        progress.Stop();
        var finished = stoppedBy == StopReason.None && lastEpoch >= options.Epochs;
        return new TrainSummary(lastEpoch, globalStep, wallBefore + clock.Elapsed.TotalSeconds,
            imagesSeen / Math.Max(trainingSeconds, 1e-9), Math.Max(peakBefore, ProcessStats.PeakRssMb()), finished)
        {
            StoppedBy = stoppedBy,
        };
    }

    /// <summary>Each figure's mean over the ranks (the global batch's, for a mean over examples).</summary>
    static IReadOnlyDictionary<string, double> Mean(Distributed.ICollectives world, IReadOnlyDictionary<string, double> figures)
    {
        var keys = figures.Keys.Order(StringComparer.Ordinal).ToArray();
        var sums = Distributed.CollectiveExtensions.SumAcrossRanks(world, keys.Select(k => figures[k]).ToArray());
        return keys.Select((k, i) => (k, sums[i] / world.Size)).ToDictionary(p => p.k, p => p.Item2);
    }
}
