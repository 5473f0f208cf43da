using System.Text.Json;
using System.Text.Json.Nodes;
using Ssl.Host.Native;

namespace Ssl.Host.Runs;

/// <summary>What a run folder holds before a run starts in it.</summary>
public enum RunState { Empty, Unfinished, Finished }

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

    public RunFolder(string root) : this(root, create: true) { }

    RunFolder(string root, bool create)
    {
        Root = Path.GetFullPath(root);
        if (create) CreateLayout();
    }

    /// <summary>The folder rank 0 of a run on several processes writes, as another rank sees it: read
    /// (a checkpoint to resume from), never created, locked or written by this process.</summary>
    public static RunFolder Follow(string root) => new(root, create: false);

    /// <summary>The lock this process holds on the folder (<see cref="Claim"/>), or null.</summary>
    public RunLock? Lock { get; private set; }

    /// <summary>Whether <see cref="Claim"/> made the folder (so a run refused before writing can remove it again).</summary>
    public bool CreatedByClaim { get; private set; }

    /// <summary>
    /// The folder <paramref name="root"/> taken for one run: checked to be a folder (or absent),
    /// created if absent, and locked (<see cref="RunLock"/>) against a second writer. Nothing of a
    /// run is written yet; <see cref="CreateLayout"/> does that once every check has passed.
    /// </summary>
    public static RunFolder Claim(string root)
    {
        var folder = new RunFolder(root, create: false);
        if (File.Exists(folder.Root))
            throw new RunFolderException(folder.Root, "a run folder (--out)", "a file");
        var created = !Directory.Exists(folder.Root);
        try { Directory.CreateDirectory(folder.Root); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new RunFolderException(folder.Root, "a run folder this user can create (--out)", Reason(e), e);
        }
        try { folder.Lock = RunLock.Acquire(folder.Root); }
        catch
        {
            if (created) TryDelete(folder.Root);
            throw;
        }
        folder.CreatedByClaim = created;
        return folder;
    }

    /// <summary>What the folder already holds: a finished run (result.json), an unfinished one, or nothing of a run.</summary>
    public RunState State =>
        File.Exists(ResultPath) ? RunState.Finished
        : File.Exists(ConfigPath) || File.Exists(MetricsPath) || File.Exists(Path.Combine(CheckpointsDir, "last.ckpt")) ? RunState.Unfinished
        : RunState.Empty;

    /// <summary>Creates the sub-folders a run writes into.</summary>
    public void CreateLayout()
    {
        Directory.CreateDirectory(Root);
        Directory.CreateDirectory(CheckpointsDir);
        Directory.CreateDirectory(PlotsDir);
    }

    /// <summary>Releases the lock and, if the claim made the folder and nothing but the lock went into it, removes it.</summary>
    public void Release()
    {
        Lock?.Dispose();
        Lock = null;
        if (CreatedByClaim && Directory.Exists(Root)
            && Directory.EnumerateFileSystemEntries(Root).All(e => Path.GetFileName(e) == RunLock.FileName))
            TryDelete(Root);
    }

    /// <summary>The files and folders of a run (not the lock, not other files the user keeps here), for <c>--force</c>.</summary>
    public IEnumerable<string> RunEntries()
    {
        var names = new[] { "config.json", "metrics.jsonl", "result.json", "data_errors.txt", "checkpoints", "plots", "export", "tensorboard", "baselines", "judge", "colorization.json" };
        foreach (var entry in Directory.EnumerateFileSystemEntries(Root))
        {
            var name = Path.GetFileName(entry);
            if (names.Contains(name) || name.StartsWith("eval-", StringComparison.Ordinal) || name.StartsWith("finetune", StringComparison.Ordinal) || name.EndsWith(".tmp", StringComparison.Ordinal))
                yield return entry;
        }
    }

    /// <summary>Removes a previous run's files (<see cref="RunEntries"/>): what <c>--force</c> asks for.</summary>
    public void ClearRun()
    {
        foreach (var entry in RunEntries().ToArray())
        {
            if (Directory.Exists(entry)) Directory.Delete(entry, true);
            else File.Delete(entry);
        }
    }

    /// <summary>Throws unless the folder's file system has <paramref name="bytes"/> free (for <paramref name="what"/>).</summary>
    public void RequireFreeSpace(long bytes, string what)
    {
        long free;
        try { free = new DriveInfo(Root).AvailableFreeSpace; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException) { return; }
        if (free < bytes)
            throw new RunFolderException(Root, $"at least {Mib(bytes)} free for {what}", $"{Mib(free)} free on its disk");
    }

    static string Mib(long bytes) => $"{bytes / (1024.0 * 1024.0):N1} MiB";

    static void TryDelete(string dir)
    {
        try { Directory.Delete(dir, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    /// <summary>The reason of a file-system failure in a few words (the OS's message without the path .NET appends).</summary>
    public static string Reason(Exception e)
    {
        if (e is UnauthorizedAccessException) return "permission denied";
        var message = System.Text.RegularExpressions.Regex.Replace(e.Message.Split('\n', 2)[0], @"\s*:?\s*'[^']*'", "").Trim().TrimEnd('.');
        return message.Length == 0 ? e.GetType().Name : char.ToLowerInvariant(message[0]) + message[1..];
    }

    /// <summary>Writes the fully resolved experiment config (any JSON-serialisable value).</summary>
    public void WriteConfig<T>(T config) => WriteAtomically(ConfigPath, JsonSerializer.Serialize(config, Json));

    /// <summary>Appends one metrics record (one JSON object per line).</summary>
    public void AppendMetrics(IReadOnlyDictionary<string, object?> record)
    {
        var line = JsonSerializer.Serialize(record);
        Guard(MetricsPath, "a metrics row", () => File.AppendAllText(MetricsPath, line + "\n"));
    }

    /// <summary>Reads every metrics record back (for plots, resume checks and reports); a line that is not a JSON object (half-written by a killed process) is left out.</summary>
    public IReadOnlyList<JsonObject> ReadMetrics() =>
        File.Exists(MetricsPath)
            ? File.ReadLines(MetricsPath).Select(ParseRow).OfType<JsonObject>().ToArray()
            : Array.Empty<JsonObject>();

    static JsonObject? ParseRow(string line)
    {
        if (line.Length == 0) return null;
        try { return JsonNode.Parse(line) as JsonObject; }
        catch (JsonException) { return null; }
    }

    /// <summary>
    /// Makes metrics.jsonl match a checkpoint at <paramref name="nextEpoch"/> and <paramref name="globalStep"/>
    /// before a resume appends to it: a half-written line and every row past that point (written after
    /// the checkpoint by the process that died) are dropped, so the resumed rows continue the file as an
    /// uninterrupted run's would. Returns the number of lines dropped.
    /// </summary>
    public int TrimMetrics(int nextEpoch, long globalStep)
    {
        if (!File.Exists(MetricsPath)) return 0;
        var lines = File.ReadAllLines(MetricsPath);
        var kept = new List<string>();
        foreach (var line in lines)
        {
            var row = ParseRow(line);
            if (row is null) continue;
            var epoch = row.TryGetPropertyValue("epoch", out var e) && e is JsonValue ev && ev.TryGetValue<int>(out var ei) ? ei : (int?)null;
            var step = row.TryGetPropertyValue("step", out var st) && st is JsonValue sv && sv.TryGetValue<long>(out var si) ? si : (long?)null;
            if (epoch is { } ep && ep >= nextEpoch) continue;
            // Rows of neither (figures of the evaluation after training) come again when it reruns.
            if (epoch is null && (step is null || step > globalStep)) continue;
            kept.Add(line);
        }
        var dropped = lines.Count(l => l.Length > 0) - kept.Count;
        if (dropped > 0 || (lines.Length > 0 && !File.ReadAllText(MetricsPath).EndsWith('\n')))
            WriteAtomically(MetricsPath, kept.Count == 0 ? "" : string.Join("\n", kept) + "\n");
        return dropped;
    }

    public void WriteResult(RunResult result) => WriteAtomically(ResultPath, JsonSerializer.Serialize(result, Json));

    public RunResult ReadResult() =>
        JsonSerializer.Deserialize<RunResult>(File.ReadAllText(ResultPath))
        ?? throw new InvalidDataException($"{ResultPath}: expected a result object, found null");

    /// <summary>Writes text to <paramref name="path"/> through a temp file and a rename.</summary>
    public static void WriteAtomically(string path, string text)
    {
        var temp = path + ".tmp";
        Guard(path, "a file", () =>
        {
            try
            {
                File.WriteAllText(temp, text);
                File.Move(temp, path, true);
            }
            catch
            {
                try { File.Delete(temp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
                throw;
            }
        });
    }

    /// <summary>
    /// Runs a write of <paramref name="what"/> to <paramref name="path"/>; a full disk, a read-only
    /// or forbidden folder becomes a <see cref="RunFolderException"/> naming the path and the reason.
    /// </summary>
    public static void Guard(string path, string what, Action write)
    {
        try { write(); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException && e is not RunFolderException)
        {
            throw new RunFolderException(path, $"to write {what}", Reason(e), e);
        }
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
