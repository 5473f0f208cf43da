using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using Ssl.Core.Models;

namespace Ssl.Host.Engine;

/// <summary>
/// Counts the floating-point operations of the convolutions (transposed too) and linear layers of a
/// module tree as they run (forward hooks; TorchSharp has no profiler FLOP counter), and of Core's
/// modules that compute theirs functionally and report them (<see cref="ICountsMultiplyAdds"/>). One multiply-add is 2 FLOPs;
/// batch norm, activations and pooling are not counted (a few per cent for conv nets). Forward passes
/// run with gradients enabled are counted apart: their backward costs about twice the forward
/// (input and weight gradients), so <see cref="TrainingFlops"/> = forward + 2 x forward-with-grad.
/// </summary>
public sealed class FlopCounter : IDisposable
{
    readonly List<Action> removers = new();

    /// <summary>FLOPs of every counted forward pass.</summary>
    public double ForwardFlops { get; private set; }
    /// <summary>FLOPs of the forward passes run with gradients enabled (a backward pass follows them).</summary>
    public double GradForwardFlops { get; private set; }
    /// <summary>Forward plus backward: forward + 2 x forward-with-grad.</summary>
    public double TrainingFlops => ForwardFlops + 2 * GradForwardFlops;

    public FlopCounter(IEnumerable<nn.Module> roots)
    {
        var seen = new HashSet<nn.Module>(ReferenceEqualityComparer.Instance);
        foreach (var root in roots)
            foreach (var m in root.modules().Prepend(root))
            {
                if (!seen.Add(m)) continue;
                switch (m)
                {
                    // Core's functional convolutions and linear maps (SafeConv2d, spectral norm, masked
                    // convolutions): their inner nn modules never run, so they count themselves.
                    case ICountsMultiplyAdds counted when m is nn.Module<Tensor, Tensor> functional:
                        var countedHook = functional.register_forward_hook((_, input, output) =>
                        {
                            Add(2 * counted.MultiplyAdds(input, output));
                            return output;
                        });
                        removers.Add(() => countedHook.remove());
                        break;
                    // Every convolution, transposed ones included (ConvTranspose2d derives from Convolution, not Conv2d).
                    case Convolution conv:
                        var convHook = conv.register_forward_hook((_, input, output) =>
                        {
                            var k = conv.kernel_size.Aggregate(1L, (a, b) => a * b);
                            // Transposed: every input element meets (out / groups) x k weights.
                            var macs = conv.transposed
                                ? (double)input.numel() * (conv.out_channels / conv.groups) * k
                                : (double)output.numel() * (conv.in_channels / conv.groups) * k;
                            Add(2 * macs);
                            return output;
                        });
                        removers.Add(() => convHook.remove());
                        break;
                    case Linear linear:
                        var linearHook = linear.register_forward_hook((_, _, output) =>
                        {
                            Add(2.0 * output.numel() * linear.in_features);
                            return output;
                        });
                        removers.Add(() => linearHook.remove());
                        break;
                }
            }
    }

    readonly object gate = new();

    // Locked: two forwards may run at once (SideThread); gradient mode is the calling thread's.
    void Add(double flops)
    {
        var withGrad = is_grad_enabled();
        lock (gate)
        {
            ForwardFlops += flops;
            if (withGrad) GradForwardFlops += flops;
        }
    }

    /// <summary>Forward FLOPs of <paramref name="model"/> per example of shape <paramref name="exampleShape"/> (e.g. C, H, W).</summary>
    public static double ForwardFlopsPerExample(nn.Module<Tensor, Tensor> model, params long[] exampleShape)
    {
        var wasTraining = model.training;
        model.eval();
        try
        {
            using var scope = NewDisposeScope();
            using var counter = new FlopCounter(new[] { model });
            using var noGrad = no_grad();
            var device = model.parameters().FirstOrDefault()?.device ?? CPU;
            model.call(zeros(new long[] { 2 }.Concat(exampleShape).ToArray(), device: device));
            return counter.ForwardFlops / 2;
        }
        finally
        {
            if (wasTraining) model.train();
        }
    }

    public void Dispose()
    {
        foreach (var remove in removers) remove();
        removers.Clear();
    }
}
