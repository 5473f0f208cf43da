using Parquet;
using Parquet.Schema;

namespace Ssl.Host.Export;

/// <summary>
/// Writes one row per image as Parquet (Parquet.Net): <c>index</c> int64 (the row's index in its
/// split), <c>file</c> string (an image folder's file; null for the built-in sets), <c>split</c>
/// string, <c>label</c> int32 (null for unlabelled images) and <c>embedding</c>, a list of float32
/// (Parquet's LIST of required floats). Rows are buffered and written a row group at a time; the
/// file goes to <c>path.tmp</c> and <see cref="Commit"/> renames it into place (docs/cli.md#using-a-trained-encoder).
/// </summary>
public sealed class EmbeddingParquet : IDisposable
{
    public static readonly DataField<long> Index = new("index");
    public static readonly DataField<string> File = new("file");
    public static readonly DataField<string> Split = new("split");
    public static readonly DataField<int?> Label = new("label");
    public static readonly DataField<float> Element = new(ListField.ElementName, nullable: false);
    public static readonly ParquetSchema Schema = new(Index, File, Split, Label, new ListField("embedding", Element));

    readonly PendingFile pending;
    readonly ParquetWriter writer;
    readonly int rowGroupRows;
    readonly List<long> indices = new();
    readonly List<string?> files = new();
    readonly List<string?> splits = new();
    readonly List<int?> labels = new();
    readonly List<float> values = new();
    readonly List<int> starts = new();
    bool committed;

    /// <param name="rowGroupRows">rows per row group: readers load a row group at a time.</param>
    public EmbeddingParquet(string path, int rowGroupRows = 16384)
    {
        this.rowGroupRows = rowGroupRows;
        pending = new PendingFile(path, FileAccess.ReadWrite);
        writer = ParquetWriter.CreateAsync(Schema, pending.Stream).GetAwaiter().GetResult();
    }

    /// <summary>Rows appended so far.</summary>
    public long Rows { get; private set; }

    /// <summary>Appends one image's row.</summary>
    public void Append(long index, string? file, string split, int? label, ReadOnlySpan<float> embedding)
    {
        indices.Add(index);
        files.Add(file);
        splits.Add(split);
        labels.Add(label);
        starts.Add(values.Count);
        foreach (var v in embedding) values.Add(v);
        Rows++;
        if (indices.Count >= rowGroupRows) Flush();
    }

    void Flush()
    {
        if (indices.Count == 0) return;
        // A list's values carry repetition level 0 where a row starts and 1 within it; every value is
        // present (definition level at the element's maximum): no list and no element is null.
        var repetition = new int[values.Count];
        Array.Fill(repetition, 1);
        foreach (var s in starts)
        {
            if (s == values.Count) throw new ArgumentException("embedding: expected at least one value per row, found an empty one");
            repetition[s] = 0;
        }
        var definition = new int[values.Count];
        Array.Fill(definition, Element.MaxDefinitionLevel);
        using (var group = writer.CreateRowGroup())
        {
            group.WriteAsync(Index, new ReadOnlyMemory<long>(indices.ToArray())).GetAwaiter().GetResult();
            group.WriteAsync(File, files).GetAwaiter().GetResult();
            group.WriteAsync(Split, splits).GetAwaiter().GetResult();
            group.WriteAsync(Label, new ReadOnlyMemory<int?>(labels.ToArray())).GetAwaiter().GetResult();
            group.WriteAllPartsAsync(Element, new ReadOnlyMemory<float>(values.ToArray()), new ReadOnlyMemory<int>(definition),
                new ReadOnlyMemory<int>(repetition), default).GetAwaiter().GetResult();
            group.CompleteValidate();
        }
        indices.Clear();
        files.Clear();
        splits.Clear();
        labels.Clear();
        values.Clear();
        starts.Clear();
    }

    /// <summary>Writes the last row group and the footer, then renames the file into place.</summary>
    public void Commit()
    {
        Flush();
        writer.DisposeAsync().AsTask().GetAwaiter().GetResult();
        pending.Commit();
        committed = true;
    }

    public void Dispose()
    {
        if (committed) return;
        try { writer.DisposeAsync().AsTask().GetAwaiter().GetResult(); } catch (Exception) { }
        pending.Dispose();
    }
}
