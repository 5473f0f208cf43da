using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;

namespace Ssl.Host.Export;

/// <summary>
/// Writes a float32 matrix (N, D) as a NumPy <c>.npy</c> file, format version 1.0
/// (https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html), row by row, so that N
/// need not be known or held in memory: <c>numpy.load(path)</c> reads it back. The rows go to
/// <c>path.tmp</c> after a header of fixed length, which <see cref="Commit"/> fills in with the final
/// shape before renaming the file to <c>path</c>; a writer disposed without a commit deletes it.
/// </summary>
public sealed class NpyWriter : IDisposable
{
    /// <summary>The header's length, magic string included: a multiple of 64 as the format asks, and
    /// room for any (N, D) of 64-bit sizes.</summary>
    public const int HeaderLength = 128;

    readonly PendingFile pending;
    FileStream file => pending.Stream;

    /// <summary>Rows written so far.</summary>
    public long Rows { get; private set; }

    /// <summary>The width of every row: set by the first <see cref="Append"/>.</summary>
    public int Columns { get; private set; } = -1;

    public NpyWriter(string path)
    {
        pending = new PendingFile(path);
        file.Write(new byte[HeaderLength]);
    }

    /// <summary>Appends <paramref name="values"/>.Length / <paramref name="columns"/> rows, row-major.</summary>
    public void Append(ReadOnlySpan<float> values, int columns)
    {
        if (columns <= 0 || values.Length % columns != 0)
            throw new ArgumentException($"values: expected whole rows of {columns} values, found {values.Length} values");
        if (Columns >= 0 && columns != Columns)
            throw new ArgumentException($"columns: expected every row {Columns} wide, found {columns}");
        Columns = columns;
        if (BitConverter.IsLittleEndian) file.Write(MemoryMarshal.AsBytes(values));
        else
        {
            Span<byte> one = stackalloc byte[4];
            foreach (var v in values)
            {
                BinaryPrimitives.WriteSingleLittleEndian(one, v);
                file.Write(one);
            }
        }
        Rows += values.Length / columns;
    }

    /// <summary>Writes the header of (<see cref="Rows"/>, <see cref="Columns"/>), then renames the file into place.</summary>
    public void Commit()
    {
        file.Position = 0;
        file.Write(Header(Rows, Math.Max(Columns, 0)));
        pending.Commit();
    }

    /// <summary>
    /// The version 1.0 header of a little-endian float32 C-order (rows, columns) array: the magic string,
    /// the version, the length of what follows (uint16, little-endian) and a Python dict literal padded
    /// with spaces and ended by a newline to <see cref="HeaderLength"/> bytes.
    /// </summary>
    public static byte[] Header(long rows, int columns)
    {
        var dict = $"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {columns}), }}";
        const int prefix = 10;
        var padded = dict.PadRight(HeaderLength - prefix - 1) + "\n";
        if (prefix + padded.Length != HeaderLength) throw new InvalidOperationException($"npy header: {dict} is longer than {HeaderLength} bytes");
        var header = new byte[HeaderLength];
        header[0] = 0x93;
        Encoding.ASCII.GetBytes("NUMPY", header.AsSpan(1));
        header[6] = 1;
        header[7] = 0;
        BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(8), (ushort)padded.Length);
        Encoding.ASCII.GetBytes(padded, header.AsSpan(prefix));
        return header;
    }

    public void Dispose() => pending.Dispose();
}
