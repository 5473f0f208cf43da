using static TorchSharp.torch;

namespace Ssl.Host.Distributed;

/// <summary>
/// The collectives one run on several processes needs, over every rank of the run: sums, gathers and
/// broadcasts of tensors, in the same order on every rank (the rule every collective library keeps).
/// <see cref="World.Current"/> is the process's; <see cref="SingleProcess"/> is the world of one.
/// Backends: Open MPI on the CPU (<see cref="MpiCollectives"/>, docs/distributed.md says why MPI);
/// CUDA tensors through NCCL where CUDA and NCCL are (<see cref="NcclCollectives.Routed"/>), else
/// through the CPU by MPI.
/// </summary>
public interface ICollectives : IDisposable
{
    int Rank { get; }
    int Size { get; }
    /// <summary>The library behind it: "none" (one process), "openmpi", "nccl" or "openmpi+nccl".</summary>
    string Backend { get; }

    /// <summary>Every rank's <paramref name="tensor"/> summed, in place on every rank (same shape and dtype everywhere).</summary>
    void AllReduceSum(Tensor tensor);

    /// <summary>Every rank's <paramref name="tensor"/> (same shape everywhere) concatenated along dim 0 in rank order: (Size·N, ...).</summary>
    Tensor AllGather(Tensor tensor);

    /// <summary><paramref name="tensor"/> of rank <paramref name="root"/> copied in place into every rank's.</summary>
    void Broadcast(Tensor tensor, int root = 0);

    /// <summary>Returns once every rank has called it.</summary>
    void Barrier();
}

/// <summary>The world of one process: every collective is the identity.</summary>
public sealed class SingleProcess : ICollectives
{
    public static readonly SingleProcess Instance = new();
    public int Rank => 0;
    public int Size => 1;
    public string Backend => "none";
    public void AllReduceSum(Tensor tensor) { }
    public Tensor AllGather(Tensor tensor) => tensor.clone();
    public void Broadcast(Tensor tensor, int root = 0) { }
    public void Barrier() { }
    public void Dispose() { }
}

/// <summary>Collectives of managed values, on top of the tensor ones.</summary>
public static class CollectiveExtensions
{
    /// <summary>Each value summed over the ranks (float64, so that sums of per-rank figures keep their digits).</summary>
    public static double[] SumAcrossRanks(this ICollectives world, double[] values)
    {
        if (world.Size == 1) return values;
        using var t = tensor(values, dtype: ScalarType.Float64);
        world.AllReduceSum(t);
        return t.data<double>().ToArray();
    }

    /// <summary>Rank <paramref name="root"/>'s <paramref name="value"/> on every rank.</summary>
    public static long Broadcast(this ICollectives world, long value, int root = 0)
    {
        if (world.Size == 1) return value;
        using var t = tensor(new[] { value });
        world.Broadcast(t, root);
        return t.data<long>()[0];
    }
}

/// <summary>A run on several processes that cannot start or go on (no MPI, a launcher that does not
/// wire its ranks together, a collective that failed); the message names what was expected and found.</summary>
public sealed class RanksException(string message) : Exception(message);
