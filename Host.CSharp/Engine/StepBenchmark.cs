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

/// <summary>
/// Times a window of training steps of one <see cref="Trainer.Run"/> and then stops it (<c>ssl bench</c>),
/// as the run's <see cref="TrainerOptions.Observer"/>: any recipe is benchmarked through its own step,
/// data and optimizers without per-recipe code. After <see cref="WarmupSteps"/> steps,
/// <see cref="MeasuredSteps"/> steps are timed (the step and its dispose scope; no checkpoints or epoch
/// ends) with FLOP counters on the step's modules and the phases <see cref="StepContext"/> reports; after
/// the last of them it says <see cref="StepVerdict.Stop"/> and <see cref="Result"/> holds the figures.
/// One benchmark serves one run.
/// </summary>
public sealed class StepBenchmark : ITrainingObserver
{
    public StepBenchmark(int warmupSteps, int measuredSteps)
    {
        if (warmupSteps < 0) throw new ArgumentException($"warm-up steps: expected 0 or more, found {warmupSteps}");
        if (measuredSteps <= 0) throw new ArgumentException($"measured steps: expected a positive count, found {measuredSteps}");
        (WarmupSteps, MeasuredSteps) = (warmupSteps, measuredSteps);
    }

    public int WarmupSteps { get; }
    public int MeasuredSteps { get; }

    /// <summary>The window's figures once its last step ran; null before (or when the run ended sooner).</summary>
    public StepBenchmarkResult? Result { get; private set; }

    int seen;
    int measured;
    long images;
    double seconds;
    FlopCounter? encoder;
    FlopCounter? all;
    readonly Dictionary<string, double> phases = new();

    /// <summary>Hooks the FLOP counters on the step's modules before the first timed step.</summary>
    public void BeforeStep(ITrainingStep step)
    {
        if (seen == WarmupSteps && encoder is null && Result is null)
        {
            var modules = step.Modules;
            encoder = new FlopCounter(modules.TryGetValue("encoder", out var e) ? new[] { e } : modules.Values);
            all = new FlopCounter(modules.Values);
        }
    }

    /// <summary>Counts a warm-up or timed step; <see cref="StepVerdict.Stop"/> after the last timed one.</summary>
    public StepVerdict AfterStep(ITrainingStep step, int batchImages, double stepSeconds)
    {
        if (Result is not null) return StepVerdict.Stop;
        seen++;
        if (seen <= WarmupSteps) return StepVerdict.Continue;
        measured++;
        images += batchImages;
        seconds += stepSeconds;
        if (measured < MeasuredSteps) return StepVerdict.Continue;
        Result = new StepBenchmarkResult(measured, images, seconds, encoder!.TrainingFlops, all!.TrainingFlops,
            new Dictionary<string, double>(phases));
        encoder.Dispose();
        all.Dispose();
        (encoder, all) = (null, null);
        return StepVerdict.Stop;
    }

    /// <summary>
    /// Adds a phase's seconds while the timed steps run. The phases are not part of a step's contract:
    /// they split the bench's time for docs/performance.md.
    /// </summary>
    public void Phase(string name, double phaseSeconds)
    {
        if (encoder is not null) phases[name] = phases.GetValueOrDefault(name) + phaseSeconds;
    }
}
