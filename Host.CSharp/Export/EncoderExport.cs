using TorchSharp;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Ssl.Host.Export;

/// <summary>
/// Writes a trained encoder for use elsewhere: TorchSharp's own format (<c>.dat</c>, for
/// <c>module.load</c>) and safetensors (for PyTorch: <c>safetensors.torch.load_file</c> then
/// <c>model.load_state_dict</c>). Tensor names are the module's <c>state_dict</c> keys, dotted
/// paths of its sub-module fields (for example <c>stem.0.weight</c>); <see cref="Describe"/> lists
/// them with shapes, and the export writes that list beside the weights as <c>*.names.txt</c>.
/// The safetensors header's <c>__metadata__</c> holds what the caller knows of the encoder
/// (architecture, input size, normalisation, probe, method, seed; docs/cli.md lists the keys).
/// </summary>
public static class EncoderExport
{
    public static (string TorchSharp, string SafeTensors, string Names) Save(nn.Module encoder, string directory, string name = "encoder",
                                                                             IReadOnlyDictionary<string, string>? metadata = null)
    {
        Directory.CreateDirectory(directory);
        var dat = Path.Combine(directory, name + ".dat");
        var safetensors = Path.Combine(directory, name + ".safetensors");
        var names = Path.Combine(directory, name + ".names.txt");
        // Each file through a temp file and a rename, so a killed process leaves the previous export whole.
        Ssl.Host.Runs.RunFolder.Guard(dat, "the exported encoder", () =>
        {
            Replace(dat, temp => encoder.save(temp));
            Replace(safetensors, temp => WriteSafetensors(temp, encoder.state_dict(), metadata ?? new Dictionary<string, string>()));
            Replace(names, temp => File.WriteAllLines(temp, Describe(encoder)));
        });
        return (dat, safetensors, names);
    }

    static void Replace(string path, Action<string> write)
    {
        var temp = path + ".tmp";
        try
        {
            write(temp);
            File.Move(temp, path, true);
        }
        catch
        {
            try { File.Delete(temp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }

    /// <summary>
    /// Loads weights <see cref="Save"/> wrote (<c>.dat</c>) into <paramref name="encoder"/>. An export
    /// from before SafeConv2d held its parameters itself names them <c>&lt;layer&gt;.conv.weight</c> and
    /// <c>&lt;layer&gt;.conv.bias</c>; those load into <c>&lt;layer&gt;.weight</c> and <c>&lt;layer&gt;.bias</c>.
    /// </summary>
    public static void Load(nn.Module encoder, string path)
    {
        var state = encoder.state_dict();
        using var file = File.OpenRead(path);
        using var reader = new BinaryReader(file);
        var count = EncoderInit.Leb128(reader);
        var loaded = new HashSet<string>();
        for (long i = 0; i < count; i++)
        {
            var key = reader.ReadString();
            var name = state.ContainsKey(key) ? key : key.Replace(".conv.weight", ".weight").Replace(".conv.bias", ".bias");
            if (!state.TryGetValue(name, out var target))
                throw new ArgumentException($"expected the encoder's tensors ({string.Join(", ", state.Keys.Take(4))}, ...), found '{key}'");
            target.Load(reader);
            loaded.Add(name);
        }
        var missing = state.Keys.Where(k => !loaded.Contains(k)).ToList();
        if (missing.Count > 0) throw new ArgumentException($"expected every tensor of the encoder, found none for {string.Join(", ", missing.Take(4))}");
    }

    /// <summary>
    /// A safetensors file (https://github.com/huggingface/safetensors, "Format"): an 8-byte
    /// little-endian header length, the JSON header (<c>__metadata__</c>, a string-to-string map,
    /// then each tensor's dtype, shape and byte offsets), padded with spaces to a multiple of 8
    /// bytes, then the tensors' bytes in order.
    /// </summary>
    public static void WriteSafetensors(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string> metadata)
    {
        using var scope = NewDisposeScope();
        var stored = tensors.Select(kv => (kv.Key, Tensor: kv.Value.detach().cpu().contiguous())).ToList();
        using var header = new MemoryStream();
        using (var json = new System.Text.Json.Utf8JsonWriter(header))
        {
            json.WriteStartObject();
            json.WriteStartObject("__metadata__");
            foreach (var (key, value) in metadata) json.WriteString(key, value);
            json.WriteEndObject();
            long offset = 0;
            foreach (var (key, tensor) in stored)
            {
                var length = tensor.NumberOfElements * tensor.ElementSize;
                json.WriteStartObject(key);
                json.WriteString("dtype", SafetensorsDType(tensor.dtype));
                json.WriteStartArray("shape");
                foreach (var d in tensor.shape) json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + length);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += length;
            }
            json.WriteEndObject();
        }
        while (header.Length % 8 != 0) header.WriteByte((byte)' ');
        using var file = File.Create(path);
        var headerLength = new byte[8];
        System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(headerLength, header.Length);
        file.Write(headerLength);
        header.WriteTo(file);
        foreach (var (_, tensor) in stored) tensor.WriteBytesToStream(file);
    }

    static string SafetensorsDType(ScalarType dtype) => dtype switch
    {
        ScalarType.Float64 => "F64", ScalarType.Float32 => "F32", ScalarType.Float16 => "F16", ScalarType.BFloat16 => "BF16",
        ScalarType.Int64 => "I64", ScalarType.Int32 => "I32", ScalarType.Int16 => "I16", ScalarType.Int8 => "I8",
        ScalarType.Byte => "U8", ScalarType.Bool => "BOOL",
        _ => throw new ArgumentException($"safetensors: expected a dtype the format stores, found {dtype}"),
    };

    /// <summary>The <c>__metadata__</c> map of a safetensors file's header (empty where it has none).</summary>
    public static Dictionary<string, string> ReadSafetensorsMetadata(string path)
    {
        using var file = File.OpenRead(path);
        using var reader = new BinaryReader(file);
        var length = reader.ReadUInt64();
        if (length > (ulong)file.Length - 8) throw new Ssl.Host.Data.DataException(path, "a safetensors header length within the file", length.ToString());
        using var header = System.Text.Json.JsonDocument.Parse(reader.ReadBytes((int)length));
        var metadata = new Dictionary<string, string>();
        if (header.RootElement.TryGetProperty("__metadata__", out var map))
            foreach (var entry in map.EnumerateObject()) metadata[entry.Name] = entry.Value.GetString() ?? "";
        return metadata;
    }

    /// <summary>One line per state tensor: <c>name dtype [d0, d1, ...]</c>.</summary>
    public static IEnumerable<string> Describe(nn.Module encoder) =>
        encoder.state_dict().Select(kv => $"{kv.Key} {kv.Value.dtype} [{string.Join(", ", kv.Value.shape)}]");
}
