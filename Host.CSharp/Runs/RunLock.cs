using System.Runtime.InteropServices;
using System.Text;

namespace Ssl.Host.Runs;

/// <summary>
/// A problem with a run folder (another writer, a finished run, no room, no permission). The
/// message names the folder or file, what was expected and what was found, in one line.
/// </summary>
public sealed class RunFolderException(string path, string expected, string found, Exception? inner = null)
    : Exception($"{path}: expected {expected}, found {found}", inner)
{
    public string Path { get; } = path;
}

/// <summary>
/// The one writer of a run folder: an exclusive <c>flock</c> on <c>&lt;run&gt;/run.lock</c>, held until
/// disposed, released by the kernel when the process dies (kill -9 included), so a stale file never
/// blocks a later run. The file holds the holder's PID and command line, which a refused second
/// writer names. Locks are per open file, so two openers in one process also exclude each other.
/// </summary>
public sealed class RunLock : IDisposable
{
    public const string FileName = "run.lock";

    const int LockExclusive = 2, LockNonBlocking = 4, LockUnlock = 8;
    const int ReadWrite = 2, Create = 0x40, CloseOnExec = 0x80000;

    [DllImport("libc", SetLastError = true)] static extern int open(string path, int flags, int mode);
    [DllImport("libc", SetLastError = true)] static extern int flock(int fd, int operation);
    [DllImport("libc", SetLastError = true)] static extern int close(int fd);
    [DllImport("libc", SetLastError = true)] static extern int ftruncate(int fd, long length);
    [DllImport("libc", SetLastError = true)] static extern nint pwrite(int fd, byte[] buffer, nint count, long offset);
    [DllImport("libc", SetLastError = true)] static extern nint pread(int fd, byte[] buffer, nint count, long offset);

    readonly int fd = -1;
    readonly FileStream? stream;
    bool released;

    public string Path { get; }

    RunLock(string path, int fd, FileStream? stream)
    {
        Path = path;
        this.fd = fd;
        this.stream = stream;
    }

    /// <summary>Takes the lock of the run folder <paramref name="root"/> (which must exist), or throws naming the holder.</summary>
    public static RunLock Acquire(string root)
    {
        var path = System.IO.Path.Combine(root, FileName);
        var holder = $"{Environment.ProcessId} {Environment.CommandLine}\n";
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS())
        {
            try
            {
                var s = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
                s.SetLength(0);
                s.Write(Encoding.UTF8.GetBytes(holder));
                s.Flush();
                return new RunLock(path, -1, s);
            }
            catch (IOException e) when (e is not FileNotFoundException and not DirectoryNotFoundException)
            {
                throw new RunFolderException(root, "a run folder no other process is writing", $"it is locked ({e.Message}); wait for that run or use another --out", e);
            }
        }
        var fd = open(path, ReadWrite | Create | CloseOnExec, Convert.ToInt32("644", 8));
        if (fd < 0)
            throw new RunFolderException(path, "a lock file this user can create and write", Marshal.GetLastPInvokeErrorMessage());
        if (flock(fd, LockExclusive | LockNonBlocking) != 0)
        {
            var buffer = new byte[4096];
            var read = pread(fd, buffer, buffer.Length, 0);
            close(fd);
            var who = read > 0 ? Encoding.UTF8.GetString(buffer, 0, (int)read).Trim() : "";
            var named = who.Length == 0 ? "another process" : $"PID {who.Split(' ', 2)[0]} ({Shorten(who)})";
            throw new RunFolderException(root, "a run folder no other process is writing",
                $"it is being written by {named}; wait for it to end, or use another --out");
        }
        var bytes = Encoding.UTF8.GetBytes(holder);
        ftruncate(fd, 0);
        pwrite(fd, bytes, bytes.Length, 0);
        return new RunLock(path, fd, null);
    }

    static string Shorten(string holder)
    {
        var command = holder.Contains(' ') ? holder.Split(' ', 2)[1] : holder;
        return command.Length > 160 ? command[..157] + "..." : command;
    }

    /// <summary>Releases the lock; the file stays (its content names the last holder).</summary>
    public void Dispose()
    {
        if (released) return;
        released = true;
        if (stream is not null) stream.Dispose();
        else if (fd >= 0)
        {
            flock(fd, LockUnlock);
            close(fd);
        }
    }
}
