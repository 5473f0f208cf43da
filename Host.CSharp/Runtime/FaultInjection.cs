using System.Runtime.InteropServices;

namespace Ssl.Host.Runtime;

/// <summary>
/// A test hook that kills this process with SIGKILL (what <c>kill -9</c> sends) at a named point of
/// a run, so the fault tests stop it exactly there and check that <c>--resume</c> ends as an
/// uninterrupted run would. <c>SSL_TEST_KILL_AT=&lt;point&gt;:&lt;n&gt;</c> kills on the n-th time
/// that point is reached; unset (every run but those tests), <see cref="At"/> is a
/// null check. Points: <c>step</c>, <c>metrics-row</c>, <c>checkpoint-write</c> (half a checkpoint
/// written), <c>eval</c> (after the probes, before result.json). docs/reliability.md lists the tests.
/// </summary>
public static class FaultInjection
{
    public const string Variable = "SSL_TEST_KILL_AT";
    /// <summary>With several ranks: the one rank the hook kills (<c>SSL_TEST_KILL_RANK=1</c>); unset, any.</summary>
    public const string RankVariable = "SSL_TEST_KILL_RANK";

    static readonly int? OnlyRank = int.TryParse(Environment.GetEnvironmentVariable(RankVariable), out var r) ? r : null;

    static readonly (string Point, int Count)? Target = Parse(Environment.GetEnvironmentVariable(Variable));
    static int hits;

    [DllImport("libc", SetLastError = true)] static extern int kill(int pid, int signal);

    static (string, int)? Parse(string? text)
    {
        if (string.IsNullOrWhiteSpace(text)) return null;
        var parts = text.Split(':');
        if (parts.Length != 2 || !int.TryParse(parts[1], out var n) || n < 1)
            throw new ArgumentException($"{Variable}: expected <point>:<n> with n >= 1 (a fault-test hook), found '{text}'");
        return (parts[0], n);
    }

    /// <summary>Reached <paramref name="point"/>: dies here if the hook names it and this is its n-th time.</summary>
    public static void At(string point)
    {
        if (Target is not { } target || target.Point != point) return;
        if (OnlyRank is { } rank && rank != Distributed.World.RankFromLauncher) return;
        if (Interlocked.Increment(ref hits) != target.Count) return;
        Console.Out.Flush();
        Console.Error.Flush();
        kill(Environment.ProcessId, 9);
        Thread.Sleep(Timeout.Infinite);
    }
}
