// A method of its own, in C#: two views of every image (a random flip, a random shift and pixel
// noise) pulled together and pushed from the batch's other images by the NT-Xent loss of SimCLR
// (Chen et al. 2020, Eq. 1) on a linear projection of the encoder's features. The config is a C#
// record (Configs reads its properties: `--set Temperature=0.2` works on it), the step an
// ITrainingStep, the spec a MethodSpec; the run template does the rest.
using System;
using System.Collections.Generic;
using System.Linq;
using Ssl.Core.Models;
using Ssl.Core.Transforms;
using Ssl.Experiments;
using Ssl.Host.Engine;
using Ssl.Host.Eval;
using TorchSharp;
using TorchSharp.Modules;
using static Ssl.Experiments.Configs;
using static TorchSharp.torch;
using Backbone = Ssl.Experiments.Backbone.Backbone;
using Preset = Ssl.Experiments.Recipe.Preset;

namespace MethodCs;

/// <summary>The method's config: every property is a field of config.json and of `--set`.</summary>
public sealed record ContrastConfig(
    Backbone Encoder,
    [property: Range(1.0)] int Epochs,
    [property: Range(2.0)] int BatchSize,
    [property: Range(0.0)] double LearningRate,
    [property: Range(0.0)] double WeightDecay,
    // τ of the NT-Xent loss.
    [property: Range(0.01)] double Temperature,
    [property: Range(1.0)] long ProjectionDim,
    // The largest shift of a view, in pixels, each way.
    [property: Range(0.0, 8.0)] int MaxShift,
    // The standard deviation of the Gaussian noise added to a view (of normalised pixels).
    [property: Range(0.0)] double Noise);

/// <summary>One step: two views of the batch, NT-Xent over their 2N projections.</summary>
public sealed class ContrastStep(Encoder encoder, LinearHead projection, Pipeline.Data data, ContrastConfig config) : ITrainingStep
{
    readonly OptimizerSpec optimizer = new()
    {
        Kind = OptimizerKind.Sgd, LearningRate = config.LearningRate, Momentum = 0.9, Nesterov = true, WeightDecay = config.WeightDecay,
    };

    public IReadOnlyDictionary<string, nn.Module> Modules =>
        new Dictionary<string, nn.Module> { ["encoder"] = encoder, ["projection"] = projection };

    public IReadOnlyList<(string Name, OptimizerSpec Spec, IEnumerable<(string Name, Parameter Parameter)> Parameters)> Optimizers =>
        [("main", optimizer, encoder.named_parameters().Concat(projection.named_parameters()))];

    public IReadOnlyDictionary<string, double> Step(StepContext context, long[] batch)
    {
        var x = Features.ToInput(data.Train.Batch(batch), data.Mean, data.Std, context.Device);
        var views = cat([View(x, context.Generator), View(x, context.Generator)], 0);
        var z = nn.functional.normalize(projection.forward(encoder.forward(views)), dim: 1);
        var loss = NtXent(z, config.Temperature);
        var value = context.Optimize("main", loss);
        return new Dictionary<string, double> { ["loss"] = value };
    }

    /// <summary>
    /// NT-Xent of 2N unit rows whose row i and row i + N are views of one image: the cross-entropy of
    /// each row's similarities (over τ, itself left out) against its twin.
    /// </summary>
    public static Tensor NtXent(Tensor z, double temperature)
    {
        var n = z.shape[0] / 2;
        var similarity = z.matmul(z.T) / temperature;
        var self = eye(2 * n, dtype: ScalarType.Bool, device: z.device);
        similarity = similarity.masked_fill(self, double.NegativeInfinity);
        var twin = cat([arange(n, 2 * n, device: z.device), arange(0, n, device: z.device)], 0);
        return nn.functional.cross_entropy(similarity, twin);
    }

    /// <summary>A view of a batch: each image flipped with probability 1/2, shifted by up to MaxShift pixels, plus noise.
    /// Per-image draws go through Core's <c>Draw</c>, so that ranks draw their share of one global batch's.</summary>
    Tensor View(Tensor x, Generator generator)
    {
        var count = x.shape[0];
        var flip = Draw.bernoulli(generator, 0.5, count, x.device).view(count, 1, 1, 1);
        var view = where(flip, x.flip(3), x);
        if (config.MaxShift > 0)
        {
            var shifts = Draw.integers(generator, -config.MaxShift, config.MaxShift, new[] { count, 2L }, CPU).data<long>().ToArray();
            view = cat(Enumerable.Range(0, (int)count)
                .Select(i => view[i..(i + 1)].roll([shifts[2 * i], shifts[2 * i + 1]], [2, 3])).ToArray(), 0);
        }
        return config.Noise > 0 ? view + Draw.normal(generator, view.shape, view.dtype, x.device) * config.Noise : view;
    }
}

/// <summary>The method as the template runs it.</summary>
public static class ContrastMethod
{
    public const string Name = "contrast-cs";

    /// <summary>`paper`: SimCLR's CIFAR-10 schedule at our scale; `quick` 5 epochs; `smoke` one epoch at width 8.</summary>
    public static ContrastConfig Config(Preset preset)
    {
        var paper = new ContrastConfig(Backbones.Parse("smallconvnet-32"), Epochs: 100, BatchSize: 256, LearningRate: 0.3, WeightDecay: 1e-4,
                                       Temperature: 0.5, ProjectionDim: 64, MaxShift: 4, Noise: 0.1);
        if (preset.IsSmoke) return paper with { Encoder = Backbones.Parse("smallconvnet-8"), Epochs = 1, BatchSize = 128 };
        if (preset.IsQuick) return paper with { Encoder = Backbones.Parse("smallconvnet-16"), Epochs = 5 };
        return paper;
    }

    static TrainingPlan Build(MethodContext<ContrastConfig> context)
    {
        var config = context.Config;
        var encoder = context.NewEncoder();
        var projection = new LinearHead(encoder.FeatureDim, config.ProjectionDim);
        return new TrainingPlan
        {
            Step = new ContrastStep(encoder, projection, context.Data, config),
            Epochs = config.Epochs,
            BatchSize = config.BatchSize,
            Evaluated = encoder,
            Owned = { encoder, projection },
        };
    }

    /// <summary>The spec: a fresh one per call (a MethodSpec is mutable until registered).</summary>
    public static MethodSpec<ContrastConfig> Spec() =>
        new MethodSpec<ContrastConfig>(Name, "Chen et al. 2020, A Simple Framework for Contrastive Learning (NT-Xent), with cheap views: an example in C#")
        {
            Config = Config,
            Backbone = config => config.Encoder,
            Build = Build,
        }
        .AddVariant("tau02", "the same at temperature 0.2", config => config with { Temperature = 0.2 });
}
