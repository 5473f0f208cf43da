using System.Diagnostics;
using System.Runtime.InteropServices;
using TorchSharp;

namespace Ssl.Host.Runtime;

/// <summary>The machine a run or benchmark ran on (RESULTS.md and bench.json report it).</summary>
public sealed record MachineInfo(string CpuModel, int Cores, double MemoryGiB, string Os)
{
    /// <summary>This machine: CPU model from /proc/cpuinfo, logical cores, total memory from /proc/meminfo.</summary>
    public static MachineInfo Current()
    {
        string cpu = RuntimeInformation.ProcessArchitecture.ToString();
        double memory = 0;
        if (File.Exists("/proc/cpuinfo"))
            cpu = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))
                      ?.Split(':', 2)[1].Trim() ?? cpu;
        if (File.Exists("/proc/meminfo"))
        {
            var line = File.ReadLines("/proc/meminfo").FirstOrDefault(l => l.StartsWith("MemTotal:", StringComparison.Ordinal));
            if (line is not null && double.TryParse(new string(line.Where(char.IsDigit).ToArray()), out var kb)) memory = kb / 1048576.0;
        }
        return new MachineInfo(cpu, Environment.ProcessorCount, Math.Round(memory, 1), RuntimeInformation.OSDescription);
    }

    /// <summary>
    /// The float32 matrix-multiply rate this process reaches with the current torch thread count, in
    /// GFLOP/s (2n³ per n x n product): the best of a few timed products at each of 512, 1024, 2048.
    /// </summary>
    public static double MatmulPeakGflops(double secondsPerSize = 0.5)
    {
        var best = 0.0;
        foreach (var n in new long[] { 512, 1024, 2048 })
        {
            using var scope = torch.NewDisposeScope();
            var a = torch.randn(n, n);
            var b = torch.randn(n, n);
            torch.mm(a, b).Dispose();
            var clock = Stopwatch.StartNew();
            var reps = 0;
            while (clock.Elapsed.TotalSeconds < secondsPerSize || reps < 2)
            {
                var t = Stopwatch.StartNew();
                torch.mm(a, b).Dispose();
                best = Math.Max(best, 2.0 * n * n * n / t.Elapsed.TotalSeconds / 1e9);
                reps++;
            }
        }
        return best;
    }
}
