/// `ssl export <run-dir> --format onnx`: the trained encoder of a finished run as an ONNX model
/// (docs/cli.md#ssl-export), at the representation the run's protocols read (config.json's probe),
/// with the run's input standardisation inside the graph and recorded in its metadata; `--format
/// safetensors` names (or copies) the safetensors file `ssl train` wrote.
module Ssl.Experiments.Export

open System
open System.IO
open System.Text.Json.Nodes
open Argu
open Spectre.Console
open Ssl.Host.Export.Onnx
open Ssl.Host.Runtime
open Ssl.Experiments.Cli

/// The commit the run was trained at (result.json's versions.commit), where recorded.
let private trainedCommit (run: TrainedRun.Run) =
    let path = Path.Combine(run.Dir, "result.json")
    if not (File.Exists path) then None
    else
        match JsonNode.Parse(File.ReadAllText path) with
        | :? JsonObject as result ->
            match result["versions"] with
            | :? JsonObject as versions -> TrainedRun.field path versions "commit"
            | _ -> None
        | _ -> None

/// What the model's metadata_props record of the run (besides the input's shape, mean and std).
let metadata (run: TrainedRun.Run) (encoderName: string) =
    let architecture =
        match run.Config["Encoder"] with
        | :? JsonValue as v -> v.GetValue<string>()
        | _ -> encoderName
    [ "architecture", architecture
      "method", run.Recipe.Name
      "probe", string (Probe.OfLayer(run.ProbeLayer, run.ProbePool))
      "preset", (string run.Preset).ToLowerInvariant()
      "dataset", Path.GetFileName(Path.TrimEndingDirectorySeparator run.Dataset)
      "seed", string run.Seed
      "commit", trainedCommit run |> Option.defaultValue "unknown"
      "exported_by", $"ssl {BuildInfo.Described}"
      "opset", string OnnxWriter.Opset ]
    |> List.map (fun (k, v) -> Collections.Generic.KeyValuePair(k, v))

/// `--format safetensors`: the safetensors file `ssl train` wrote (the whole encoder's state dict), copied to --out where given.
let private safetensors (run: TrainedRun.Run) (out: string option) =
    let written = Path.Combine(run.Dir, "export", "encoder.safetensors")
    if not (File.Exists written) then
        raise (Ssl.Host.Data.DataException(written, "the safetensors export `ssl train` writes", "no such file"))
    match out with
    | Some out when Path.GetFullPath out <> written ->
        use target = new Ssl.Host.Export.PendingFile(out)
        using (File.OpenRead written) (fun source -> source.CopyTo target.Stream)
        target.Commit()
        AnsiConsole.MarkupLine $"wrote {Markup.Escape(Path.GetFullPath out)} (a copy of {Markup.Escape written})"
    | _ -> AnsiConsole.MarkupLine $"{Markup.Escape written} (written by `ssl train`)"
    0

/// `--format onnx`: the encoder at the run's probe, its input standardisation inside the graph.
let private onnx (run: TrainedRun.Run) (out: string option) (threads: int option) =
    let out = defaultArg out (Path.Combine(run.Dir, "export", "encoder.onnx"))
    let env = Embed.configure run None threads
    use data = Pipeline.loadData { TrainedRun.request run env.Threads with EvalDataset = None }
    use encoder = Embed.probedEncoder run data env run.ProbeLayer run.ProbePool false
    let started = Diagnostics.Stopwatch.StartNew()
    let train = data.Train
    let inner = match box encoder with :? Ssl.Core.Models.IEncoderView as view -> view.Encoder | _ -> encoder
    let graph =
        EncoderToOnnx.Save(encoder, train.Channels, train.Height, train.Width, data.Mean, data.Std, metadata run (inner.GetType().Name), out,
                           $"ssl {BuildInfo.Described}")
    let features = graph.Outputs[0].Dims[1]
    let probe = string (Probe.OfLayer(run.ProbeLayer, run.ProbePool))
    AnsiConsole.MarkupLine
        $"exported {Markup.Escape run.Recipe.Name}'s encoder at probe {Markup.Escape probe}: images (batch, {train.Channels}, {train.Height}, {train.Width}) -> features (batch, {features}), {graph.Nodes.Count} nodes, opset {OnnxWriter.Opset}, in {started.Elapsed.TotalSeconds:F2} s"
    AnsiConsole.MarkupLine $"wrote {Markup.Escape(Path.GetFullPath out)} ({float (FileInfo(out).Length) / 1048576.0:F1} MiB)"
    0

let export (args: ParseResults<ExportArgs>) =
    let write =
        match args.GetResult ExportArgs.Format with
        | "onnx" -> fun run out -> onnx run out (args.TryGetResult ExportArgs.Threads)
        | "safetensors" -> safetensors
        | other -> invalidArg "--format" $"--format: expected onnx or safetensors, found '{other}'"
    write (TrainedRun.read (args.GetResult ExportArgs.Run_Dir)) (args.TryGetResult ExportArgs.Out)
