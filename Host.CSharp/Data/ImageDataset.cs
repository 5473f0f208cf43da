using TorchSharp;
using static TorchSharp.torch;

namespace Ssl.Host.Data;

/// <summary>Which part of a data set to read.</summary>
public enum Split { Train, Test, Unlabelled }

/// <summary>
/// A data set read once into tensors: <c>Images</c> uint8 (N, C, H, W) in [0, 255] and
/// <c>Labels</c> int64 (N), class indices in [0, ClassNames.Length), or -1 for unlabelled images.
/// Owns both tensors; dispose it to free them.
/// </summary>
public sealed class ImageDataset : IDisposable
{
    public string Name { get; }
    public Split Split { get; }
    public Tensor Images { get; }
    public Tensor Labels { get; }
    public IReadOnlyList<string> ClassNames { get; }
    /// <summary>The files this data set was read from, for the run's config.</summary>
    public IReadOnlyList<string> Sources { get; }
    /// <summary>Files of an image folder that could not be decoded: (path, reason). Empty for the built-in sets.</summary>
    public IReadOnlyList<(string Path, string Reason)> Skipped { get; init; } = Array.Empty<(string, string)>();
    /// <summary>The image files an image folder held (decoded or skipped); the built-in sets: their count.</summary>
    public long FilesSeen { get; init; }

    public ImageDataset(string name, Split split, Tensor images, Tensor labels, IReadOnlyList<string> classNames, IReadOnlyList<string> sources)
    {
        if (images.dim() != 4 || images.dtype != ScalarType.Byte)
            throw new ArgumentException($"{name} images: expected uint8 (N, C, H, W), found {images.dtype} {Ssl.Core.Shape.show(images.shape)}");
        if (labels.dim() != 1 || labels.shape[0] != images.shape[0] || labels.dtype != ScalarType.Int64)
            throw new ArgumentException($"{name} labels: expected int64 ({images.shape[0]}), found {labels.dtype} {Ssl.Core.Shape.show(labels.shape)}");
        Name = name;
        Split = split;
        Images = images.DetachFromDisposeScope();
        Labels = labels.DetachFromDisposeScope();
        ClassNames = classNames;
        Sources = sources;
    }

    public long Count => Images.shape[0];
    public long Channels => Images.shape[1];
    public long Height => Images.shape[2];
    public long Width => Images.shape[3];
    public bool IsLabelled => Count > 0 && Labels.min().item<long>() >= 0;

    /// <summary>A new data set holding the rows at <paramref name="indices"/> (copied).</summary>
    public ImageDataset Subset(long[] indices, string? name = null)
    {
        using var scope = NewDisposeScope();
        var idx = tensor(indices, dtype: int64);
        return new ImageDataset(name ?? Name, Split, Images.index_select(0, idx), Labels.index_select(0, idx), ClassNames, Sources)
            { Skipped = Skipped, FilesSeen = FilesSeen };
    }

    /// <summary>Images per class, index = class; unlabelled images are not counted.</summary>
    public long[] ClassCounts()
    {
        using var scope = NewDisposeScope();
        var labelled = Labels.masked_select(Labels.ge(0));
        var counts = labelled.numel() == 0 ? zeros(ClassNames.Count, int64) : bincount(labelled, minlength: ClassNames.Count);
        return counts.data<long>().ToArray();
    }

    /// <summary>Per-channel mean and standard deviation of the pixels scaled to [0, 1].</summary>
    public (double[] Mean, double[] Std) ChannelStatistics()
    {
        using var scope = NewDisposeScope();
        var pixels = Images.to(float64).div_(255.0).transpose(0, 1).reshape(Channels, -1);
        var mean = pixels.mean(new long[] { 1 });
        var std = pixels.std(1, unbiased: false);
        return (mean.data<double>().ToArray(), std.data<double>().ToArray());
    }

    public void Dispose()
    {
        Images.Dispose();
        Labels.Dispose();
    }
}
