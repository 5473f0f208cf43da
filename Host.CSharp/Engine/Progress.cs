namespace Ssl.Host.Engine;

/// <summary>Receives the engine's progress: a person's display, or nothing in tests.</summary>
public interface IProgressReporter
{
    void Start(int epochs, long stepsPerEpoch, int startEpoch);
    void Step(int epoch, long stepInEpoch, IReadOnlyDictionary<string, double> figures, double imagesPerSecond);
    void EpochEnd(int epoch, IReadOnlyDictionary<string, double> means, double imagesPerSecond);
    void Stop();
}

/// <summary>Reports nothing (tests, nested runs such as baselines).</summary>
public sealed class SilentProgress : IProgressReporter
{
    public void Start(int epochs, long stepsPerEpoch, int startEpoch) { }
    public void Step(int epoch, long stepInEpoch, IReadOnlyDictionary<string, double> figures, double imagesPerSecond) { }
    public void EpochEnd(int epoch, IReadOnlyDictionary<string, double> means, double imagesPerSecond) { }
    public void Stop() { }
}

/// <summary>
/// A progress line on the console: a bar over all epochs, the loss, img/s and ETA, redrawn in place
/// on a terminal (at most a few times a second); when the output is redirected (a log file, a sweep's
/// train.log), one line per epoch and one at each tenth of the run, so a one-epoch run of half an hour
/// still shows its rate and ETA.
/// </summary>
public sealed class ConsoleProgress(TextWriter? output = null) : IProgressReporter
{
    readonly TextWriter output = output ?? Console.Out;
    readonly bool live = output is null && !Console.IsOutputRedirected;
    readonly System.Diagnostics.Stopwatch clock = new();
    int epochs;
    long stepsPerEpoch;
    long totalSteps;
    long stepsDone;
    long startStep;
    TimeSpan lastDraw;
    long lastTenth;

    public void Start(int epochs, long stepsPerEpoch, int startEpoch)
    {
        (this.epochs, this.stepsPerEpoch) = (epochs, stepsPerEpoch);
        totalSteps = epochs * stepsPerEpoch;
        stepsDone = startStep = startEpoch * stepsPerEpoch;
        lastTenth = Tenth(stepsDone);
        clock.Restart();
    }

    public void Step(int epoch, long stepInEpoch, IReadOnlyDictionary<string, double> figures, double imagesPerSecond)
    {
        stepsDone = epoch * stepsPerEpoch + stepInEpoch;
        if (!live)
        {
            var tenth = Tenth(stepsDone);
            // A tenth reached mid-epoch (an epoch's end has a line of its own).
            if (tenth > lastTenth && stepInEpoch < stepsPerEpoch) output.WriteLine(Line(epoch, figures, imagesPerSecond));
            lastTenth = Math.Max(lastTenth, tenth);
            return;
        }
        if (clock.Elapsed - lastDraw < TimeSpan.FromMilliseconds(250)) return;
        lastDraw = clock.Elapsed;
        output.Write("\r" + Line(epoch, figures, imagesPerSecond).PadRight(Math.Max(Console.WindowWidth - 1, 20)));
    }

    public void EpochEnd(int epoch, IReadOnlyDictionary<string, double> means, double imagesPerSecond)
    {
        if (live) output.Write("\r");
        output.WriteLine(Line(epoch, means, imagesPerSecond));
    }

    public void Stop() { }

    long Tenth(long steps) => totalSteps == 0 ? 10 : steps * 10 / totalSteps;

    string Line(int epoch, IReadOnlyDictionary<string, double> figures, double rate)
    {
        var fraction = totalSteps == 0 ? 1 : (double)stepsDone / totalSteps;
        var done = stepsDone - startStep;
        var eta = done > 0 ? TimeSpan.FromSeconds(clock.Elapsed.TotalSeconds / done * (totalSteps - stepsDone)) : TimeSpan.Zero;
        var loss = figures.TryGetValue("loss", out var l) ? $" loss {l:F4}" : "";
        var speed = double.IsNaN(rate) ? "" : $" {rate:N0} img/s";
        return $"epoch {epoch + 1}/{epochs} {Bar(fraction)}{loss}{speed} ETA {eta:hh\\:mm\\:ss}";
    }

    /// <summary>The bar of every progress line: 24 cells of '#' and '-', then the percentage.</summary>
    internal static string Bar(double fraction)
    {
        const int width = 24;
        var filled = (int)Math.Round(fraction * width);
        return $"[{new string('#', filled)}{new string('-', width - filled)}] {fraction:P0}";
    }
}

/// <summary>
/// Progress over a known count of images (<c>ssl embed</c>): done, the bar, rate and ETA, redrawn in
/// place on a terminal at most four times a second, one line at each tenth when the output is
/// redirected, as <see cref="ConsoleProgress"/> does for training.
/// </summary>
public sealed class CountProgress(string what, long total)
{
    readonly bool live = !Console.IsOutputRedirected;
    readonly System.Diagnostics.Stopwatch clock = System.Diagnostics.Stopwatch.StartNew();
    TimeSpan lastDraw;
    long lastTenth;

    public TimeSpan Elapsed => clock.Elapsed;

    /// <summary>Reports <paramref name="count"/> images done.</summary>
    public void Report(long count)
    {
        if (live)
        {
            if (count != total && clock.Elapsed - lastDraw < TimeSpan.FromMilliseconds(250)) return;
            lastDraw = clock.Elapsed;
            Console.Out.Write("\r" + Line(count).PadRight(Math.Max(Console.WindowWidth - 1, 20)));
            if (count == total) Console.Out.WriteLine();
            return;
        }
        var tenth = total == 0 ? 10 : count * 10 / total;
        if (tenth <= lastTenth) return;
        lastTenth = tenth;
        Console.Out.WriteLine(Line(count));
    }

    string Line(long count)
    {
        var seconds = clock.Elapsed.TotalSeconds;
        var rate = seconds > 0 ? count / seconds : 0.0;
        var eta = rate > 0 ? TimeSpan.FromSeconds((total - count) / rate) : TimeSpan.Zero;
        var fraction = total == 0 ? 1.0 : (double)count / total;
        return $"{what} {count:N0}/{total:N0} images {ConsoleProgress.Bar(fraction)} {rate:N0} img/s ETA {eta:hh\\:mm\\:ss}";
    }
}
