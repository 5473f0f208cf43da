using System.IO.Compression;

namespace Ssl.Host.Data;

/// <summary>Whole-file reads with transparent gzip (detected by its magic bytes, not the file name).</summary>
internal static class BinaryFiles
{
    public static byte[] ReadAll(string path)
    {
        if (!File.Exists(path))
            throw new DataException(path, "an existing file", "no such file");
        var raw = File.ReadAllBytes(path);
        if (raw.Length < 2 || raw[0] != 0x1f || raw[1] != 0x8b) return raw;
        try
        {
            using var input = new MemoryStream(raw);
            using var gz = new GZipStream(input, CompressionMode.Decompress);
            using var output = new MemoryStream(raw.Length * 2);
            gz.CopyTo(output);
            // GZipStream stops quietly at a truncated stream; the trailer's ISIZE (size mod 2^32) tells.
            var trailerSize = (uint)(raw[^4] | raw[^3] << 8 | raw[^2] << 16 | raw[^1] << 24);
            if (raw.Length < 18 || trailerSize != (uint)output.Length)
                throw new DataException(path, $"a complete gzip stream (its trailer says {trailerSize} bytes)",
                    $"{output.Length} bytes decompressed: the file is truncated or corrupt");
            return output.ToArray();
        }
        catch (InvalidDataException e)
        {
            throw new DataException(path, "a complete gzip stream", $"a corrupt or truncated one ({e.Message})", e);
        }
    }

    public static int ReadBigEndianInt32(byte[] b, int offset) =>
        b[offset] << 24 | b[offset + 1] << 16 | b[offset + 2] << 8 | b[offset + 3];

    /// <summary>Class names, one per line, from <paramref name="path"/>; <paramref name="fallback"/> when the file is absent.</summary>
    public static string[] ReadNames(string path, string[] fallback)
    {
        if (!File.Exists(path)) return fallback;
        var names = File.ReadAllLines(path).Select(l => l.Trim()).Where(l => l.Length > 0).ToArray();
        if (names.Length != fallback.Length)
            throw new DataException(path, $"{fallback.Length} class names, one per line", $"{names.Length}");
        return names;
    }
}
