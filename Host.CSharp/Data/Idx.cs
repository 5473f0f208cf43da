using TorchSharp;
using static TorchSharp.torch;

namespace Ssl.Host.Data;

/// <summary>
/// The IDX format of MNIST and Fashion-MNIST (LeCun et al.): big-endian magic 0x00000803 then
/// count, rows, columns for images; 0x00000801 then count for labels; then one byte per value.
/// Files may be gzip-compressed or raw.
/// </summary>
public static class Idx
{
    public const int ImagesMagic = 0x00000803;
    public const int LabelsMagic = 0x00000801;

    /// <summary>Reads an images file and its labels file into an <see cref="ImageDataset"/> (N, 1, H, W).</summary>
    public static ImageDataset Read(string name, Split split, string imagesPath, string labelsPath, IReadOnlyList<string> classNames)
    {
        var img = BinaryFiles.ReadAll(imagesPath);
        var lab = BinaryFiles.ReadAll(labelsPath);
        var (n, rows, cols) = ReadImagesHeader(imagesPath, img);
        var labelCount = ReadLabelsHeader(labelsPath, lab);
        if (labelCount != n)
            throw new DataException(labelsPath, $"{n} labels (the image count of {Path.GetFileName(imagesPath)})", $"{labelCount}");

        using var scope = NewDisposeScope();
        var images = tensor(new ReadOnlySpan<byte>(img, 16, n * rows * cols).ToArray(), new long[] { n, 1, rows, cols }, dtype: uint8);
        var labels = tensor(new ReadOnlySpan<byte>(lab, 8, n).ToArray(), new long[] { n }, dtype: uint8).to(int64);
        var max = n == 0 ? 0 : labels.max().item<long>();
        if (max >= classNames.Count)
            throw new DataException(labelsPath, $"labels in [0, {classNames.Count - 1}]", $"label {max}");
        return new ImageDataset(name, split, images, labels, classNames, new[] { imagesPath, labelsPath });
    }

    static (int N, int Rows, int Cols) ReadImagesHeader(string path, byte[] b)
    {
        if (b.Length < 16)
            throw new DataException(path, "an IDX images header of 16 bytes", $"{b.Length} bytes");
        var magic = BinaryFiles.ReadBigEndianInt32(b, 0);
        if (magic != ImagesMagic)
            throw new DataException(path, $"magic 0x{ImagesMagic:x8} (IDX unsigned-byte images, 3 dimensions)", $"0x{magic:x8}");
        var n = BinaryFiles.ReadBigEndianInt32(b, 4);
        var rows = BinaryFiles.ReadBigEndianInt32(b, 8);
        var cols = BinaryFiles.ReadBigEndianInt32(b, 12);
        if (n < 0 || rows <= 0 || cols <= 0)
            throw new DataException(path, "positive dimensions", $"{n} x {rows} x {cols}");
        var expected = 16L + (long)n * rows * cols;
        if (b.Length != expected)
            throw new DataException(path, $"{expected} bytes (16-byte header + {n} images of {rows}x{cols})",
                $"{b.Length} bytes ({(b.Length < expected ? "truncated" : "trailing data")})");
        return (n, rows, cols);
    }

    static int ReadLabelsHeader(string path, byte[] b)
    {
        if (b.Length < 8)
            throw new DataException(path, "an IDX labels header of 8 bytes", $"{b.Length} bytes");
        var magic = BinaryFiles.ReadBigEndianInt32(b, 0);
        if (magic != LabelsMagic)
            throw new DataException(path, $"magic 0x{LabelsMagic:x8} (IDX unsigned-byte labels, 1 dimension)", $"0x{magic:x8}");
        var n = BinaryFiles.ReadBigEndianInt32(b, 4);
        if (n < 0 || b.Length != 8L + n)
            throw new DataException(path, $"{8L + Math.Max(n, 0)} bytes (8-byte header + {n} labels)",
                $"{b.Length} bytes ({(b.Length < 8L + n ? "truncated" : "trailing data")})");
        return n;
    }

    /// <summary>Writes an IDX images file (raw or gzip by <paramref name="gzip"/>); for fixtures and exports.</summary>
    public static void WriteImages(string path, byte[] pixels, int n, int rows, int cols, bool gzip)
    {
        var header = new byte[16];
        WriteBigEndian(header, 0, ImagesMagic);
        WriteBigEndian(header, 4, n);
        WriteBigEndian(header, 8, rows);
        WriteBigEndian(header, 12, cols);
        WriteFile(path, header.Concat(pixels).ToArray(), gzip);
    }

    /// <summary>Writes an IDX labels file (raw or gzip).</summary>
    public static void WriteLabels(string path, byte[] labels, bool gzip)
    {
        var header = new byte[8];
        WriteBigEndian(header, 0, LabelsMagic);
        WriteBigEndian(header, 4, labels.Length);
        WriteFile(path, header.Concat(labels).ToArray(), gzip);
    }

    static void WriteBigEndian(byte[] b, int o, int v)
    {
        b[o] = (byte)(v >> 24); b[o + 1] = (byte)(v >> 16); b[o + 2] = (byte)(v >> 8); b[o + 3] = (byte)v;
    }

    static void WriteFile(string path, byte[] content, bool gzip)
    {
        if (!gzip) { File.WriteAllBytes(path, content); return; }
        using var file = File.Create(path);
        using var gz = new System.IO.Compression.GZipStream(file, System.IO.Compression.CompressionLevel.Fastest);
        gz.Write(content);
    }
}
