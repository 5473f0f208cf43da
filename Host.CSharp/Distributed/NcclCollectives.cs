using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssl.Host.Distributed;

/// <summary>
/// The collectives of CUDA tensors on NVIDIA's NCCL (<c>libnccl.so.2</c>), through P/Invoke: one
/// communicator over the ranks of the MPI world that launched them, its unique id sent from rank 0
/// through that world (NCCL's own recipe for MPI programs), one visible GPU a rank (start ranks with
/// <c>srun --gpus-per-task=1</c> or a CUDA_VISIBLE_DEVICES each). Sums, gathers and broadcasts run on
/// the legacy default CUDA stream, the stream torch's kernels run on unless told otherwise, so they
/// follow the kernels that made their input and precede those that read their output. CUDA only:
/// <see cref="Routed"/> sends CPU tensors to MPI. It builds everywhere and runs only where CUDA and
/// NCCL are: never on this project's CPU machines (README, docs/distributed.md).
/// </summary>
public sealed class NcclCollectives : ICollectives
{
    const string Library = "libnccl.so.2";
    const int Float16 = 6, Float32 = 7, Float64 = 8, BFloat16 = 9, Int64 = 4, Int32 = 2, UInt8 = 1, Sum = 0;
    static readonly nint DefaultStream = 0;

    /// <summary>ncclUniqueId: 128 opaque bytes (NCCL_UNIQUE_ID_BYTES).</summary>
    [InlineArray(128)]
    struct UniqueId { byte first; }

    [DllImport(Library)] static extern int ncclGetUniqueId(out UniqueId id);
    [DllImport(Library)] static extern int ncclCommInitRank(out nint comm, int ranks, UniqueId id, int rank);
    [DllImport(Library)] static extern int ncclAllReduce(nint send, nint receive, nuint count, int type, int op, nint comm, nint stream);
    [DllImport(Library)] static extern int ncclAllGather(nint send, nint receive, nuint sendCount, int type, nint comm, nint stream);
    [DllImport(Library)] static extern int ncclBroadcast(nint send, nint receive, nuint count, int type, int root, nint comm, nint stream);
    [DllImport(Library)] static extern int ncclCommDestroy(nint comm);
    [DllImport(Library)] static extern nint ncclGetErrorString(int result);

    readonly nint comm;
    bool destroyed;

    public int Rank { get; }
    public int Size { get; }
    public string Backend => "nccl";

    /// <summary>Whether NCCL's library loads here (CUDA machines with NCCL installed).</summary>
    public static bool Available => NativeLibrary.TryLoad(Library, out _);

    /// <summary>
    /// The communicator of <paramref name="launch"/>'s ranks, made collectively: every rank calls it
    /// at the same point. Throws <see cref="RanksException"/> naming what is missing.
    /// </summary>
    public NcclCollectives(ICollectives launch)
    {
        if (!Available)
            throw new RanksException($"{Library}: expected NVIDIA's NCCL for collectives of CUDA tensors, found none; install NCCL, or train on the CPU");
        var id = new UniqueId();
        if (launch.Rank == 0) Check(ncclGetUniqueId(out id), "ncclGetUniqueId");
        // Rank 0's id to every rank, through the launching world.
        using (var bytes = tensor(((ReadOnlySpan<byte>)id).ToArray()))
        {
            launch.Broadcast(bytes, 0);
            bytes.data<byte>().ToArray().CopyTo((Span<byte>)id);
        }
        Check(ncclCommInitRank(out comm, launch.Size, id, launch.Rank), "ncclCommInitRank");
        (Rank, Size) = (launch.Rank, launch.Size);
    }

    static void Check(int code, string call)
    {
        if (code != 0)
            throw new RanksException($"{call}: expected ncclSuccess, found {Marshal.PtrToStringAnsi(ncclGetErrorString(code))} (code {code})");
    }

    static int TypeOf(Tensor t) => t.dtype switch
    {
        ScalarType.Float32 => Float32,
        ScalarType.Float64 => Float64,
        ScalarType.Float16 => Float16,
        ScalarType.BFloat16 => BFloat16,
        ScalarType.Int64 => Int64,
        ScalarType.Int32 => Int32,
        ScalarType.Byte => UInt8,
        _ => throw new ArgumentException($"tensor: expected a float, int32, int64 or byte tensor for NCCL, found {t.dtype}"),
    };

    /// <summary>Runs <paramref name="body"/> on a contiguous copy of a strided CUDA tensor (channels-last
    /// weights) and copies the result back; on the tensor itself when it is contiguous.</summary>
    static void InPlace(Tensor tensor, Action<Tensor> body)
    {
        if (tensor.device_type != DeviceType.CUDA)
            throw new ArgumentException($"tensor: expected a CUDA tensor for NCCL, found a {tensor.device_type} one");
        if (tensor.is_contiguous()) { body(tensor); return; }
        using var staged = tensor.detach().contiguous();
        body(staged);
        using (no_grad()) tensor.copy_(staged);
    }

    public void AllReduceSum(Tensor tensor) => InPlace(tensor, t =>
    {
        var address = MpiCollectives.Data(t);
        Check(ncclAllReduce(address, address, (nuint)t.numel(), TypeOf(t), Sum, comm, DefaultStream), "ncclAllReduce");
    });

    public Tensor AllGather(Tensor tensor)
    {
        var shape = tensor.shape.ToArray();
        shape[0] *= Size;
        var result = empty(shape, tensor.dtype, tensor.device);
        InPlace(tensor.detach(), t =>
            Check(ncclAllGather(MpiCollectives.Data(t), MpiCollectives.Data(result), (nuint)t.numel(), TypeOf(t), comm, DefaultStream), "ncclAllGather"));
        return result;
    }

    public void Broadcast(Tensor tensor, int root = 0) => InPlace(tensor, t =>
    {
        var address = MpiCollectives.Data(t);
        Check(ncclBroadcast(address, address, (nuint)t.numel(), TypeOf(t), root, comm, DefaultStream), "ncclBroadcast");
    });

    /// <summary>A one-element sum, read back: every rank has reached it and the stream is drained.</summary>
    public void Barrier()
    {
        // NCCL takes CUDA tensors only (it is made where CUDA is available).
        using var one = ones(1, device: new Device(DeviceType.CUDA));
        AllReduceSum(one);
        one.item<float>();
    }

    public void Dispose()
    {
        if (destroyed) return;
        destroyed = true;
        ncclCommDestroy(comm);
    }

    /// <summary>
    /// The world of a run whose tensors may live on the GPU: CUDA tensors through NCCL (its
    /// communicator made at the first such collective, which every rank reaches in the same order),
    /// everything else, and every barrier, through <paramref name="launch"/> (MPI).
    /// </summary>
    public sealed class Routed(ICollectives launch) : ICollectives
    {
        NcclCollectives? nccl;

        /// <summary>The launching world (MPI): CPU tensors, barriers, abort.</summary>
        public ICollectives Launch => launch;
        public int Rank => launch.Rank;
        public int Size => launch.Size;
        public string Backend => nccl is null ? launch.Backend : $"{launch.Backend}+nccl";

        ICollectives For(Tensor t) => t.device_type == DeviceType.CUDA ? nccl ??= new NcclCollectives(launch) : launch;

        public void AllReduceSum(Tensor tensor) => For(tensor).AllReduceSum(tensor);
        public Tensor AllGather(Tensor tensor) => For(tensor).AllGather(tensor);
        public void Broadcast(Tensor tensor, int root = 0) => For(tensor).Broadcast(tensor, root);
        public void Barrier() => launch.Barrier();

        public void Dispose()
        {
            nccl?.Dispose();
            launch.Dispose();
        }
    }
}
