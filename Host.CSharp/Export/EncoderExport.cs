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
/// </summary>
public static class EncoderExport
{
    public static (string TorchSharp, string SafeTensors, string Names) Save(nn.Module encoder, string directory, string name = "encoder")
    {
        Directory.CreateDirectory(directory);
        var dat = Path.Combine(directory, name + ".dat");
        var safetensors = Path.Combine(directory, name + ".safetensors");
        var names = Path.Combine(directory, name + ".names.txt");
        // Each file through a temp file and a rename, so a killed process leaves the previous export whole.
        Ssl.Host.Runs.RunFolder.Guard(dat, "the exported encoder", () =>
        {
            Replace(dat, temp => encoder.save(temp));
            Replace(safetensors, temp => encoder.save_safetensors(temp));
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
        var count = DecodeCount(reader);
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

    /// <summary>The entry count TorchSharp's format starts with: an unsigned LEB128 number.</summary>
    static long DecodeCount(BinaryReader reader)
    {
        long value = 0;
        for (var shift = 0; ; shift += 7)
        {
            var b = reader.ReadByte();
            value |= (long)(b & 0x7F) << shift;
            if ((b & 0x80) == 0) return value;
        }
    }

    /// <summary>One line per state tensor: <c>name dtype [d0, d1, ...]</c>.</summary>
    public static IEnumerable<string> Describe(nn.Module encoder) =>
        encoder.state_dict().Select(kv => $"{kv.Key} {kv.Value.dtype} [{string.Join(", ", kv.Value.shape)}]");
}
