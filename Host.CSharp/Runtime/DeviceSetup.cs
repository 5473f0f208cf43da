using Ssl.Host.Native;
using Ssl.Host.Runs;
using TorchSharp;

namespace Ssl.Host.Runtime;

/// <summary>What a user asks for with <c>--device</c>.</summary>
public enum DeviceRequest { Cpu, Cuda, Auto }

/// <summary>Thrown when the requested device cannot be used; the message says why and what to do.</summary>
public sealed class DeviceUnavailableException(string message) : Exception(message);

/// <summary>
/// The resolved run environment: device, threads, seed and determinism. Seeds both torch (CPU and
/// CUDA generators) and .NET randomness (<see cref="Random"/>), and is recorded in every run's config.
/// </summary>
public sealed class RunEnvironment
{
    public required torch.Device Device { get; init; }
    public required int Threads { get; init; }
    public required long Seed { get; init; }
    public required bool Deterministic { get; init; }
    /// <summary>.NET randomness for this run, seeded from <see cref="Seed"/>.</summary>
    public required Random Random { get; init; }
    /// <summary>Lines a user should see (for example that <c>auto</c> fell back to CPU).</summary>
    public required IReadOnlyList<string> Notes { get; init; }
    /// <summary>How the run computes (memory format, side thread, threads resolved): config.json's <c>runtime</c>.</summary>
    public RuntimeOptions Runtime { get; init; } = new();
    /// <summary>The commit and library versions when the run started: what result.json records, so a
    /// commit made while a run trains is not taken for the code that trained it.</summary>
    public VersionFigures Versions { get; init; } = RunFolder.CurrentVersions();

    public string DeviceName => Device.ToString();
}

public static class DeviceSetup
{
    /// <summary>Parses <c>cpu</c>, <c>cuda</c> or <c>auto</c> (case-insensitive).</summary>
    public static DeviceRequest Parse(string text) => text.Trim().ToLowerInvariant() switch
    {
        "cpu" => DeviceRequest.Cpu,
        "cuda" or "gpu" => DeviceRequest.Cuda,
        "auto" => DeviceRequest.Auto,
        _ => throw new ArgumentException($"--device: expected one of cpu, cuda, auto; found '{text}'"),
    };

    /// <summary>
    /// Loads libtorch, picks the device, sets the thread count (0 = all cores) and the
    /// <paramref name="runtime"/> options (null: the environment's defaults), seeds every source of
    /// randomness and, with <paramref name="deterministic"/>, makes CPU runs repeat exactly.
    /// </summary>
    public static RunEnvironment Configure(DeviceRequest request, int threads = 0, long seed = 0, bool deterministic = false,
                                           RuntimeOptions? runtime = null)
    {
        runtime ??= RuntimeOptions.FromEnvironment();
        TorchRuntime.EnsureLoaded();
        var notes = new List<string>();
        var cudaAvailable = torch.cuda.is_available();
        var device = request switch
        {
            DeviceRequest.Cpu => torch.CPU,
            DeviceRequest.Cuda when cudaAvailable => torch.CUDA,
            DeviceRequest.Cuda => throw new DeviceUnavailableException(
                "--device cuda: expected a CUDA device, found none. This build uses TorchSharp-cpu; " +
                "rebuild with `dotnet build -p:SslCuda=true` (needs the TorchSharp-cuda-linux package and an NVIDIA driver), " +
                "or run with --device cpu or --device auto."),
            _ when cudaAvailable => torch.CUDA,
            _ => torch.CPU,
        };
        if (request == DeviceRequest.Auto)
            notes.Add(cudaAvailable ? "--device auto: using CUDA." : "--device auto: CUDA not available, using CPU.");

        // The process-wide switch the options set (this is the one place that sets it); the memory
        // format reaches the models through their factory (RuntimeOptions.ConvLayout).
        Engine.SideThread.Enabled = runtime.SideThread;

        if (threads < 0) throw new ArgumentException($"--threads: expected 0 (all cores) or a positive count, found {threads}");
        // Ranks of one run on this machine share its cores (docs/distributed.md).
        var threadCount = threads == 0 ? Math.Max(1, Environment.ProcessorCount / Distributed.World.LocalSize) : threads;
        torch.set_num_threads(threadCount);

        torch.manual_seed(seed);
        if (cudaAvailable) torch.cuda.manual_seed_all(seed);
        if (deterministic)
        {
            // TorchSharp 0.107 marks torch.use_deterministic_algorithms "not implemented", so this
            // mode is what can be had: a fixed thread count (libtorch's CPU kernels split work by
            // thread count, so the same count gives the same sums), seeded generators, no TF32.
            // CPU runs repeat bit for bit; CUDA kernels with atomics may still differ.
            torch.backends.cudnn.allow_tf32 = false;
            if (device.type == DeviceType.CUDA)
                notes.Add("--deterministic on CUDA: TorchSharp does not bind use_deterministic_algorithms; results may differ in the last bits.");
        }

        return new RunEnvironment
        {
            Device = device,
            Threads = threadCount,
            Seed = seed,
            Deterministic = deterministic,
            Random = new Random(unchecked((int)(seed ^ (seed >> 32)))),
            Notes = notes,
            Runtime = runtime with { Threads = threadCount, Ranks = Distributed.World.LaunchedSize },
        };
    }
}
