using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Ssl.Host.Engine;

/// <summary>
/// What a recipe gives the engine (solo-learn / USB style: a method is its modules, its optimizers
/// and a step). The engine owns the loop, the per-batch dispose scope, schedules, checkpoints,
/// NaN detection, metrics and progress; the step owns the method's maths.
/// </summary>
public interface ITrainingStep
{
    /// <summary>Every module whose state a checkpoint must hold (models, EMA teachers, heads), by name.</summary>
    IReadOnlyDictionary<string, nn.Module> Modules { get; }

    /// <summary>The optimizers, by name, each with the parameters it owns.</summary>
    IReadOnlyList<(string Name, OptimizerSpec Spec, IEnumerable<(string Name, Parameter Parameter)> Parameters)> Optimizers { get; }

    /// <summary>Long-lived tensors that are not module state (queues, memory banks), by name, for checkpoints.</summary>
    IReadOnlyDictionary<string, Tensor> State => new Dictionary<string, Tensor>();

    /// <summary>
    /// One training step on the examples at <paramref name="batch"/>. Losses go through
    /// <see cref="StepContext.Optimize(string, Tensor, bool)"/>; the returned figures are logged (loss terms, accuracies).
    /// Runs inside a dispose scope the engine opens and closes around it.
    /// </summary>
    IReadOnlyDictionary<string, double> Step(StepContext context, long[] batch);
}

/// <summary>A loss that is NaN or infinite: training stops; the trainer's message says which checkpoint, if any, holds the last good state.</summary>
public sealed class NonFiniteLossException(string message) : Exception(message);

/// <summary>What a step sees of the engine: where it is, its randomness, and its optimizers.</summary>
public sealed class StepContext
{
    readonly IReadOnlyDictionary<string, TrainingOptimizer> optimizers;
    readonly ITrainingObserver? observer;

    readonly object owner;

    internal StepContext(int epoch, long step, long totalSteps, long seed, Device device, IReadOnlyDictionary<string, TrainingOptimizer> optimizers, int batchSize,
                         ITrainingObserver? observer = null, object? owner = null, Distributed.ICollectives? world = null)
    {
        this.observer = observer;
        this.owner = owner ?? optimizers;
        World = world ?? Distributed.SingleProcess.Instance;
        BatchSize = batchSize;
        Epoch = epoch;
        GlobalStep = step;
        TotalSteps = totalSteps;
        Device = device;
        this.optimizers = optimizers;
        var stepSeed = (ulong)Ssl.Host.Data.Seeds.Derive(seed, 1_000_000 + step);
        // Every rank seeds one process's stream; per-image draws take the rank's rows of the global batch's.
        var on = device.type == DeviceType.CUDA ? device : CPU;
        Generator = World.Size == 1 ? new Generator(stepSeed, on) : new Ssl.Core.Transforms.Draw.RowShard(stepSeed, on, World.Rank, World.Size);
    }

    /// <summary>This rank's part of a global batch of <paramref name="global"/> examples (all of it at one rank):
    /// the rank's consecutive slice, as the engine shards its own batches. The global choice comes from
    /// a draw every rank makes alike (<see cref="Generator"/>'s permutations, not Core's per-image <c>Draw</c>).</summary>
    public long[] Shard(long[] global)
    {
        if (World.Size == 1) return global;
        if (global.Length % World.Size != 0)
            throw new ArgumentException($"batch: expected a global batch that {World.Size} ranks share evenly, found {global.Length} examples");
        var part = global.Length / World.Size;
        return global.AsSpan(World.Rank * part, part).ToArray();
    }

    /// <summary>The ranks of this run (<see cref="Distributed.SingleProcess"/> for one process).</summary>
    public Distributed.ICollectives World { get; }

    /// <summary>The examples of this step over every rank: <see cref="BatchSize"/> × ranks.</summary>
    public int GlobalBatchSize => BatchSize * World.Size;

    /// <summary>
    /// <paramref name="local"/> (n, ...) of every rank, concatenated in rank order: (ranks·n, ...), with
    /// the gradient flowing back to each row's own rank (<see cref="Distributed.GatherFunction"/>). A
    /// loss over the global batch (NT-Xent's negatives, Barlow Twins' cross-correlation) gathers its
    /// embeddings here; at one rank it is <paramref name="local"/> itself. This rank's rows start at
    /// <see cref="Distributed.ICollectives.Rank"/> · n.
    /// </summary>
    public Tensor Gather(Tensor local) => Distributed.GatherFunction.Gather(World, local);

    /// <summary>This rank's rows of a tensor laid out as <see cref="Gather"/> lays out the global batch: the
    /// <see cref="Distributed.ICollectives.Rank"/>-th of its <see cref="Distributed.ICollectives.Size"/> equal blocks of rows.</summary>
    public Tensor OwnRows(Tensor global)
    {
        if (World.Size == 1) return global;
        var rows = global.shape[0] / World.Size;
        return global.narrow(0, World.Rank * rows, rows);
    }

    /// <summary>Every rank's <paramref name="local"/> indices in rank order: the examples of the global batch.</summary>
    public long[] GatherIndices(long[] local)
    {
        if (World.Size == 1) return local;
        using var mine = tensor(local);
        using var all = World.AllGather(mine);
        return all.data<long>().ToArray();
    }

    public int Epoch { get; }

    /// <summary>The examples in this step's batch (the last batch of an epoch may be smaller).</summary>
    public int BatchSize { get; }
    public long GlobalStep { get; }

    /// <summary>The steps of the whole run (epochs × batches per epoch): the horizon of per-step schedules (BYOL's τ, DINO's temperatures).</summary>
    public long TotalSteps { get; }
    public Device Device { get; }

    /// <summary>
    /// This step's generator, seeded from (run seed, step): a resumed run draws the same numbers. At
    /// several ranks every rank seeds it alike (<see cref="Ssl.Core.Transforms.Draw.RowShard"/>): a
    /// per-image draw through Core's <c>Draw</c> is the rank's rows of one process's draw for the
    /// global batch, any other draw (a permutation, a shared noise set) is one process's, the same on
    /// every rank. So N ranks see the augmentations of one process at the global batch.
    /// </summary>
    public Generator Generator { get; }

    public double LearningRate(string optimizer) => Get(optimizer).LearningRate;

    /// <summary>
    /// <c>(side(), main())</c> for two passes of a step that share no module buffers, graph nodes
    /// other than leaves, or generators: side by side on the CPU where the run allows
    /// (<see cref="SideThread"/>, <c>--side-thread</c>), else one after the other, with the same results
    /// up to summation order. <paramref name="pass"/> names the call within the step.
    /// </summary>
    public (Tensor? Side, T Main) SideBySide<T>(string pass, Func<Tensor?> side, Func<T> main)
    {
        // Collectives run from one thread at a time (MPI_THREAD_SERIALIZED): at several ranks, in turn.
        if (World.Size > 1) { var first = main(); return (side(), first); }
        return SideThread.Run(Device, owner, $"{pass}, batch {BatchSize}", side, main);
    }

    /// <summary>
    /// zero_grad, backward of <paramref name="loss"/>, gradients averaged across ranks, clip, (LARS), step
    /// for one optimizer. A NaN or
    /// infinite loss stops training with a message naming the optimizer, epoch and step. The run's
    /// observer, if any, is told the seconds of the "backward" and "optimizer" phases.
    /// Returns the loss value.
    /// </summary>
    public double Optimize(string optimizer, Tensor loss, bool retainGraph = false) =>
        Optimize(optimizer, loss.item<float>(), () => loss.backward(retain_graph: retainGraph));

    /// <summary>
    /// <see cref="Optimize(string, Tensor, bool)"/> of a loss that is the sum of <paramref name="parts"/>
    /// whose graphs share nothing but leaves (the parameters): the backward passes of the first and
    /// second half of the parts run side by side (<see cref="SideThread"/>; one after the other where it
    /// does not run them so), and the gradients they accumulate sum to the whole loss's. MoCo's query
    /// batch in two halves of whole batch-norm groups is such a sum. Returns the loss value (the sum).
    /// </summary>
    public double Optimize(string optimizer, IReadOnlyList<Tensor> parts)
    {
        if (parts.Count == 0) throw new ArgumentException("parts: expected at least one loss term, found none");
        var value = 0.0f;
        foreach (var part in parts) value += part.item<float>();
        var half = (parts.Count + 1) / 2;
        void Backward(int from, int to) { for (var i = from; i < to; i++) parts[i].backward(); }
        return Optimize(optimizer, value, () =>
        {
            if (parts.Count == 1) parts[0].backward();
            else if (World.Size > 1) Backward(0, parts.Count);
            else SideThread.Run(Device, Get(optimizer), $"backward of {parts.Count} parts, batch {BatchSize}",
                                () => Backward(half, parts.Count), () => Backward(0, half));
        });
    }

    double Optimize(string optimizer, float value, Action backward)
    {
        var target = Get(optimizer);
        // The global batch's loss; a non-finite one on any rank stops every rank alike.
        if (World.Size > 1) value = (float)(Distributed.CollectiveExtensions.SumAcrossRanks(World, [value])[0] / World.Size);
        if (!float.IsFinite(value))
            throw new NonFiniteLossException(
                $"loss of optimizer '{optimizer}' is {value} at epoch {Epoch}, step {GlobalStep}: expected a finite number (lower the learning rate or check the data).");
        var start = System.Diagnostics.Stopwatch.GetTimestamp();
        target.ZeroGrad();
        var zeroed = System.Diagnostics.Stopwatch.GetTimestamp();
        backward();
        Distributed.GradientAverage.Apply(World, target.Parameters);
        var afterBackward = System.Diagnostics.Stopwatch.GetTimestamp();
        target.Step();
        var seconds = (long ticks) => (double)ticks / System.Diagnostics.Stopwatch.Frequency;
        if (observer is not null)
        {
            observer.Phase("backward", seconds(afterBackward - zeroed));
            observer.Phase("optimizer", seconds(zeroed - start + System.Diagnostics.Stopwatch.GetTimestamp() - afterBackward));
        }
        return value;
    }

    TrainingOptimizer Get(string name) =>
        optimizers.TryGetValue(name, out var o) ? o
            : throw new ArgumentException($"optimizer: expected one of {string.Join(", ", optimizers.Keys)}, found '{name}'");
}
