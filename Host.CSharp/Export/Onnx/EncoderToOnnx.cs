using Ssl.Core.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Ssl.Host.Export.Onnx;

/// <summary>
/// An encoder of Core (SmallConvNet, ResNet18, WideResNet, VisionTransformer, or a probe's view of
/// one: LayerFeatures, ClassTokenFeatures) as an ONNX graph, built from its module tree in eval mode:
/// one rule per module type mirroring that module's forward (batch norms read their running
/// statistics). The input is raw pixels, float32 (batch, C, H, W) in [0, 1], standardised in the
/// graph with the run's per-channel mean and std as <see cref="Ssl.Host.Eval.Features.ToInput"/>
/// does; the output is float32 (batch, D), what the encoder's forward returns. The batch axis is
/// symbolic; H and W are the run's (layer pooling and the ViT's positional table depend on them).
/// A module without a rule is a <see cref="NotSupportedException"/> naming its type.
/// </summary>
public static class EncoderToOnnx
{
    public const string InputName = "images";
    public const string OutputName = "features";

    /// <summary>A value of the graph and its shape at batch size 1.</summary>
    readonly record struct Value(string Name, long[] Shape);

    public static OnnxGraph Build(nn.Module<Tensor, Tensor> encoder, long channels, long height, long width, double[] mean, double[] std)
    {
        if (mean.Length != channels || std.Length != channels)
            throw new ArgumentException($"mean/std: expected {channels} values (one per channel), found {mean.Length} and {std.Length}");
        var wasTraining = encoder.training;
        encoder.eval();
        try
        {
            using var noGrad = no_grad();
            var graph = new OnnxGraph(encoder.GetName());
            graph.Inputs.Add(new OnnxValueInfo(InputName, ["batch", channels, height, width]));
            var perChannel = new long[] { 1, channels, 1, 1 };
            var centred = graph.Add("Sub", "normalise", [InputName, graph.Floats("normalise.mean", perChannel, mean.Select(v => (float)v).ToArray())]);
            var standardised = graph.Add("Div", "normalise", [centred, graph.Floats("normalise.std", perChannel, std.Select(v => (float)v).ToArray())]);
            var output = new Builder(graph).Emit("", encoder, new Value(standardised, [1, channels, height, width]));
            if (output.Shape.Length != 2)
                throw new NotSupportedException($"ONNX export: expected the encoder to return (N, D) features, found shape [{string.Join(", ", output.Shape)}]");
            var named = graph.Add("Identity", OutputName, [output.Name]);
            graph.Outputs.Add(new OnnxValueInfo(named, ["batch", output.Shape[1]]));
            graph.Prune();
            return graph;
        }
        finally
        {
            encoder.train(wasTraining);
        }
    }

    /// <summary>
    /// Writes <paramref name="encoder"/> as an ONNX model to <paramref name="path"/> through a temp file
    /// renamed into place, with <paramref name="metadata"/> as its metadata_props (after the input's
    /// shape, mean and std, which are recorded here). Returns the graph written.
    /// </summary>
    public static OnnxGraph Save(nn.Module<Tensor, Tensor> encoder, long channels, long height, long width, double[] mean, double[] std,
                                 IEnumerable<KeyValuePair<string, string>> metadata, string path, string producerVersion)
    {
        var graph = Build(encoder, channels, height, width, mean, std);
        string Numbers(double[] values) => string.Join(",", values.Select(v => v.ToString("R", System.Globalization.CultureInfo.InvariantCulture)));
        var recorded = new List<KeyValuePair<string, string>>
        {
            new("input", $"{InputName}: float32 (batch, {channels}, {height}, {width}), raw pixels in [0, 1], channels as the run read them (RGB for colour)"),
            new("input_channels", channels.ToString()),
            new("input_height", height.ToString()),
            new("input_width", width.ToString()),
            new("mean", Numbers(mean)),
            new("std", Numbers(std)),
            new("normalisation", "inside the graph: (images - mean) / std per channel"),
            new("output", $"{OutputName}: float32 (batch, {graph.Outputs[0].Dims[1]})"),
        };
        recorded.AddRange(metadata);
        using var file = new PendingFile(path);
        OnnxWriter.Write(file.Stream, graph, recorded, producerVersion);
        file.Commit();
        return graph;
    }

    sealed class Builder(OnnxGraph graph)
    {
        /// <summary>The path of the layer a LayerFeatures reads, and its output once emitted.</summary>
        string? tapPath;
        Value? tapped;

        static string Join(string path, string child) => path.Length == 0 ? child : $"{path}.{child}";

        static float[] Values(Tensor t)
        {
            using var dense = t.detach().to_type(ScalarType.Float32).cpu().contiguous();
            return dense.data<float>().ToArray();
        }

        string Constant(string name, Tensor t) => graph.Floats(name, t.shape, Values(t));

        /// <summary>The output shape of a leaf module at batch size 1, by running it on zeros.</summary>
        static long[] ShapeAfter(nn.Module<Tensor, Tensor> module, long[] shape)
        {
            using var scope = NewDisposeScope();
            return module.forward(zeros(shape)).shape;
        }

        static Dictionary<string, nn.Module> Children(nn.Module module) =>
            module.named_children().ToDictionary(c => c.name, c => c.module);

        static nn.Module<Tensor, Tensor> Child(nn.Module module, string name) =>
            Children(module).TryGetValue(name, out var child) && child is nn.Module<Tensor, Tensor> typed
                ? typed
                : throw new NotSupportedException($"ONNX export: expected a sub-module '{name}' in {module.GetType().Name}, found none");

        public Value Emit(string path, nn.Module<Tensor, Tensor> module, Value x)
        {
            var y = EmitModule(path, module, x);
            if (tapPath is not null && path == tapPath) tapped = y;
            return y;
        }

        Value EmitModule(string path, nn.Module<Tensor, Tensor> module, Value x)
        {
            var hint = path.Length == 0 ? module.GetName() : path;
            switch (module)
            {
                case SmallConvNet or ResNet18 or WideResNet:
                    return Emit(Join(path, "features"), Child(module, "features"), x);
                case LayerFeatures features:
                    return EmitLayerFeatures(path, features, x);
                case VisionTransformer vit:
                    return EmitVit(path, vit, x, 1, false);
                case ClassTokenFeatures classTokens:
                    return EmitVit(path, classTokens.Encoder, x, classTokens.Blocks, classTokens.PatchMean);
                case Sequential:
                    foreach (var (name, child) in module.named_children())
                        x = Emit(Join(path, name), child as nn.Module<Tensor, Tensor>
                            ?? throw new NotSupportedException($"ONNX export: no rule for module type {child.GetType().Name} ('{Join(path, name)}')"), x);
                    return x;
                case Identity:
                    return x;
                case Conv2d conv:
                    if (conv.padding_type is not null || conv.padding_mode != PaddingModes.Zeros)
                        throw new NotSupportedException($"ONNX export: Conv2d '{path}': expected explicit zero padding, found {conv.padding_type?.ToString() ?? conv.padding_mode.ToString()}");
                    return Convolution(hint, x, conv.weight, conv.bias, conv.stride, conv.padding ?? [0, 0], conv.dilation, conv.groups, ShapeAfter(conv, x.Shape));
                case SafeConv.SafeConv2d safe:
                    // SafeConv2d computes an ordinary convolution (its channel padding adds zeros only).
                    return Convolution(hint, x, safe.Weight, safe.Bias, [safe.Stride, safe.Stride], [safe.Padding, safe.Padding], [1, 1], 1, ShapeAfter(safe, x.Shape));
                case BatchNorm2d bn:
                    {
                        if (bn.running_mean is null || bn.running_var is null)
                            throw new NotSupportedException($"ONNX export: BatchNorm2d '{hint}': expected running statistics (eval mode reads them), found none");
                        var c = x.Shape[1];
                        var scale = bn.weight is null ? graph.Floats(hint + ".weight", [c], Enumerable.Repeat(1f, (int)c).ToArray()) : Constant(hint + ".weight", bn.weight);
                        var shift = bn.bias is null ? graph.Floats(hint + ".bias", [c], new float[c]) : Constant(hint + ".bias", bn.bias);
                        var name = graph.Add("BatchNormalization", hint,
                            [x.Name, scale, shift, Constant(hint + ".running_mean", bn.running_mean), Constant(hint + ".running_var", bn.running_var)],
                            OnnxAttribute.Float("epsilon", bn.eps));
                        return x with { Name = name };
                    }
                case ReLU:
                    return x with { Name = graph.Add("Relu", hint, [x.Name]) };
                case LeakyReLU leaky:
                    return x with { Name = graph.Add("LeakyRelu", hint, [x.Name], OnnxAttribute.Float("alpha", leaky.negative_slope)) };
                case GELU gelu when gelu.approximate == GELU.Approximate.none:
                    return Gelu(hint, x);
                case MaxPool2d pool:
                    {
                        var stride = pool.stride ?? pool.kernel_size;
                        var padding = pool.padding ?? [0, 0];
                        var name = graph.Add("MaxPool", hint, [x.Name],
                            OnnxAttribute.Ints("kernel_shape", pool.kernel_size),
                            OnnxAttribute.Ints("strides", stride),
                            OnnxAttribute.Ints("pads", padding[0], padding[^1], padding[0], padding[^1]),
                            OnnxAttribute.Ints("dilations", pool.dilation ?? [1, 1]),
                            OnnxAttribute.Int("ceil_mode", pool.ceil_mode ? 1 : 0));
                        return new Value(name, ShapeAfter(pool, x.Shape));
                    }
                case AdaptiveAvgPool2d pool:
                    {
                        var shape = ShapeAfter(pool, x.Shape);
                        return AdaptiveAveragePool(hint, x, shape[2], shape[3]);
                    }
                case Flatten flatten when flatten.start_dim == 1 && (flatten.end_dim == -1 || flatten.end_dim == x.Shape.Length - 1):
                    return new Value(graph.Add("Flatten", hint, [x.Name], OnnxAttribute.Int("axis", 1)), [x.Shape[0], x.Shape.Skip(1).Aggregate(1L, (a, b) => a * b)]);
                case Linear linear:
                    return Affine(hint, x, linear.weight, linear.bias);
                case LayerNorm norm when norm.normalized_shape.Length == 1:
                    return Normalise(hint, x, norm);
                case BasicBlock:
                    {
                        var residual = Emit(Join(path, "residual"), Child(module, "residual"), x);
                        var shortcut = Emit(Join(path, "shortcut"), Child(module, "shortcut"), x);
                        var sum = graph.Add("Add", hint, [residual.Name, shortcut.Name]);
                        return residual with { Name = graph.Add("Relu", hint, [sum]) };
                    }
                case PreActivationBlock block:
                    {
                        var normalised = Emit(Join(path, "bn1"), Child(module, "bn1"), x);
                        var activated = normalised with { Name = graph.Add("LeakyRelu", hint, [normalised.Name], OnnxAttribute.Float("alpha", block.Slope)) };
                        var shortcut = Emit(Join(path, "projection"), Child(module, "projection"), block.ActivateBeforeResidual ? activated : x);
                        var residual = Emit(Join(path, "residual"), Child(module, "residual"), activated);
                        return residual with { Name = graph.Add("Add", hint, [residual.Name, shortcut.Name]) };
                    }
                default:
                    throw new NotSupportedException($"ONNX export: no rule for module type {module.GetType().Name} ('{hint}')");
            }
        }

        Value Convolution(string hint, Value x, Tensor weight, Tensor? bias, long[] stride, long[] padding, long[] dilation, long groups, long[] outputShape)
        {
            var inputs = new List<string> { x.Name, Constant(hint + ".weight", weight) };
            if (bias is not null) inputs.Add(Constant(hint + ".bias", bias));
            var name = graph.Add("Conv", hint, inputs.ToArray(),
                OnnxAttribute.Ints("kernel_shape", weight.shape[2], weight.shape[3]),
                OnnxAttribute.Ints("strides", stride),
                OnnxAttribute.Ints("pads", padding[0], padding[^1], padding[0], padding[^1]),
                OnnxAttribute.Ints("dilations", dilation),
                OnnxAttribute.Int("group", groups));
            return new Value(name, outputShape);
        }

        /// <summary>x (…, in) → x Wᵀ + b (…, out), as nn.Linear: MatMul then Add, for inputs of any rank.</summary>
        Value Affine(string hint, Value x, Tensor weight, Tensor? bias)
        {
            using var transposed = weight.t();
            var product = graph.Add("MatMul", hint, [x.Name, Constant(hint + ".weight_t", transposed)]);
            var shape = x.Shape[..^1].Append(weight.shape[0]).ToArray();
            return new Value(bias is null ? product : graph.Add("Add", hint, [product, Constant(hint + ".bias", bias)]), shape);
        }

        Value Normalise(string hint, Value x, LayerNorm norm)
        {
            var d = norm.normalized_shape[0];
            var scale = norm.weight is null ? graph.Floats(hint + ".weight", [d], Enumerable.Repeat(1f, (int)d).ToArray()) : Constant(hint + ".weight", norm.weight);
            var shift = norm.bias is null ? graph.Floats(hint + ".bias", [d], new float[d]) : Constant(hint + ".bias", norm.bias);
            return x with { Name = graph.Add("LayerNormalization", hint, [x.Name, scale, shift], OnnxAttribute.Int("axis", -1), OnnxAttribute.Float("epsilon", norm.eps)) };
        }

        /// <summary>GELU without approximation, x · ½ (1 + erf(x / √2)) (opset 17 has no Gelu operator).</summary>
        Value Gelu(string hint, Value x)
        {
            var scaled = graph.Add("Div", hint, [x.Name, graph.Floats(hint + ".sqrt2", [], [MathF.Sqrt(2f)])]);
            var erf = graph.Add("Erf", hint, [scaled]);
            var onePlus = graph.Add("Add", hint, [erf, graph.Floats(hint + ".one", [], [1f])]);
            var product = graph.Add("Mul", hint, [x.Name, onePlus]);
            return x with { Name = graph.Add("Mul", hint, [product, graph.Floats(hint + ".half", [], [0.5f])]) };
        }

        /// <summary>
        /// adaptive_avg_pool2d to rows x columns: GlobalAveragePool for 1 x 1, AveragePool where the
        /// sides divide evenly, else the average as two matrix products with PyTorch's windows (cell i
        /// of n over a side of s reads [⌊i s / n⌋, ⌈(i + 1) s / n⌉)).
        /// </summary>
        Value AdaptiveAveragePool(string hint, Value x, long rows, long columns)
        {
            long h = x.Shape[2], w = x.Shape[3];
            long[] shape = [x.Shape[0], x.Shape[1], rows, columns];
            if (rows == 1 && columns == 1) return new Value(graph.Add("GlobalAveragePool", hint, [x.Name]), shape);
            if (h % rows == 0 && w % columns == 0)
                return new Value(graph.Add("AveragePool", hint, [x.Name],
                    OnnxAttribute.Ints("kernel_shape", h / rows, w / columns), OnnxAttribute.Ints("strides", h / rows, w / columns)), shape);
            float[] Windows(long size, long cells, bool transposed)
            {
                var matrix = new float[size * cells];
                for (long i = 0; i < cells; i++)
                {
                    long start = i * size / cells, end = ((i + 1) * size + cells - 1) / cells;
                    for (var j = start; j < end; j++) matrix[transposed ? j * cells + i : i * size + j] = 1f / (end - start);
                }
                return matrix;
            }
            var acrossColumns = graph.Add("MatMul", hint, [x.Name, graph.Floats(hint + ".columns", [w, columns], Windows(w, columns, true))]);
            return new Value(graph.Add("MatMul", hint, [graph.Floats(hint + ".rows", [rows, h], Windows(h, rows, false)), acrossColumns]), shape);
        }

        /// <summary>LayerFeatures: the encoder runs to the probed layer, whose map is pooled and flattened.</summary>
        Value EmitLayerFeatures(string path, LayerFeatures features, Value x)
        {
            tapPath = features.Layer;
            tapped = null;
            // Layer names are paths from the encoder LayerFeatures reads (its named_modules).
            Emit("", features.Encoder, x);
            var map = tapped ?? throw new NotSupportedException($"ONNX export: the probed layer '{features.Layer}' is not among the layers exported");
            tapPath = null;
            if (map.Shape.Length != 4)
                throw new NotSupportedException($"ONNX export: the probed layer '{features.Layer}': expected a (N, C, H, W) map, found shape [{string.Join(", ", map.Shape)}]");
            var pooled = AdaptiveAveragePool(Join(path, "probe_pool"), map, features.Pool, features.Pool);
            return new Value(graph.Add("Flatten", Join(path, "probe_pool"), [pooled.Name], OnnxAttribute.Int("axis", 1)),
                [1, map.Shape[1] * features.Pool * features.Pool]);
        }

        /// <summary>
        /// VisionTransformer.ClassTokens: patch embedding (reshape into patches, linear), class token
        /// and the positional table for this grid (resized by the model itself when the grid is not
        /// its own), the blocks, then the final LayerNorm's class token after each of the last
        /// <paramref name="blocks"/> blocks, with the mean of the last block's patch tokens when
        /// <paramref name="patchMean"/>; blocks = 1 is the ViT's forward.
        /// </summary>
        Value EmitVit(string path, VisionTransformer vit, Value x, int blocks, bool patchMean)
        {
            long c = x.Shape[1], h = x.Shape[2], w = x.Shape[3], p = vit.PatchSize, d = vit.FeatureDim;
            if (h % p != 0 || w % p != 0)
                throw new ArgumentException($"images: expected height and width that are multiples of the patch size {p}, found {h}x{w}");
            long rows = h / p, columns = w / p, patches = rows * columns, tokens = 1 + patches;
            var embed = Join(path, "patchEmbedding");
            var grid = graph.Add("Reshape", embed, [x.Name, graph.Longs(embed + ".grid", -1, c, rows, p, columns, p)]);
            var ordered = graph.Add("Transpose", embed, [grid], OnnxAttribute.Ints("perm", 0, 2, 4, 1, 3, 5));
            var flat = graph.Add("Reshape", embed, [ordered, graph.Longs(embed + ".patches", -1, patches, c * p * p)]);
            var embedded = Affine(embed, new Value(flat, [1, patches, c * p * p]), vit.PatchEmbedding.Weight, vit.PatchEmbedding.Bias);
            var batch = graph.Add("Shape", Join(path, "classToken"), [x.Name], OnnxAttribute.Int("start", 0), OnnxAttribute.Int("end", 1));
            var expandTo = graph.Add("Concat", Join(path, "classToken"), [batch, graph.Longs(Join(path, "classToken") + ".shape", 1, d)], OnnxAttribute.Int("axis", 0));
            var classes = graph.Add("Expand", Join(path, "classToken"), [Constant(Join(path, "classToken"), vit.ClassToken), expandTo]);
            var sequence = graph.Add("Concat", Join(path, "tokens"), [classes, embedded.Name], OnnxAttribute.Int("axis", 1));
            using var positions = vit.PositionsFor(rows, columns);
            var current = new Value(graph.Add("Add", Join(path, "positions"), [sequence, Constant(Join(path, "positions"), positions)]), [1, tokens, d]);
            var blockList = Children(vit)["blocks"].named_children().Select(c => c.module).ToArray();
            var norm = (LayerNorm)Child(vit, "norm");
            var depth = vit.Depth;
            var read = new List<string>();
            var last = current;
            for (var i = 0; i < depth; i++)
            {
                var blockPath = Join(path, $"blocks.{i}");
                current = EmitBlock(blockPath, (TransformerBlock)blockList[i], current);
                if (tapPath is not null && blockPath == tapPath) tapped = current;
                if (i < depth - blocks) continue;
                last = Normalise(Join(path, "norm"), current, norm);
                read.Add(graph.Add("Gather", Join(path, "classToken"), [last.Name, graph.Scalar(Join(path, "first"), 0)], OnnxAttribute.Int("axis", 1)));
            }
            if (patchMean)
            {
                var patchTokens = graph.Add("Slice", Join(path, "patchTokens"),
                    [last.Name, graph.Longs(Join(path, "patchTokens") + ".starts", 1), graph.Longs(Join(path, "patchTokens") + ".ends", tokens), graph.Longs(Join(path, "patchTokens") + ".axes", 1)]);
                read.Add(graph.Add("ReduceMean", Join(path, "patchMean"), [patchTokens], OnnxAttribute.Ints("axes", 1), OnnxAttribute.Int("keepdims", 0)));
            }
            var output = read.Count == 1 ? read[0] : graph.Add("Concat", Join(path, "readout"), read.ToArray(), OnnxAttribute.Int("axis", 1));
            return new Value(output, [1, read.Count * d]);
        }

        /// <summary>TransformerBlock: x + MSA(LN₁(x)), then x + MLP(LN₂(x)).</summary>
        Value EmitBlock(string path, TransformerBlock block, Value x)
        {
            var attention = (MultiHeadSelfAttention)Child(block, "attention");
            var attended = EmitAttention(Join(path, "attention"), attention, Emit(Join(path, "norm1"), Child(block, "norm1"), x));
            var mixed = x with { Name = graph.Add("Add", path, [x.Name, attended.Name]) };
            var mlp = Emit(Join(path, "mlp"), Child(block, "mlp"), Emit(Join(path, "norm2"), Child(block, "norm2"), mixed));
            return x with { Name = graph.Add("Add", path, [mixed.Name, mlp.Name]) };
        }

        /// <summary>MultiHeadSelfAttention: qkv, per head softmax(q kᵀ / √d_h) v, heads concatenated, projected.</summary>
        Value EmitAttention(string path, MultiHeadSelfAttention attention, Value x)
        {
            long t = x.Shape[1], d = x.Shape[2], heads = attention.Heads, headDim = d / heads;
            var qkv = Emit(Join(path, "qkv"), Child(attention, "qkv"), x);
            var split = graph.Add("Reshape", path, [qkv.Name, graph.Longs(path + ".split", 0, t, 3, heads, headDim)]);
            var parts = graph.Add("Transpose", path, [split], OnnxAttribute.Ints("perm", 2, 0, 3, 1, 4));
            string Part(long index) => graph.Add("Gather", path, [parts, graph.Scalar(path + ".part", index)], OnnxAttribute.Int("axis", 0));
            string q = Part(0), k = Part(1), v = Part(2);
            var keys = graph.Add("Transpose", path, [k], OnnxAttribute.Ints("perm", 0, 1, 3, 2));
            var scores = graph.Add("MatMul", path, [q, keys]);
            var scaled = graph.Add("Mul", path, [scores, graph.Floats(path + ".scale", [], [(float)(1.0 / Math.Sqrt(headDim))])]);
            var weights = graph.Add("Softmax", path, [scaled], OnnxAttribute.Int("axis", -1));
            var mixed = graph.Add("MatMul", path, [weights, v]);
            var merged = graph.Add("Transpose", path, [mixed], OnnxAttribute.Ints("perm", 0, 2, 1, 3));
            var joined = graph.Add("Reshape", path, [merged, graph.Longs(path + ".merge", 0, t, d)]);
            return Emit(Join(path, "proj"), Child(attention, "proj"), x with { Name = joined });
        }
    }
}
