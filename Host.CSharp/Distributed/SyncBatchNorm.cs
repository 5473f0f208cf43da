using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Ssl.Host.Distributed;

/// <summary>
/// Batch norm with the global batch's statistics, as torch.nn.SyncBatchNorm computes it (its
/// batch_norm_elemt forward and batch_norm_backward_reduce / elemt backward): the forward is libtorch's
/// own inference-mode kernel at the given mean and variance (one pass); the backward sums dy and
/// dy·x̂ per channel over every rank (one all-reduce) and gives dx = w·σ⁻¹ (dy − Σdy / n − x̂ Σ(dy·x̂) / n)
/// with the global sums, dw = Σ(dy·x̂) and db = Σdy with this rank's. Inputs: x, weight (or null),
/// bias (or null), mean and variance (C, no gradient: their gradient is the sums' terms of dx), the
/// global count n, eps, the world. The same gradient as autograd through the normalisation written
/// out with all-reduced sums, at a fraction of its cost (docs/distributed.md, "Batch norm").
/// </summary>
public sealed class GlobalBatchNormFunction : autograd.SingleTensorFunction<GlobalBatchNormFunction>
{
    public override string Name => "SslGlobalBatchNorm";

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var (x, weight, bias) = ((Tensor)vars[0], (Tensor?)vars[1], (Tensor?)vars[2]);
        var (mean, variance) = ((Tensor)vars[3], (Tensor)vars[4]);
        var (n, eps, world) = ((double)vars[5], (double)vars[6], (ICollectives)vars[7]);
        using var _ = no_grad();
        var y = nn.functional.batch_norm(x.detach(), mean, variance, weight?.detach(), bias?.detach(), false, 0.0, eps);
        var saved = new List<Tensor> { x.detach(), mean, (variance + eps).rsqrt() };
        if (weight is not null) saved.Add(weight.detach());
        ctx.save_for_backward(saved);
        ctx.save_data("bias", bias is not null);
        ctx.save_data("n", n);
        ctx.save_data("world", world);
        return y;
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor dy)
    {
        // TorchSharp's autograd wrapper disposes nothing: the temporaries go with this scope, the
        // gradients to the caller's (the native graph holds its own references).
        using var scope = NewDisposeScope();
        var saved = ctx.get_saved_variables();
        var (x, mean, invstd) = (saved[0], saved[1], saved[2]);
        var weight = saved.Count > 3 ? saved[3] : null;
        var n = (double)ctx.get_data("n");
        var world = (ICollectives)ctx.get_data("world");
        var channels = x.shape[1];
        var reduced = Enumerable.Range(0, (int)x.dim()).Where(d => d != 1).Select(d => (long)d).ToArray();
        var shape = Enumerable.Repeat(1L, (int)x.dim()).ToArray();
        shape[1] = channels;
        // Σdy and Σ(dy·x̂) of this rank, x̂ = (x − mean)·σ⁻¹: Σ(dy·x̂) = σ⁻¹ (Σ(dy·x) − mean Σdy).
        var sumDy = dy.sum(reduced);
        var sumDyXhat = ((dy * x).sum(reduced) - mean * sumDy) * invstd;
        var global = stack(new[] { sumDy, sumDyXhat });
        world.AllReduceSum(global);
        var w = weight ?? ones_like(invstd);
        // dx = a·dy + c·x + d per channel, with the global means m_dy = Σdy / n and m_dyx̂ = Σ(dy·x̂) / n:
        // a = wσ⁻¹, c = −a σ⁻¹ m_dyx̂, d = −a m_dy − c·mean.
        var a = w * invstd;
        var meanDy = global[0] / n;
        var meanDyXhat = global[1] / n;
        var c = -a * invstd * meanDyXhat;
        var d = -a * meanDy - c * mean;
        var dx = addcmul(addcmul(d.view(shape), x, c.view(shape), 1.0), dy, a.view(shape), 1.0);
        var hasBias = (bool)ctx.get_data("bias");
        return new List<Tensor>
        {
            dx.MoveToOuterDisposeScope(), weight is null ? null! : sumDyXhat.MoveToOuterDisposeScope(),
            hasBias ? sumDy.MoveToOuterDisposeScope() : null!, null!, null!, null!, null!, null!
        };
    }
}

/// <summary>
/// Synchronised batch norm (torch.nn.SyncBatchNorm's statistics) on the batch-norm layers a model
/// already has: in training mode each layer's output is recomputed from the mean and variance of
/// the global batch (sums and sums of squares over every rank, then <see cref="GlobalBatchNormFunction"/>),
/// and its running statistics take the global batch's (unbiased variance), as one process at the
/// global batch computes them. The layer's own pass still runs, on two rows (its output is replaced;
/// its running update is held back by a momentum of 0 during it). Evaluation mode and a world of one
/// are untouched.
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
            Tensor? held = null;
            var before = bn.register_forward_pre_hook((module, input) =>
            {
                if (!Synchronising(module)) return input;
                momentum = bn.momentum;
                bn.momentum = 0.0;
                held = input;
                // The layer's own pass, whose output is replaced, runs on two rows only.
                return input.narrow(0, 0, Math.Min(2L, input.shape[0]));
            });
            var after = bn.register_forward_hook((module, input, output) =>
            {
                if (held is null) return output;
                var x = held;
                held = null;
                bn.momentum = momentum;
                return Normalise(world, bn, x, momentum ?? 0.1);
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
        Tensor mean, variance;
        double total;
        using (no_grad())
        {
            var sums = stack(new[] { x.sum(reduced), x.square().sum(reduced), full(channels, (double)count, dtype: x.dtype, device: x.device) });
            world.AllReduceSum(sums);
            var n = sums[2];
            mean = sums[0] / n;
            variance = sums[1] / n - mean.square();
            total = n[0].to_type(ScalarType.Float64).item<double>();
        }
        var y = GlobalBatchNormFunction.apply(x, bn.weight, bn.bias, mean, variance, total, bn.eps, world);
        if (bn.running_mean is not null && bn.running_var is not null)
            using (no_grad())
            {
                bn.running_mean.mul_(1 - momentum).add_(mean * momentum);
                bn.running_var.mul_(1 - momentum).add_(variance * (total / Math.Max(total - 1, 1)) * momentum);
            }
        return y.MoveToOuterDisposeScope();
    }
}
