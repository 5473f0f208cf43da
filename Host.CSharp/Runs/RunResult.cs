using System.Text.Json.Serialization;

namespace Ssl.Host.Runs;

// The result.json contract of DESIGN.md ("Run folder"). Accuracies are fractions in [0, 1]; a
// figure that does not apply is null, never a made-up 0. Key names are part of the contract.

public sealed record EvalFigures
{
    [JsonPropertyName("linear_probe_acc")] public double? LinearProbeAcc { get; init; }
    [JsonPropertyName("knn_acc")] public double? KnnAcc { get; init; }
    [JsonPropertyName("test_acc")] public double? TestAcc { get; init; }
    /// <summary>Linear-probe accuracy with N labels per class, keyed by N as a string ("10", "100").</summary>
    [JsonPropertyName("few_label_linear_acc")] public Dictionary<string, double?> FewLabelLinearAcc { get; init; } = new();
}

public sealed record ProtocolFigures
{
    [JsonPropertyName("linear_probe_acc")] public double? LinearProbeAcc { get; init; }
    [JsonPropertyName("knn_acc")] public double? KnnAcc { get; init; }
}

public sealed record SupervisedFigures
{
    [JsonPropertyName("test_acc")] public double? TestAcc { get; init; }
}

public sealed record BaselineFigures
{
    [JsonPropertyName("random_init")] public ProtocolFigures RandomInit { get; init; } = new();
    [JsonPropertyName("raw_pixels")] public ProtocolFigures RawPixels { get; init; } = new();
    [JsonPropertyName("supervised_only")] public SupervisedFigures SupervisedOnly { get; init; } = new();
}

public sealed record TrainFigures
{
    [JsonPropertyName("epochs")] public int Epochs { get; init; }
    [JsonPropertyName("steps")] public long Steps { get; init; }
    [JsonPropertyName("wall_s")] public double WallSeconds { get; init; }
    [JsonPropertyName("images_per_s")] public double ImagesPerSecond { get; init; }
    [JsonPropertyName("peak_rss_mb")] public double PeakRssMb { get; init; }
}

public sealed record VersionFigures
{
    [JsonPropertyName("commit")] public string Commit { get; init; } = "";
    [JsonPropertyName("torchsharp")] public string TorchSharp { get; init; } = "";
    [JsonPropertyName("libtorch")] public string LibTorch { get; init; } = "";
}

public sealed record RunResult
{
    [JsonPropertyName("method")] public required string Method { get; init; }
    [JsonPropertyName("dataset")] public required string Dataset { get; init; }
    [JsonPropertyName("seed")] public long Seed { get; init; }
    [JsonPropertyName("labels_per_class")] public int? LabelsPerClass { get; init; }
    [JsonPropertyName("eval")] public EvalFigures Eval { get; init; } = new();
    [JsonPropertyName("baselines")] public BaselineFigures Baselines { get; init; } = new();
    [JsonPropertyName("train")] public TrainFigures Train { get; init; } = new();
    [JsonPropertyName("versions")] public VersionFigures Versions { get; init; } = new();
    /// <summary>
    /// Figures particular to one method beyond the contract's keys (BigBiGAN's reconstruction class
    /// agreement, for one), by name; absent from result.json when a method has none.
    /// </summary>
    [JsonPropertyName("extra")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public Dictionary<string, double?>? Extra { get; init; }

    /// <summary>
    /// What the run left out and why (a few-label probe a class is too small for, a baseline not
    /// run), one sentence each; absent from result.json when nothing was left out.
    /// </summary>
    [JsonPropertyName("notes")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public List<string>? Notes { get; init; }

    /// <summary>This result with <paramref name="extra"/> as its method-specific figures.</summary>
    public RunResult WithExtra(IEnumerable<KeyValuePair<string, double?>> extra) => this with { Extra = new Dictionary<string, double?>(extra) };
}
