using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Ssl.Host.Distributed;

/// <summary>
/// Every rank's sum of a tensor, with the gradient summed the same way (the backward of a sum over
/// ranks is a sum over ranks): what synchronised batch norm's statistics go through.
/// </summary>
public sealed class AllReduceFunction : autograd.SingleTensorFunction<AllReduceFunction>
{
    public override string Name => "SslAllReduce";

    public static Tensor Sum(ICollectives world, Tensor local) => world.Size == 1 ? local : apply(local, world);

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var world = (ICollectives)vars[1];
        ctx.save_data("world", world);
        var summed = ((Tensor)vars[0]).detach().contiguous().clone();
        world.AllReduceSum(summed);
        return summed;
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
    {
        var summed = gradOutput.contiguous().clone();
        ((ICollectives)ctx.get_data("world")).AllReduceSum(summed);
        return new List<Tensor> { summed, null! };
    }
}

/// <summary>
/// Synchronised batch norm (torch.nn.SyncBatchNorm's statistics) on the batch-norm layers a model
/// already has: in training mode each layer's output is recomputed from the mean and variance of
/// the global batch (sums and sums of squares over every rank, <see cref="AllReduceFunction"/>), and
/// its running statistics take the global batch's (unbiased variance), as one process at the global
/// batch computes them. The layer's own pass still runs (its output is replaced; its running update
/// is held back by a momentum of 0 during it). Evaluation mode and a world of one are untouched.
/// Attached by forward hooks, so Core's encoders need no other layer; <see cref="Attach"/> returns
/// the hooks' handles. Within <see cref="PerGroup"/> the layers keep their own batch's statistics.
/// </summary>
public static class SyncBatchNorm
{
    static int perGroup;

    /// <summary>
    /// Until disposed, batch-norm layers normalise each call's rows alone, as without synchronisation:
    /// a recipe's emulated devices (a MoCo or SimCLR <c>Groups</c>) name the rows that share
    /// statistics, at any world size. Counted, so nested and side-by-side passes may each hold one.
    /// </summary>
    public static IDisposable PerGroup()
    {
        Interlocked.Increment(ref perGroup);
        return new Removal(() => Interlocked.Decrement(ref perGroup));
    }

    static bool Synchronising(nn.Module module) => module.training && Volatile.Read(ref perGroup) == 0;

    public static IReadOnlyList<IDisposable> Attach(ICollectives world, IEnumerable<nn.Module> modules)
    {
        var handles = new List<IDisposable>();
        if (world.Size == 1) return handles;
        var seen = new HashSet<BatchNorm>(ReferenceEqualityComparer.Instance);
        foreach (var bn in modules.SelectMany(m => m.modules().Prepend(m)).OfType<BatchNorm>())
        {
            if (!seen.Add(bn)) continue;
            double? momentum = null;
            var held = false;
            var before = bn.register_forward_pre_hook((module, input) =>
            {
                if (!Synchronising(module)) return input;
                momentum = bn.momentum;
                bn.momentum = 0.0;
                held = true;
                return input;
            });
            var after = bn.register_forward_hook((module, input, output) =>
            {
                if (!held) return output;
                held = false;
                bn.momentum = momentum;
                return Normalise(world, bn, input, momentum ?? 0.1);
            });
            handles.Add(new Removal(() => { before.remove(); after.remove(); }));
        }
        return handles;
    }

    sealed class Removal(Action remove) : IDisposable
    {
        public void Dispose() => remove();
    }

    static Tensor Normalise(ICollectives world, BatchNorm bn, Tensor x, double momentum)
    {
        using var scope = NewDisposeScope();
        var channels = x.shape[1];
        var reduced = Enumerable.Range(0, (int)x.dim()).Where(d => d != 1).Select(d => (long)d).ToArray();
        var count = x.numel() / channels;
        var local = stack(new[] { x.sum(reduced), x.square().sum(reduced), full(channels, (double)count, dtype: x.dtype, device: x.device) });
        var global = AllReduceFunction.Sum(world, local);
        var n = global[2];
        var mean = global[0] / n;
        var variance = global[1] / n - mean.square();
        var shape = new long[x.dim()];
        Array.Fill(shape, 1L);
        shape[1] = channels;
        var y = (x - mean.view(shape)) / (variance.view(shape) + bn.eps).sqrt();
        if (bn.weight is not null) y = y * bn.weight.view(shape) + bn.bias!.view(shape);
        if (bn.running_mean is not null && bn.running_var is not null)
            using (no_grad())
            {
                var total = n[0].to_type(ScalarType.Float64).item<double>();
                bn.running_mean.mul_(1 - momentum).add_(mean.detach() * momentum);
                bn.running_var.mul_(1 - momentum).add_(variance.detach() * (total / Math.Max(total - 1, 1)) * momentum);
            }
        return y.MoveToOuterDisposeScope();
    }
}
