using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Ssl.Host.Native;

namespace Ssl.Host.Runs;

/// <summary>
/// A run's folder (DESIGN.md, Run folder contract): <c>config.json</c>, <c>metrics.jsonl</c>,
/// <c>result.json</c>, <c>checkpoints/</c>, <c>plots/</c>. Files are written through a temp file and
/// a rename, so a crash never leaves half a file; metrics are appended line by line.
/// </summary>
public sealed class RunFolder
{
    public static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    public string Root { get; }
    public string ConfigPath => Path.Combine(Root, "config.json");
    public string MetricsPath => Path.Combine(Root, "metrics.jsonl");
    public string ResultPath => Path.Combine(Root, "result.json");
    public string CheckpointsDir => Path.Combine(Root, "checkpoints");
    public string PlotsDir => Path.Combine(Root, "plots");

    public RunFolder(string root)
    {
        Root = Path.GetFullPath(root);
        Directory.CreateDirectory(Root);
        Directory.CreateDirectory(CheckpointsDir);
        Directory.CreateDirectory(PlotsDir);
    }

    /// <summary>Writes the fully resolved experiment config (any JSON-serialisable value).</summary>
    public void WriteConfig<T>(T config) => WriteAtomically(ConfigPath, JsonSerializer.Serialize(config, Json));

    /// <summary>Appends one metrics record (one JSON object per line).</summary>
    public void AppendMetrics(IReadOnlyDictionary<string, object?> record)
    {
        var line = JsonSerializer.Serialize(record);
        File.AppendAllText(MetricsPath, line + "\n");
    }

    /// <summary>Reads every metrics record back (for plots, resume checks and reports).</summary>
    public IReadOnlyList<JsonObject> ReadMetrics() =>
        File.Exists(MetricsPath)
            ? File.ReadLines(MetricsPath).Where(l => l.Length > 0).Select(l => JsonNode.Parse(l)!.AsObject()).ToArray()
            : Array.Empty<JsonObject>();

    public void WriteResult(RunResult result) => WriteAtomically(ResultPath, JsonSerializer.Serialize(result, Json));

    public RunResult ReadResult() =>
        JsonSerializer.Deserialize<RunResult>(File.ReadAllText(ResultPath))
        ?? throw new InvalidDataException($"{ResultPath}: expected a result object, found null");

    /// <summary>Writes text to <paramref name="path"/> through a temp file and a rename.</summary>
    public static void WriteAtomically(string path, string text)
    {
        var temp = path + ".tmp";
        File.WriteAllText(temp, text);
        File.Move(temp, path, true);
    }

    /// <summary>
    /// The versions block of result.json: the commit this binary was built from (BuildInfo.Described:
    /// 40 hex digits, "-dirty" appended for a dirty tree, "unknown" outside a clone), TorchSharp, libtorch.
    /// </summary>
    public static VersionFigures CurrentVersions()
    {
        var (torchSharp, libTorch) = TorchRuntime.Versions();
        return new VersionFigures { Commit = Ssl.Host.Runtime.BuildInfo.Described, TorchSharp = torchSharp, LibTorch = libTorch };
    }

    /// <summary>The commit this binary was built from (BuildInfo.Commit), or null for a build outside a clone.</summary>
    [Obsolete("Use Ssl.Host.Runtime.BuildInfo.Commit: the commit compiled into the binary.")]
    public static string? GitCommit() =>
        Ssl.Host.Runtime.BuildInfo.Commit == "unknown" ? null : Ssl.Host.Runtime.BuildInfo.Commit;
}
