using System.Reflection;
using System.Text.RegularExpressions;

namespace Ssl.Host.Runtime;

/// <summary>
/// The source this binary was compiled from, as the build recorded it in the assembly's metadata
/// (target SslGitCommit in Directory.Build.targets): it does not depend on the folder a process
/// runs in, so a run started anywhere records the commit of the code that ran.
/// </summary>
public static partial class BuildInfo
{
    /// <summary>HEAD's full commit (40 lowercase hex digits) at build time, or "unknown" for a build outside a git clone.</summary>
    public static string Commit { get; } = Read("SslCommit") is { } c && IsCommit(c) ? c : "unknown";

    /// <summary>Whether tracked files differed from <see cref="Commit"/> at build time (untracked files do not count).</summary>
    public static bool Dirty { get; } = Commit != "unknown" && Read("SslDirty") == "true";

    /// <summary>
    /// What result.json records as the commit: <see cref="Commit"/>, with "-dirty" appended for a
    /// dirty build. A dirty build's runs thus never equal a commit, so the sweep's skip rule never
    /// counts them as done (their code is not known to be that commit's) and records show them apart.
    /// </summary>
    public static string Described => Dirty ? Commit + "-dirty" : Commit;

    /// <summary>A recorded commit in short: its first 10 digits, keeping a "-dirty" mark.</summary>
    public static string Short(string recorded)
    {
        var dirty = recorded.EndsWith("-dirty", StringComparison.Ordinal);
        var commit = dirty ? recorded[..^"-dirty".Length] : recorded;
        return (commit.Length > 10 ? commit[..10] : commit) + (dirty ? "-dirty" : "");
    }

    /// <summary>Whether <paramref name="text"/> is a full commit: 40 lowercase hex digits.</summary>
    public static bool IsCommit(string text) => FullCommit().IsMatch(text);

    [GeneratedRegex(@"^[0-9a-f]{40}\z")]
    private static partial Regex FullCommit();

    private static string? Read(string key) =>
        typeof(BuildInfo).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().FirstOrDefault(a => a.Key == key)?.Value;
}
