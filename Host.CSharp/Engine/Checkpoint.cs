using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace Ssl.Host.Engine;

/// <summary>Where training stands, stored with the weights.</summary>
/// <remarks>
/// The time and images of the epochs behind it (<paramref name="TrainingSeconds"/>, <paramref name="WallSeconds"/>,
/// <paramref name="ImagesSeen"/>, <paramref name="PeakRssMb"/>) travel with it, so a resumed run reports
/// the whole training's figures, not those of its last process. Older checkpoints read them as 0.
/// </remarks>
public sealed record TrainingPosition(int NextEpoch, long GlobalStep, long Seed, string ConfigDigest,
                                      double TrainingSeconds = 0, double WallSeconds = 0, long ImagesSeen = 0, double PeakRssMb = 0);

/// <summary>
/// One file holding a run's whole state: position (epoch, step, seed), every module, every
/// optimizer (momentum buffers, Adam moments, learning rates), long-lived tensors (queues, memory
/// banks) and torch's global generator. The data order needs no storing: it is a function of (seed,
/// epoch). Written to a temp file, flushed to disk, then renamed over the old one, so a crash (even
/// kill -9) during the write leaves the previous checkpoint whole.
/// </summary>
public static class Checkpoint
{
    const string Magic = "SSL-CKPT-1";

    public static void Save(string path, TrainingPosition position, ITrainingStep step, IReadOnlyDictionary<string, TrainingOptimizer> optimizers)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        var temp = path + ".tmp";
        try { Write(temp, position, step, optimizers); }
        catch (Exception e)
        {
            try { File.Delete(temp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            if (e is IOException or UnauthorizedAccessException)
                throw new Ssl.Host.Runs.RunFolderException(path, "to write the checkpoint",
                    $"{Ssl.Host.Runs.RunFolder.Reason(e)} (the previous checkpoint, if any, is kept; free space and resume with --resume)", e);
            throw;
        }
        File.Move(temp, path, true);
    }

    static void Write(string temp, TrainingPosition position, ITrainingStep step, IReadOnlyDictionary<string, TrainingOptimizer> optimizers)
    {
        using (var file = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None))
        using (var writer = new BinaryWriter(file))
        {
            writer.Write(Magic);
            writer.Write(JsonSerializer.Serialize(position));
            foreach (var (name, module) in step.Modules.OrderBy(m => m.Key, StringComparer.Ordinal))
            {
                writer.Write(name);
                module.save(writer);
            }
            writer.Flush();
            Runtime.FaultInjection.At("checkpoint-write");
            foreach (var (name, optimizer) in optimizers.OrderBy(o => o.Key, StringComparer.Ordinal))
            {
                writer.Write(name);
                ((TorchSharp.Modules.OptimizerHelper)optimizer.Optimizer).save_state_dict(writer);
            }
            foreach (var (name, tensor) in step.State.OrderBy(s => s.Key, StringComparer.Ordinal))
            {
                writer.Write(name);
                tensor.Save(writer);
            }
            using (var rng = get_rng_state()) rng.Save(writer);
            writer.Flush();
            file.Flush(flushToDisk: true);
        }
    }

    /// <summary>Restores everything <see cref="Save"/> wrote into the given (freshly built) step and optimizers.</summary>
    public static TrainingPosition Load(string path, ITrainingStep step, IReadOnlyDictionary<string, TrainingOptimizer> optimizers)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: expected a checkpoint, found no file", path);
        try { return Read(path, step, optimizers); }
        catch (Exception e) when (e is EndOfStreamException or IOException or FormatException or JsonException or ArgumentException
                                      or InvalidOperationException or System.Runtime.InteropServices.ExternalException or OverflowException)
        {
            var first = e.Message.Split('\n', 2)[0].Trim();
            throw new InvalidDataException($"{path}: expected a whole checkpoint of this run's modules and optimizers, found a file that does not read as one ({first}); " +
                                           "resume from another copy, or start again without --resume", e);
        }
    }

    /// <summary>The position alone (no weights): where a checkpoint stands, for checks before a resume.</summary>
    public static TrainingPosition ReadPosition(string path)
    {
        try
        {
            using var file = File.OpenRead(path);
            using var reader = new BinaryReader(file);
            return ReadHeader(path, reader);
        }
        catch (Exception e) when (e is EndOfStreamException or IOException or FormatException or JsonException)
        {
            throw new InvalidDataException($"{path}: expected a checkpoint written by `ssl train`, found a file that does not read as one ({e.Message.Split('\n', 2)[0]})", e);
        }
    }

    /// <summary>At most 40 characters of <paramref name="text"/>, non-printing ones as '?', for messages about foreign bytes.</summary>
    static string Printable(string text)
    {
        var clean = new string(text.Take(40).Select(ch => char.IsControl(ch) || char.IsSurrogate(ch) || ch == '\uFFFD' ? '?' : ch).ToArray());
        return text.Length > 40 ? $"'{clean}...'" : $"'{clean}'";
    }

    /// <summary>The magic string and the position that start every checkpoint.</summary>
    static TrainingPosition ReadHeader(string path, BinaryReader reader)
    {
        string magic;
        try { magic = reader.ReadString(); }
        catch (EndOfStreamException) { magic = "(an empty file)"; }
        if (magic != Magic) throw new InvalidDataException($"{path}: expected a checkpoint starting with {Magic}, found {Printable(magic)}");
        return JsonSerializer.Deserialize<TrainingPosition>(reader.ReadString())
               ?? throw new InvalidDataException($"{path}: expected a training position, found null");
    }

    static TrainingPosition Read(string path, ITrainingStep step, IReadOnlyDictionary<string, TrainingOptimizer> optimizers)
    {
        using var file = File.OpenRead(path);
        using var reader = new BinaryReader(file);
        var position = ReadHeader(path, reader);
        foreach (var (name, module) in step.Modules.OrderBy(m => m.Key, StringComparer.Ordinal))
        {
            Expect(path, reader.ReadString(), name);
            module.load(reader);
        }
        foreach (var (name, optimizer) in optimizers.OrderBy(o => o.Key, StringComparer.Ordinal))
        {
            Expect(path, reader.ReadString(), name);
            ((TorchSharp.Modules.OptimizerHelper)optimizer.Optimizer).load_state_dict(reader);
        }
        foreach (var (name, tensor) in step.State.OrderBy(s => s.Key, StringComparer.Ordinal))
        {
            Expect(path, reader.ReadString(), name);
            using var noGrad = no_grad();
            tensor.Load(reader);
        }
        using (var rng = get_rng_state())
        {
            rng.Load(reader);
            set_rng_state(rng);
        }
        return position;
    }

    static void Expect(string path, string found, string expected)
    {
        if (found != expected)
            throw new InvalidDataException($"{path}: expected the state of '{expected}', found '{found}' (was the checkpoint written by another recipe?)");
    }
}
