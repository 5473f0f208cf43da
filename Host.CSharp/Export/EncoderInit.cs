using System.Collections;
using System.Security.Cryptography;
using Ssl.Core.Models;
using Ssl.Host.Data;
using TorchSharp;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Ssl.Host.Export;

/// <summary>What <see cref="EncoderInit.Load"/> loaded, and what of the file it left aside (for the log).</summary>
public sealed record InitLoad(int Loaded, string Prefix, IReadOnlyList<string> IgnoredHeads, IReadOnlyList<string> IgnoredOutsidePrefix);

/// <summary>
/// Loads weights trained elsewhere into an encoder, by tensor name (<c>ssl train --init FILE</c>).
/// A file is a state dict: PyTorch's <c>torch.save</c> (<c>.pt</c>, <c>.pth</c>; zip format, read by
/// TorchSharp.PyBridge; a checkpoint holding it under <c>state_dict</c> or <c>model</c> is unwrapped),
/// safetensors, or this project's export (<c>.dat</c>). Names match the encoder's
/// <c>state_dict</c> keys as they are, or under one prefix (<c>module.</c>, <c>backbone.</c>,
/// <c>encoder.</c>, any first one or two dotted parts) chosen so that every tensor of the encoder is
/// found; a ResNet18 also reads torchvision's names (<see cref="ResNet18.TorchvisionName"/>).
/// Tensors outside the prefix and torchvision's classifier (<c>fc.*</c>) are left aside and
/// reported; any other mismatch refuses the file in one line.
/// </summary>
public static class EncoderInit
{
    /// <summary>The file's extensions, for messages.</summary>
    public const string Formats = ".pt/.pth (torch.save), .safetensors or .dat (ssl's export)";

    /// <summary>How many names of each kind a refusal lists.</summary>
    const int Listed = 4;

    /// <summary>The SHA-256 of the file's bytes, lower-case hex (config.json records it).</summary>
    public static string Sha256(string path)
    {
        using var file = File.OpenRead(path);
        return Convert.ToHexString(SHA256.HashData(file)).ToLowerInvariant();
    }

    /// <summary>
    /// Copies the file's tensors into <paramref name="encoder"/>'s parameters and buffers (on their
    /// device, in their dtype). <paramref name="architecture"/> names the encoder in a refusal, a
    /// <see cref="DataException"/> naming the file and listing the missing, unexpected and mis-shaped
    /// tensors (a few of each, with counts). A missing <c>num_batches_tracked</c> is no mismatch
    /// (it does not change what the encoder computes).
    /// </summary>
    public static InitLoad Load(nn.Module encoder, string path, string architecture)
    {
        if (!File.Exists(path)) throw new DataException(path, $"a state dict file ({Formats})", "no such file");
        var state = encoder.state_dict();
        var file = ReadStateDict(path);
        try
        {
            Func<string, string> rename = encoder is ResNet18 ? ResNet18.TorchvisionName : name => name;
            var match = Candidates(file.Keys).Select(prefix => Match(prefix, file, state, rename))
                .OrderBy(m => m.Missing.Count).ThenBy(m => m.Prefix.Length)
                .First();
            if (match.Missing.Count + match.Unexpected.Count + match.Misshaped.Count > 0)
            {
                var parts = new List<string>();
                if (match.Missing.Count > 0) parts.Add($"{match.Missing.Count} missing ({List(match.Missing)})");
                if (match.Unexpected.Count > 0) parts.Add($"{match.Unexpected.Count} unexpected ({List(match.Unexpected)})");
                if (match.Misshaped.Count > 0) parts.Add($"{match.Misshaped.Count} mis-shaped ({List(match.Misshaped)})");
                var under = match.Prefix.Length > 0 ? $" under '{match.Prefix}'" : "";
                throw new DataException(path, $"the tensors of a {architecture} encoder ({state.Count} by name and shape)", $"{string.Join(", ", parts)}{under}");
            }
            using (no_grad())
                foreach (var (target, source) in match.Pairs) state[target].copy_(file[source]);
            var outside = file.Keys.Where(k => !k.StartsWith(match.Prefix, StringComparison.Ordinal)).ToList();
            return new InitLoad(match.Pairs.Count, match.Prefix, match.Heads, outside);
        }
        finally
        {
            foreach (var t in file.Values) t.Dispose();
        }
    }

    /// <summary>The file's tensors by name, on the CPU, by its extension (<see cref="Formats"/>).</summary>
    public static Dictionary<string, Tensor> ReadStateDict(string path)
    {
        var extension = Path.GetExtension(path).ToLowerInvariant();
        try
        {
            return extension switch
            {
                ".pt" or ".pth" => ReadPickled(path),
                ".safetensors" => Safetensors.LoadStateDict(path),
                ".dat" => ReadTorchSharp(path),
                _ => throw new DataException(path, $"a state dict file ({Formats})", $"the extension '{extension}'"),
            };
        }
        catch (Exception e) when (e is not DataException and not OutOfMemoryException)
        {
            var what = extension == ".dat" ? "a state dict saved by TorchSharp's module.save" : $"a {extension} state dict";
            throw new DataException(path, what, $"{e.GetType().Name}: {e.Message.Split('\n')[0]}", e);
        }
    }

    /// <summary>
    /// A <c>torch.save</c> file: its dict of tensors, or the dict it holds under <c>state_dict</c> or
    /// <c>model</c> (training checkpoints); entries that are not tensors are left out.
    /// </summary>
    static Dictionary<string, Tensor> ReadPickled(string path)
    {
        var table = PyTorchUnpickler.UnpickleStateDict(path);
        foreach (var key in new[] { "state_dict", "model" })
            if (table[key] is Hashtable inner) { Dispose(table, except: inner); table = inner; break; }
        var tensors = new Dictionary<string, Tensor>();
        foreach (DictionaryEntry entry in table)
            if (entry.Key is string name && entry.Value is Tensor t) tensors[name] = t;
        Dispose(table, except: null, keep: tensors.Values.ToHashSet());
        return tensors;
    }

    static void Dispose(Hashtable table, Hashtable? except, HashSet<Tensor>? keep = null)
    {
        foreach (DictionaryEntry entry in table)
        {
            if (entry.Value is Tensor t && (keep is null || !keep.Contains(t))) t.Dispose();
            else if (entry.Value is Hashtable inner && !ReferenceEquals(inner, except)) Dispose(inner, null);
        }
    }

    /// <summary>
    /// TorchSharp's <c>module.save</c> format: an unsigned LEB128 count, then per tensor its name (a
    /// .NET string), dtype, rank and sizes (LEB128) and its bytes.
    /// </summary>
    static Dictionary<string, Tensor> ReadTorchSharp(string path)
    {
        using var stream = File.OpenRead(path);
        using var reader = new BinaryReader(stream);
        var tensors = new Dictionary<string, Tensor>();
        var count = Leb128(reader);
        for (long i = 0; i < count; i++)
        {
            var name = reader.ReadString();
            var dtype = (ScalarType)Leb128(reader);
            var shape = new long[Leb128(reader)];
            for (var d = 0; d < shape.Length; d++) shape[d] = Leb128(reader);
            var tensor = empty(shape, dtype);
            tensor.ReadBytesFromStream(stream);
            tensors[name] = tensor;
        }
        return tensors;
    }

    /// <summary>An unsigned LEB128 number, as TorchSharp's format writes counts, dtypes and sizes.</summary>
    internal static long Leb128(BinaryReader reader)
    {
        long value = 0;
        for (var shift = 0; ; shift += 7)
        {
            var b = reader.ReadByte();
            value |= (long)(b & 0x7F) << shift;
            if ((b & 0x80) == 0) return value;
        }
    }

    sealed record Matching(string Prefix, List<(string Target, string Source)> Pairs, List<string> Missing,
                           List<string> Unexpected, List<string> Misshaped, List<string> Heads);

    /// <summary>The prefixes names may carry: none, and each name's first one and two dotted parts.</summary>
    static IEnumerable<string> Candidates(IEnumerable<string> names)
    {
        var prefixes = new List<string> { "" };
        foreach (var name in names)
        {
            var parts = name.Split('.');
            for (var n = 1; n <= 2 && n < parts.Length; n++)
            {
                var prefix = string.Join('.', parts.Take(n)) + ".";
                if (!prefixes.Contains(prefix)) prefixes.Add(prefix);
            }
        }
        return prefixes;
    }

    /// <summary>The file's tensors under <paramref name="prefix"/> matched to the encoder's by name and shape.</summary>
    static Matching Match(string prefix, Dictionary<string, Tensor> file, Dictionary<string, Tensor> state, Func<string, string> rename)
    {
        var pairs = new List<(string, string)>();
        var unexpected = new List<string>();
        var misshaped = new List<string>();
        var heads = new List<string>();
        var found = new HashSet<string>();
        foreach (var (source, tensor) in file)
        {
            if (!source.StartsWith(prefix, StringComparison.Ordinal)) continue;
            var name = source[prefix.Length..];
            var target = state.ContainsKey(name) ? name : rename(name);
            if (!state.TryGetValue(target, out var own))
            {
                if (name.StartsWith("fc.", StringComparison.Ordinal)) heads.Add(source);
                else unexpected.Add(source);
                continue;
            }
            found.Add(target);
            if (own.shape.SequenceEqual(tensor.shape)) pairs.Add((target, source));
            else misshaped.Add($"{source} [{string.Join(", ", tensor.shape)}] for [{string.Join(", ", own.shape)}]");
        }
        var missing = state.Keys.Where(k => !found.Contains(k) && !k.EndsWith("num_batches_tracked", StringComparison.Ordinal)).ToList();
        return new Matching(prefix, pairs, missing, unexpected, misshaped, heads);
    }

    static string List(List<string> names) =>
        string.Join(", ", names.Take(Listed)) + (names.Count > Listed ? ", ..." : "");
}
