using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using SkiaSharp;
using static TorchSharp.torch;

namespace Ssl.Host.Data;

/// <summary>Whose drawings an emoji set holds: Noto Emoji (Google), Twemoji (Twitter), or both.</summary>
public enum EmojiStyle { Both, Google, Twitter }

/// <summary>What an emoji's label is: its category (9 classes) or its subcategory.</summary>
public enum EmojiLabels { Category, Subcategory }

/// <summary>One image of the emoji set: its code points, style, labels, file and side of the split, and the code
/// points of its base emoji (<paramref name="Base"/>: itself, or the emoji a skin-tone variant modifies).</summary>
public sealed record EmojiImage(string Unified, EmojiStyle Style, string Category, string Subcategory, string Path, bool IsTest, string Base);

/// <summary>
/// The emoji data set (docs/data.md#emoji): the 64 x 64 PNGs of the npm packages
/// <c>emoji-datasource-google</c> and <c>emoji-datasource-twitter</c>, as the build installs them
/// (<c>&lt;folder&gt;/node_modules/&lt;package&gt;/</c>, <see cref="SearchPath"/>). The rules:
/// <list type="bullet">
/// <item>Each package's <c>emoji.json</c> lists the base emoji; their skin-tone variants (<c>skin_variations</c>)
/// are read only by the <c>-skin-tones</c> names, with their base emoji's labels; an emoji without an image in
/// the style (<c>has_img_google</c>, <c>has_img_twitter</c>) is not read.</item>
/// <item>Labels are the 9 categories (<see cref="Categories"/>, Unicode's order); <c>Component</c> (skin-tone
/// swatches and hair parts, not emoji on their own) is dropped. Subcategory labels are ordered by category,
/// then by name.</item>
/// <item>The split is by emoji: <see cref="IsTest"/> hashes the base emoji's code points (<c>unified</c>), so an
/// emoji, both its drawings and all its skin tones are on one side, the same on every machine; about 20% are test.</item>
/// <item>Images are RGBA composed on white (a transparent pixel reads 255, 255, 255), uint8 (N, 3, 64, 64),
/// in the order of that hash (classes mixed, so a first-N subset holds every class).</item>
/// </list>
/// </summary>
public static class Emoji
{
    public const string Version = "16.0.0";
    public const int Side = 64;
    /// <summary>The share of emoji on the test side, in percent.</summary>
    public const int TestPercent = 20;

    /// <summary>The category labels, class index = position.</summary>
    public static readonly string[] Categories =
        { "Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places", "Activities", "Objects", "Symbols", "Flags" };

    const string Dropped = "Component";

    /// <summary>The registered names: <c>emoji[-google|-twitter][-skin-tones][-subcategory]</c>.</summary>
    public static readonly string[] Names =
        (from style in new[] { "", "-google", "-twitter" }
         from tones in new[] { "", "-skin-tones" }
         from labels in new[] { "", "-subcategory" }
         select "emoji" + style + tones + labels).ToArray();

    /// <summary>The style, labels and skin-tone choice a registered name asks for; false for any other name.</summary>
    public static bool TryParse(string name, out EmojiStyle style, out EmojiLabels labels, out bool skinTones)
    {
        (style, labels, skinTones) = (EmojiStyle.Both, EmojiLabels.Category, false);
        if (!Names.Contains(name)) return false;
        if (name.Contains("-google")) style = EmojiStyle.Google;
        if (name.Contains("-twitter")) style = EmojiStyle.Twitter;
        if (name.EndsWith("-subcategory")) labels = EmojiLabels.Subcategory;
        skinTones = name.Contains("-skin-tones");
        return true;
    }

    static string[] Styles(EmojiStyle style) => style switch
    {
        EmojiStyle.Google => new[] { "google" },
        EmojiStyle.Twitter => new[] { "twitter" },
        _ => new[] { "google", "twitter" },
    };

    static string Package(string style) => $"emoji-datasource-{style}";

    /// <summary>The npm command that installs both packages into <paramref name="folder"/>.</summary>
    public static string InstallCommand(string folder) =>
        $"npm install --no-save --prefix {folder} {Package("google")}@{Version} {Package("twitter")}@{Version}";

    /// <summary>The folder the build installs the packages into: <c>$SSL_DATA/emoji</c> where SSL_DATA is set,
    /// else <c>emoji</c> under the user's data folder (<c>$XDG_DATA_HOME/ssl</c>, by default <c>~/.local/share/ssl</c>).</summary>
    public static string InstallFolder()
    {
        var env = Environment.GetEnvironmentVariable(DataCatalog.EnvironmentVariable);
        return string.IsNullOrWhiteSpace(env) ? Path.Combine(UserDataFolder(), "emoji") : Path.Combine(env, "emoji");
    }

    static string UserDataFolder() =>
        Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.DoNotVerify), "ssl");

    /// <summary>The folders searched, in order: an explicit root, <c>$SSL_DATA/emoji</c>, <c>$SSL_DATA</c>, the user's
    /// data folder's <c>ssl/emoji</c>, <c>/usr/share/datasets/emoji</c>. Each holds <c>node_modules/&lt;package&gt;/</c>.</summary>
    public static IReadOnlyList<string> SearchPath(string? root = null)
    {
        var dirs = DataCatalog.SearchPath("emoji", root).ToList();
        dirs.Insert(dirs.Count - 1, Path.Combine(UserDataFolder(), "emoji"));
        return dirs;
    }

    /// <summary>Whether the emoji <paramref name="unified"/> is on the test side: the first 8 bytes of the SHA-256
    /// of its upper-case code points (UTF-8), big-endian, modulo 100, below <see cref="TestPercent"/>.</summary>
    public static bool IsTest(string unified) => Hash(unified) % 100 < TestPercent;

    static ulong Hash(string unified) =>
        BinaryPrimitives.ReadUInt64BigEndian(SHA256.HashData(Encoding.UTF8.GetBytes(unified.ToUpperInvariant())));

    /// <summary>The first folder on the search path that holds every package <paramref name="style"/> reads.</summary>
    public static string Locate(EmojiStyle style, string? root = null) => Locate(style, SearchPath(root));

    /// <summary>The first of <paramref name="searched"/> that holds every package <paramref name="style"/> reads; else a
    /// DataException naming the folders and the build command that installs the packages.</summary>
    public static string Locate(EmojiStyle style, IReadOnlyList<string> searched)
    {
        var packages = Styles(style).Select(Package).ToArray();
        foreach (var dir in searched)
            if (packages.All(p => File.Exists(Path.Combine(dir, "node_modules", p, "emoji.json"))))
                return dir;
        throw new DataException(string.Join(", ", searched),
            $"the npm package{(packages.Length > 1 ? "s" : "")} {string.Join(" and ", packages)} {Version} (node_modules/<package>/emoji.json)",
            $"none. Install them with `dotnet fsi build.fsx test` (or `{InstallCommand(InstallFolder())}`)");
    }

    /// <summary>Every image of the set in <paramref name="folder"/> for <paramref name="style"/>, with the skin-tone
    /// variants where <paramref name="skinTones"/>, both sides, in the set's order (by the split hash of the base
    /// emoji, then code points, then style).</summary>
    public static IReadOnlyList<EmojiImage> Catalogue(string folder, EmojiStyle style, bool skinTones = false)
    {
        var images = new List<(ulong Hash, EmojiImage Image)>();
        foreach (var name in Styles(style))
        {
            var package = Path.Combine(folder, "node_modules", Package(name));
            var json = Path.Combine(package, "emoji.json");
            var imageDir = Path.Combine(package, "img", name, Side.ToString());
            foreach (var e in ReadList(json, name, skinTones))
            {
                if (!e.HasImage || e.Category == Dropped) continue;
                var imageStyle = name == "google" ? EmojiStyle.Google : EmojiStyle.Twitter;
                var image = new EmojiImage(e.Unified, imageStyle, e.Category, e.Subcategory, Path.Combine(imageDir, e.Image), IsTest(e.Base), e.Base);
                images.Add((Hash(e.Base), image));
            }
        }
        return images.OrderBy(i => i.Hash).ThenBy(i => i.Image.Unified, StringComparer.Ordinal).ThenBy(i => i.Image.Style)
            .Select(i => i.Image).ToArray();
    }

    sealed record Entry(string Unified, string Image, string Category, string Subcategory, bool HasImage, string Base);

    /// <summary>The top-level entries of an emoji.json (base emoji), each followed by its skin-tone variants
    /// (<c>skin_variations</c>, with the base's labels) where <paramref name="skinTones"/>.</summary>
    static List<Entry> ReadList(string json, string style, bool skinTones)
    {
        const string expected = "the emoji-datasource emoji.json: an array of objects with unified, image, category, subcategory";
        if (!File.Exists(json)) throw new DataException(json, expected, "no such file");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllBytes(json)); }
        catch (JsonException e) { throw new DataException(json, expected, $"invalid JSON ({e.Message})", e); }
        using var _ = doc;
        if (doc.RootElement.ValueKind != JsonValueKind.Array)
            throw new DataException(json, expected, $"a JSON {doc.RootElement.ValueKind}");
        var entries = new List<Entry>();
        var i = 0;
        foreach (var e in doc.RootElement.EnumerateArray())
        {
            string Text(JsonElement o, string key) =>
                o.ValueKind == JsonValueKind.Object && o.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String && v.GetString() is { Length: > 0 } s
                    ? s : throw new DataException(json, expected, $"entry {i} without a \"{key}\" string");
            bool Drawn(JsonElement o) => o.TryGetProperty($"has_img_{style}", out var h) && h.ValueKind == JsonValueKind.True;
            var category = Text(e, "category");
            var unified = Text(e, "unified");
            if (category != Dropped && !Categories.Contains(category))
                throw new DataException(json, $"categories among {string.Join(", ", Categories)}, {Dropped}", $"\"{category}\" (entry {i}, {unified})");
            var subcategory = Text(e, "subcategory");
            entries.Add(new Entry(unified, Text(e, "image"), category, subcategory, Drawn(e), unified));
            if (skinTones && e.TryGetProperty("skin_variations", out var variations) && variations.ValueKind == JsonValueKind.Object)
                foreach (var variant in variations.EnumerateObject())
                    entries.Add(new Entry(Text(variant.Value, "unified"), Text(variant.Value, "image"), category, subcategory, Drawn(variant.Value), unified));
            i++;
        }
        return entries;
    }

    /// <summary>Reads <paramref name="split"/> of the set <paramref name="name"/> (one of <see cref="Names"/>) from
    /// <paramref name="root"/>, else the first folder on <see cref="SearchPath"/> that holds the packages.</summary>
    public static ImageDataset Load(string name, Split split, string? root = null)
    {
        if (!TryParse(name, out var style, out var labels, out var skinTones))
            throw new ArgumentException($"--dataset: expected one of {string.Join(", ", Names)}, found '{name}'");
        if (split == Split.Unlabelled)
            throw new ArgumentException($"{name}: expected split train or test, found unlabelled (the unlabelled pool is drawn by the label splitter)");
        return Read(name, split, Locate(style, root), style, labels, skinTones);
    }

    /// <summary>Reads one side of the set from the packages in <paramref name="folder"/>.</summary>
    public static ImageDataset Read(string name, Split split, string folder, EmojiStyle style, EmojiLabels labels, bool skinTones = false)
    {
        var all = Catalogue(folder, style, skinTones);
        var classNames = labels == EmojiLabels.Category
            ? Categories
            : all.GroupBy(e => e.Subcategory)
                .OrderBy(g => Array.IndexOf(Categories, g.First().Category)).ThenBy(g => g.Key, StringComparer.Ordinal)
                .Select(g => g.Key).ToArray();
        var classOf = classNames.Select((c, k) => (c, k)).ToDictionary(p => p.c, p => (long)p.k);
        var side = all.Where(e => e.IsTest == (split == Split.Test)).ToArray();
        if (side.Length == 0) throw new DataException(folder, $"emoji on the {split} side of the split", "none");

        const int bytes = 3 * Side * Side;
        var pixels = new byte[(long)side.Length * bytes];
        try { Parallel.For(0, side.Length, k => DecodeOnWhite(side[k].Path, pixels.AsSpan(k * bytes, bytes))); }
        catch (AggregateException e) when (e.InnerExceptions.OfType<DataException>().FirstOrDefault() is { } first) { throw first; }

        using var scope = NewDisposeScope();
        var images = tensor(pixels, new long[] { side.Length, 3, Side, Side }, dtype: uint8);
        var labelTensor = tensor(side.Select(e => classOf[labels == EmojiLabels.Category ? e.Category : e.Subcategory]).ToArray(), dtype: int64);
        var sources = Styles(style).Select(s => Path.Combine(folder, "node_modules", Package(s), "emoji.json")).ToArray();
        return new ImageDataset(name, split, images, labelTensor, classNames, sources) { FilesSeen = side.Length };
    }

    /// <summary>One 64 x 64 PNG into planar RGB, composed on white: c' = (c·a + 255·(255 - a)) / 255, rounded.</summary>
    static void DecodeOnWhite(string path, Span<byte> target)
    {
        using var codec = SKCodec.Create(path)
            ?? throw new DataException(path, $"a {Side} x {Side} PNG", File.Exists(path) ? "a file no image decoder accepts" : "no such file");
        if (codec.Info.Width != Side || codec.Info.Height != Side)
            throw new DataException(path, $"{Side} x {Side} pixels", $"{codec.Info.Height} x {codec.Info.Width}");
        var info = new SKImageInfo(Side, Side, SKColorType.Rgba8888, SKAlphaType.Unpremul);
        using var bitmap = new SKBitmap(info);
        var result = codec.GetPixels(info, bitmap.GetPixels());
        if (result != SKCodecResult.Success) throw new DataException(path, "a complete PNG", $"decoder result {result}");
        var rgba = bitmap.GetPixelSpan();
        const int plane = Side * Side;
        for (var p = 0; p < plane; p++)
        {
            var at = p / Side * bitmap.RowBytes + 4 * (p % Side);
            int a = rgba[at + 3], white = 255 * (255 - a);
            for (var c = 0; c < 3; c++) target[c * plane + p] = (byte)((rgba[at + c] * a + white + 127) / 255);
        }
    }
}
