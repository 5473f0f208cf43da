using System.Collections.Concurrent;
using System.Runtime.ExceptionServices;

namespace Ssl.Host.Data;

/// <summary>How every image of a folder is decoded: to this many channels and this size (planar uint8).</summary>
/// <param name="Size">Resize the shorter side to this and centre-crop a square (--image-size); null: keep or stretch to Height x Width.</param>
/// <param name="Stretch">With no Size: resize every image to Height x Width (a fixed size the caller asked for).</param>
public readonly record struct ImageSizing(int Channels, int Height, int Width, int? Size, bool Stretch)
{
    public int Plane => Height * Width;
    public int Bytes => Channels * Height * Width;
}

/// <summary>What the training loop tells a data set about the batches it will ask for next, so that a
/// streamed one can decode them ahead (one call per epoch; an empty list ends the plan).</summary>
public interface IBatchPlan
{
    void Plan(IReadOnlyList<long[]> batches);
}

/// <summary>
/// The pixels of an image folder too large for memory (<c>--data-memory-mb</c>), decoded from its files
/// when a batch is asked for, on <c>workers</c> threads, by the same code that fills the in-memory
/// tensor, so a streamed batch holds the same bytes. Given the epoch's batches (<see cref="Plan"/>), the
/// next <see cref="Depth"/> are decoded in the background while the current step runs; a request for
/// anything else (a recipe's own indices) is decoded on the spot. Holds at most Depth + 1 batches.
/// Batch buffers are reused (<see cref="Return"/>): decoding ahead on other threads allocates no
/// managed memory once warm, so it cannot end the trainer's no-GC region mid-step (GcFence).
/// </summary>
public sealed class StreamedImages
{
    readonly string[] paths;
    readonly ParallelOptions parallel;
    readonly object gate = new();
    IReadOnlyList<long[]> plan = Array.Empty<long[]>();
    int cursor;
    readonly Dictionary<int, Task<byte[]>> ahead = new();
    readonly ConcurrentDictionary<int, ConcurrentBag<byte[]>> spare = new();

    public ImageSizing Sizing { get; }
    public int Workers { get; }
    /// <summary>Planned batches decoded ahead of the one being used.</summary>
    public int Depth { get; }
    public IReadOnlyList<string> Paths => paths;

    public StreamedImages(string[] paths, ImageSizing sizing, int workers, int depth = 2)
    {
        this.paths = paths;
        Sizing = sizing;
        Workers = Math.Max(1, workers);
        Depth = Math.Max(1, depth);
        parallel = new ParallelOptions { MaxDegreeOfParallelism = Workers };
    }

    /// <summary>The images at <paramref name="indices"/> as planar uint8 bytes, (N, C, H, W) order, in a
    /// buffer of exactly that length that the caller may hand back with <see cref="Return"/>.</summary>
    public byte[] Read(long[] indices)
    {
        var bytes = Sizing.Bytes;
        var length = checked(indices.Length * bytes);
        var target = spare.TryGetValue(length, out var bag) && bag.TryTake(out var reused) ? reused : new byte[length];
        try
        {
            Parallel.For(0, indices.Length, parallel, i =>
                ImageFolder.DecodeInto(paths[indices[i]], target.AsSpan(i * bytes, bytes), Sizing));
        }
        catch (AggregateException e) when (e.InnerExceptions.Count >= 1)
        {
            ExceptionDispatchInfo.Capture(e.InnerExceptions[0]).Throw();
        }
        return target;
    }

    /// <summary>Starts decoding the first <see cref="Depth"/> of <paramref name="batches"/>; what an earlier plan decoded is dropped.</summary>
    public void Plan(IReadOnlyList<long[]> batches)
    {
        lock (gate)
        {
            ahead.Clear();
            plan = batches;
            cursor = 0;
            for (var k = 0; k < Math.Min(Depth, plan.Count); k++) ahead[k] = Start(plan[k]);
        }
    }

    /// <summary><see cref="Read"/>, answered from the plan when <paramref name="indices"/> is its next batch.</summary>
    public byte[] Take(long[] indices)
    {
        Task<byte[]>? ready = null;
        lock (gate)
        {
            if (cursor < plan.Count && (ReferenceEquals(plan[cursor], indices) || plan[cursor].AsSpan().SequenceEqual(indices)))
            {
                ready = ahead.Remove(cursor, out var task) ? task : Start(plan[cursor]);
                cursor++;
                var next = cursor + Depth - 1;
                if (next < plan.Count && !ahead.ContainsKey(next)) ahead[next] = Start(plan[next]);
            }
        }
        return ready is null ? Read(indices) : ready.GetAwaiter().GetResult();
    }

    /// <summary>A buffer from <see cref="Read"/> or <see cref="Take"/> that is no longer used, for the next batch.</summary>
    public void Return(byte[] buffer)
    {
        var bag = spare.GetOrAdd(buffer.Length, _ => new ConcurrentBag<byte[]>());
        if (bag.Count <= Depth + 1) bag.Add(buffer);
    }

    Task<byte[]> Start(long[] indices) => Task.Run(() => Read(indices));
}
