using static TorchSharp.torch;

namespace Ssl.Host.Data;

/// <summary>
/// CIFAR-10 and CIFAR-100 binary batches (Krizhevsky 2009). CIFAR-10 records are 1 label byte +
/// 3072 pixel bytes (R, G, B planes of 32x32); CIFAR-100 records are coarse + fine label bytes +
/// 3072 pixel bytes (the fine label is used).
/// </summary>
public static class Cifar
{
    const int Pixels = 3 * 32 * 32;

    public static ImageDataset Read10(Split split, IReadOnlyList<string> batchFiles, IReadOnlyList<string> classNames) =>
        Read("cifar10", split, batchFiles, labelBytes: 1, classCount: 10, classNames);

    public static ImageDataset Read100(Split split, IReadOnlyList<string> batchFiles, IReadOnlyList<string> classNames) =>
        Read("cifar100", split, batchFiles, labelBytes: 2, classCount: 100, classNames);

    static ImageDataset Read(string name, Split split, IReadOnlyList<string> files, int labelBytes, int classCount, IReadOnlyList<string> classNames)
    {
        if (files.Count == 0) throw new ArgumentException($"{name}: expected at least one batch file, found none");
        var record = labelBytes + Pixels;
        using var scope = NewDisposeScope();
        var images = new List<Tensor>();
        var labels = new List<Tensor>();
        foreach (var path in files)
        {
            var bytes = BinaryFiles.ReadAll(path);
            if (bytes.Length == 0 || bytes.Length % record != 0)
                throw new DataException(path, $"a whole number of {record}-byte records ({labelBytes} label byte(s) + {Pixels} pixels)",
                    $"{bytes.Length} bytes ({bytes.Length / record} records and {bytes.Length % record} bytes over)");
            var n = bytes.Length / record;
            var rows = tensor(bytes, new long[] { n, record }, dtype: uint8);
            var label = rows[.., labelBytes - 1].to(int64);
            var max = label.max().item<long>();
            if (max >= classCount)
                throw new DataException(path, $"labels in [0, {classCount - 1}]", $"label {max} (is this a {(classCount == 10 ? "CIFAR-100" : "CIFAR-10")} file?)");
            images.Add(rows[.., labelBytes..].reshape(n, 3, 32, 32));
            labels.Add(label);
        }
        return new ImageDataset(name, split, cat(images, 0), cat(labels, 0), classNames, files.ToArray());
    }
}
