using System.Runtime.InteropServices;
using System.Text;

namespace Ssl.Host.Export.Onnx;

/// <summary>
/// The protobuf wire format (protobuf.dev/programming-guides/encoding): each field a key
/// <c>(number &lt;&lt; 3) | wire type</c> as a varint, then a varint (type 0) or a length-prefixed
/// byte string (type 2: strings, bytes, packed repeated numbers and nested messages). Enough of it
/// for the ONNX messages <see cref="OnnxWriter"/> writes.
/// </summary>
sealed class ProtoWriter(Stream? target)
{
    /// <summary>The bytes written so far (a writer without a target only counts them: a nested message's size).</summary>
    public long Length { get; private set; }

    void Write(ReadOnlySpan<byte> bytes)
    {
        target?.Write(bytes);
        Length += bytes.Length;
    }

    void Varint(ulong value)
    {
        Span<byte> bytes = stackalloc byte[10];
        var n = 0;
        while (value >= 0x80)
        {
            bytes[n++] = (byte)(value | 0x80);
            value >>= 7;
        }
        bytes[n++] = (byte)value;
        Write(bytes[..n]);
    }

    void Key(int field, int wireType) => Varint((ulong)((field << 3) | wireType));

    /// <summary>An int32, int64 or enum field (negative numbers as ten-byte two's complement, as protobuf's int64).</summary>
    public void Int(int field, long value)
    {
        Key(field, 0);
        Varint((ulong)value);
    }

    public void Bytes(int field, ReadOnlySpan<byte> value)
    {
        Key(field, 2);
        Varint((ulong)value.Length);
        Write(value);
    }

    public void String(int field, string value) => Bytes(field, Encoding.UTF8.GetBytes(value));

    /// <summary>A float field (wire type 5: four little-endian bytes).</summary>
    public void Float(int field, float value)
    {
        Key(field, 5);
        Span<byte> bytes = stackalloc byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteSingleLittleEndian(bytes, value);
        Write(bytes);
    }

    /// <summary>A repeated int64 field, packed (proto3's default encoding, which proto2 parsers also read).</summary>
    public void PackedInts(int field, IReadOnlyList<long> values)
    {
        var packed = new MemoryStream();
        var writer = new ProtoWriter(packed);
        foreach (var v in values) writer.Varint((ulong)v);
        Bytes(field, packed.ToArray());
    }

    /// <summary>A nested message: its size (measured by writing it to a counting writer), then its fields.</summary>
    public void Message(int field, Action<ProtoWriter> write)
    {
        var size = new ProtoWriter(null);
        write(size);
        Key(field, 2);
        Varint((ulong)size.Length);
        write(this);
    }
}

/// <summary>
/// Writes an <see cref="OnnxGraph"/> as an ONNX ModelProto. Field numbers are onnx/onnx.proto's
/// (ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto, ValueInfoProto, TypeProto,
/// TensorShapeProto, StringStringEntryProto, OperatorSetIdProto); tensors are stored as raw_data,
/// little-endian as the format requires.
/// </summary>
public static class OnnxWriter
{
    /// <summary>The IR version of opset 17 (onnx 1.12, which ONNX Runtime reads too).</summary>
    public const long IrVersion = 8;
    public const long Opset = 17;

    const int FloatType = 1, Int64Type = 7;

    /// <summary>The model as bytes.</summary>
    public static byte[] Model(OnnxGraph graph, IEnumerable<KeyValuePair<string, string>> metadata, string producerVersion)
    {
        using var bytes = new MemoryStream();
        Write(bytes, graph, metadata, producerVersion);
        return bytes.ToArray();
    }

    /// <summary>Writes the model to <paramref name="stream"/>, each tensor's data copied once.</summary>
    public static void Write(Stream stream, OnnxGraph graph, IEnumerable<KeyValuePair<string, string>> metadata, string producerVersion)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("ONNX export: raw tensor data is written little-endian; this machine is big-endian");
        var model = new ProtoWriter(stream);
        model.Int(1, IrVersion);
        model.String(2, "ssl");
        model.String(3, producerVersion);
        model.Message(7, g => Graph(g, graph));
        model.Message(8, o =>
        {
            o.String(1, "");
            o.Int(2, Opset);
        });
        foreach (var (key, value) in metadata)
            model.Message(14, e =>
            {
                e.String(1, key);
                e.String(2, value);
            });
    }

    static void Graph(ProtoWriter g, OnnxGraph graph)
    {
        foreach (var node in graph.Nodes) g.Message(1, n => Node(n, node));
        g.String(2, graph.Name);
        foreach (var init in graph.Initializers) g.Message(5, t => Tensor(t, init));
        foreach (var input in graph.Inputs) g.Message(11, v => ValueInfo(v, input));
        foreach (var output in graph.Outputs) g.Message(12, v => ValueInfo(v, output));
    }

    static void Node(ProtoWriter n, OnnxNode node)
    {
        foreach (var input in node.Inputs) n.String(1, input);
        foreach (var output in node.Outputs) n.String(2, output);
        n.String(3, node.Name);
        n.String(4, node.Op);
        foreach (var attribute in node.Attributes) n.Message(5, a => Attribute(a, attribute));
    }

    static void Attribute(ProtoWriter a, OnnxAttribute attribute)
    {
        a.String(1, attribute.Name);
        switch (attribute.Value)
        {
            case float f:
                a.Float(2, f);
                a.Int(20, 1);
                break;
            case long i:
                a.Int(3, i);
                a.Int(20, 2);
                break;
            case long[] ints:
                a.PackedInts(8, ints);
                a.Int(20, 7);
                break;
            default:
                throw new ArgumentException($"ONNX attribute {attribute.Name}: expected a float, an int64 or int64s, found {attribute.Value?.GetType().Name}");
        }
    }

    static void Tensor(ProtoWriter t, OnnxTensor tensor)
    {
        t.PackedInts(1, tensor.Dims);
        t.Int(2, tensor.Floats is null ? Int64Type : FloatType);
        t.String(8, tensor.Name);
        t.Bytes(9, tensor.Floats is null ? MemoryMarshal.AsBytes(tensor.Longs.AsSpan()) : MemoryMarshal.AsBytes(tensor.Floats.AsSpan()));
    }

    static void ValueInfo(ProtoWriter v, OnnxValueInfo info)
    {
        v.String(1, info.Name);
        v.Message(2, type => type.Message(1, tensorType =>
        {
            tensorType.Int(1, FloatType);
            tensorType.Message(2, shape =>
            {
                foreach (var dim in info.Dims)
                    shape.Message(1, d =>
                    {
                        if (dim is long size) d.Int(1, size);
                        else d.String(2, (string)dim);
                    });
            });
        }));
    }
}
