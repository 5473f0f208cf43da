using SkiaSharp;
using static TorchSharp.torch;

namespace Ssl.Host.Data;

/// <summary>
/// An image-folder tree: one sub-folder per class (sorted by name = class index), PNG or JPEG files
/// inside. Images are decoded to RGB; all must share one size unless <c>size</c> resizes them.
/// </summary>
public static class ImageFolder
{
    static readonly string[] Extensions = { ".png", ".jpg", ".jpeg" };

    public static ImageDataset Read(string root, Split split = Split.Train, (int Height, int Width)? size = null)
    {
        if (!Directory.Exists(root))
            throw new DataException(root, "a folder with one sub-folder per class", "no such folder");
        var classDirs = Directory.GetDirectories(root).OrderBy(d => d, StringComparer.Ordinal).ToArray();
        if (classDirs.Length == 0)
            throw new DataException(root, "one sub-folder per class", "no sub-folders");

        var files = new List<(string Path, int Label)>();
        for (var c = 0; c < classDirs.Length; c++)
        {
            var images = Directory.GetFiles(classDirs[c])
                .Where(f => Extensions.Contains(Path.GetExtension(f).ToLowerInvariant()))
                .OrderBy(f => f, StringComparer.Ordinal).ToArray();
            if (images.Length == 0)
                throw new DataException(classDirs[c], "at least one .png, .jpg or .jpeg image", "none");
            files.AddRange(images.Select(f => (f, c)));
        }

        int? height = size?.Height, width = size?.Width;
        var pixels = Array.Empty<byte>();
        var plane = 0;
        for (var i = 0; i < files.Count; i++)
        {
            using var bitmap = Decode(files[i].Path);
            height ??= bitmap.Height;
            width ??= bitmap.Width;
            if (i == 0)
            {
                plane = height.Value * width.Value;
                pixels = new byte[(long)files.Count * 3 * plane];
            }
            using var sized = size is null ? null : Resize(bitmap, width.Value, height.Value);
            var image = sized ?? bitmap;
            if (image.Height != height || image.Width != width)
                throw new DataException(files[i].Path, $"{height}x{width} pixels like {files[0].Path} (or pass a size to resize)",
                    $"{image.Height}x{image.Width}");
            CopyRgbPlanes(image, pixels, (long)i * 3 * plane, plane);
        }

        using var scope = NewDisposeScope();
        var tensorImages = tensor(pixels, new long[] { files.Count, 3, height!.Value, width!.Value }, dtype: uint8);
        var labels = tensor(files.Select(f => (long)f.Label).ToArray(), dtype: int64);
        return new ImageDataset(Path.GetFileName(Path.TrimEndingDirectorySeparator(root)), split, tensorImages, labels,
            classDirs.Select(Path.GetFileName).ToArray()!, files.Select(f => f.Path).ToArray());
    }

    static SKBitmap Decode(string path)
    {
        using var codec = SKCodec.Create(path);
        if (codec is null)
            throw new DataException(path, "a PNG or JPEG image", "a file no image decoder accepts (corrupt or another format)");
        var info = new SKImageInfo(codec.Info.Width, codec.Info.Height, SKColorType.Rgba8888, SKAlphaType.Unpremul);
        var bitmap = new SKBitmap(info);
        var result = codec.GetPixels(info, bitmap.GetPixels());
        if (result != SKCodecResult.Success)
        {
            bitmap.Dispose();
            throw new DataException(path, "a complete PNG or JPEG image", $"decoder result {result}");
        }
        return bitmap;
    }

    static SKBitmap Resize(SKBitmap source, int width, int height) =>
        source.Resize(new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Unpremul), new SKSamplingOptions(SKFilterMode.Linear))
        ?? throw new InvalidOperationException($"could not resize a {source.Width}x{source.Height} image to {width}x{height}");

    static void CopyRgbPlanes(SKBitmap bitmap, byte[] target, long offset, int plane)
    {
        var rgba = bitmap.GetPixelSpan();
        for (var p = 0; p < plane; p++)
        {
            target[offset + p] = rgba[4 * p];
            target[offset + plane + p] = rgba[4 * p + 1];
            target[offset + 2 * plane + p] = rgba[4 * p + 2];
        }
    }
}
