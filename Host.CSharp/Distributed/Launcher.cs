using System.Diagnostics;

namespace Ssl.Host.Distributed;

/// <summary>
/// <c>ssl train ... --ranks N</c> on one machine: the same command line again under Open MPI's
/// <c>mpirun -n N</c>, each rank with cores / N torch threads unless --threads says otherwise. The
/// console shows rank 0 alone (the others write nothing); the exit code is mpirun's, non-zero where
/// any rank failed. Under a launcher already (<c>mpirun</c>, <c>srun</c>) nothing is started.
/// </summary>
public static class Launcher
{
    /// <summary>Runs <paramref name="command"/> (ssl's program, then its arguments without --ranks) on
    /// <paramref name="ranks"/> processes; returns the exit code.</summary>
    public static int Run(int ranks, IReadOnlyList<string> command)
    {
        var mpirun = FindOnPath("mpirun")
            ?? throw new RanksException(
                $"mpirun: expected Open MPI's launcher for --ranks {ranks}, found none on PATH; install it (`apt-get install openmpi-bin libopenmpi-dev`)");
        var start = new ProcessStartInfo(mpirun) { UseShellExecute = false };
        foreach (var a in new[] { "-n", ranks.ToString(), "--oversubscribe", "--bind-to", "none" }) start.ArgumentList.Add(a);
        foreach (var a in command) start.ArgumentList.Add(a);
        if (!command.Contains("--threads"))
        {
            start.ArgumentList.Add("--threads");
            start.ArgumentList.Add(Math.Max(1, Environment.ProcessorCount / ranks).ToString());
        }
        // Open MPI refuses root without these; containers and CI run as root.
        if (Environment.UserName == "root")
        {
            start.Environment["OMPI_ALLOW_RUN_AS_ROOT"] = "1";
            start.Environment["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1";
        }
        using var process = Process.Start(start)!;
        process.WaitForExit();
        // A rank killed by a signal: mpirun's lines name it; the run's own errors (exit 1, 2) have said theirs.
        if (process.ExitCode > 2)
            Console.Error.WriteLine(
                $"error: a rank of this {ranks}-rank run was lost (exit code {process.ExitCode}; mpirun's message above names it) and the others stopped; " +
                "the run folder keeps its last checkpoint: the same command with --resume continues it");
        return process.ExitCode;
    }

    static string? FindOnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(dir => Path.Combine(dir, name)).FirstOrDefault(File.Exists);
}
