using System.Reflection;
using System.Runtime.InteropServices;
using Ssl.Build;
using TorchSharp;

namespace Ssl.Host.Native;

/// <summary>
/// Makes libtorch loadable in every kind of process: apps and test runners (whose build already
/// patched the natives, see Directory.Build.targets) and F# scripts that reference the built
/// assemblies, where the .NET host does not probe <c>runtimes/linux-x64/native</c>. Call
/// <see cref="EnsureLoaded"/> before the first tensor; it is cheap after the first call.
/// </summary>
public static class TorchRuntime
{
    static readonly object Gate = new();
    static bool loaded;

    /// <summary>Where libLibTorchSharp.so was loaded from, or null when the .NET host found it itself.</summary>
    public static string? PreloadedFrom { get; private set; }

    public static void EnsureLoaded()
    {
        lock (Gate)
        {
            if (loaded) return;
            if (RuntimeInformation.IsOSPlatform(OSPlatform.Linux)) PrepareLinux();
            // Before the first tensor: fixed malloc thresholds, so a step's activations are not
            // mapped, faulted in and unmapped again on every step (NativeMemory, 1.5x on MoCo's step).
            Ssl.Host.Runtime.NativeMemory.PinThresholds();
            torch.InitializeDeviceType(DeviceType.CPU);
            // Quiet logs: no NNPACK warning per small convolution on CPUs NNPACK does not support.
            TorchContext.DisableNnpack();
            loaded = true;
        }
    }

    static void PrepareLinux()
    {
        var torchDir = Path.GetDirectoryName(typeof(torch).Assembly.Location)!;
        var candidates = new[]
        {
            Path.Combine(torchDir, "runtimes", "linux-x64", "native", "libLibTorchSharp.so"),
            Path.Combine(torchDir, "libLibTorchSharp.so"),
        }.Where(File.Exists).ToArray();

        if (!ElfVersionPatch.SystemProvides(ElfVersionPatch.TorchSharpGlibcxx))
            foreach (var lib in candidates)
                PatchOrExplain(lib);

        // An app's deps.json lets the host find the natives; a script's host does not, so load the
        // library by its full path once (its RUNPATH is $ORIGIN, so its neighbours come along).
        if (candidates.Length > 0 && !NativeLibrary.TryLoad("LibTorchSharp", typeof(torch).Assembly, null, out _))
        {
            NativeLibrary.Load(candidates[0]);
            PreloadedFrom = candidates[0];
        }
    }

    static void PatchOrExplain(string lib)
    {
        try
        {
            ElfVersionPatch.MakeVersionWeak(lib, ElfVersionPatch.TorchSharpGlibcxx);
        }
        catch (UnauthorizedAccessException)
        {
            if (!ElfVersionPatch.IsWeak(lib, ElfVersionPatch.TorchSharpGlibcxx))
                throw new InvalidOperationException(
                    $"{lib}: expected its {ElfVersionPatch.TorchSharpGlibcxx} requirement marked weak (this system's libstdc++ " +
                    "lacks that version), found it strong and the file read-only. Run `dotnet build` once as a user " +
                    "who may write the file; docs/torchsharp-native.md explains the fix.");
        }
    }

    /// <summary>TorchSharp's assembly version and the libtorch version it binds, for result.json.</summary>
    public static (string TorchSharp, string LibTorch) Versions()
    {
        var asm = typeof(torch).Assembly;
        var info = asm.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion
                   ?? asm.GetName().Version?.ToString() ?? "unknown";
        var plus = info.IndexOf('+');
        return (plus > 0 ? info[..plus] : info, torch.__version__);
    }
}
