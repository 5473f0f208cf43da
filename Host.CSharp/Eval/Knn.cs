using static TorchSharp.torch;

namespace Ssl.Host.Eval;

/// <summary>
/// Weighted k-nearest-neighbour classification on cosine similarity (Wu et al. 2018, sec. 3.4):
/// each of the k nearest training features votes for its class with weight exp(s / T).
/// Defaults k = 200, T = 0.1 as in instance-discrimination papers (DESIGN.md).
/// </summary>
public static class Knn
{
    /// <param name="trainFeatures">(N, D)</param>
    /// <param name="trainLabels">int64 (N), classes in [0, classes)</param>
    /// <param name="testFeatures">(M, D)</param>
    /// <returns>int64 (M) predicted classes.</returns>
    public static Tensor Predict(Tensor trainFeatures, Tensor trainLabels, Tensor testFeatures, int classes, int k = 200, double temperature = 0.1, int chunk = 512)
    {
        Ssl.Core.Shape.expectRank("trainFeatures", 2, trainFeatures);
        Ssl.Core.Shape.expectRank("testFeatures", 2, testFeatures);
        if (testFeatures.shape[1] != trainFeatures.shape[1])
            throw new ArgumentException($"testFeatures: expected dimension {trainFeatures.shape[1]} (as trainFeatures), found {testFeatures.shape[1]}");
        if (trainLabels.shape[0] != trainFeatures.shape[0])
            throw new ArgumentException($"trainLabels: expected {trainFeatures.shape[0]} labels, found {trainLabels.shape[0]}");
        if (k <= 0 || temperature <= 0) throw new ArgumentException($"k, temperature: expected positive values, found {k}, {temperature}");

        using var scope = NewDisposeScope();
        var kk = (int)Math.Min(k, trainFeatures.shape[0]);
        var train = nn.functional.normalize(trainFeatures.to_type(ScalarType.Float32), dim: 1);
        var predictions = new List<Tensor>();
        for (long start = 0; start < testFeatures.shape[0]; start += chunk)
        {
            using var inner = NewDisposeScope();
            var length = Math.Min(chunk, testFeatures.shape[0] - start);
            var test = nn.functional.normalize(testFeatures.narrow(0, start, length).to_type(ScalarType.Float32), dim: 1);
            var (sims, idx) = test.mm(train.t()).topk(kk, dim: 1);
            var votes = zeros(length, classes, dtype: ScalarType.Float32, device: test.device)
                .scatter_add_(1, trainLabels.to(test.device)[idx], sims.div(temperature).exp_());
            predictions.Add(votes.argmax(1).MoveToOuterDisposeScope());
        }
        return cat(predictions, 0).MoveToOuterDisposeScope();
    }

    /// <summary>Top-1 accuracy of <see cref="Predict"/> on labelled test features.</summary>
    public static double Accuracy(Tensor trainFeatures, Tensor trainLabels, Tensor testFeatures, Tensor testLabels, int classes, int k = 200, double temperature = 0.1)
    {
        using var scope = NewDisposeScope();
        var predicted = Predict(trainFeatures, trainLabels, testFeatures, classes, k, temperature);
        return predicted.eq(testLabels.to(predicted.device)).to_type(ScalarType.Float64).mean().item<double>();
    }
}
