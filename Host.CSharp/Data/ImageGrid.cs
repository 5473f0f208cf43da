using SkiaSharp;
using static TorchSharp.torch;

namespace Ssl.Host.Data;

/// <summary>Writes a batch of images as one PNG grid, for a person to look at.</summary>
public static class ImageGrid
{
    /// <summary>Space (px) left and right of a row's label in <see cref="SaveLabelledRows"/>.</summary>
    public const int LabelMargin = 8;

    static readonly SKColor Background = new(40, 40, 40);

    /// <param name="images">uint8 (N, C, H, W) with C = 1 or 3.</param>
    /// <param name="columns">images per row.</param>
    /// <param name="scale">each pixel becomes a scale x scale block.</param>
    public static void SavePng(Tensor images, string path, int columns = 10, int scale = 2, int padding = 2)
    {
        var (n, _, h, w) = Check(images);
        var rows = (n + columns - 1) / columns;
        using var bitmap = new SKBitmap(columns * (w * scale + padding) + padding, rows * (h * scale + padding) + padding,
                                        SKColorType.Rgba8888, SKAlphaType.Opaque);
        bitmap.Erase(Background);
        Blit(bitmap, images, columns, scale, padding, 0, 0);
        SavePng(bitmap, path);
    }

    /// <summary>
    /// One row per label (e.g. a class's samples under its class name): the labels written in a band
    /// at the left as wide as the widest of them, each row's images after it. Returns the PNG's size
    /// and the band's width.
    /// </summary>
    /// <param name="rows">(label, uint8 (n, C, H, W)) per row, all of one C, H and W; rows may hold
    /// different counts (the widest sets the width), an empty row only its label.</param>
    public static (int Width, int Height, int Band) SaveLabelledRows(IReadOnlyList<(string Label, Tensor Images)> rows, string path,
                                                                   int scale = 2, int padding = 2)
    {
        if (rows.Count == 0) throw new ArgumentException("rows: expected at least one labelled row, found none");
        var shapes = rows.Select(r => Check(r.Images)).ToArray();
        var (_, c, h, w) = shapes[0];
        if (shapes.Any(s => (s.C, s.H, s.W) != (c, h, w)))
            throw new ArgumentException($"rows: expected images of one shape ({c}, {h}, {w}), found {string.Join(", ", shapes.Select(s => $"({s.C}, {s.H}, {s.W})").Distinct())}");
        var cellW = w * scale + padding;
        var cellH = h * scale + padding;
        // ScottPlot's font lookup (the plots' own): its typefaces are cached there, not ours to dispose.
        var typeface = ScottPlot.Fonts.GetTypeface(ScottPlot.Fonts.Default, false, false);
        using var font = new SKFont(typeface, Math.Clamp(h * scale / 4f, 11f, 16f));
        using var paint = new SKPaint { Color = SKColors.White, IsAntialias = true };
        var band = (int)Math.Ceiling(rows.Max(r => font.MeasureText(r.Label, paint))) + 2 * LabelMargin;
        var columns = Math.Max(1, shapes.Max(s => s.N));
        var (width, height) = (band + columns * cellW + padding, rows.Count * cellH + padding);
        using var bitmap = new SKBitmap(width, height, SKColorType.Rgba8888, SKAlphaType.Opaque);
        bitmap.Erase(Background);
        for (var r = 0; r < rows.Count; r++)
            if (shapes[r].N > 0) Blit(bitmap, rows[r].Images, columns, scale, padding, band, r * cellH);
        using (var canvas = new SKCanvas(bitmap))
        {
            for (var r = 0; r < rows.Count; r++)
                canvas.DrawText(rows[r].Label, LabelMargin, padding + r * cellH + (h * scale + font.Size * 0.7f) / 2, SKTextAlign.Left, font, paint);
            canvas.Flush();
        }
        SavePng(bitmap, path);
        return (width, height, band);
    }

    static (int N, int C, int H, int W) Check(Tensor images)
    {
        Ssl.Core.Shape.expectRank("images", 4, images);
        var (n, c, h, w) = ((int)images.shape[0], (int)images.shape[1], (int)images.shape[2], (int)images.shape[3]);
        if (c is not (1 or 3) || images.dtype != ScalarType.Byte)
            throw new ArgumentException($"images: expected uint8 (N, 1 or 3, H, W), found {images.dtype} {Ssl.Core.Shape.show(images.shape)}");
        return (n, c, h, w);
    }

    /// <summary>Copies uint8 (N, C, H, W) images into <paramref name="bitmap"/>, <paramref name="columns"/> a
    /// row, each pixel a scale x scale block, the grid's top-left corner at (left, top).</summary>
    static void Blit(SKBitmap bitmap, Tensor images, int columns, int scale, int padding, int left, int top)
    {
        var (n, _, h, w) = Check(images);
        var cellW = w * scale + padding;
        var cellH = h * scale + padding;
        using var scope = NewDisposeScope();
        var rgb = images.cpu().expand(n, 3, h, w).permute(0, 2, 3, 1).contiguous().data<byte>().ToArray();
        var pixels = bitmap.GetPixelSpan();
        var stride = bitmap.RowBytes;
        for (var i = 0; i < n; i++)
        {
            var x0 = left + padding + i % columns * cellW;
            var y0 = top + padding + i / columns * cellH;
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
