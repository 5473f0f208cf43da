using TorchSharp;

namespace Ssl.Host.Engine;

/// <summary>What <see cref="StepBenchmark"/> measured over its window of training steps.</summary>
/// <param name="EncoderTrainingFlops">forward + backward FLOPs of the module named "encoder" (all modules if none is)</param>
/// <param name="AllTrainingFlops">forward + backward FLOPs of every module of the step (heads, teachers, ...)</param>
/// <param name="PhaseSeconds">seconds spent per phase over the window: "backward" and "optimizer" (zero_grad and step),
/// timed in <see cref="StepContext.Optimize(string, TorchSharp.torch.Tensor, bool)"/> (and its overload); the rest of <paramref name="Seconds"/> is forward passes, augmentation,
/// losses and bookkeeping (recipes call their modules' forward directly, so it is not split further here)</param>
public sealed record StepBenchmarkResult(int Steps, long Images, double Seconds, double EncoderTrainingFlops, double AllTrainingFlops,
    IReadOnlyDictionary<string, double> PhaseSeconds)
{
    public double ImagesPerSecond => Images / Math.Max(Seconds, 1e-9);
    public double EncoderGflops => EncoderTrainingFlops / Math.Max(Seconds, 1e-9) / 1e9;
    public double AllGflops => AllTrainingFlops / Math.Max(Seconds, 1e-9) / 1e9;
}

/// <summary>Thrown by the trainer when the benchmark window is complete: the run stops there.</summary>
public sealed class StepBenchmarkComplete(StepBenchmarkResult result)
    : Exception($"step benchmark complete: {result.Steps} steps, {result.ImagesPerSecond:F1} img/s")
{
    public StepBenchmarkResult Result { get; } = result;
}

/// <summary>
/// A process-wide request to time the training steps of the next <see cref="Trainer.Run"/> instead of
/// finishing it (<c>ssl bench</c>): any recipe is benchmarked through its own step, data and
/// optimizers without per-recipe code. After <see cref="WarmupSteps"/> steps, <see cref="MeasuredSteps"/>
/// steps are timed (the step and its dispose scope; no checkpoints or epoch ends) with FLOP counters
/// on the step's modules; then the trainer throws <see cref="StepBenchmarkComplete"/>.
/// </summary>
public sealed class StepBenchmark
{
    public StepBenchmark(int warmupSteps, int measuredSteps)
    {
        if (warmupSteps < 0) throw new ArgumentException($"warm-up steps: expected 0 or more, found {warmupSteps}");
        if (measuredSteps <= 0) throw new ArgumentException($"measured steps: expected a positive count, found {measuredSteps}");
        (WarmupSteps, MeasuredSteps) = (warmupSteps, measuredSteps);
    }

    public int WarmupSteps { get; }
    public int MeasuredSteps { get; }

    /// <summary>The benchmark the next trainer run serves; null (the default) trains normally.</summary>
    public static StepBenchmark? Active { get; set; }

    int seen;
    int measured;
    long images;
    double seconds;
    FlopCounter? encoder;
    FlopCounter? all;
    readonly Dictionary<string, double> phases = new();

    /// <summary>
    /// Adds <paramref name="seconds"/> to a phase of the measured steps of the active benchmark (none: nothing).
    /// The phases are not part of a step's contract: they split the bench's time for docs/performance.md.
    /// </summary>
    public static void AddPhase(string phase, double seconds)
    {
        if (Active is { } b && b.encoder is not null)
            b.phases[phase] = b.phases.GetValueOrDefault(phase) + seconds;
    }

    /// <summary>Called by the trainer after each step with the step's images and duration.</summary>
    internal void AfterStep(ITrainingStep step, int batchImages, double stepSeconds)
    {
        seen++;
        if (seen <= WarmupSteps)
        {
            if (seen == WarmupSteps) Attach(step);
            return;
        }
        if (encoder is null) Attach(step);
        measured++;
        images += batchImages;
        seconds += stepSeconds;
        if (measured < MeasuredSteps) return;
        var result = new StepBenchmarkResult(measured, images, seconds, encoder!.TrainingFlops, all!.TrainingFlops,
            new Dictionary<string, double>(phases));
        encoder.Dispose();
        all.Dispose();
        Active = null;
        throw new StepBenchmarkComplete(result);
    }

    void Attach(ITrainingStep step)
    {
        var modules = step.Modules;
        encoder = new FlopCounter(modules.TryGetValue("encoder", out var e) ? new[] { e } : modules.Values);
        all = new FlopCounter(modules.Values);
    }
}
