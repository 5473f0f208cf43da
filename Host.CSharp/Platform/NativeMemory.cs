using System.Runtime.InteropServices;

namespace Ssl.Host.Runtime;

/// <summary>
/// Hands freed native memory back to the system. glibc's malloc raises its mmap threshold after
/// large frees, so later large tensors (freed at once by dispose scopes) come from its heap and stay
/// mapped: a loop of (N, N) float64 temporaries (t-SNE at N = 2,000) grew the resident set to 19 GB
/// with no tensor alive. <c>malloc_trim</c> returns the free pages; where it does not exist (not
/// glibc), nothing happens.
///
/// The opposite case costs speed: before glibc has raised its threshold, every tensor above it (128 KiB
/// at start) is a fresh mmap, page-faulted in and zeroed by the kernel, and unmapped when freed, and
/// every free at the top of the heap above the trim threshold hands pages back that the next step
/// faults in again. A training step allocates and frees the same activations every time, so it pays
/// that on every step. <see cref="PinThresholds"/> fixes both thresholds (which also stops glibc's
/// dynamic adjustment), as Eigen's issue 3201 does for its GEMM buffers and as jemalloc or tcmalloc do
/// for PyTorch on CPU. Measured on MoCo's quick step (2 cores, SmallConvNet width 32, batch 128): 380-460
/// images/s with glibc's defaults, 650-700 with the thresholds pinned; the same 1.5x appeared when the
/// process first ran a large matmul (whose 16 MB frees raised the dynamic threshold), which is why
/// `ssl bench` (matmul peak first) measured 839 images/s where runs got 450-550.
/// </summary>
public static class NativeMemory
{
    [DllImport("libc", EntryPoint = "malloc_trim")]
    static extern int MallocTrim(nuint pad);

    [DllImport("libc", EntryPoint = "mallopt")]
    static extern int Mallopt(int param, int value);

    const int MTrimThreshold = -1;
    const int MMmapThreshold = -3;

    /// <summary>glibc's largest mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX, 32 MiB).</summary>
    public const int MmapThresholdBytes = 32 * 1024 * 1024;

    /// <summary>Free memory at the top of the heap kept for the next step instead of handed back.</summary>
    public const int TrimThresholdBytes = 256 * 1024 * 1024;

    /// <summary>Whether <see cref="PinThresholds"/> set glibc's thresholds in this process.</summary>
    public static bool ThresholdsPinned { get; private set; }

    /// <summary>The environment variables through which a user sets glibc's malloc thresholds.</summary>
    public static readonly string[] UserSettings = { "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES" };

    /// <summary>Whether any of <see cref="UserSettings"/> is set: then glibc keeps the user's settings.</summary>
    public static bool UserSetThresholds => UserSettings.Any(v => !string.IsNullOrEmpty(Environment.GetEnvironmentVariable(v)));

    /// <summary>
    /// Pins glibc malloc's mmap threshold (32 MiB) and trim threshold (256 MiB) unless the user set
    /// them (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or GLIBC_TUNABLES); not glibc: nothing.
    /// Returns whether the thresholds are pinned now.
    /// </summary>
    public static bool PinThresholds()
    {
        if (unavailable || ThresholdsPinned) return ThresholdsPinned;
        if (UserSetThresholds) return false;
        try
        {
            ThresholdsPinned = Mallopt(MMmapThreshold, MmapThresholdBytes) == 1 && Mallopt(MTrimThreshold, TrimThresholdBytes) == 1;
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException) { unavailable = true; }
        return ThresholdsPinned;
    }

    static bool unavailable = !RuntimeInformation.IsOSPlatform(OSPlatform.Linux);

    public static void Trim()
    {
        if (unavailable) return;
        try { MallocTrim(0); }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException) { unavailable = true; }
    }
}
