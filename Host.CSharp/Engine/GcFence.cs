using System.Runtime;

namespace Ssl.Host.Engine;

/// <summary>
/// Keeps the .NET garbage collector from running while training steps are inside libtorch: the
/// trainer opens a no-GC region (<see cref="GC.TryStartNoGCRegion(long)"/>) between steps and keeps
/// it open across them, renewing it at a step boundary once half of its allocation budget is spent.
/// <para>
/// Why: TorchSharp 0.107 hands a temporary <c>Scalar</c> to native code by its raw handle and does not
/// keep the managed object alive for the call. <c>Tensor.div_(Scalar)</c> reads <c>target.Handle</c>
/// and calls <c>THSTensor_div_scalar_</c> with no <c>GC.KeepAlive</c>; <c>t.div_(255.0)</c>,
/// <c>t + 1.0</c>, <c>BatchNorm</c>'s <c>num_batches_tracked.add_(1)</c> and the optimisers' updates
/// all make such temporaries, and <c>~Scalar</c> frees the native scalar on the finalizer thread.
/// A collection that starts while the main thread is inside such a call can finalise the Scalar,
/// and libtorch then reads freed memory. Both native crashes seen in this project's training runs
/// fit this, each seen once and each inside a step: "For integral input tensors, argument alpha
/// must not be a floating point number" from <c>add_</c> in <c>BatchNorm.forward</c> (a MixMatch run
/// of a repro; the same command again ran through) and "Unknown scalar type" from <c>div_</c> in
/// <c>Features.ToInput</c> (a MixMatch trial, epoch 8). A stress test of batch-norm passes beside a
/// thread forcing collections never failed (the window is short). TorchSharp's pull requests #1434
/// and #1496 (open) dispose such Scalars inside the operators, which keeps them alive for the call.
/// </para>
/// <para>
/// Inside the region no collection runs at all, so none can start mid-call; the fence collects when
/// it renews the region, on the training thread, in managed code, between steps. A step that
/// allocates more than the budget ends the region early (the runtime collects as usual and the
/// fence opens a new region before the next step); where the runtime refuses a region the trainer
/// runs unfenced, as before. The cost, measured on the quick presets: one blocking collection every
/// 210-234 steps, 4-11 ms for supervised and 75-95 ms for MixMatch (0.2% of its step time), with
/// the managed heap at 54-58 MiB at every renewal.
/// </para>
/// </summary>
public sealed class GcFence : IDisposable
{
    /// <summary>Managed bytes a region may see allocated before the runtime ends it.</summary>
    public const long DefaultBudgetBytes = 64L << 20;

    readonly long budget;
    long openedAt;

    public GcFence(long budgetBytes = DefaultBudgetBytes)
    {
        if (budgetBytes < 1L << 20)
            throw new ArgumentOutOfRangeException(nameof(budgetBytes), budgetBytes, "budgetBytes: expected at least 1 MiB");
        budget = budgetBytes;
    }

    /// <summary>Whether a no-GC region is open now (this fence's or another's).</summary>
    public static bool Active => GCSettings.LatencyMode == GCLatencyMode.NoGCRegion;

    /// <summary>Regions this fence has opened.</summary>
    public int Renewals { get; private set; }

    /// <summary>
    /// Call between steps on the training thread: keeps the open region while less than half of its
    /// budget has been allocated, else ends it and opens a new one. Returns whether a region is open.
    /// </summary>
    public bool Renew()
    {
        if (Active && GC.GetTotalAllocatedBytes() - openedAt < budget / 2) return true;
        Close();
        // A new region does not collect by itself: without this the garbage of every region would
        // pile up until the epoch ends (measured: the managed heap grew 32 MiB per renewal).
        GC.Collect();
        try
        {
            if (!GC.TryStartNoGCRegion(budget)) return false;
        }
        catch (InvalidOperationException)
        {
            // Another region was opened meanwhile (a nested trainer): it fences this step too.
            return Active;
        }
        openedAt = GC.GetTotalAllocatedBytes();
        Renewals++;
        return true;
    }

    /// <summary>Ends the open region, if any; collections run as usual again.</summary>
    public void Close()
    {
        if (!Active) return;
        try { GC.EndNoGCRegion(); }
        catch (InvalidOperationException) { /* the runtime ended it (budget spent), or another fence did */ }
    }

    public void Dispose() => Close();
}
