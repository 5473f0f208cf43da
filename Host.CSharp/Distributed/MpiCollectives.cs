using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssl.Host.Distributed;

/// <summary>
/// The collectives on Open MPI's <c>libmpi.so.40</c> (Debian's <c>openmpi-bin</c> /
/// <c>libopenmpi-dev</c>), through P/Invoke: MPI_COMM_WORLD of the processes <c>mpirun</c>, <c>srun</c>
/// or <c>ssl train --ranks N</c> started. Handles are Open MPI's (its predefined objects are exported
/// symbols); MPICH's integer handles are not read. Tensors are summed in float32 or float64 on the
/// CPU; others are copied through the CPU. Counts above 2^30 elements go in pieces.
/// A lost rank ends the job through the launcher (MPI's default: errors are fatal), never a hang:
/// docs/distributed.md.
/// </summary>
public sealed class MpiCollectives : ICollectives
{
    const string Library = "libmpi.so.40";
    const int RtldNow = 2, RtldGlobal = 0x100;
    const int ThreadSerialized = 2;
    const int MaxCount = 1 << 30;

    [DllImport("libc", EntryPoint = "dlopen")] static extern nint DlOpen(string file, int mode);
    [DllImport(Library)] static extern int MPI_Initialized(out int flag);
    [DllImport(Library)] static extern int MPI_Finalized(out int flag);
    [DllImport(Library)] static extern int MPI_Init_thread(nint argc, nint argv, int required, out int provided);
    [DllImport(Library)] static extern int MPI_Finalize();
    [DllImport(Library)] static extern int MPI_Comm_rank(nint comm, out int rank);
    [DllImport(Library)] static extern int MPI_Comm_size(nint comm, out int size);
    [DllImport(Library)] static extern int MPI_Allreduce(nint send, nint receive, int count, nint type, nint op, nint comm);
    [DllImport(Library)] static extern int MPI_Allgather(nint send, int sendCount, nint sendType, nint receive, int receiveCount, nint receiveType, nint comm);
    [DllImport(Library)] static extern int MPI_Bcast(nint buffer, int count, nint type, int root, nint comm);
    [DllImport(Library)] static extern int MPI_Barrier(nint comm);
    [DllImport(Library)] static extern int MPI_Abort(nint comm, int code);

    delegate nint TensorData(nint handle);
    static TensorData? tensorData;

    readonly nint world, float32, float64, bytes, sum;
    readonly object gate = new();
    bool finalized;

    public int Rank { get; }
    public int Size { get; }
    public string Backend => "openmpi";

    /// <summary>Joins the run's MPI world (MPI_Init_thread, serialized). Throws <see cref="RanksException"/>
    /// with what to install where Open MPI is missing.</summary>
    public MpiCollectives()
    {
        // Open MPI loads its components as plugins that resolve libmpi's symbols: global, as mpi4py loads it.
        if (DlOpen(Library, RtldNow | RtldGlobal) == 0 || !NativeLibrary.TryLoad(Library, out var library))
            throw new RanksException(
                $"{Library}: expected Open MPI's library for a run on several processes, found none; install it (`apt-get install openmpi-bin libopenmpi-dev`)");
        nint Symbol(string name) => NativeLibrary.TryGetExport(library, name, out var address) ? address
            : throw new RanksException($"{Library}: expected Open MPI's symbol {name}, found none (another MPI? Ssl reads Open MPI's handles)");
        (world, float32, float64, bytes, sum) = (Symbol("ompi_mpi_comm_world"), Symbol("ompi_mpi_float"), Symbol("ompi_mpi_double"),
                                                  Symbol("ompi_mpi_byte"), Symbol("ompi_mpi_op_sum"));
        MPI_Initialized(out var initialized);
        if (initialized == 0) Check(MPI_Init_thread(0, 0, ThreadSerialized, out _), "MPI_Init_thread");
        Check(MPI_Comm_rank(world, out var rank), "MPI_Comm_rank");
        Check(MPI_Comm_size(world, out var size), "MPI_Comm_size");
        (Rank, Size) = (rank, size);
    }

    static void Check(int code, string call)
    {
        if (code != 0) throw new RanksException($"{call}: expected MPI_SUCCESS, found error code {code}");
    }

    /// <summary>The address of a contiguous CPU tensor's first element (LibTorchSharp's THSTensor_data).</summary>
    internal static nint Data(Tensor t)
    {
        if (tensorData is null)
        {
            if (!NativeLibrary.TryLoad("LibTorchSharp", typeof(torch).Assembly, null, out var lib))
                throw new RanksException("LibTorchSharp: expected TorchSharp's native library, found none");
            tensorData = Marshal.GetDelegateForFunctionPointer<TensorData>(NativeLibrary.GetExport(lib, "THSTensor_data"));
        }
        return tensorData(t.Handle);
    }

    (nint Type, int Size) TypeOf(Tensor t) => t.dtype switch
    {
        ScalarType.Float32 => (float32, 4),
        ScalarType.Float64 => (float64, 8),
        _ => throw new ArgumentException($"tensor: expected float32 or float64 to sum across ranks, found {t.dtype}"),
    };

    /// <summary>Runs <paramref name="body"/> on a contiguous CPU tensor holding <paramref name="tensor"/>'s values,
    /// and copies the result back where that was a copy.</summary>
    static void OnCpu(Tensor tensor, bool writeBack, Action<Tensor> body)
    {
        if (tensor.device_type == DeviceType.CPU && tensor.is_contiguous()) { body(tensor); return; }
        using var staged = tensor.detach().to(CPU).contiguous();
        body(staged);
        if (writeBack) using (no_grad()) tensor.copy_(staged);
    }

    public void AllReduceSum(Tensor tensor) => OnCpu(tensor, true, t =>
    {
        var (type, size) = TypeOf(t);
        lock (gate)
            for (long at = 0; at < t.numel(); at += MaxCount)
            {
                var count = (int)Math.Min(MaxCount, t.numel() - at);
                var address = Data(t) + (nint)(at * size);
                Check(MPI_Allreduce(1 /* MPI_IN_PLACE */, address, count, type, sum, world), "MPI_Allreduce");
            }
    });

    public Tensor AllGather(Tensor tensor)
    {
        var shape = tensor.shape.ToArray();
        shape[0] *= Size;
        var result = empty(shape, tensor.dtype, CPU);
        OnCpu(tensor, false, t =>
        {
            var elementBytes = t.element_size();
            var total = t.numel() * elementBytes;
            if (total > int.MaxValue) throw new ArgumentException($"tensor: expected at most {int.MaxValue} bytes a rank to gather, found {total}");
            lock (gate) Check(MPI_Allgather(Data(t), (int)total, bytes, Data(result), (int)total, bytes, world), "MPI_Allgather");
        });
        if (tensor.device_type == DeviceType.CPU) return result;
        using (result) return result.to(tensor.device);
    }

    public void Broadcast(Tensor tensor, int root = 0) => OnCpu(tensor, true, t =>
    {
        var total = t.numel() * t.element_size();
        lock (gate)
            for (long at = 0; at < total; at += MaxCount)
                Check(MPI_Bcast(Data(t) + (nint)at, (int)Math.Min(MaxCount, total - at), bytes, root, world), "MPI_Bcast");
    });

    public void Barrier()
    {
        lock (gate) Check(MPI_Barrier(world), "MPI_Barrier");
    }

    /// <summary>Ends every rank of the job with <paramref name="code"/> (a rank that cannot go on).</summary>
    public void Abort(int code)
    {
        MPI_Abort(world, code);
    }

    public void Dispose()
    {
        if (finalized) return;
        finalized = true;
        MPI_Finalized(out var done);
        if (done == 0) MPI_Finalize();
    }
}
