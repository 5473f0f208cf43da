using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Ssl.Host.Distributed;

/// <summary>
/// The global batch of a per-rank tensor, with a gradient that flows back to the rank that owns each
/// row: forward is an all-gather; backward sums every rank's gradient of the gathered tensor
/// (all-reduce) and keeps this rank's slice. With gradients averaged across ranks before the step,
/// that is the single-process gradient of a loss over the global batch, whether each rank computes the
/// whole loss or only its own rows' part (solo-learn's GatherLayer, lightly's fix in lightly#1177).
/// </summary>
public sealed class GatherFunction : autograd.SingleTensorFunction<GatherFunction>
{
    public override string Name => "SslGather";

    /// <summary><paramref name="local"/>: (n, ...) on this rank → (world.Size·n, ...), rank order. The identity at one rank.</summary>
    public static Tensor Gather(ICollectives world, Tensor local) => world.Size == 1 ? local : apply(local, world);

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var local = (Tensor)vars[0];
        var world = (ICollectives)vars[1];
        ctx.save_data("world", world);
        ctx.save_data("rows", local.shape[0]);
        return world.AllGather(local.detach().contiguous());
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
    {
        var world = (ICollectives)ctx.get_data("world");
        var rows = (long)ctx.get_data("rows");
        var summed = gradOutput.contiguous().clone();
        world.AllReduceSum(summed);
        return new List<Tensor> { summed.narrow(0, world.Rank * rows, rows), null! };
    }
}

/// <summary>
/// Averages the gradients of a set of parameters across ranks before an optimizer step: flattened into
/// buckets of at most <see cref="BucketElements"/> floats, each summed in one all-reduce and divided by
/// the world size (buckets: docs/distributed.md has the all-reduce times by message size).
/// Parameters without a gradient are skipped on every rank alike (the graphs are the same).
/// </summary>
public static class GradientAverage
{
    public const long BucketElements = 1L << 20;

    public static void Apply(ICollectives world, IEnumerable<Parameter> parameters)
    {
        if (world.Size == 1) return;
        using var scope = NewDisposeScope();
        var bucket = new List<Tensor>();
        long elements = 0;
        void Flush()
        {
            if (bucket.Count == 0) return;
            using var flat = cat(bucket.Select(g => g.reshape(-1)).ToArray());
            world.AllReduceSum(flat);
            flat.div_(world.Size);
            long at = 0;
            using (no_grad())
                foreach (var g in bucket)
                {
                    g.copy_(flat.narrow(0, at, g.numel()).view_as(g));
                    at += g.numel();
                }
            bucket.Clear();
            elements = 0;
        }
        foreach (var p in parameters)
        {
            var grad = p.grad;
            if (grad is null) continue;
            if (elements + grad.numel() > BucketElements) Flush();
            bucket.Add(grad);
            elements += grad.numel();
        }
        Flush();
    }

    /// <summary>Rank 0's parameters and buffers of <paramref name="modules"/> and <paramref name="state"/> on every rank.</summary>
    public static void BroadcastState(ICollectives world, IEnumerable<nn.Module> modules, IEnumerable<Tensor> state)
    {
        if (world.Size == 1) return;
        using (no_grad())
        {
            foreach (var module in modules)
            {
                foreach (var (_, p) in module.named_parameters()) world.Broadcast(p);
                foreach (var (_, b) in module.named_buffers()) world.Broadcast(b);
            }
            foreach (var t in state) world.Broadcast(t);
        }
    }
}
