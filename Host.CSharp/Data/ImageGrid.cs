using SkiaSharp;
using static TorchSharp.torch;

namespace Ssl.Host.Data;

/// <summary>Writes a batch of images as one PNG grid, for a person to look at.</summary>
public static class ImageGrid
{
    /// <param name="images">uint8 (N, C, H, W) with C = 1 or 3.</param>
    /// <param name="columns">images per row.</param>
    /// <param name="scale">each pixel becomes a scale x scale block.</param>
    public static void SavePng(Tensor images, string path, int columns = 10, int scale = 2, int padding = 2)
    {
        Ssl.Core.Shape.expectRank("images", 4, images);
        var (n, c, h, w) = ((int)images.shape[0], (int)images.shape[1], (int)images.shape[2], (int)images.shape[3]);
        if (c is not (1 or 3) || images.dtype != ScalarType.Byte)
            throw new ArgumentException($"images: expected uint8 (N, 1 or 3, H, W), found {images.dtype} {Ssl.Core.Shape.show(images.shape)}");
        var rows = (n + columns - 1) / columns;
        var cellW = w * scale + padding;
        var cellH = h * scale + padding;
        using var scope = NewDisposeScope();
        var hwc = images.cpu().expand(n, 3, h, w).permute(0, 2, 3, 1).contiguous();
        var rgb = hwc.data<byte>().ToArray();
        using var bitmap = new SKBitmap(columns * cellW + padding, rows * cellH + padding, SKColorType.Rgba8888, SKAlphaType.Opaque);
        bitmap.Erase(new SKColor(40, 40, 40));
        var pixels = bitmap.GetPixelSpan();
        var stride = bitmap.RowBytes;
        for (var i = 0; i < n; i++)
        {
            var x0 = padding + i % columns * cellW;
            var y0 = padding + i / columns * cellH;
            for (var y = 0; y < h * scale; y++)
            for (var x = 0; x < w * scale; x++)
            {
                var src = ((long)i * h * w + y / scale * w + x / scale) * 3;
                var dst = (y0 + y) * stride + (x0 + x) * 4;
                pixels[dst] = rgb[src];
                pixels[dst + 1] = rgb[src + 1];
                pixels[dst + 2] = rgb[src + 2];
                pixels[dst + 3] = 255;
            }
        }
        SavePng(bitmap, path);
    }

    /// <summary>Encodes <paramref name="bitmap"/> as PNG, written to a temp file then renamed.</summary>
    public static void SavePng(SKBitmap bitmap, string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        using var image = SKImage.FromBitmap(bitmap);
        using var data = image.Encode(SKEncodedImageFormat.Png, 100);
        var temp = path + ".tmp";
        using (var file = File.Create(temp)) data.SaveTo(file);
        File.Move(temp, path, true);
    }
}
