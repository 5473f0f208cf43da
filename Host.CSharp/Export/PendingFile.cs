namespace Ssl.Host.Export;

/// <summary>
/// A file written at <c>path.tmp</c> and renamed to <c>path</c> by <see cref="Commit"/>, so a killed
/// process or a failed write never leaves a half-written file under the real name; disposed without a
/// commit, it deletes the temp file (docs/reliability.md). The writers of <c>ssl embed</c> stream through it.
/// </summary>
public sealed class PendingFile : IDisposable
{
    readonly string path;
    readonly string temp;
    bool committed;

    public PendingFile(string path, FileAccess access = FileAccess.Write)
    {
        this.path = path;
        temp = path + ".tmp";
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        Stream = new FileStream(temp, FileMode.Create, access, FileShare.None, 1 << 20);
    }

    /// <summary>The temp file's stream: what the owner writes to.</summary>
    public FileStream Stream { get; }

    /// <summary>Flushes the stream to disk, closes it and renames the file into place.</summary>
    public void Commit()
    {
        Stream.Flush(flushToDisk: true);
        Stream.Dispose();
        File.Move(temp, path, true);
        committed = true;
    }

    public void Dispose()
    {
        if (committed) return;
        Stream.Dispose();
        try { File.Delete(temp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
