using SkiaSharp;
using static TorchSharp.torch;

namespace Ssl.Host.Reporting;

/// <summary>
/// One panel of a nearest-neighbour picture: a row per query image, the query then its neighbours,
/// each with its cosine similarity written under it.
/// </summary>
/// <param name="Title">written above the panel (which encoder found these neighbours).</param>
/// <param name="Queries">uint8 (Q, C, H, W), C = 1 or 3.</param>
/// <param name="Neighbours">uint8 (Q, K, C, H, W), nearest first.</param>
/// <param name="Similarities">Q rows of K cosine similarities.</param>
/// <param name="Agrees">Q rows of K: whether the neighbour's label is the query's (its caption green,
/// else red); null for unlabelled images (captions white).</param>
public sealed record NeighbourPanel(string Title, Tensor Queries, Tensor Neighbours, float[][] Similarities, bool[][]? Agrees);

/// <summary>
/// Draws panels of nearest neighbours side by side as one PNG (`ssl neighbours`, docs/cli.md#using-a-trained-encoder).
/// Every image is scaled by a whole factor (nearest pixel); the size follows from the constants below.
/// </summary>
public static class NeighbourGrid
{
    /// <summary>Space around and between images.</summary>
    public const int Padding = 4;
    /// <summary>Height of the caption strip under each image.</summary>
    public const int Caption = 16;
    /// <summary>Height of a panel's title strip.</summary>
    public const int Title = 24;
    /// <summary>Extra space between the query column and its neighbours.</summary>
    public const int QueryGap = 12;
    /// <summary>Space between two panels.</summary>
    public const int PanelGap = 16;

    /// <summary>The whole factor images are scaled by: small images (side up to 32) 3, up to 64 2, larger ones 1.</summary>
    public static int Scale(long height, long width) => Math.Max(height, width) <= 32 ? 3 : Math.Max(height, width) <= 64 ? 2 : 1;

    /// <summary>
    /// The picture's size in pixels: each panel is Padding + (1 + K)·(W·scale + Padding) + QueryGap wide
    /// and Title + Padding + Q·(H·scale + Caption + Padding) high; panels stand PanelGap apart.
    /// </summary>
    public static (int Width, int Height) Size(int panels, int queries, int k, int height, int width, int scale)
    {
        var panelWidth = Padding + (1 + k) * (width * scale + Padding) + QueryGap;
        var panelHeight = Title + Padding + queries * (height * scale + Caption + Padding);
        return (panels * panelWidth + (panels - 1) * PanelGap, panelHeight);
    }

    /// <summary>Writes the panels (all of the same Q, K and image size) to <paramref name="path"/> as PNG; returns its size.</summary>
    public static (int Width, int Height) Save(string path, IReadOnlyList<NeighbourPanel> panels)
    {
        if (panels.Count == 0) throw new ArgumentException("panels: expected at least one, found none");
        var first = panels[0];
        Ssl.Core.Shape.expectRank("queries", 4, first.Queries);
        var (q, c, h, w) = ((int)first.Queries.shape[0], (int)first.Queries.shape[1], (int)first.Queries.shape[2], (int)first.Queries.shape[3]);
        foreach (var p in panels)
        {
            if (p.Neighbours.dim() != 5 || p.Neighbours.shape[0] != q || p.Neighbours.shape[2] != c || p.Neighbours.shape[3] != h
                || p.Neighbours.shape[4] != w || p.Queries.shape[0] != q || p.Neighbours.shape[1] != first.Neighbours.shape[1])
                throw new ArgumentException(
                    $"neighbours: expected ({q}, {first.Neighbours.shape[1]}, {c}, {h}, {w}) beside queries of {Ssl.Core.Shape.show(first.Queries.shape)}, found {Ssl.Core.Shape.show(p.Neighbours.shape)}");
        }
        var k = (int)first.Neighbours.shape[1];
        var scale = Scale(h, w);
        var (width, height) = Size(panels.Count, q, k, h, w, scale);
        var (panelWidth, _) = Size(1, q, k, h, w, scale);
        var cellW = w * scale;
        var cellH = h * scale;

        using var bitmap = new SKBitmap(width, height, SKColorType.Rgba8888, SKAlphaType.Opaque);
        using var canvas = new SKCanvas(bitmap);
        canvas.Clear(new SKColor(40, 40, 40));
        // ScottPlot's font lookup (the plots' own): its typefaces are cached there, not ours to dispose.
        var typeface = ScottPlot.Fonts.GetTypeface(ScottPlot.Fonts.Default, false, false);
        using var titleFont = new SKFont(typeface, 14);
        using var captionFont = new SKFont(typeface, 11);
        using var white = new SKPaint { Color = SKColors.White, IsAntialias = true };
        using var green = new SKPaint { Color = new SKColor(110, 220, 110), IsAntialias = true };
        using var red = new SKPaint { Color = new SKColor(240, 110, 110), IsAntialias = true };
        var sampling = new SKSamplingOptions(SKFilterMode.Nearest);

        for (var p = 0; p < panels.Count; p++)
        {
            var panel = panels[p];
            var x0 = p * (panelWidth + PanelGap);
            canvas.DrawText(panel.Title, x0 + Padding, Title - 7, SKTextAlign.Left, titleFont, white);
            for (var row = 0; row < q; row++)
            {
                var y = Title + Padding + row * (cellH + Caption + Padding);
                using (var query = panel.Queries[row])
                    Draw(canvas, query, x0 + Padding, y, cellW, cellH, sampling);
                canvas.DrawText("query", x0 + Padding + cellW / 2f, y + cellH + Caption - 4, SKTextAlign.Center, captionFont, white);
                for (var j = 0; j < k; j++)
                {
                    var x = x0 + Padding + QueryGap + (1 + j) * (cellW + Padding);
                    using (var neighbour = panel.Neighbours[row, j])
                        Draw(canvas, neighbour, x, y, cellW, cellH, sampling);
                    var paint = panel.Agrees is null ? white : panel.Agrees[row][j] ? green : red;
                    canvas.DrawText($"{panel.Similarities[row][j]:F3}", x + cellW / 2f, y + cellH + Caption - 4, SKTextAlign.Center, captionFont, paint);
                }
            }
        }
        canvas.Flush();
        Ssl.Host.Data.ImageGrid.SavePng(bitmap, path);
        return (width, height);
    }

    /// <summary>One uint8 (C, H, W) image, C = 1 or 3, scaled into the rectangle at (x, y).</summary>
    static void Draw(SKCanvas canvas, Tensor image, int x, int y, int width, int height, SKSamplingOptions sampling)
    {
        var (c, h, w) = ((int)image.shape[0], (int)image.shape[1], (int)image.shape[2]);
        if (c is not (1 or 3) || image.dtype != ScalarType.Byte)
            throw new ArgumentException($"images: expected uint8 (1 or 3, H, W), found {image.dtype} {Ssl.Core.Shape.show(image.shape)}");
        using var scope = NewDisposeScope();
        var rgb = image.cpu().expand(3, h, w).permute(1, 2, 0).contiguous().data<byte>().ToArray();
        using var bitmap = new SKBitmap(w, h, SKColorType.Rgba8888, SKAlphaType.Opaque);
        var pixels = bitmap.GetPixelSpan();
        var stride = bitmap.RowBytes;
        for (var row = 0; row < h; row++)
        for (var col = 0; col < w; col++)
        {
            var src = (row * w + col) * 3;
            var dst = row * stride + col * 4;
            pixels[dst] = rgb[src];
            pixels[dst + 1] = rgb[src + 1];
            pixels[dst + 2] = rgb[src + 2];
            pixels[dst + 3] = 255;
        }
        using var picture = SKImage.FromBitmap(bitmap);
        canvas.DrawImage(picture, SKRect.Create(x, y, width, height), sampling);
    }
}
