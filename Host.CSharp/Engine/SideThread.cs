using TorchSharp;
using static TorchSharp.torch;

namespace Ssl.Host.Engine;

/// <summary>
/// Runs two independent passes of a step at once on the CPU: one on a long-lived side thread, the
/// other on the caller, each with half of the intra-op threads (OpenMP's count is per calling thread,
/// <see cref="Ssl.Host.Native.TorchContext.SetCallingThreadCount"/>). Use it only for passes whose
/// tensors are small (MoCo's): large activations fault the side arena's pages in on every step.
/// <para>
/// Rules: the first call for an (owner, signature) runs <c>main</c>, then <c>side</c>, one after the
/// other, because oneDNN 3.7.1 mixes up a primitive that two threads create at once. <c>owner</c>:
/// what holds the modules (a step, an optimizer); <c>signature</c>: what else decides the shapes (the
/// batch). The two must not share a module's buffers, a graph node other than a leaf, or a random
/// generator the other draws from; they then compute what <c>main</c> and then <c>side</c> compute on
/// the caller, up to summation order. They run one after the other on the caller on a device other
/// than the CPU, with fewer than two intra-op threads, on the side thread itself, or with
/// <c>--side-thread off</c>.
/// Evidence and measurements: docs/performance.md#sidethread-what-it-may-run-and-the-record-behind-its-rules.
/// </para>
/// </summary>
public static class SideThread
{
    /// <summary>Whether two passes may run side by side in this process: the run's <c>--side-thread</c>
    /// (<see cref="Runtime.RuntimeOptions.SideThread"/>, set by DeviceSetup.Configure).</summary>
    public static bool Enabled { get; set; } = true;

    sealed class Job
    {
        public required Func<Tensor?> Work;
        public required int Threads;
        public Tensor? Result;
        public Exception? Error;
        public readonly ManualResetEventSlim Done = new(false);
    }

    static readonly object gate = new();
    static System.Collections.Concurrent.BlockingCollection<Job>? jobs;
    [ThreadStatic] static bool onSide;

    static System.Collections.Concurrent.BlockingCollection<Job> Jobs()
    {
        lock (gate)
        {
            if (jobs is not null) return jobs;
            var queue = new System.Collections.Concurrent.BlockingCollection<Job>();
            var thread = new Thread(() =>
            {
                onSide = true;
                // ATen sets a new thread's count to the process-wide one at its first parallel call:
                // let that happen now, before the side's own count.
                get_num_threads();
                var count = 0;
                foreach (var job in queue.GetConsumingEnumerable())
                {
                    try
                    {
                        if (count != job.Threads && Ssl.Host.Native.TorchContext.SetCallingThreadCount(job.Threads)) count = job.Threads;
                        using var scope = NewDisposeScope();
                        job.Result = job.Work()?.DetachFromDisposeScope();
                    }
                    catch (Exception e) { job.Error = e; }
                    finally { job.Done.Set(); }
                }
            }) { IsBackground = true, Name = "ssl side pass" };
            thread.Start();
            return jobs = queue;
        }
    }

    /// <summary>(owner, signature) pairs whose first call ran to its end: their primitives exist.</summary>
    static readonly System.Runtime.CompilerServices.ConditionalWeakTable<object, HashSet<string>> warmed = new();

    static bool Warmed(object owner, string signature, bool mark)
    {
        lock (gate)
        {
            var signatures = warmed.GetOrCreateValue(owner);
            return mark ? !signatures.Add(signature) : signatures.Contains(signature);
        }
    }

    /// <summary>
    /// <c>(side(), main())</c>, computed side by side where the device and thread count allow (the
    /// first call for <paramref name="owner"/> and <paramref name="signature"/> one after the other). The
    /// side's result, if any, joins the caller's dispose scope; everything else the side made is freed
    /// (several results: stack them). <c>main</c> runs on the caller, in its scope.
    /// </summary>
    public static (Tensor? Side, T Main) Run<T>(Device device, object owner, string signature, Func<Tensor?> side, Func<T> main)
    {
        var threads = get_num_threads();
        if (!Enabled || device.type != DeviceType.CPU || threads < 2 || onSide
            || !Ssl.Host.Native.TorchContext.SetCallingThreadCount(threads - threads / 2))
        {
            var first = main();
            return (side(), first);
        }
        var job = new Job { Work = side, Threads = threads / 2 };
        var oneAfterOther = !Warmed(owner, signature, mark: false);
        if (!oneAfterOther) Jobs().Add(job);
        T mainResult;
        try
        {
            mainResult = main();
            if (oneAfterOther) Jobs().Add(job);
        }
        catch
        {
            if (!oneAfterOther) job.Done.Wait();
            job.Result?.Dispose();
            Ssl.Host.Native.TorchContext.SetCallingThreadCount(threads);
            throw;
        }
        job.Done.Wait();
        Ssl.Host.Native.TorchContext.SetCallingThreadCount(threads);
        if (job.Error is not null)
        {
            (mainResult as IDisposable)?.Dispose();
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(job.Error).Throw();
        }
        if (oneAfterOther) Warmed(owner, signature, mark: true);
        var sideResult = job.Result;
        if (sideResult is not null) CurrentDisposeScope?.Attach(sideResult);
        return (sideResult, mainResult);
    }

    /// <summary>
    /// <c>side()</c> and <c>main()</c> as <see cref="Run{T}"/> does, for passes that leave their results
    /// elsewhere (backward passes, which accumulate into the parameters' gradients).
    /// </summary>
    public static void Run(Device device, object owner, string signature, Action side, Action main) =>
        Run(device, owner, signature, () => { side(); return null; }, () => { main(); return true; });
}
