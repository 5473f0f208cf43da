using static TorchSharp.torch;

namespace Ssl.Host.Data;

/// <summary>
/// STL-10 binary files (Coates et al. 2011): <c>*_X.bin</c> holds 3x96x96 uint8 images, each
/// channel stored column-major; <c>*_y.bin</c> holds labels 1..10. The unlabelled split
/// (<c>unlabeled_X.bin</c>, 100,000 images) has no labels file and gets label -1.
/// </summary>
public static class Stl10
{
    const int Side = 96;
    const int ImageBytes = 3 * Side * Side;

    /// <param name="limit">read at most this many images (the unlabelled split is 2.7 GB); null = all.</param>
    public static ImageDataset Read(Split split, string imagesPath, string? labelsPath, IReadOnlyList<string> classNames, int? limit = null)
    {
        var bytes = BinaryFiles.ReadAll(imagesPath);
        if (bytes.Length == 0 || bytes.Length % ImageBytes != 0)
            throw new DataException(imagesPath, $"a whole number of {ImageBytes}-byte images (3x96x96)",
                $"{bytes.Length} bytes ({bytes.Length / ImageBytes} images and {bytes.Length % ImageBytes} bytes over)");
        var n = bytes.Length / ImageBytes;
        var take = Math.Min(n, limit ?? n);

        using var scope = NewDisposeScope();
        // Stored as (N, C, W, H): swap the last two axes to get (N, C, H, W).
        var images = tensor(bytes, new long[] { n, 3, Side, Side }, dtype: uint8)[..take].transpose(2, 3).contiguous();
        Tensor labels;
        if (labelsPath is null)
        {
            labels = full(take, -1L, int64);
        }
        else
        {
            var lab = BinaryFiles.ReadAll(labelsPath);
            if (lab.Length != n)
                throw new DataException(labelsPath, $"{n} labels, one byte each (the image count of {Path.GetFileName(imagesPath)})", $"{lab.Length}");
            var raw = tensor(lab, new long[] { n }, dtype: uint8).to(int64)[..take];
            var (min, max) = (raw.min().item<long>(), raw.max().item<long>());
            if (min < 1 || max > classNames.Count)
                throw new DataException(labelsPath, $"labels in [1, {classNames.Count}]", $"labels in [{min}, {max}]");
            labels = raw - 1;
        }
        var sources = labelsPath is null ? new[] { imagesPath } : new[] { imagesPath, labelsPath };
        return new ImageDataset("stl10", split, images, labels, classNames, sources);
    }
}
