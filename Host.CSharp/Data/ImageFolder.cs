using SkiaSharp;
using static TorchSharp.torch;

namespace Ssl.Host.Data;

/// <summary>How an image folder is read.</summary>
public sealed record ImageFolderOptions
{
    /// <summary>Resize the shorter side to this and centre-crop a square of it; null: all images must share one size.</summary>
    public int? Size { get; init; }
    /// <summary>Channels to convert every image to (1 or 3); null: the majority's (ties: 3).</summary>
    public int? Channels { get; init; }
    /// <summary>Decoding threads (default: the cores).</summary>
    public int Workers { get; init; } = Environment.ProcessorCount;
    /// <summary>Decoded size (MiB) above which the folder is streamed from its files rather than held in memory; null: no limit.</summary>
    public long? MemoryBudgetMb { get; init; } = 2048;

    /// <summary>Whether a folder of this many decoded bytes is streamed (over the budget, or over what one array holds).</summary>
    public bool Streams(long decodedBytes) =>
        decodedBytes > Array.MaxLength || MemoryBudgetMb is { } budget && decodedBytes > budget * 1024L * 1024L;
}

/// <summary>
/// An image folder: a class tree (no images at its top, one sub-folder per class, sorted by name =
/// class index), or else an unlabelled collection (every PNG or JPEG below it, at any depth, label
/// -1). Images are decoded on <see cref="ImageFolderOptions.Workers"/> threads; grey and colour ones
/// are converted to one channel count (the majority's unless given: grey is replicated, colour
/// becomes luminance 0.299 R + 0.587 G + 0.114 B). A file no decoder accepts is skipped and listed in
/// <see cref="ImageDataset.Skipped"/> with the reason; the caller decides how many it tolerates.
/// </summary>
public static class ImageFolder
{
    static readonly string[] Extensions = { ".png", ".jpg", ".jpeg" };

    static bool IsImage(string path) => Extensions.Contains(Path.GetExtension(path).ToLowerInvariant());

    /// <summary>Whether <paramref name="root"/> is a class tree: no image at its top and at least one sub-folder.</summary>
    public static bool IsClassTree(string root) =>
        !Directory.EnumerateFiles(root).Any(IsImage) && Directory.EnumerateDirectories(root).Any();

    public static ImageDataset Read(string root, Split split = Split.Train, (int Height, int Width)? size = null) =>
        Read(root, split, new ImageFolderOptions(), size);

    public static ImageDataset Read(string root, Split split, ImageFolderOptions options, (int Height, int Width)? fixedSize = null)
    {
        if (!Directory.Exists(root))
            throw new DataException(root, "a folder of images (a class tree or an unlabelled collection)", "no such folder");
        if (options.Size is <= 0) throw new DataException(root, "an image size above 0", $"{options.Size}");
        if (options.Channels is not (null or 1 or 3)) throw new DataException(root, "1 or 3 channels", $"{options.Channels}");
        var labelled = IsClassTree(root);
        var classDirs = labelled ? Directory.GetDirectories(root).OrderBy(d => d, StringComparer.Ordinal).ToArray() : Array.Empty<string>();
        var files = new List<(string Path, int Label)>();
        if (labelled)
        {
            for (var c = 0; c < classDirs.Length; c++)
            {
                var found = Directory.GetFiles(classDirs[c]).Where(IsImage).OrderBy(f => f, StringComparer.Ordinal).ToArray();
                if (found.Length == 0)
                    throw new DataException(classDirs[c], "at least one .png, .jpg or .jpeg image (a class tree has one sub-folder per class)", "none");
                files.AddRange(found.Select(f => (f, c)));
            }
        }
        else
        {
            files.AddRange(Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories).Where(IsImage)
                .OrderBy(f => f, StringComparer.Ordinal).Select(f => (f, -1)));
            if (files.Count == 0) throw new DataException(root, "at least one .png, .jpg or .jpeg image", "none");
        }

        // Pass 1: headers only (size, grey or colour), in parallel; a file no decoder opens is skipped.
        var headers = new (int Width, int Height, bool Grey, string? Error)[files.Count];
        Parallel.For(0, files.Count, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, options.Workers) }, i =>
        {
            try
            {
                using var codec = SKCodec.Create(files[i].Path);
                headers[i] = codec is null
                    ? (0, 0, false, "no image decoder accepts it (corrupt, empty or another format)")
                    : (codec.Info.Width, codec.Info.Height, codec.Info.ColorType == SKColorType.Gray8, null);
            }
            catch (Exception e) { headers[i] = (0, 0, false, e.Message); }
        });
        var readable = Enumerable.Range(0, files.Count).Where(i => headers[i].Error is null).ToArray();
        if (readable.Length == 0) throw new DataException(root, "at least one decodable image", $"none of {files.Count} files decodes");
        var grey = readable.Count(i => headers[i].Grey);
        var channels = options.Channels ?? (grey > readable.Length - grey ? 1 : 3);
        int height, width;
        if (options.Size is { } s) (height, width) = (s, s);
        else if (fixedSize is { } f) (height, width) = (f.Height, f.Width);
        else
        {
            (height, width) = (headers[readable[0]].Height, headers[readable[0]].Width);
            var other = readable.FirstOrDefault(i => headers[i].Height != height || headers[i].Width != width, -1);
            if (other >= 0)
                throw new DataException(files[other].Path,
                    $"{height}x{width} pixels like {files[readable[0]].Path} (or pass --image-size N to resize and centre-crop)",
                    $"{headers[other].Height}x{headers[other].Width}");
        }

        // Pass 2: decode, resize (shorter side) and centre-crop, convert channels: into one buffer, or
        // (a set over the memory budget) into a scratch image per thread, to find the files that fail
        // and the pixel sums of the channel statistics before training; batches then decode on demand.
        var sizing = new ImageSizing(channels, height, width, options.Size, options.Size is null && fixedSize is not null);
        var bytes = sizing.Bytes;
        var decoded = (long)readable.Length * bytes;
        var streamed = options.Streams(decoded);
        var pixels = streamed ? Array.Empty<byte>() : new byte[decoded];
        var sums = streamed ? new long[readable.Length * channels] : Array.Empty<long>();
        var squares = streamed ? new long[readable.Length * channels] : Array.Empty<long>();
        var errors = new string?[readable.Length];
        Parallel.For(0, readable.Length, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, options.Workers) },
            () => streamed ? new byte[bytes] : Array.Empty<byte>(),
            (k, _, scratch) =>
            {
                try
                {
                    var target = streamed ? scratch.AsSpan() : pixels.AsSpan((int)((long)k * bytes), bytes);
                    DecodeInto(files[readable[k]].Path, target, sizing);
                    if (streamed) Accumulate(target, sizing, sums.AsSpan(k * channels, channels), squares.AsSpan(k * channels, channels));
                }
                catch (DataException e) { errors[k] = e.Found; }
                catch (Exception e) { errors[k] = e.Message; }
                return scratch;
            },
            _ => { });
        var kept = Enumerable.Range(0, readable.Length).Where(k => errors[k] is null).ToArray();
        var skipped = Enumerable.Range(0, files.Count).Where(i => headers[i].Error is not null)
            .Select(i => (files[i].Path, headers[i].Error!))
            .Concat(Enumerable.Range(0, readable.Length).Where(k => errors[k] is not null).Select(k => (files[readable[k]].Path, errors[k]!)))
            .OrderBy(e => e.Item1, StringComparer.Ordinal).ToArray();
        if (kept.Length == 0) throw new DataException(root, "at least one decodable image", $"none of {files.Count} files decodes");

        using var scope = NewDisposeScope();
        var labels = tensor(kept.Select(k => (long)files[readable[k]].Label).ToArray(), dtype: int64);
        var name = Path.GetFileName(Path.TrimEndingDirectorySeparator(root));
        var classNames = classDirs.Select(Path.GetFileName).ToArray()!;
        var paths = kept.Select(k => files[readable[k]].Path).ToArray();
        if (streamed)
        {
            return new ImageDataset(name, split, new StreamedImages(paths, sizing, options.Workers), labels, classNames!, paths,
                new PixelSums(sums, squares).Rows(kept.Select(k => (long)k).ToArray(), channels)) { Skipped = skipped, FilesSeen = files.Count, DecodedBytes = decoded };
        }
        var all = tensor(pixels, new long[] { readable.Length, channels, height, width }, dtype: uint8);
        var images = kept.Length == readable.Length ? all : all.index_select(0, tensor(kept.Select(k => (long)k).ToArray()));
        return new ImageDataset(name, split, images, labels, classNames!, paths) { Skipped = skipped, FilesSeen = files.Count, DecodedBytes = decoded };
    }

    /// <summary>
    /// Decodes one file into <paramref name="target"/> (planar, <see cref="ImageSizing.Bytes"/> long): the
    /// shorter side resized and centre-cropped, or stretched, or as it is, then converted to the channel
    /// count. The one decoding routine of the in-memory and the streamed paths, so both hold the same bytes.
    /// </summary>
    internal static void DecodeInto(string path, Span<byte> target, ImageSizing sizing)
    {
        using var bitmap = Decode(path);
        using var sized = sizing.Size is { } n ? ResizeShorterSide(bitmap, n) : sizing.Stretch ? Resize(bitmap, sizing.Width, sizing.Height) : null;
        var image = sized ?? bitmap;
        if (image.Width < sizing.Width || image.Height < sizing.Height || sizing.Size is null && (image.Width, image.Height) != (sizing.Width, sizing.Height))
            throw new DataException(path, $"{sizing.Height}x{sizing.Width} pixels", $"{image.Height}x{image.Width}");
        // The centre crop is read in place (no subset bitmap: SkiaSharp's ExtractSubset + Copy kept ~8 KB
        // of native memory per image, 1.2 GB over a 60,000-image folder).
        CopyPlanes(image, (image.Width - sizing.Width) / 2, (image.Height - sizing.Height) / 2, sizing.Width, target, sizing.Plane, sizing.Channels);
    }

    /// <summary>Adds one planar image's per-channel pixel sums and sums of squares (exact integers).</summary>
    static void Accumulate(ReadOnlySpan<byte> image, ImageSizing sizing, Span<long> sums, Span<long> squares)
    {
        for (var c = 0; c < sizing.Channels; c++)
        {
            long s = 0, q = 0;
            foreach (var v in image.Slice(c * sizing.Plane, sizing.Plane)) { s += v; q += v * v; }
            sums[c] += s;
            squares[c] += q;
        }
    }

    static SKBitmap Decode(string path)
    {
        using var codec = SKCodec.Create(path)
            ?? throw new DataException(path, "a PNG or JPEG image", "a file no image decoder accepts (corrupt or another format)");
        var info = new SKImageInfo(codec.Info.Width, codec.Info.Height, SKColorType.Rgba8888, SKAlphaType.Unpremul);
        var bitmap = new SKBitmap(info);
        var result = codec.GetPixels(info, bitmap.GetPixels());
        // A truncated JPEG or PNG decodes partly (IncompleteInput): the rest would be made-up grey.
        if (result != SKCodecResult.Success)
        {
            bitmap.Dispose();
            throw new DataException(path, "a complete PNG or JPEG image", $"decoder result {result} (truncated or corrupt)");
        }
        return bitmap;
    }

    static SKBitmap Resize(SKBitmap source, int width, int height) =>
        source.Resize(new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Unpremul), new SKSamplingOptions(SKFilterMode.Linear))
        ?? throw new InvalidOperationException($"could not resize a {source.Width}x{source.Height} image to {width}x{height}");

    /// <summary>The shorter side resized to <paramref name="size"/> (bilinear, with mipmaps when shrinking); the caller crops the centre.</summary>
    static SKBitmap ResizeShorterSide(SKBitmap source, int size)
    {
        var scale = (double)size / Math.Min(source.Width, source.Height);
        var w = Math.Max(size, (int)Math.Round(source.Width * scale));
        var h = Math.Max(size, (int)Math.Round(source.Height * scale));
        var sampling = scale < 1 ? new SKSamplingOptions(SKFilterMode.Linear, SKMipmapMode.Linear) : new SKSamplingOptions(SKFilterMode.Linear);
        return source.Resize(new SKImageInfo(w, h, SKColorType.Rgba8888, SKAlphaType.Unpremul), sampling)
            ?? throw new InvalidOperationException($"could not resize a {source.Width}x{source.Height} image to {w}x{h}");
    }

    /// <summary>The <paramref name="width"/>-wide window at (<paramref name="left"/>, <paramref name="top"/>) of an
    /// RGBA bitmap into planar <paramref name="channels"/> (1: luminance).</summary>
    static void CopyPlanes(SKBitmap bitmap, int left, int top, int width, Span<byte> target, int plane, int channels)
    {
        var rgba = bitmap.GetPixelSpan();
        var stride = bitmap.RowBytes;
        for (var p = 0; p < plane; p++)
        {
            var at = (top + p / width) * stride + 4 * (left + p % width);
            byte r = rgba[at], g = rgba[at + 1], b = rgba[at + 2];
            if (channels == 1)
                target[p] = (byte)Math.Clamp((int)Math.Round(0.299 * r + 0.587 * g + 0.114 * b), 0, 255);
            else
            {
                target[p] = r;
                target[plane + p] = g;
                target[2 * plane + p] = b;
            }
        }
    }
}
