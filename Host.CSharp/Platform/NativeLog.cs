using System.Runtime.InteropServices;
using TorchSharp;

namespace Ssl.Host.Native;

/// <summary>
/// libtorch's log level (c10's exported <c>FLAGS_caffe2_log_level</c>: 0 info, 1 warning, 2 error),
/// raised around one call that is known to warn for nothing. TorchSharp 0.107's LBFGS constructor
/// reads its parameters back through <c>Optimizer::parameters()</c>, which libtorch deprecates with
/// "Optimizer::parameters() will be removed in PyTorch 1.6" on every construction: once per linear
/// probe fit (575 lines in one test run). Everything outside such a call logs as before.
/// </summary>
public static class NativeLog
{
    const int Error = 2;
    static readonly object Gate = new();
    static IntPtr level;
    static bool looked;

    static IntPtr Level()
    {
        if (looked) return level;
        looked = true;
        TorchRuntime.EnsureLoaded();
        var torchDir = Path.GetDirectoryName(typeof(torch).Assembly.Location)!;
        foreach (var name in new[] { "libc10.so", Path.Combine(torchDir, "runtimes", "linux-x64", "native", "libc10.so"), Path.Combine(torchDir, "libc10.so") })
            if (NativeLibrary.TryLoad(name, out var handle) && NativeLibrary.TryGetExport(handle, "FLAGS_caffe2_log_level", out level))
                return level;
        return IntPtr.Zero;
    }

    /// <summary>Runs <paramref name="call"/> with warnings off, then restores the level.</summary>
    public static T WithoutWarnings<T>(Func<T> call)
    {
        lock (Gate)
        {
            var p = Level();
            if (p == IntPtr.Zero) return call();
            var before = Marshal.ReadInt32(p);
            Marshal.WriteInt32(p, Math.Max(before, Error));
            try { return call(); }
            finally { Marshal.WriteInt32(p, before); }
        }
    }
}
