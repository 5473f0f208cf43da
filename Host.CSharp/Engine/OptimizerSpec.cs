using System.Text.Json.Serialization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Ssl.Host.Engine;

/// <summary>Which update rule an optimizer uses.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<OptimizerKind>))]
public enum OptimizerKind { Sgd, Adam, AdamW, Lars }

/// <summary>
/// One optimizer of a recipe, with its schedule: base learning rate, linear warm-up over
/// <see cref="WarmupEpochs"/>, then cosine decay to <see cref="FinalLrFraction"/> of the base
/// (Loshchilov &amp; Hutter 2017, without restarts), or a constant rate.
/// </summary>
public sealed record OptimizerSpec
{
    [JsonPropertyName("kind")] public OptimizerKind Kind { get; init; } = OptimizerKind.Sgd;
    [JsonPropertyName("lr")] public double LearningRate { get; init; } = 0.1;
    [JsonPropertyName("momentum")] public double Momentum { get; init; } = 0.9;
    [JsonPropertyName("nesterov")] public bool Nesterov { get; init; }
    [JsonPropertyName("weight_decay")] public double WeightDecay { get; init; }
    /// <summary>Also decay 1-D parameters (BatchNorm scales and shifts, biases); off by default, as in SimCLR/MoCo v3.</summary>
    [JsonPropertyName("decay_norm_and_bias")] public bool DecayNormAndBias { get; init; }
    [JsonPropertyName("beta1")] public double Beta1 { get; init; } = 0.9;
    [JsonPropertyName("beta2")] public double Beta2 { get; init; } = 0.999;
    /// <summary>LARS trust coefficient η (You et al. 2017, Algorithm 1).</summary>
    [JsonPropertyName("lars_eta")] public double LarsEta { get; init; } = 0.001;
    [JsonPropertyName("warmup_epochs")] public double WarmupEpochs { get; init; }
    [JsonPropertyName("cosine")] public bool Cosine { get; init; } = true;
    [JsonPropertyName("final_lr_fraction")] public double FinalLrFraction { get; init; }
    /// <summary>Clip the global gradient norm to this value; null = no clipping.</summary>
    [JsonPropertyName("clip_grad_norm")] public double? ClipGradNorm { get; init; }

    /// <summary>The learning-rate factor at <paramref name="progress"/> epochs (fractional) of <paramref name="totalEpochs"/>.</summary>
    public double Factor(double progress, double totalEpochs)
    {
        if (WarmupEpochs > 0 && progress < WarmupEpochs) return (progress + 1e-12) / WarmupEpochs;
        if (!Cosine) return 1.0;
        var span = Math.Max(totalEpochs - WarmupEpochs, 1e-12);
        var t = Math.Clamp((progress - WarmupEpochs) / span, 0, 1);
        return FinalLrFraction + (1 - FinalLrFraction) * 0.5 * (1 + Math.Cos(Math.PI * t));
    }
}

/// <summary>
/// An optimizer built from a spec over named parameters: 1-D parameters go in a group without weight
/// decay (unless asked), LARS scales each decayed tensor's update by its trust ratio, clipping and the
/// schedule are applied in <see cref="Step"/>.
/// </summary>
public sealed class TrainingOptimizer : IDisposable
{
    public string Name { get; }
    public OptimizerSpec Spec { get; }
    public optim.Optimizer Optimizer { get; }
    readonly Parameter[] all;
    readonly Parameter[] decayed;

    public TrainingOptimizer(string name, OptimizerSpec spec, IEnumerable<(string Name, Parameter Parameter)> parameters)
    {
        Name = name;
        Spec = spec;
        var list = parameters.Where(p => p.Parameter.requires_grad).ToArray();
        if (list.Length == 0) throw new ArgumentException($"optimizer '{name}': expected at least one trainable parameter, found none");
        all = list.Select(p => p.Parameter).ToArray();
        decayed = list.Where(p => spec.DecayNormAndBias || p.Parameter.dim() > 1).Select(p => p.Parameter).ToArray();
        var plain = all.Except(decayed).ToArray();
        // LARS folds weight decay into its scaled gradient, so the SGD underneath has none.
        var wd = spec.Kind == OptimizerKind.Lars ? 0.0 : spec.WeightDecay;
        Optimizer = spec.Kind switch
        {
            OptimizerKind.Sgd or OptimizerKind.Lars => optim.SGD(Groups(decayed, plain,
                (ps, d) => new SGD.ParamGroup(ps, spec.LearningRate, spec.Momentum, 0, d, spec.Nesterov, false)), spec.LearningRate),
            OptimizerKind.Adam => optim.Adam(Groups(decayed, plain,
                (ps, d) => new Adam.ParamGroup(ps, spec.LearningRate, spec.Beta1, spec.Beta2, 1e-8, d, false)), spec.LearningRate),
            _ => optim.AdamW(Groups(decayed, plain,
                (ps, d) => new AdamW.ParamGroup(ps, spec.LearningRate, spec.Beta1, spec.Beta2, 1e-8, d, false)), spec.LearningRate),
        };

        IEnumerable<T> Groups<T>(Parameter[] withDecay, Parameter[] withoutDecay, Func<IEnumerable<Parameter>, double, T> make)
        {
            if (withDecay.Length > 0) yield return make(withDecay, wd);
            if (withoutDecay.Length > 0) yield return make(withoutDecay, 0.0);
        }
    }

    public double LearningRate => Optimizer.ParamGroups.First().LearningRate;

    /// <summary>The trainable parameters it steps.</summary>
    public IReadOnlyList<Parameter> Parameters => all;

    /// <summary>Sets every group's rate to base × the schedule's factor at this point of training.</summary>
    public void Schedule(double progressEpochs, double totalEpochs)
    {
        var lr = Spec.LearningRate * Spec.Factor(progressEpochs, totalEpochs);
        foreach (var group in Optimizer.ParamGroups) group.LearningRate = lr;
    }

    public void ZeroGrad() => Optimizer.zero_grad();

    /// <summary>Clips, applies LARS scaling where asked, and steps. Returns the global gradient norm.</summary>
    public double Step()
    {
        using var scope = NewDisposeScope();
        using (no_grad())
        {
            var norm = Spec.ClipGradNorm is { } max ? nn.utils.clip_grad_norm_(all, max) : GradientNorm();
            if (Spec.Kind == OptimizerKind.Lars) ScaleByTrustRatio();
            Optimizer.step();
            return norm;
        }
    }

    /// <summary>‖(g₁, …, gₙ)‖ over every gradient, in one reduction (one host sync per step, not one per tensor).</summary>
    double GradientNorm()
    {
        var grads = all.Select(p => p.grad).Where(g => g is not null).ToArray();
        if (grads.Length == 0) return 0;
        return stack(grads.Select(g => g!.norm()).ToArray()).norm().item<float>();
    }

    /// <summary>LARS (You et al. 2017, Alg. 1): g ← η‖w‖ / (‖g‖ + β‖w‖) · (g + β w) for decayed tensors.</summary>
    void ScaleByTrustRatio()
    {
        foreach (var p in decayed)
        {
            if (p.grad is null) continue;
            var wNorm = p.norm().item<float>();
            var gNorm = p.grad.norm().item<float>();
            var ratio = wNorm > 0 && gNorm > 0 ? Spec.LarsEta * wNorm / (gNorm + Spec.WeightDecay * wNorm) : 1.0;
            p.grad.add_(p, alpha: Spec.WeightDecay).mul_(ratio);
        }
    }

    public void Dispose() => Optimizer.Dispose();
}
