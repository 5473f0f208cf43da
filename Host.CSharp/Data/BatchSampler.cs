namespace Ssl.Host.Data;

/// <summary>
/// Seeded mini-batches of indices. Epoch <c>e</c>'s order depends only on (seed, e), so a resumed
/// run sees exactly the batches an uninterrupted one would.
/// </summary>
public sealed class BatchSampler
{
    public long Count { get; }
    public int BatchSize { get; }
    public long Seed { get; }
    public bool Shuffle { get; }
    public bool DropLast { get; }

    public BatchSampler(long count, int batchSize, long seed, bool shuffle = true, bool dropLast = true)
    {
        if (count <= 0) throw new ArgumentException($"count: expected a positive number of examples, found {count}");
        if (batchSize <= 0) throw new ArgumentException($"batchSize: expected a positive batch size, found {batchSize}");
        if (dropLast && batchSize > count)
            throw new ArgumentException($"batchSize: expected at most {count} (the data set's size) with dropLast, found {batchSize}");
        (Count, BatchSize, Seed, Shuffle, DropLast) = (count, batchSize, seed, shuffle, dropLast);
    }

    public long BatchesPerEpoch => DropLast ? Count / BatchSize : (Count + BatchSize - 1) / BatchSize;

    /// <summary>The example order of <paramref name="epoch"/> (a permutation of 0..Count-1 when shuffling).</summary>
    public long[] Order(int epoch)
    {
        var order = new long[Count];
        for (long i = 0; i < Count; i++) order[i] = i;
        if (Shuffle) new Random(Seeds.Derive(Seed, epoch)).Shuffle(order);
        return order;
    }

    /// <summary>The batches of <paramref name="epoch"/>, each an array of example indices.</summary>
    public IEnumerable<long[]> Batches(int epoch)
    {
        var order = Order(epoch);
        for (long b = 0; b < BatchesPerEpoch; b++)
        {
            var start = b * BatchSize;
            var length = (int)Math.Min(BatchSize, Count - start);
            yield return order.AsSpan((int)start, length).ToArray();
        }
    }
}
