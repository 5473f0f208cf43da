using System.Runtime.InteropServices;

namespace Ssl.Host.Runtime;

/// <summary>
/// Hands freed native memory back to the system. glibc's malloc raises its mmap threshold after
/// large frees, so later large tensors (freed at once by dispose scopes) come from its heap and stay
/// mapped: a loop of (N, N) float64 temporaries (t-SNE at N = 2,000) grew the resident set to 19 GB
/// with no tensor alive. <c>malloc_trim</c> returns the free pages; where it does not exist (not
/// glibc), nothing happens.
/// </summary>
public static class NativeMemory
{
    [DllImport("libc", EntryPoint = "malloc_trim")]
    static extern int MallocTrim(nuint pad);

    static bool unavailable = !RuntimeInformation.IsOSPlatform(OSPlatform.Linux);

    public static void Trim()
    {
        if (unavailable) return;
        try { MallocTrim(0); }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException) { unavailable = true; }
    }
}
