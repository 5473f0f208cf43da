namespace Ssl.Host.Data;

/// <summary>
/// Finds and reads the data sets by name (DESIGN.md, Data contract). A folder is searched in this
/// order: an explicit root, <c>$SSL_DATA/&lt;name&gt;</c>, <c>$SSL_DATA</c> itself, then the Debian
/// location <c>/usr/share/datasets/&lt;name&gt;</c>; the emoji sets also the user's data folder
/// (<see cref="Emoji.SearchPath"/>). Any other name is read as an image-folder tree path.
/// </summary>
public static class DataCatalog
{
    public const string EnvironmentVariable = "SSL_DATA";
    public const string DebianRoot = "/usr/share/datasets";

    public static readonly string[] FashionMnistClasses =
        { "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot" };

    static readonly string[] Cifar10Classes =
        { "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck" };

    static readonly string[] Stl10Classes =
        { "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck" };

    /// <summary>The registered data-set names, default first.</summary>
    public static readonly string[] Names = new[] { "fashion-mnist", "mnist", "cifar10", "cifar100", "stl10" }.Concat(Emoji.Names).ToArray();

    /// <summary>Reads <paramref name="name"/>'s <paramref name="split"/>; <paramref name="root"/> overrides the search.</summary>
    public static ImageDataset Load(string name, Split split, string? root = null, int? limit = null, ImageFolderOptions? folder = null) => name switch
    {
        "fashion-mnist" => LoadIdx(name, split, root, FashionMnistClasses),
        "mnist" => LoadIdx(name, split, root, Enumerable.Range(0, 10).Select(i => i.ToString()).ToArray()),
        "cifar10" => LoadCifar10(split, root),
        "cifar100" => LoadCifar100(split, root),
        "stl10" => LoadStl10(split, root, limit),
        _ when Emoji.Names.Contains(name) => Emoji.Load(name, split, root),
        _ when Directory.Exists(name) => LoadFolder(name, split, folder ?? new ImageFolderOptions()),
        _ => throw new ArgumentException(
            $"--dataset: expected one of {string.Join(", ", Names)} or an image-folder path, found '{name}'"),
    };

    /// <summary>
    /// An image folder's split, read in <see cref="ImageFolderOptions.Layout"/> (<see cref="ImageFolder"/>
    /// states the rules): a split folder (train/ beside val/ or test/) reads the split's side; any other
    /// layout reads the whole folder for every split.
    /// </summary>
    static ImageDataset LoadFolder(string path, Split split, ImageFolderOptions options) => ImageFolder.Read(path, split, options);

    /// <summary>Whether <paramref name="name"/> names an image folder rather than a built-in set.</summary>
    public static bool IsFolder(string name) => !Names.Contains(name) && Directory.Exists(name);

    static ImageDataset LoadIdx(string name, Split split, string? root, string[] classes)
    {
        NoUnlabelledSplit(name, split);
        var prefix = split == Split.Train ? "train" : "t10k";
        var images = $"{prefix}-images-idx3-ubyte";
        var labels = $"{prefix}-labels-idx1-ubyte";
        var dir = Locate(name, root, images + ".gz", images);
        return Idx.Read(name, split, Pick(dir, images), Pick(dir, labels), classes);
    }

    static ImageDataset LoadCifar10(Split split, string? root)
    {
        NoUnlabelledSplit("cifar10", split);
        var dir = Locate("cifar10", root, "cifar-10-batches-bin/data_batch_1.bin", "data_batch_1.bin");
        if (File.Exists(Path.Combine(dir, "cifar-10-batches-bin", "data_batch_1.bin"))) dir = Path.Combine(dir, "cifar-10-batches-bin");
        var files = split == Split.Train
            ? Enumerable.Range(1, 5).Select(i => Path.Combine(dir, $"data_batch_{i}.bin")).ToArray()
            : new[] { Path.Combine(dir, "test_batch.bin") };
        return Cifar.Read10(split, files, BinaryFiles.ReadNames(Path.Combine(dir, "batches.meta.txt"), Cifar10Classes));
    }

    static ImageDataset LoadCifar100(Split split, string? root)
    {
        NoUnlabelledSplit("cifar100", split);
        var dir = Locate("cifar100", root, "cifar-100-binary/train.bin", "train.bin");
        if (File.Exists(Path.Combine(dir, "cifar-100-binary", "train.bin"))) dir = Path.Combine(dir, "cifar-100-binary");
        var file = Path.Combine(dir, split == Split.Train ? "train.bin" : "test.bin");
        return Cifar.Read100(split, new[] { file }, BinaryFiles.ReadNames(Path.Combine(dir, "fine_label_names.txt"), Enumerable.Range(0, 100).Select(i => i.ToString()).ToArray()));
    }

    static ImageDataset LoadStl10(Split split, string? root, int? limit)
    {
        var dir = Locate("stl10", root, "stl10_binary/train_X.bin", "train_X.bin");
        if (File.Exists(Path.Combine(dir, "stl10_binary", "train_X.bin"))) dir = Path.Combine(dir, "stl10_binary");
        var names = BinaryFiles.ReadNames(Path.Combine(dir, "class_names.txt"), Stl10Classes);
        return split switch
        {
            Split.Train => Stl10.Read(split, Path.Combine(dir, "train_X.bin"), Path.Combine(dir, "train_y.bin"), names, limit),
            Split.Test => Stl10.Read(split, Path.Combine(dir, "test_X.bin"), Path.Combine(dir, "test_y.bin"), names, limit),
            _ => Stl10.Read(split, Path.Combine(dir, "unlabeled_X.bin"), null, names, limit),
        };
    }

    static void NoUnlabelledSplit(string name, Split split)
    {
        if (split == Split.Unlabelled)
            throw new ArgumentException($"{name}: expected split train or test, found unlabelled (only stl10 has an unlabelled split; " +
                                        "others draw their unlabelled pool with the label splitter)");
    }

    /// <summary>The folders searched for <paramref name="name"/>, in order.</summary>
    public static IReadOnlyList<string> SearchPath(string name, string? root = null)
    {
        var dirs = new List<string>();
        if (root is not null) dirs.Add(root);
        var env = Environment.GetEnvironmentVariable(EnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(env))
        {
            dirs.Add(Path.Combine(env, name));
            dirs.Add(env);
        }
        dirs.Add(Path.Combine(DebianRoot, name));
        return dirs;
    }

    /// <summary>The first folder on the search path holding one of <paramref name="markers"/>.</summary>
    static string Locate(string name, string? root, params string[] markers)
    {
        var searched = SearchPath(name, root);
        foreach (var dir in searched)
            if (markers.Any(m => File.Exists(Path.Combine(dir, m))))
                return dir;
        var hint = name == "fashion-mnist"
            ? "Install it with `sudo apt-get install dataset-fashion-mnist` (the build's demo target does this where apt can), or "
            : "";
        throw new DataException(string.Join(", ", searched), $"a {name} folder holding {markers[^1]}",
            $"none. {hint}Set {EnvironmentVariable} to a folder that holds {name}/{markers[^1]}");
    }

    /// <summary><c>name</c> or <c>name.gz</c>, whichever exists (gzip is preferred).</summary>
    static string Pick(string dir, string file)
    {
        var gz = Path.Combine(dir, file + ".gz");
        return File.Exists(gz) ? gz : Path.Combine(dir, file);
    }
}
