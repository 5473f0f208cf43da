namespace Ssl.Host.Runtime;

/// <summary>Resident memory of this process, from /proc (Linux); falls back to the .NET view elsewhere.</summary>
public static class ProcessStats
{
    /// <summary>Current resident set size in MiB (VmRSS).</summary>
    public static double RssMb() => ReadStatusKb("VmRSS:") / 1024.0 is var mb && mb > 0 ? mb : Environment.WorkingSet / 1048576.0;

    /// <summary>Peak resident set size in MiB since the process started (VmHWM).</summary>
    public static double PeakRssMb() => ReadStatusKb("VmHWM:") / 1024.0 is var mb && mb > 0 ? mb : Environment.WorkingSet / 1048576.0;

    static double ReadStatusKb(string key)
    {
        const string status = "/proc/self/status";
        if (!File.Exists(status)) return 0;
        var line = File.ReadLines(status).FirstOrDefault(l => l.StartsWith(key, StringComparison.Ordinal));
        if (line is null) return 0;
        var digits = new string(line.Where(char.IsDigit).ToArray());
        return double.TryParse(digits, out var kb) ? kb : 0;
    }
}
