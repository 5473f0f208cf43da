using static TorchSharp.torch;

namespace Ssl.Host.Reporting;

/// <summary>
/// Exact t-SNE (van der Maaten &amp; Hinton 2008) for the 2-D maps of test-set features: Gaussian
/// conditionals calibrated to a perplexity by bisection (all rows at once), symmetrised joint P,
/// Student-t Q, gradient descent with momentum, gains and early exaggeration (the paper's
/// optimisation, with scikit-learn's defaults: exaggeration 12 for 250 iterations, learning rate
/// max(N / 48, 50)). O(N²) memory and time: meant for a few thousand points (no maintained .NET
/// implementation is served, hence this one).
/// </summary>
public static class Tsne
{
    /// <param name="features">(N, D)</param>
    /// <returns>(N, 2) float64 embedding on the CPU.</returns>
    public static Tensor Embed(Tensor features, double perplexity = 30, int iterations = 1000, long seed = 0)
    {
        Ssl.Core.Shape.expectRank("features", 2, features);
        var n = features.shape[0];
        if (n < 4) throw new ArgumentException($"features: expected at least 4 points, found {n}");
        if (perplexity <= 1 || perplexity >= n)
            throw new ArgumentException($"perplexity: expected a value in (1, {n}), found {perplexity}");
        using var scope = NewDisposeScope();
        var x = features.detach().cpu().to_type(ScalarType.Float64);
        var p = JointProbabilities(x, perplexity);
        using var gen = new Generator((ulong)seed);
        var y = randn(new[] { n, 2L }, dtype: ScalarType.Float64, generator: gen) * 1e-4;
        var velocity = zeros_like(y);
        var gains = ones_like(y);
        const double exaggeration = 12.0;
        var rate = Math.Max(n / exaggeration / 4.0, 50.0);
        for (var it = 0; it < iterations; it++)
        {
            using var inner = NewDisposeScope();
            var early = it < 250;
            var pEff = early ? p * exaggeration : p;
            var num = StudentT(y);
            var q = (num / num.sum()).clamp_min(1e-12);
            var w = (pEff - q) * num;
            var grad = 4.0 * (w.sum(1, keepdim: true) * y - w.mm(y));
            var momentum = early ? 0.5 : 0.8;
            var sameSign = grad.sign().eq(velocity.sign());
            gains.copy_(where(sameSign, gains * 0.8, gains + 0.2).clamp_min(0.01));
            velocity.copy_(velocity * momentum - rate * gains * grad);
            y.add_(velocity);
            y.sub_(y.mean(new long[] { 0 }, keepdim: true));
            if (it % 10 == 9) Ssl.Host.Runtime.NativeMemory.Trim();
        }
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>Symmetrised P (N, N): p_ij = (p_j|i + p_i|j) / 2N, each conditional at the given perplexity.</summary>
    public static Tensor JointProbabilities(Tensor x, double perplexity)
    {
        using var scope = NewDisposeScope();
        var n = x.shape[0];
        var conditional = ConditionalProbabilities(SquaredDistances(x), perplexity);
        var p = ((conditional + conditional.t()) / (2.0 * n)).clamp_min(1e-12);
        return p.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Row i is p_·|i = softmax(-β_i d_i·) over j ≠ i, with β_i found by bisection (on log β) so
    /// that the row's entropy equals log(perplexity).
    /// </summary>
    public static Tensor ConditionalProbabilities(Tensor squaredDistances, double perplexity)
    {
        using var scope = NewDisposeScope();
        var n = squaredDistances.shape[0];
        var target = Math.Log(perplexity);
        var diagonal = eye(n, dtype: ScalarType.Bool);
        var d = squaredDistances.masked_fill(diagonal, double.PositiveInfinity);
        var lo = full(new[] { n, 1L }, -50.0, dtype: ScalarType.Float64);
        var hi = full(new[] { n, 1L }, 50.0, dtype: ScalarType.Float64);
        for (var i = 0; i < 100; i++)
        {
            // Each pass makes several (N, N) temporaries: free them every pass, or 100 passes hold
            // 100 times the matrix (16 GB at N = 2,000).
            using var inner = NewDisposeScope();
            var logBeta = (lo + hi) / 2.0;
            var rows = nn.functional.softmax(-d * logBeta.exp(), 1);
            var entropy = -(rows * rows.clamp_min(1e-300).log()).sum(1, keepdim: true);
            // Entropy falls as β rises: too much entropy means β must grow.
            var tooFlat = entropy.gt(target);
            lo.copy_(where(tooFlat, logBeta, lo));
            hi.copy_(where(tooFlat, hi, logBeta));
        }
        Ssl.Host.Runtime.NativeMemory.Trim();
        var result = nn.functional.softmax(-d * ((lo + hi) / 2.0).exp(), 1);
        return result.MoveToOuterDisposeScope();
    }

    static Tensor SquaredDistances(Tensor x)
    {
        var norms = x.pow(2).sum(1, keepdim: true);
        return (norms + norms.t() - 2.0 * x.mm(x.t())).clamp_min(0.0);
    }

    static Tensor StudentT(Tensor y)
    {
        var num = 1.0 / (1.0 + SquaredDistances(y));
        return num.masked_fill(eye(y.shape[0], dtype: ScalarType.Bool), 0.0);
    }

    /// <summary>KL(P ‖ Q) of an embedding, the quantity t-SNE minimises.</summary>
    public static double KlDivergence(Tensor p, Tensor y)
    {
        using var scope = NewDisposeScope();
        var num = StudentT(y);
        var q = (num / num.sum()).clamp_min(1e-12);
        return (p * (p / q).log()).sum().item<double>();
    }
}
