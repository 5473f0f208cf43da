namespace Ssl.Host.Data;

/// <summary>
/// A data file that is missing or malformed. The message names the file, what was expected and
/// what was found, e.g. <c>train-images-idx3-ubyte.gz: expected magic 0x00000803 (IDX images), found 0x00000801</c>.
/// </summary>
public sealed class DataException : Exception
{
    public string File { get; }
    public string Expected { get; }
    public string Found { get; }

    public DataException(string file, string expected, string found, Exception? inner = null)
        : base($"{file}: expected {expected}, found {found}", inner)
    {
        File = file;
        Expected = expected;
        Found = found;
    }
}
