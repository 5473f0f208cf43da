using System.Runtime.InteropServices;

namespace Ssl.Host.Native;

/// <summary>
/// Switches of libtorch's global context (<c>at::globalContext()</c>) that TorchSharp 0.107 does not
/// expose, called through their C++ symbols in libtorch_cpu (the Itanium ABI passes <c>this</c>
/// first). Where the library or a symbol is not found (another platform or libtorch build), the
/// switch is left as it is and <see cref="NnpackEnabled"/> is null.
/// <para>
/// NNPACK: libtorch 2.10 sends a convolution that oneDNN does not take (a batch of 1 with a 3x3
/// kernel and a small input, as <c>LayerFeatures</c>' shape probe) to its native path, which asks
/// NNPACK first; on CPUs NNPACK does not support (this project's AMD EPYC machines) every such call
/// printed "Could not initialize NNPACK! Reason: Unsupported hardware." (five lines per
/// <c>ssl eval --layer</c>). Turning NNPACK off is <c>torch.backends.nnpack.set_flags(False)</c>:
/// those convolutions run the native kernels NNPACK would have declined to anyway.
/// </para>
/// </summary>
public static class TorchContext
{
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    delegate nint GlobalContextFn();

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    delegate void SetFlagFn(nint context, [MarshalAs(UnmanagedType.U1)] bool value);

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    [return: MarshalAs(UnmanagedType.U1)]
    delegate bool GetFlagFn(nint context);

    static nint library;

    static nint Export(string symbol)
    {
        if (library == 0 && !NativeLibrary.TryLoad("libtorch_cpu.so", out library)) return 0;
        return NativeLibrary.TryGetExport(library, symbol, out var address) ? address : 0;
    }

    static nint Context()
    {
        var f = Export("_ZN2at13globalContextEv");
        return f == 0 ? 0 : Marshal.GetDelegateForFunctionPointer<GlobalContextFn>(f)();
    }

    /// <summary>Turns NNPACK off (see the class comment); returns whether the switch was found. Call after libtorch is loaded.</summary>
    public static bool DisableNnpack()
    {
        var context = Context();
        var set = Export("_ZN2at7Context20setUserEnabledNNPACKEb");
        if (context == 0 || set == 0) return false;
        Marshal.GetDelegateForFunctionPointer<SetFlagFn>(set)(context, false);
        return true;
    }

    /// <summary>libtorch's NNPACK switch now, or null where it cannot be read.</summary>
    public static bool? NnpackEnabled
    {
        get
        {
            var context = Context();
            var get = Export("_ZNK2at7Context17userEnabledNNPACKEv");
            return context == 0 || get == 0 ? null : Marshal.GetDelegateForFunctionPointer<GetFlagFn>(get)(context);
        }
    }

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    delegate void SetCountFn(int count);

    static SetCountFn? ompSetNumThreads, mklSetNumThreadsLocal;

    /// <summary>
    /// Sets the intra-op thread count of the calling thread alone: OpenMP's per-thread count
    /// (<c>omp_set_num_threads</c> of the libgomp libtorch links) and MKL's thread-local one, which are
    /// what ATen's parallel loops, oneDNN and MKL read. <c>torch.set_num_threads</c> also sets the
    /// process-wide count and clears libtorch's oneDNN computation cache on every call, too costly
    /// for every step. Returns false where a symbol is not found (nothing is changed then).
    /// </summary>
    public static bool SetCallingThreadCount(int count)
    {
        if (ompSetNumThreads is null || mklSetNumThreadsLocal is null)
        {
            var omp = Export("omp_set_num_threads");
            // MKL's C entry point; the lower-case symbol in libtorch_cpu is the Fortran one (int*).
            var mkl = Export("MKL_Set_Num_Threads_Local");
            if (omp == 0 || mkl == 0) return false;
            ompSetNumThreads = Marshal.GetDelegateForFunctionPointer<SetCountFn>(omp);
            mklSetNumThreadsLocal = Marshal.GetDelegateForFunctionPointer<SetCountFn>(mkl);
        }
        ompSetNumThreads(count);
        mklSetNumThreadsLocal(count);
        return true;
    }
}
