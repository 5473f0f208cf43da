using TorchSharp;
using static TorchSharp.torch;

namespace Ssl.Host.Eval;

/// <summary>Turning images into model inputs and encoders into frozen feature extractors.</summary>
public static class Features
{
    /// <summary>uint8 (N, C, H, W) in [0, 255] → float32 (N, C, H, W), standardised with per-channel mean and std of [0, 1] pixels.</summary>
    public static Tensor ToInput(Tensor images, double[] mean, double[] std, Device? device = null)
    {
        using var scope = NewDisposeScope();
        var c = images.shape[1];
        if (mean.Length != c || std.Length != c)
            throw new ArgumentException($"mean/std: expected {c} values (one per channel), found {mean.Length} and {std.Length}");
        var target = device ?? images.device;
        var m = tensor(mean, float32, target).view(1, c, 1, 1);
        var s = tensor(std, float32, target).view(1, c, 1, 1);
        // A named Scalar, disposed after the call: an implicit one may be finalised mid-call (see GcFence).
        using var scale = 255.0.ToScalar();
        var x = images.to(target).to_type(ScalarType.Float32).div_(scale).sub_(m).div_(s);
        return x.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Features of every image under the frozen encoder (eval mode, no gradients), in batches:
    /// images uint8 (N, C, H, W) → float32 (N, D) on the CPU. The encoder's training flag is restored.
    /// </summary>
    public static Tensor Extract(nn.Module<Tensor, Tensor> encoder, Tensor images, double[] mean, double[] std, Device device, int batchSize = 512) =>
        Extract(encoder, images.shape[0], (start, length) => images.narrow(0, start, length), mean, std, device, batchSize);

    /// <summary>The same over a data set, held in memory or streamed (decoded a batch at a time).</summary>
    public static Tensor Extract(nn.Module<Tensor, Tensor> encoder, Ssl.Host.Data.ImageDataset data, double[] mean, double[] std, Device device, int batchSize = 512)
    {
        var parts = new List<Tensor>();
        try
        {
            ForEachBatch(encoder, data, mean, std, device, (_, features) => parts.Add(features), batchSize);
            return cat(parts, 0);
        }
        finally
        {
            foreach (var p in parts) p.Dispose();
        }
    }

    /// <summary>
    /// The features of a data set a batch at a time, for sets whose features need not be held at once:
    /// <paramref name="each"/> receives the first row's index and float32 (B, D) on the CPU, and owns that
    /// tensor. A streamed set is told the batches first, so the next ones decode while one is encoded.
    /// </summary>
    public static void ForEachBatch(nn.Module<Tensor, Tensor> encoder, Ssl.Host.Data.ImageDataset data, double[] mean, double[] std, Device device,
                                    Action<long, Tensor> each, int batchSize = 512)
    {
        if (data.IsStreamed)
        {
            var batches = new List<long[]>();
            for (long start = 0; start < data.Count; start += batchSize)
            {
                var length = Math.Min(batchSize, data.Count - start);
                var rows = new long[length];
                for (long i = 0; i < length; i++) rows[i] = start + i;
                batches.Add(rows);
            }
            data.Plan(batches);
        }
        try
        {
            ForEachBatch(encoder, data.Count, data.Rows, mean, std, device, batchSize, each);
        }
        finally
        {
            if (data.IsStreamed) data.Plan(Array.Empty<long[]>());
        }
    }

    static Tensor Extract(nn.Module<Tensor, Tensor> encoder, long count, Func<long, long, Tensor> rows, double[] mean, double[] std, Device device, int batchSize)
    {
        var parts = new List<Tensor>();
        try
        {
            ForEachBatch(encoder, count, rows, mean, std, device, batchSize, (_, features) => parts.Add(features));
            return cat(parts, 0);
        }
        finally
        {
            foreach (var p in parts) p.Dispose();
        }
    }

    static void ForEachBatch(nn.Module<Tensor, Tensor> encoder, long count, Func<long, long, Tensor> rows, double[] mean, double[] std, Device device,
                             int batchSize, Action<long, Tensor> each)
    {
        var wasTraining = encoder.training;
        encoder.eval();
        try
        {
            using var noGrad = no_grad();
            for (long start = 0; start < count; start += batchSize)
            {
                Tensor features;
                using (var scope = NewDisposeScope())
                {
                    var x = ToInput(rows(start, Math.Min(batchSize, count - start)), mean, std, device);
                    features = encoder.forward(x).flatten(1).cpu().MoveToOuterDisposeScope();
                }
                each(start, features);
            }
        }
        finally
        {
            encoder.train(wasTraining);
        }
    }

    /// <summary>The raw-pixel baseline's features: uint8 (N, C, H, W) → float32 (N, C·H·W) in [0, 1].</summary>
    public static Tensor RawPixels(Tensor images)
    {
        using var scope = NewDisposeScope();
        return images.flatten(1).to_type(ScalarType.Float32).div_(255.0).MoveToOuterDisposeScope();
    }
}
