using System.Globalization;
using SkiaSharp;
using static TorchSharp.torch;

namespace Ssl.Host.Data;

/// <summary>
/// How an image folder's files become a data set (<see cref="ImageFolder"/> states the rules):
/// <c>Unlabelled</c> every image at any depth, label -1; <c>Classes</c> one class per top-level
/// sub-folder, holding every image below it at any depth; <c>Split</c> <c>train/</c> beside <c>val/</c>
/// or <c>test/</c>, each side read as classes (or unlabelled); <c>Auto</c> chooses one of these.
/// </summary>
public enum FolderLayout { Auto, Unlabelled, Classes, Split }

/// <summary>The layout an image folder is read with (never Auto) and why, in a few words.</summary>
public sealed record FolderLayoutChoice(FolderLayout Layout, string Reason);

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
    /// <summary>How the folder's files become a data set; Auto chooses (see <see cref="ImageFolder"/>).</summary>
    public FolderLayout Layout { get; init; } = FolderLayout.Auto;

    /// <summary>Whether a folder of this many decoded bytes is streamed (over the budget, or over what one array holds).</summary>
    public bool Streams(long decodedBytes) =>
        decodedBytes > Array.MaxLength || MemoryBudgetMb is { } budget && decodedBytes > budget * 1024L * 1024L;
}

/// <summary>
/// An image folder, read in one of four layouts (<see cref="ImageFolderOptions.Layout"/>):
/// <list type="bullet">
/// <item><c>Split</c>: the folder holds <c>train/</c> and <c>val/</c> or <c>test/</c>; the training split
/// reads train/, the others val/ (else test/). Each side is a class tree if it has sub-folders and no
/// images at its top, else unlabelled. Files outside the side read are named in the note.</item>
/// <item><c>Classes</c>: each top-level sub-folder (sorted by name = class index) is a class holding every
/// image below it at any depth. Refused: fewer than 2 classes, images at the top, a class with no image.</item>
/// <item><c>Unlabelled</c>: every image below the folder at any depth, label -1.</item>
/// <item><c>Auto</c>: a <c>train/</c> folder makes it Split (train/ alone reads for training and is refused
/// for evaluation); else no image at the top and at least 2 sub-folders holding images (at any depth)
/// make it Classes, of those sub-folders (empty ones are no class and are named in the note); else
/// Unlabelled (images at the top, or fewer than 2 sub-folders with images), so no image is left out.</item>
/// </list>
/// Images are .png, .jpg and .jpeg files, in ordinal order of their paths; other files are counted and
/// named in <see cref="ImageDataset.LayoutNote"/>, the one line that states the layout, why and the counts.
/// Images are decoded on <see cref="ImageFolderOptions.Workers"/> threads; grey and colour ones are
/// converted to one channel count (the majority's unless given: grey is replicated, colour becomes
/// luminance 0.299 R + 0.587 G + 0.114 B). A file no decoder accepts is skipped and listed in
/// <see cref="ImageDataset.Skipped"/> with the reason; the caller decides how many it tolerates.
/// </summary>
public static class ImageFolder
{
    static readonly string[] Extensions = { ".png", ".jpg", ".jpeg" };

    const string ImageKinds = ".png, .jpg or .jpeg image";

    static bool IsImage(string path) => Extensions.Contains(Path.GetExtension(path).ToLowerInvariant());

    /// <summary>Whether <paramref name="root"/> is read as a class tree by the auto rule, split folders aside:
    /// no image at its top and at least 2 sub-folders holding images at any depth.</summary>
    public static bool IsClassTree(string root)
    {
        var scan = FolderScan.Of(root);
        return scan.TopImages.Length == 0 && scan.WithImages.Length >= 2;
    }

    /// <summary>The layout <paramref name="root"/> is read with when <paramref name="layout"/> is asked for, and
    /// why; throws the DataException reading it would (a Split asked of a folder without train/, a refused class tree).</summary>
    public static FolderLayoutChoice ChooseLayout(string root, FolderLayout layout = FolderLayout.Auto)
    {
        if (!Directory.Exists(root)) throw new DataException(root, "a folder of images", "no such folder");
        var scan = FolderScan.Of(root);
        var choice = Choose(scan, layout);
        if (choice.Layout != FolderLayout.Split) Files(scan, choice);
        return new FolderLayoutChoice(choice.Layout, choice.Reason);
    }

    /// <summary>A layout's name as typed (auto, unlabelled, classes, split), case-insensitive.</summary>
    public static FolderLayout ParseLayout(string text) => text.Trim().ToLowerInvariant() switch
    {
        "auto" => FolderLayout.Auto,
        "unlabelled" or "unlabeled" => FolderLayout.Unlabelled,
        "classes" => FolderLayout.Classes,
        "split" => FolderLayout.Split,
        _ => throw new ArgumentException($"--layout: expected auto, unlabelled, classes or split, found '{text}'"),
    };

    /// <summary>
    /// The files below a folder at any depth, each list sorted ordinal: images at its top, top-level
    /// sub-folders with the images below each, and the files that are not images.
    /// </summary>
    sealed class FolderScan
    {
        public required string Root { get; init; }
        public required string[] TopImages { get; init; }
        public required string[] SubFolders { get; init; }
        public required Dictionary<string, string[]> Images { get; init; }
        public required string[] Others { get; init; }

        public string[] WithImages => SubFolders.Where(d => Images[d].Length > 0).ToArray();
        public string[] Empty => SubFolders.Where(d => Images[d].Length == 0).ToArray();

        public static FolderScan Of(string root)
        {
            var subFolders = Directory.GetDirectories(root).OrderBy(d => d, StringComparer.Ordinal).ToArray();
            var bySub = subFolders.ToDictionary(d => Path.GetFileName(d), _ => new List<string>(), StringComparer.Ordinal);
            var top = new List<string>();
            var others = new List<string>();
            foreach (var file in Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories))
            {
                if (!IsImage(file)) { others.Add(file); continue; }
                var relative = Path.GetRelativePath(root, file);
                var cut = relative.IndexOf(Path.DirectorySeparatorChar);
                if (cut < 0) top.Add(file);
                else if (bySub.TryGetValue(relative[..cut], out var list)) list.Add(file);
            }
            string[] Sorted(IEnumerable<string> paths) => paths.OrderBy(f => f, StringComparer.Ordinal).ToArray();
            return new FolderScan
            {
                Root = root, TopImages = Sorted(top), SubFolders = subFolders, Others = Sorted(others),
                Images = subFolders.ToDictionary(d => d, d => Sorted(bySub[Path.GetFileName(d)]), StringComparer.Ordinal),
            };
        }
    }

    /// <summary>A decided layout: its classes (sub-folder paths, index = class) and why, for the note.</summary>
    sealed record Choice(FolderLayout Layout, string Reason, string[] Classes, string[] EmptyFolders);

    static Choice Choose(FolderScan scan, FolderLayout asked)
    {
        var root = scan.Root;
        var hasTrain = Directory.Exists(Path.Combine(root, "train"));
        var held = HeldOut(root);
        switch (asked)
        {
            case FolderLayout.Split:
                if (!hasTrain)
                    throw new DataException(root, "a split folder: train/ beside val/ or test/",
                        scan.SubFolders.Length == 0 ? "no sub-folders" : $"no train/ folder; sub-folders: {Names(scan.SubFolders.Select(Path.GetFileName)!)}");
                return new Choice(FolderLayout.Split, held is null ? "as asked: train/ alone" : $"as asked: train/ beside {Path.GetFileName(held)}/", Array.Empty<string>(), Array.Empty<string>());
            case FolderLayout.Classes:
                return new Choice(FolderLayout.Classes, "as asked: one class per sub-folder", scan.SubFolders, Array.Empty<string>());
            case FolderLayout.Unlabelled:
                return new Choice(FolderLayout.Unlabelled, scan.SubFolders.Length == 0 ? "as asked" : $"as asked; {Count(scan.SubFolders.Length, "sub-folder")} not read as classes",
                    Array.Empty<string>(), Array.Empty<string>());
        }
        if (hasTrain)
            return new Choice(FolderLayout.Split, held is null ? "auto: train/, with no val/ or test/ beside it" : $"auto: train/ beside {Path.GetFileName(held)}/",
                Array.Empty<string>(), Array.Empty<string>());
        var withImages = scan.WithImages;
        var empty = scan.Empty;
        if (scan.TopImages.Length == 0 && withImages.Length >= 2)
            return new Choice(FolderLayout.Classes, $"auto: no images at the top, {Count(withImages.Length, "sub-folder")} with images", withImages, empty);
        var why = scan.TopImages.Length > 0 ? $"auto: {Count(scan.TopImages.Length, "image")} at the top"
            : scan.SubFolders.Length == 0 ? "auto: no sub-folders"
            : $"auto: no images at the top, {Count(withImages.Length, "sub-folder")} with images (a class tree needs 2)";
        return new Choice(FolderLayout.Unlabelled, why, Array.Empty<string>(), Array.Empty<string>());
    }

    /// <summary>A split folder's evaluation side: val/, else test/; null when neither exists.</summary>
    static string? HeldOut(string root) =>
        new[] { "val", "test" }.Select(d => Path.Combine(root, d)).FirstOrDefault(Directory.Exists);

    /// <summary>A split side's layout: a class tree when it has sub-folders and no images at its top, else unlabelled.</summary>
    static Choice SideChoice(FolderScan scan) =>
        scan.TopImages.Length == 0 && scan.SubFolders.Length > 0
            ? new Choice(FolderLayout.Classes, $"no images at the top, {Count(scan.SubFolders.Length, "sub-folder")}", scan.SubFolders, Array.Empty<string>())
            : new Choice(FolderLayout.Unlabelled, scan.SubFolders.Length == 0 ? "no sub-folders" : $"{Count(scan.TopImages.Length, "image")} at the top",
                Array.Empty<string>(), Array.Empty<string>());

    /// <summary>The images a layout reads with their labels (class index, or -1), after its refusals.</summary>
    static List<(string Path, int Label)> Files(FolderScan scan, Choice choice)
    {
        var files = new List<(string Path, int Label)>();
        var root = scan.Root;
        if (choice.Layout == FolderLayout.Classes)
        {
            if (choice.Classes.Length < 2)
                throw new DataException(root, "a class tree of at least 2 classes (one sub-folder per class)",
                    choice.Classes.Length == 0 ? $"no sub-folders ({Count(scan.TopImages.Length, "image")} at the top)" : $"1 class: {Path.GetFileName(choice.Classes[0])}");
            if (scan.TopImages.Length > 0)
                throw new DataException(root, "no images at the top of a class tree (each image below its class's sub-folder)",
                    $"{Count(scan.TopImages.Length, "image")} at the top, the first {Path.GetFileName(scan.TopImages[0])}");
            for (var c = 0; c < choice.Classes.Length; c++)
            {
                var found = scan.Images[choice.Classes[c]];
                if (found.Length == 0)
                {
                    var inside = scan.Others.Where(f => Under(f, choice.Classes[c])).ToArray();
                    throw new DataException(choice.Classes[c], $"at least one {ImageKinds} at any depth (a class tree has one sub-folder per class)",
                        inside.Length == 0 ? "none" : $"none ({OtherFiles(choice.Classes[c], inside)})");
                }
                files.AddRange(found.Select(f => (f, c)));
            }
            return files;
        }
        files.AddRange(scan.TopImages.Concat(scan.SubFolders.SelectMany(d => scan.Images[d]))
            .OrderBy(f => f, StringComparer.Ordinal).Select(f => (f, -1)));
        if (files.Count == 0)
        {
            var details = new List<string>();
            if (scan.SubFolders.Length > 0) details.Add($"sub-folders with no image at any depth: {Names(scan.SubFolders.Take(3))}{(scan.SubFolders.Length > 3 ? ", ..." : "")}");
            if (scan.Others.Length > 0) details.Add(OtherFiles(root, scan.Others));
            throw new DataException(root, $"at least one {ImageKinds} at any depth", details.Count == 0 ? "none" : $"none ({string.Join("; ", details)})");
        }
        return files;
    }

    /// <summary>Reads <paramref name="root"/> in the auto layout with the default options.</summary>
    public static ImageDataset Read(string root, Split split = Split.Train, (int Height, int Width)? size = null) =>
        Read(root, split, new ImageFolderOptions(), size);

    /// <summary>Reads <paramref name="root"/> (a split folder: the side <paramref name="split"/> reads) in
    /// <see cref="ImageFolderOptions.Layout"/>, with its <see cref="ImageDataset.LayoutNote"/>; <paramref name="fixedSize"/>
    /// stretches every image to it when <see cref="ImageFolderOptions.Size"/> is null.</summary>
    public static ImageDataset Read(string root, Split split, ImageFolderOptions options, (int Height, int Width)? fixedSize = null)
    {
        if (!Directory.Exists(root))
            throw new DataException(root, "a folder of images (a class tree or an unlabelled collection)", "no such folder");
        if (options.Size is <= 0) throw new DataException(root, "an image size above 0", $"{options.Size}");
        if (options.Channels is not (null or 1 or 3)) throw new DataException(root, "1 or 3 channels", $"{options.Channels}");
        var scan = FolderScan.Of(root);
        var choice = Choose(scan, options.Layout);
        if (choice.Layout != FolderLayout.Split) return ReadFiles(scan, choice, Files(scan, choice), split, options, fixedSize, null);

        // A split folder: the side this split reads, and what the rest of the folder holds, for the note.
        var train = Path.Combine(root, "train");
        var held = HeldOut(root);
        var side = split == Split.Train ? train
            : held ?? throw new DataException(root, "beside train/ a val/ or test/ folder for evaluation", "train/ alone");
        var sideScan = FolderScan.Of(side);
        var sideChoice = SideChoice(sideScan);
        var files = Files(sideScan, sideChoice);
        bool Outside(string f) => !Under(f, train) && (held is null || !Under(f, held));
        var unread = scan.TopImages.Concat(scan.SubFolders.Where(d => d != train && d != held).SelectMany(d => scan.Images[d])).ToArray();
        var others = scan.Others.Where(Outside).ToArray();
        var head = $"image folder {FolderName(root)}: split ({choice.Reason}): train/ for training, "
            + (held is null ? "no evaluation side" : $"{Path.GetFileName(held)}/ for evaluation")
            + (unread.Length == 0 ? "" : $"; not read: {Count(unread.Length, "image file")} outside them ({Names(unread.Take(3).Select(f => Path.GetRelativePath(root, f)))}{(unread.Length > 3 ? ", ..." : "")})")
            + (others.Length == 0 ? "" : $"; {OtherFiles(root, others, " ignored outside them")}")
            + $"; reads {Path.GetFileName(side)}/: ";
        return ReadFiles(sideScan, sideChoice, files, split, options, fixedSize, head);
    }

    /// <summary>The layout note: what was read, why, the counts, and every file not read.</summary>
    static string Note(FolderScan scan, Choice choice, IReadOnlyList<(string Path, int Label)> files, int undecodable, string? head)
    {
        var parts = new List<string>();
        var nested = files.Where(f => choice.Layout == FolderLayout.Classes
                ? Path.GetDirectoryName(f.Path) != choice.Classes[f.Label]
                : Path.GetDirectoryName(f.Path) != Path.TrimEndingDirectorySeparator(scan.Root))
            .Select(f => Path.GetDirectoryName(f.Path)!).ToArray();
        var nestedFolders = nested.Distinct(StringComparer.Ordinal).Count();
        string layout;
        if (choice.Layout == FolderLayout.Classes)
        {
            var counts = files.GroupBy(f => f.Label).ToDictionary(g => g.Key, g => g.Count());
            var shown = Enumerable.Range(0, choice.Classes.Length).Take(10).Select(c => $"{Path.GetFileName(choice.Classes[c])} {N(counts[c])}");
            layout = $"{Count(choice.Classes.Length, "class", "classes")} ({choice.Reason}): {string.Join(", ", shown)}{(choice.Classes.Length > 10 ? $", ... ({choice.Classes.Length - 10} more)" : "")}";
            parts.Add($"{Count(files.Count, "image file")}" + (nested.Length == 0 ? "" : $", nested folders read into their class: {N(nested.Length)} in {Count(nestedFolders, "nested folder")}"));
        }
        else
        {
            layout = $"unlabelled ({choice.Reason})";
            parts.Add($"{Count(files.Count, "image file")} at any depth" + (nested.Length == 0 ? ", all at the top"
                : nested.Length == files.Count ? $", in {Count(nestedFolders, "sub-folder")}"
                : $", {N(nested.Length)} of them in {Count(nestedFolders, "sub-folder")}"));
        }
        if (undecodable > 0) parts.Add($"{N(undecodable)} of them undecodable, skipped");
        if (choice.EmptyFolders.Length > 0)
            parts.Add($"{Count(choice.EmptyFolders.Length, "sub-folder")} with no image, not a class: {Names(choice.EmptyFolders.Take(5).Select(Path.GetFileName)!)}{(choice.EmptyFolders.Length > 5 ? ", ..." : "")}");
        if (scan.Others.Length > 0) parts.Add(OtherFiles(scan.Root, scan.Others, " ignored"));
        return (head ?? $"image folder {FolderName(scan.Root)}: ") + layout + "; " + string.Join("; ", parts);
    }

    /// <summary>"4 other files ignored (.txt 2, .gif 1, .webp 1): a.txt, b.gif, c.webp, ...": the files that are not
    /// images, counted by extension and the first named relative to <paramref name="root"/>.</summary>
    static string OtherFiles(string root, string[] others, string verb = "")
    {
        var groups = others.GroupBy(f => Path.GetExtension(f).ToLowerInvariant() is { Length: > 0 } e ? e : "no extension")
            .OrderByDescending(g => g.Count()).ThenBy(g => g.Key, StringComparer.Ordinal).ToArray();
        var kinds = groups.Take(5).Select(g => $"{g.Key} {N(g.Count())}").Concat(groups.Length > 5 ? new[] { "..." } : Array.Empty<string>());
        var first = others.Take(5).Select(f => Path.GetRelativePath(root, f));
        return $"{Count(others.Length, "other file")}{verb} ({string.Join(", ", kinds)}): {Names(first)}{(others.Length > 5 ? ", ..." : "")}";
    }

    static bool Under(string path, string folder) => path.StartsWith(folder + Path.DirectorySeparatorChar, StringComparison.Ordinal);
    static string FolderName(string root) => Path.GetFileName(Path.TrimEndingDirectorySeparator(root));
    static string N(long n) => n.ToString("N0", CultureInfo.InvariantCulture);
    static string Count(long n, string one, string? many = null) => $"{N(n)} {(n == 1 ? one : many ?? one + "s")}";
    static string Names(IEnumerable<string> names) => string.Join(", ", names);

    static ImageDataset ReadFiles(FolderScan scan, Choice choice, List<(string Path, int Label)> files, Split split,
                               ImageFolderOptions options, (int Height, int Width)? fixedSize, string? head)
    {
        var root = scan.Root;
        var classDirs = choice.Layout == FolderLayout.Classes ? choice.Classes : Array.Empty<string>();

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

        var note = Note(scan, choice, files, skipped.Length, head);

        using var scope = NewDisposeScope();
        var labels = tensor(kept.Select(k => (long)files[readable[k]].Label).ToArray(), dtype: int64);
        var name = Path.GetFileName(Path.TrimEndingDirectorySeparator(root));
        var classNames = classDirs.Select(Path.GetFileName).ToArray()!;
        var paths = kept.Select(k => files[readable[k]].Path).ToArray();
        if (streamed)
        {
            return new ImageDataset(name, split, new StreamedImages(paths, sizing, options.Workers), labels, classNames!, paths,
                new PixelSums(sums, squares).Rows(kept.Select(k => (long)k).ToArray(), channels)) { Skipped = skipped, FilesSeen = files.Count, DecodedBytes = decoded, LayoutNote = note, Files = paths };
        }
        var all = tensor(pixels, new long[] { readable.Length, channels, height, width }, dtype: uint8);
        var images = kept.Length == readable.Length ? all : all.index_select(0, tensor(kept.Select(k => (long)k).ToArray()));
        return new ImageDataset(name, split, images, labels, classNames!, paths) { Skipped = skipped, FilesSeen = files.Count, DecodedBytes = decoded, LayoutNote = note, Files = paths };
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
