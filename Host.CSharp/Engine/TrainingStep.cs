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
    /// <see cref="StepContext.Optimize"/>; the returned figures are logged (loss terms, accuracies).
    /// Runs inside a dispose scope the engine opens and closes around it.
    /// </summary>
    IReadOnlyDictionary<string, double> Step(StepContext context, long[] batch);
}

/// <summary>A loss that is NaN or infinite: training stops and the last good checkpoint stays.</summary>
public sealed class NonFiniteLossException(string message) : Exception(message);

/// <summary>What a step sees of the engine: where it is, its randomness, and its optimizers.</summary>
public sealed class StepContext
{
    readonly IReadOnlyDictionary<string, TrainingOptimizer> optimizers;

    internal StepContext(int epoch, long step, long totalSteps, long seed, Device device, IReadOnlyDictionary<string, TrainingOptimizer> optimizers)
    {
        Epoch = epoch;
        GlobalStep = step;
        TotalSteps = totalSteps;
        Device = device;
        this.optimizers = optimizers;
        Generator = new Generator((ulong)Ssl.Host.Data.Seeds.Derive(seed, 1_000_000 + step), device.type == DeviceType.CUDA ? device : CPU);
    }

    public int Epoch { get; }
    public long GlobalStep { get; }

    /// <summary>The steps of the whole run (epochs × batches per epoch): the horizon of per-step schedules (BYOL's τ, DINO's temperatures).</summary>
    public long TotalSteps { get; }
    public Device Device { get; }

    /// <summary>This step's generator, seeded from (run seed, step): a resumed run draws the same numbers.</summary>
    public Generator Generator { get; }

    public double LearningRate(string optimizer) => Get(optimizer).LearningRate;

    /// <summary>
    /// zero_grad, backward of <paramref name="loss"/>, clip, (LARS), step for one optimizer. A NaN or
    /// infinite loss stops training with a message naming the optimizer, epoch and step.
    /// Returns the loss value.
    /// </summary>
    public double Optimize(string optimizer, Tensor loss, bool retainGraph = false)
    {
        var target = Get(optimizer);
        var value = loss.item<float>();
        if (!float.IsFinite(value))
            throw new NonFiniteLossException(
                $"loss of optimizer '{optimizer}' is {value} at epoch {Epoch}, step {GlobalStep}: expected a finite number. " +
                "Training stopped; the last checkpoint holds the last good state (lower the learning rate or check the data).");
        var start = System.Diagnostics.Stopwatch.GetTimestamp();
        target.ZeroGrad();
        var zeroed = System.Diagnostics.Stopwatch.GetTimestamp();
        loss.backward(retain_graph: retainGraph);
        var backward = System.Diagnostics.Stopwatch.GetTimestamp();
        target.Step();
        var seconds = (long ticks) => (double)ticks / System.Diagnostics.Stopwatch.Frequency;
        StepBenchmark.AddPhase("backward", seconds(backward - zeroed));
        StepBenchmark.AddPhase("optimizer", seconds(zeroed - start + System.Diagnostics.Stopwatch.GetTimestamp() - backward));
        return value;
    }

    TrainingOptimizer Get(string name) =>
        optimizers.TryGetValue(name, out var o) ? o
            : throw new ArgumentException($"optimizer: expected one of {string.Join(", ", optimizers.Keys)}, found '{name}'");
}
