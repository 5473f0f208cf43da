using System.Runtime;

namespace Ssl.Host.Engine;

/// <summary>
/// Keeps the .NET garbage collector from running while training steps are inside libtorch: the
/// trainer opens a no-GC region (<see cref="GC.TryStartNoGCRegion(long)"/>) between steps and keeps
/// it open across them, renewing it at a step boundary once half of its allocation budget is spent.
/// <para>
/// Why: TorchSharp 0.107 hands temporary <c>Scalar</c>s to native code by raw handle without keeping
/// them alive, so a collection mid-call can free one that libtorch is reading. The fence collects only
/// when it renews the region, on the training thread, between steps; a step that spends the whole
/// budget ends the region early, and where the runtime refuses a region the trainer runs unfenced.
/// Remove it once TorchSharp keeps such Scalars alive (its pull requests #1434, #1496). The crashes,
/// the cause and the cost: docs/platform.md#the-gc-fence-temporary-scalars-freed-mid-call.
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
        // pile up until the epoch ends (docs/platform.md, "How the fence works").
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
