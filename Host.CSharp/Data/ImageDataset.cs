using TorchSharp;
using static TorchSharp.torch;

namespace Ssl.Host.Data;

/// <summary>Which part of a data set to read.</summary>
public enum Split { Train, Test, Unlabelled }

/// <summary>Per-image, per-channel pixel sums and sums of squares, (N·C) row-major: what a streamed
/// set's channel statistics are summed from without decoding it again.</summary>
public sealed record PixelSums(long[] Sums, long[] Squares)
{
    /// <summary>The sums of the images at <paramref name="rows"/>, in that order.</summary>
    public PixelSums Rows(IReadOnlyList<long> rows, int channels)
    {
        long[] Pick(long[] perImage) => rows.SelectMany(i => perImage.AsSpan((int)i * channels, channels).ToArray()).ToArray();
        return new PixelSums(Pick(Sums), Pick(Squares));
    }
}

/// <summary>
/// A data set: <c>Labels</c> int64 (N), class indices in [0, ClassNames.Length) or -1 for unlabelled
/// images, and its images uint8 (N, C, H, W) in [0, 255], either read once into <c>Images</c> or, for an
/// image folder too large for memory, streamed from its files (<see cref="IsStreamed"/>). Read images
/// through <see cref="Batch"/> and <see cref="Rows"/>, which work on both. Owns its tensors; dispose it.
/// </summary>
public sealed class ImageDataset : IDisposable, IBatchPlan
{
    readonly Tensor? images;
    readonly StreamedImages? streamed;
    readonly PixelSums? pixelSums;
    readonly long[] shape;

    public string Name { get; }
    public Split Split { get; }
    public Tensor Labels { get; }
    public IReadOnlyList<string> ClassNames { get; }
    /// <summary>The files this data set was read from, for the run's config.</summary>
    public IReadOnlyList<string> Sources { get; }
    /// <summary>An image folder's file of each row, in row order; null for the built-in sets (a row is its index).</summary>
    public IReadOnlyList<string>? Files { get; init; }
    /// <summary>Files of an image folder that could not be decoded: (path, reason). Empty for the built-in sets.</summary>
    public IReadOnlyList<(string Path, string Reason)> Skipped { get; init; } = Array.Empty<(string, string)>();
    /// <summary>The image files an image folder held (decoded or skipped); the built-in sets: their count.</summary>
    public long FilesSeen { get; init; }
    /// <summary>An image folder's decoded size in bytes (its images whose headers read, at the size and
    /// channels chosen): what <see cref="ImageFolderOptions.Streams"/> compares with the budget. 0 for the built-in sets.</summary>
    public long DecodedBytes { get; init; }
    /// <summary>An image folder's layout said in one line: the layout chosen, why, the image files read and
    /// every file not read, counted and the first named; null for the built-in sets.</summary>
    public string? LayoutNote { get; init; }

    public ImageDataset(string name, Split split, Tensor images, Tensor labels, IReadOnlyList<string> classNames, IReadOnlyList<string> sources)
    {
        if (images.dim() != 4 || images.dtype != ScalarType.Byte)
            throw new ArgumentException($"{name} images: expected uint8 (N, C, H, W), found {images.dtype} {Ssl.Core.Shape.show(images.shape)}");
        CheckLabels(name, labels, images.shape[0]);
        Name = name;
        Split = split;
        this.images = images.DetachFromDisposeScope();
        shape = images.shape;
        Labels = labels.DetachFromDisposeScope();
        ClassNames = classNames;
        Sources = sources;
    }

    /// <summary>A streamed set: one image per file of <paramref name="source"/>, with its pixel sums.</summary>
    public ImageDataset(string name, Split split, StreamedImages source, Tensor labels, IReadOnlyList<string> classNames,
                        IReadOnlyList<string> sources, PixelSums sums)
    {
        var n = source.Paths.Count;
        CheckLabels(name, labels, n);
        if (sums.Sums.Length != n * source.Sizing.Channels || sums.Squares.Length != n * source.Sizing.Channels)
            throw new ArgumentException($"{name} pixel sums: expected {n * source.Sizing.Channels} values, found {sums.Sums.Length} and {sums.Squares.Length}");
        Name = name;
        Split = split;
        streamed = source;
        pixelSums = sums;
        shape = new long[] { n, source.Sizing.Channels, source.Sizing.Height, source.Sizing.Width };
        Labels = labels.DetachFromDisposeScope();
        ClassNames = classNames;
        Sources = sources;
    }

    static void CheckLabels(string name, Tensor labels, long count)
    {
        if (labels.dim() != 1 || labels.shape[0] != count || labels.dtype != ScalarType.Int64)
            throw new ArgumentException($"{name} labels: expected int64 ({count}), found {labels.dtype} {Ssl.Core.Shape.show(labels.shape)}");
    }

    /// <summary>Whether the images are decoded from their files per batch instead of held in memory.</summary>
    public bool IsStreamed => streamed is not null;

    /// <summary>All images, uint8 (N, C, H, W); only for a set held in memory (use <see cref="Batch"/> or <see cref="Rows"/>).</summary>
    public Tensor Images => images ?? throw new InvalidOperationException(
        $"{Name}: expected a data set held in memory, found one streamed from {Count} files (larger than --data-memory-mb); read it through Batch or Rows");

    public long Count => shape[0];
    public long Channels => shape[1];
    public long Height => shape[2];
    public long Width => shape[3];
    public bool IsLabelled => Count > 0 && Labels.min().item<long>() >= 0;

    /// <summary>The images at <paramref name="indices"/>, uint8 (B, C, H, W), a new tensor; a streamed set decodes
    /// them (from the epoch's plan when they are its next batch).</summary>
    public Tensor Batch(long[] indices)
    {
        if (streamed is null)
        {
            using var idx = tensor(indices, dtype: int64);
            return images!.index_select(0, idx);
        }
        var pixels = streamed.Take(indices);
        // tensor(byte[]) pins the array rather than copying it: clone into native memory, then reuse the buffer.
        var pinned = tensor(pixels, new long[] { indices.Length, Channels, Height, Width }, dtype: uint8);
        Tensor batch;
        try { batch = pinned.clone(); }
        finally { pinned.Dispose(); }
        streamed.Return(pixels);
        return batch;
    }

    /// <summary>Images <paramref name="start"/> .. start + length - 1, uint8 (length, C, H, W) (a view when in memory).</summary>
    public Tensor Rows(long start, long length)
    {
        if (streamed is null) return images!.narrow(0, start, length);
        var indices = new long[length];
        for (long i = 0; i < length; i++) indices[i] = start + i;
        return Batch(indices);
    }

    /// <summary>Tells a streamed set the batches this epoch asks for, in order, to decode them ahead.</summary>
    public void Plan(IReadOnlyList<long[]> batches) => streamed?.Plan(batches);

    /// <summary>A new data set holding the rows at <paramref name="indices"/> (copied; a streamed set stays streamed over those files).</summary>
    public ImageDataset Subset(long[] indices, string? name = null)
    {
        using var scope = NewDisposeScope();
        var idx = tensor(indices, dtype: int64);
        if (streamed is not null)
        {
            var paths = indices.Select(i => streamed.Paths[(int)i]).ToArray();
            return new ImageDataset(name ?? Name, Split, new StreamedImages(paths, streamed.Sizing, streamed.Workers, streamed.Depth),
                Labels.index_select(0, idx), ClassNames, paths, pixelSums!.Rows(indices, (int)Channels))
                { Skipped = Skipped, FilesSeen = FilesSeen, DecodedBytes = DecodedBytes, LayoutNote = LayoutNote, Files = paths };
        }
        return new ImageDataset(name ?? Name, Split, images!.index_select(0, idx), Labels.index_select(0, idx), ClassNames, Sources)
            { Skipped = Skipped, FilesSeen = FilesSeen, DecodedBytes = DecodedBytes, LayoutNote = LayoutNote, Files = Files is null ? null : indices.Select(i => Files[(int)i]).ToArray() };
    }

    /// <summary>Images per class, index = class; unlabelled images are not counted.</summary>
    public long[] ClassCounts()
    {
        using var scope = NewDisposeScope();
        var labelled = Labels.masked_select(Labels.ge(0));
        var counts = labelled.numel() == 0 ? zeros(ClassNames.Count, int64) : bincount(labelled, minlength: ClassNames.Count);
        return counts.data<long>().ToArray();
    }

    /// <summary>
    /// Per-channel mean and standard deviation of the pixels scaled to [0, 1], from exact integer sums
    /// (in chunks of the tensor, or a streamed set's per-image sums), so a set held in memory and the
    /// same set streamed get the same figures to the last bit.
    /// </summary>
    public (double[] Mean, double[] Std) ChannelStatistics()
    {
        var c = (int)Channels;
        var sums = new long[c];
        var squares = new long[c];
        if (pixelSums is not null)
        {
            for (var i = 0; i < pixelSums.Sums.Length; i++)
            {
                sums[i % c] += pixelSums.Sums[i];
                squares[i % c] += pixelSums.Squares[i];
            }
        }
        else
        {
            var chunk = Math.Max(1L, (1L << 22) / Math.Max(1L, Channels * Height * Width));
            for (long start = 0; start < Count; start += chunk)
            {
                using var scope = NewDisposeScope();
                var x = images!.narrow(0, start, Math.Min(chunk, Count - start)).to(int64);
                var s = x.sum(new long[] { 0, 2, 3 }).data<long>().ToArray();
                var q = x.mul(x).sum(new long[] { 0, 2, 3 }).data<long>().ToArray();
                for (var k = 0; k < c; k++) { sums[k] += s[k]; squares[k] += q[k]; }
            }
        }
        var n = Count * Height * Width;
        var mean = new double[c];
        var std = new double[c];
        for (var k = 0; k < c; k++)
        {
            mean[k] = sums[k] / (255.0 * n);
            // n² Var = n Σx² - (Σx)², exact in 128 bits; one rounding at the end.
            var spread = (Int128)n * squares[k] - (Int128)sums[k] * sums[k];
            std[k] = Math.Sqrt((double)spread) / (255.0 * n);
        }
        return (mean, std);
    }

    public void Dispose()
    {
        images?.Dispose();
        Labels.Dispose();
    }
}
