using System.Text.Json.Serialization;

namespace Ssl.Host.Data;

/// <summary>
/// A few-label split of a training set: <c>PerClass</c> labelled examples of every class, drawn with
/// <c>Seed</c>; everything else is the unlabelled pool. Indices are sorted ascending.
/// </summary>
public sealed record LabelSplit(
    [property: JsonPropertyName("per_class")] int PerClass,
    [property: JsonPropertyName("seed")] long Seed,
    [property: JsonPropertyName("labelled")] long[] Labelled,
    [property: JsonPropertyName("unlabelled")] long[] Unlabelled);

public static class LabelSplitter
{
    /// <summary>
    /// Draws <paramref name="perClass"/> indices of each class from <paramref name="labels"/> (class
    /// indices, -1 = no label; such examples always go to the pool). Same labels and seed, same split.
    /// </summary>
    public static LabelSplit Draw(long[] labels, int perClass, long seed, int classCount)
    {
        if (perClass <= 0) throw new ArgumentException($"--labels: expected a positive number of labels per class, found {perClass}");
        var random = new Random(Seeds.Derive(seed, 0x5EED));
        var labelled = new List<long>();
        for (var c = 0; c < classCount; c++)
        {
            var members = Enumerable.Range(0, labels.Length).Where(i => labels[i] == c).Select(i => (long)i).ToArray();
            if (members.Length < perClass)
                throw new ArgumentException($"--labels: expected at most {members.Length} per class (class {c} has {members.Length} examples), found {perClass}");
            random.Shuffle(members);
            labelled.AddRange(members.Take(perClass));
        }
        labelled.Sort();
        var chosen = new HashSet<long>(labelled);
        var pool = Enumerable.Range(0, labels.Length).Select(i => (long)i).Where(i => !chosen.Contains(i)).ToArray();
        return new LabelSplit(perClass, seed, labelled.ToArray(), pool);
    }

    /// <summary>The same draw on a data set's labels.</summary>
    public static LabelSplit Draw(ImageDataset data, int perClass, long seed) =>
        Draw(data.Labels.data<long>().ToArray(), perClass, seed, data.ClassNames.Count);
}
