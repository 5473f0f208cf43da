using TorchSharp;
using static TorchSharp.torch;

namespace Ssl.Host.Eval;

/// <summary>What a linear probe found: test accuracy, the L2 weight chosen on held-out training data.</summary>
public sealed record ProbeResult(double TestAccuracy, double WeightDecay, double ValidationAccuracy);

/// <summary>
/// The linear-probe protocol (DESIGN.md): features of a frozen encoder, standardised with the
/// training features' statistics, a multinomial logistic regression fitted by full-batch L-BFGS.
/// The L2 weight is chosen on training data only (5-fold cross-validation below 5,000 examples; above,
/// a 20% hold-out of a seeded 10,000-example subset, which keeps the search cheap); the test set is
/// used once, for the reported figure.
/// </summary>
public static class LinearProbe
{
    public static readonly double[] WeightDecayGrid = { 1e-6, 1e-4, 1e-3, 1e-2 };

    /// <param name="trainFeatures">(N, D)</param>
    /// <param name="trainLabels">int64 (N)</param>
    /// <param name="testFeatures">(M, D)</param>
    /// <param name="testLabels">int64 (M)</param>
    public static ProbeResult Evaluate(Tensor trainFeatures, Tensor trainLabels, Tensor testFeatures, Tensor testLabels, int classes, long seed = 0, int maxIterations = 300)
    {
        Ssl.Core.Shape.expectRank("trainFeatures", 2, trainFeatures);
        Ssl.Core.Shape.expectRank("testFeatures", 2, testFeatures);
        using var scope = NewDisposeScope();
        var (train, test) = Standardise(trainFeatures, testFeatures);
        var (wd, validation) = ChooseWeightDecay(train, trainLabels, classes, seed, maxIterations);
        var (w, b) = Fit(train, trainLabels, classes, wd, maxIterations);
        var accuracy = AccuracyOf(test, testLabels, w, b);
        return new ProbeResult(accuracy, wd, validation);
    }

    /// <summary>Standardises both sets with the training set's per-feature mean and std.</summary>
    public static (Tensor Train, Tensor Test) Standardise(Tensor train, Tensor test)
    {
        using var scope = NewDisposeScope();
        var x = train.to_type(ScalarType.Float32);
        var mean = x.mean(new long[] { 0 }, keepdim: true);
        var std = x.std(0, unbiased: false, keepdim: true).clamp_min(1e-6);
        var a = ((x - mean) / std).MoveToOuterDisposeScope();
        var b = ((test.to_type(ScalarType.Float32) - mean) / std).MoveToOuterDisposeScope();
        return (a, b);
    }

    /// <summary>Fits W (D, C), b (C) minimising mean cross-entropy + wd/2 ‖W‖² with L-BFGS.</summary>
    public static (Tensor W, Tensor B) Fit(Tensor features, Tensor labels, int classes, double weightDecay, int maxIterations = 300)
    {
        using var scope = NewDisposeScope();
        var d = features.shape[1];
        // Parameters and their gradients live outside dispose scopes: dispose them by hand.
        using var w = new TorchSharp.Modules.Parameter(zeros(d, classes, dtype: ScalarType.Float32, device: features.device));
        using var b = new TorchSharp.Modules.Parameter(zeros(classes, dtype: ScalarType.Float32, device: features.device));
        var target = labels.to(features.device);
        using var optimizer = Ssl.Host.Native.NativeLog.WithoutWarnings(() => optim.LBFGS(new[] { w, b },
            lr: 1.0, max_iter: maxIterations, tolerange_grad: 1e-6, tolerance_change: 1e-9, history_size: 20));
        optimizer.step(() =>
        {
            optimizer.zero_grad();
            using var inner = NewDisposeScope();
            var logits = features.mm(w) + b;
            var loss = nn.functional.cross_entropy(logits, target) + 0.5 * weightDecay * w.pow(2).sum();
            loss.backward();
            return loss.detach().MoveToOuterDisposeScope();
        });
        w.grad?.Dispose();
        b.grad?.Dispose();
        var wOut = w.detach().clone().MoveToOuterDisposeScope();
        var bOut = b.detach().clone().MoveToOuterDisposeScope();
        return (wOut, bOut);
    }

    static double AccuracyOf(Tensor features, Tensor labels, Tensor w, Tensor b)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var predicted = (features.mm(w) + b).argmax(1);
        return predicted.eq(labels.to(predicted.device)).to_type(ScalarType.Float64).mean().item<double>();
    }

    static (double WeightDecay, double Accuracy) ChooseWeightDecay(Tensor x, Tensor y, int classes, long seed, int maxIterations)
    {
        using var scope = NewDisposeScope();
        var n = x.shape[0];
        var order = new long[n];
        for (long i = 0; i < n; i++) order[i] = i;
        new Random(Ssl.Host.Data.Seeds.Derive(seed, 0x9B0BE)).Shuffle(order);
        if (n >= 5000) order = order[..(int)Math.Min(n, 10_000)];
        var folds = n >= 5000 ? new[] { order[..(order.Length / 5)] } : Split(order, (int)Math.Min(5, n));
        var best = (WeightDecay: WeightDecayGrid[0], Accuracy: -1.0);
        foreach (var wd in WeightDecayGrid)
        {
            var correct = 0.0;
            foreach (var fold in folds)
            {
                using var inner = NewDisposeScope();
                var held = new HashSet<long>(fold);
                var trainIdx = tensor(order.Where(i => !held.Contains(i)).ToArray(), device: x.device);
                var valIdx = tensor(fold, device: x.device);
                var (w, b) = Fit(x.index_select(0, trainIdx), y.index_select(0, trainIdx.to(y.device)), classes, wd, maxIterations);
                correct += AccuracyOf(x.index_select(0, valIdx), y.index_select(0, valIdx.to(y.device)), w, b) * fold.Length;
            }
            var accuracy = correct / folds.Sum(f => f.Length);
            if (accuracy > best.Accuracy) best = (wd, accuracy);
        }
        return best;
    }

    static long[][] Split(long[] order, int k) =>
        Enumerable.Range(0, k).Select(f => order.Where((_, i) => i % k == f).ToArray()).ToArray();
}
