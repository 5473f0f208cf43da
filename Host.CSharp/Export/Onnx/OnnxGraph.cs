namespace Ssl.Host.Export.Onnx;

/// <summary>A node attribute: a float, an int64 or int64s.</summary>
public readonly record struct OnnxAttribute(string Name, object Value)
{
    public static OnnxAttribute Int(string name, long value) => new(name, value);
    public static OnnxAttribute Float(string name, double value) => new(name, (float)value);
    public static OnnxAttribute Ints(string name, params long[] values) => new(name, values);
}

public sealed record OnnxNode(string Op, string Name, string[] Inputs, string[] Outputs, OnnxAttribute[] Attributes);

/// <summary>A constant tensor of the graph: float32 (<c>Floats</c>) or int64 (<c>Longs</c>).</summary>
public sealed record OnnxTensor(string Name, long[] Dims, float[]? Floats, long[]? Longs);

/// <summary>A graph input or output: float32 of <c>Dims</c>, each a size (long) or a symbolic name (string).</summary>
public sealed record OnnxValueInfo(string Name, object[] Dims);

/// <summary>
/// An ONNX graph under construction: nodes in topological order (each added after its inputs),
/// constants, one named input and output. Value names are made unique from a hint (a module path).
/// </summary>
public sealed class OnnxGraph(string name)
{
    readonly List<OnnxNode> nodes = [];
    readonly List<OnnxTensor> initializers = [];
    readonly HashSet<string> names = [];

    public string Name => name;
    public IReadOnlyList<OnnxNode> Nodes => nodes;
    public IReadOnlyList<OnnxTensor> Initializers => initializers;
    public List<OnnxValueInfo> Inputs { get; } = [];
    public List<OnnxValueInfo> Outputs { get; } = [];

    string Unique(string hint)
    {
        var candidate = hint;
        for (var i = 1; !names.Add(candidate); i++) candidate = $"{hint}_{i}";
        return candidate;
    }

    /// <summary>Adds a node of operator <paramref name="op"/> with one output; returns the output's name.</summary>
    public string Add(string op, string hint, string[] inputs, params OnnxAttribute[] attributes)
    {
        var output = Unique($"{hint}/{op}");
        nodes.Add(new OnnxNode(op, output, inputs, [output], attributes));
        return output;
    }

    public string Floats(string hint, long[] dims, float[] values)
    {
        if (values.Length != dims.Aggregate(1L, (a, b) => a * b))
            throw new ArgumentException($"ONNX constant {hint}: expected {string.Join("x", dims)} values, found {values.Length}");
        var unique = Unique(hint);
        initializers.Add(new OnnxTensor(unique, dims, values, null));
        return unique;
    }

    public string Longs(string hint, params long[] values)
    {
        var unique = Unique(hint);
        initializers.Add(new OnnxTensor(unique, [values.Length], null, values));
        return unique;
    }

    /// <summary>A scalar int64 constant (a Gather index that drops its axis).</summary>
    public string Scalar(string hint, long value)
    {
        var unique = Unique(hint);
        initializers.Add(new OnnxTensor(unique, [], null, [value]));
        return unique;
    }

    /// <summary>
    /// Drops the nodes and constants no output depends on (the layers after a probed layer), so
    /// the model computes only what it returns.
    /// </summary>
    public void Prune()
    {
        var needed = new HashSet<string>(Outputs.Select(o => o.Name));
        var kept = new List<OnnxNode>();
        for (var i = nodes.Count - 1; i >= 0; i--)
        {
            if (!nodes[i].Outputs.Any(needed.Contains)) continue;
            kept.Add(nodes[i]);
            foreach (var input in nodes[i].Inputs) needed.Add(input);
        }
        kept.Reverse();
        nodes.Clear();
        nodes.AddRange(kept);
        initializers.RemoveAll(t => !needed.Contains(t.Name));
    }
}
