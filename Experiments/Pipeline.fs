/// What every recipe shares around its training step: the data, the protocols of DESIGN.md
/// (linear probe, kNN, few-label probe), the baselines beside every result, and the report.
[<AutoOpen>]
module Ssl.Experiments.Pipeline

open System
open System.IO
open System.Collections.Generic
open System.Text.Json
open System.Text.Json.Nodes
open TorchSharp
open Ssl.Core.Models
open Ssl.Host.Data
open Ssl.Host.Eval
open Ssl.Host.Reporting
open Ssl.Host.Runs
open Ssl.Host.Runtime
open Ssl.Experiments.Recipe

/// Train and test sets with the training set's per-channel statistics (for standardising inputs).
type Data =
    { Train: ImageDataset
      Test: ImageDataset
      Mean: float[]
      Std: float[]
      Classes: int
      /// The labelled set `--eval-dataset` names, which the protocols and baselines read instead of
      /// this one; its Mean and Std are this (training) set's, so the encoder sees its inputs as trained.
      Eval: Data option }
    member d.Name = d.Train.Name
    /// The set the protocols and baselines read: the evaluation set, else this one when labelled;
    /// None for an unlabelled set without one (no probe is run).
    member d.Probed = match d.Eval with Some e -> Some e | None -> if d.Train.IsLabelled then Some d else None

    interface IDisposable with
        member d.Dispose() =
            d.Train.Dispose()
            if not (Object.ReferenceEquals(d.Train, d.Test)) then d.Test.Dispose()
            d.Eval |> Option.iter (fun e -> (e :> IDisposable).Dispose())

/// The share of undecodable files of an image folder above which a run stops before training.
let badFileLimit = 0.01

let private folderOptions (request: Request) (channels: int option) =
    ImageFolderOptions(Size = Option.toNullable request.ImageSize, Channels = Option.toNullable channels,
                       MemoryBudgetMb = Nullable request.DataMemoryMb, Layout = request.Layout,
                       Workers = (if request.Workers > 0 then request.Workers else Environment.ProcessorCount))

/// Train and test splits of one data set; `smoke` keeps the first 2,000 training and 1,000 test
/// images. `channels`: what an image folder is converted to (an evaluation set takes the training set's).
let private readSplitsOf (request: Request) (dataset: string) (channels: int option) =
    let root = Option.toObj request.DataRoot
    if request.ImageSize.IsSome && not (DataCatalog.IsFolder dataset) then
        invalidArg "--image-size" $"--image-size: resizes image folders at load; '{dataset}' is a built-in set of one size"
    let train = DataCatalog.Load(dataset, Split.Train, root, folder = folderOptions request channels)
    let channels = if DataCatalog.IsFolder dataset then Some(int train.Channels) else channels
    // An image folder read as one set (not train/ + val/ trees) serves both splits: decoded once.
    let test =
        if DataCatalog.IsFolder dataset && (ImageFolder.ChooseLayout(dataset, request.Layout)).Layout <> FolderLayout.Split then train
        else DataCatalog.Load(dataset, Split.Test, root, folder = folderOptions request channels)
    for d in (if Object.ReferenceEquals(train, test) then [ train ] else [ train; test ]) do
        if not (isNull d.LayoutNote) then eprintfn "data: %s" d.LayoutNote
    match request.Preset with
    | Smoke ->
        let first (d: ImageDataset) n = d.Subset(Array.init (int (min n d.Count)) int64)
        let kept = first train 2000L, first test 1000L
        train.Dispose()
        if not (Object.ReferenceEquals(train, test)) then test.Dispose()
        kept
    | _ -> train, test

/// readSplitsOf, its messages naming `flag` (the catalogue names --dataset; the evaluation set is --eval-dataset).
let readSplits (request: Request) (dataset: string) (channels: int option) (flag: string) =
    try readSplitsOf request dataset channels
    with :? ArgumentException as e when flag <> "--dataset" && e.Message.StartsWith "--dataset:" ->
        invalidArg flag (flag + e.Message.Substring("--dataset".Length))

/// Reads the data set (and the evaluation set `--eval-dataset` names, converted to the training
/// set's channels and checked against its image size).
let loadData (request: Request) =
    let train, test = readSplits request request.Dataset None "--dataset"
    let struct (mean, std) = train.ChannelStatistics()
    let eval =
        request.EvalDataset
        |> Option.map (fun name ->
            let etrain, etest = readSplits request name (Some(int train.Channels)) "--eval-dataset"
            let shape (d: ImageDataset) = $"{d.Channels}x{d.Height}x{d.Width}"
            if (etrain.Height, etrain.Width) <> (train.Height, train.Width) then
                invalidArg "--eval-dataset"
                    $"--eval-dataset: expected images of the training set's {shape train}, found {shape etrain} in '{name}' (give both --image-size N)"
            if not etrain.IsLabelled || not etest.IsLabelled then
                invalidArg "--eval-dataset" $"--eval-dataset: expected a labelled set (a class tree or a built-in set), found unlabelled images in '{name}'"
            { Train = etrain; Test = etest; Mean = mean; Std = std; Classes = etrain.ClassNames.Count; Eval = None })
    { Train = train; Test = test; Mean = mean; Std = std; Classes = train.ClassNames.Count; Eval = eval }

/// Writes the undecodable files to <run>/data_errors.txt as `path<TAB>reason` lines, when there are
/// some; returns the file's path.
let writeSkipped (folder: RunFolder) (skipped: struct (string * string) list) =
    let path = Path.Combine(folder.Root, "data_errors.txt")
    if not skipped.IsEmpty then
        RunFolder.WriteAtomically(path, String.Join("\n", skipped |> List.map (fun struct (p, why) -> $"{p}\t{why}")) + "\n")
        eprintfn "data: %d image files could not be decoded and are skipped (listed in %s)" skipped.Length path
    path

/// The image files of the data sets that could not be decoded; more than `badFileLimit` of a set's
/// files stops the run before training, with the first ten named, and the whole list written to
/// data_errors.txt only when the folder holds no run (a run's own files are never replaced by a
/// refused one).
let checkSkipped (folder: RunFolder) (data: Data) =
    let sets = [ data.Train; data.Test ] @ (data.Eval |> Option.map (fun e -> [ e.Train; e.Test ]) |> Option.defaultValue [])
    let skipped = sets |> List.collect (fun d -> List.ofSeq d.Skipped) |> List.distinct
    for d in sets do
        let share = float d.Skipped.Count / float (max 1L d.FilesSeen)
        if share > badFileLimit then
            let first = d.Skipped |> Seq.truncate 10 |> Seq.map (fun struct (p, why) -> $"{p} ({why})") |> String.concat "; "
            let listed = if folder.State = RunState.Empty then $"; all in {writeSkipped folder skipped}" else ""
            raise (DataException($"{d.Name} ({d.Split})", $"at most {badFileLimit:P0} undecodable files",
                                 $"{d.Skipped.Count} of {d.FilesSeen} ({share:P1}); the first: {first}{listed}"))
    skipped

/// What config.json's "data" holds of what was read: the channels (an image folder's majority, or
/// what it was converted to), image size, image counts, labels and undecodable files, and the same
/// of the evaluation set.
let describeData (data: Data) : JsonNode =
    let describe (d: Data) =
        JsonSerializer.SerializeToNode
            {| name = d.Name; channels = d.Train.Channels; height = d.Train.Height; width = d.Train.Width
               train_images = d.Train.Count; test_images = d.Test.Count; labelled = d.Train.IsLabelled; streamed = d.Train.IsStreamed
               classes = (if d.Train.IsLabelled then d.Classes else 0)
               skipped_files = Seq.append d.Train.Skipped d.Test.Skipped |> Seq.distinct |> Seq.length |}
    let described = describe data
    data.Eval |> Option.iter (fun e -> described["eval"] <- describe e)
    described

/// Training images at `batch` (indices) as float32 pixel values in [0, 1] on `device`, for
/// augmentations defined on pixel values (brightness, contrast, Lab); `standardise` afterwards.
let unitPixels (data: Data) (batch: int64[]) (device: torch.Device) =
    use images = data.Train.Batch batch
    Features.ToInput(images, Array.zeroCreate data.Mean.Length, Array.create data.Std.Length 1.0, device)

/// [0, 1] pixel values (N, C, H, W) standardised with the training set's per-channel statistics, as
/// `Features.ToInput` does for evaluation.
let standardise (data: Data) (pixels: torch.Tensor) =
    use scope = torch.NewDisposeScope()
    let channels = int64 data.Mean.Length
    let mean = torch.tensor(data.Mean, dtype = pixels.dtype, device = pixels.device).view(1L, channels, 1L, 1L)
    let std = torch.tensor(data.Std, dtype = pixels.dtype, device = pixels.device).view(1L, channels, 1L, 1L)
    ((pixels - mean) / std).MoveToOuterDisposeScope()

/// The few-label budgets every result reports (DESIGN.md): N labels per class.
let fewLabelBudgets = [ 10; 100 ]

/// How much optimisation the evaluation spends: `smoke` only proves the wiring.
type EvalBudget =
    { ProbeIterations: int
      TsnePoints: int64
      TsneIterations: int }

let evalBudget preset =
    match preset with
    | Smoke -> { ProbeIterations = 60; TsnePoints = 300L; TsneIterations = 250 }
    | _ -> { ProbeIterations = 300; TsnePoints = 1000L; TsneIterations = 750 }

/// The fewest training images of any class of a labelled set, with that class's name.
let smallestClass (data: Data) =
    let counts = data.Train.ClassCounts()
    if counts.Length = 0 then 0L, "(none)"
    else
        let c = Array.IndexOf(counts, Array.min counts)
        counts[c], data.Train.ClassNames[c]

/// The few-label budgets (fewLabelBudgets) every class of `data` can serve, and a note for each one
/// left out (result.json's "notes"; its figure stays null).
let feasibleBudgets (data: Data) =
    let smallest, name = smallestClass data
    let fits, left = fewLabelBudgets |> List.partition (fun n -> int64 n <= smallest)
    fits, [ for n in left -> $"few_label_linear_acc {n}: not run, class '{name}' of {data.Name} has {smallest} training images (fewer than {n} per class)" ]

/// Linear probe, kNN and few-label linear probes (at `budgets` labels per class; the others of
/// fewLabelBudgets are null) of an encoder's frozen features.
let evaluateFeatures (budget: EvalBudget) (budgets: int list) (data: Data) (seed: int64) (trainFeatures: torch.Tensor) (testFeatures: torch.Tensor) =
    let probe =
        LinearProbe.Evaluate(trainFeatures, data.Train.Labels, testFeatures, data.Test.Labels, data.Classes, seed, budget.ProbeIterations)
    let knn = Knn.Accuracy(trainFeatures, data.Train.Labels, testFeatures, data.Test.Labels, data.Classes)
    let few = Collections.Generic.Dictionary<string, Nullable<float>>()
    for n in fewLabelBudgets do few[string n] <- Nullable()
    for n in budgets do
        let split = LabelSplitter.Draw(data.Train, n, seed)
        use idx = torch.tensor(split.Labelled)
        use x = trainFeatures.index_select(0L, idx)
        use y = data.Train.Labels.index_select(0L, idx)
        few[string n] <- Nullable(LinearProbe.Evaluate(x, y, testFeatures, data.Test.Labels, data.Classes, seed, budget.ProbeIterations).TestAccuracy)
    probe.TestAccuracy, knn, few

/// Features of train and test under a frozen encoder.
let extract (encoder: Encoder) (data: Data) (device: torch.Device) =
    Features.Extract(encoder, data.Train, data.Mean, data.Std, device),
    Features.Extract(encoder, data.Test, data.Mean, data.Std, device)

/// A figure that does not depend on the method (a baseline), computed once per key and kept as
/// JSON in runs/.cache beside the run folders, since every recipe on the same protocol shares it.
let cached<'T> (request: Request) (key: string) (compute: unit -> 'T) : 'T =
    let cacheDir = Path.Combine(Path.GetDirectoryName(Path.GetFullPath request.Out), ".cache")
    let cache = Path.Combine(cacheDir, key + ".json")
    let stored =
        if File.Exists cache then
            // A cache file that does not read back (cut short, edited) is computed again.
            try Some(JsonSerializer.Deserialize<'T>(File.ReadAllText cache)) with :? JsonException -> None
        else None
    match stored with
    | Some value when not (isNull (box value)) -> value
    | _ ->
        let value = compute ()
        Directory.CreateDirectory cacheDir |> ignore
        RunFolder.WriteAtomically(cache, JsonSerializer.Serialize value)
        value

/// Runs `work`, one phase of the evaluation after training, between a line naming it and its time,
/// so no minute passes without a word (docs/reliability.md).
let phase (name: string) (work: unit -> 'T) : 'T =
    eprintfn "eval: %s ..." name
    let clock = Diagnostics.Stopwatch.StartNew()
    let result = work ()
    eprintfn "eval: %s done in %.1f s" name clock.Elapsed.TotalSeconds
    result

/// Figures of the baselines that do not depend on the method: the randomly initialised encoder
/// (cached per data set, preset, encoder and seed) and raw pixels (cached per data set, preset and
/// seed: every encoder shares it), through the same protocols.
let protocolBaselines (request: Request) (data: Data) (name: string) (encoderName: string) (makeEncoder: unit -> Encoder) (device: torch.Device) =
    let budget = evalBudget request.Preset
    let randomInit =
        cached request $"random-init-{name}-{Preset.name request.Preset}-{encoderName}-seed{request.Seed}" (fun () ->
          phase "random-init baseline (features, linear probe, kNN)" (fun () ->
            torch.manual_seed(request.Seed) |> ignore
            use random = makeEncoder ()
            random.``to``(device) |> ignore
            let rtr, rte = extract random data device
            use rtr = rtr
            use rte = rte
            let rProbe, rKnn, _ = evaluateFeatures budget [] data request.Seed rtr rte
            ProtocolFigures(LinearProbeAcc = Nullable rProbe, KnnAcc = Nullable rKnn)))
    let rawPixels =
        if data.Train.IsStreamed || data.Test.IsStreamed then
            eprintfn "raw-pixel baseline not run: %s is streamed from its files (over --data-memory-mb), and its pixels as features would not fit either" data.Name
            ProtocolFigures()
        else
            cached request $"raw-pixels-{name}-{Preset.name request.Preset}-seed{request.Seed}" (fun () ->
              phase "raw-pixel baseline (linear probe, kNN)" (fun () ->
                use ptr = Features.RawPixels data.Train.Images
                use pte = Features.RawPixels data.Test.Images
                let pProbe = LinearProbe.Evaluate(ptr, data.Train.Labels, pte, data.Test.Labels, data.Classes, request.Seed, budget.ProbeIterations).TestAccuracy
                let pKnn = Knn.Accuracy(ptr, data.Train.Labels, pte, data.Test.Labels, data.Classes)
                ProtocolFigures(LinearProbeAcc = Nullable pProbe, KnnAcc = Nullable pKnn)))
    [| randomInit; rawPixels |]

/// Steps per epoch of a finished run (its total steps over its epochs), the x scale of its curves.
let stepsPerEpoch (train: TrainFigures) = if train.Epochs > 0 then max 1.0 (float train.Steps / float train.Epochs) else 1.0

/// The figures of metrics.jsonl to draw, each as (name, step logs, epoch means): the logged steps
/// at x = global step / `stepsPerEpoch` (so a one-epoch run still shows its course) and each epoch's
/// mean at x = epoch + 1, where that epoch's last step lands. Bookkeeping keys are left out.
let curveSeries (stepsPerEpoch: float) (metrics: IReadOnlyList<JsonObject>) : (string * (float[] * float[]) * (float[] * float[])) list =
    let epochs = metrics |> Seq.filter (fun r -> r.ContainsKey "summary") |> Seq.toArray
    let steps = metrics |> Seq.filter (fun r -> not (r.ContainsKey "summary") && r.ContainsKey "step") |> Seq.toArray
    let value (r: JsonObject) (key: string) = if r.ContainsKey key then r[key].GetValue<float>() else nan
    let keys =
        Seq.append epochs steps |> Seq.collect (fun r -> r |> Seq.map (fun kv -> kv.Key)) |> Seq.distinct
        |> Seq.filter (fun k -> not (List.contains k [ "epoch"; "step"; "summary"; "images_per_s"; "rss_mb"; "peak_rss_mb"; "live_tensors" ]))
        |> Seq.toList
    let stepX = steps |> Array.map (fun r -> value r "step" / stepsPerEpoch)
    let epochX = epochs |> Array.map (fun r -> value r "epoch" + 1.0)
    [ for key in keys -> key, (stepX, steps |> Array.map (fun r -> value r key)), (epochX, epochs |> Array.map (fun r -> value r key)) ]

/// Loss (and any other logged figure) over training as PNG curves in plots/: the logged steps and
/// the epoch means; a group of figures `<group>/<member>` in one figure; resident memory after each epoch.
let plotCurves (folder: RunFolder) (train: TrainFigures) =
    let metrics = folder.ReadMetrics()
    let series = curveSeries (stepsPerEpoch train) metrics
    for key, (stepX, stepY), (epochX, epochY) in series |> List.filter (fun (key, _, _) -> not (key.Contains '/')) do
        Plots.Curves(Path.Combine(folder.PlotsDir, $"{key}.png"), key, "epoch", key,
                     readOnlyDict [ "logged steps", struct (stepX, stepY); "epoch mean", struct (epochX, epochY) ])
    // Figures logged as <group>/<member> (per-class thresholds) share one figure, a line per member
    // over the logged steps, or over the epoch means where no step was logged.
    for group, members in series |> List.filter (fun (key, _, _) -> key.Contains '/') |> List.groupBy (fun (key, _, _) -> key.Split('/')[0]) do
        Plots.Curves(Path.Combine(folder.PlotsDir, $"{group}.png"), $"{group} per member", "epoch", group,
                     readOnlyDict [ for key, (stepX, stepY), epochs in members ->
                                        key.Substring(group.Length + 1), (if stepX.Length > 0 then struct (stepX, stepY) else let x, y = epochs in struct (x, y)) ])
    let epochs = metrics |> Seq.filter (fun r -> r.ContainsKey "summary") |> Seq.toArray
    let x = epochs |> Array.map (fun r -> r["epoch"].GetValue<float>() + 1.0)
    let rss = epochs |> Array.map (fun r -> r["rss_mb"].GetValue<float>())
    Plots.Curves(Path.Combine(folder.PlotsDir, "memory.png"), "resident memory after each epoch", "epoch", "MiB", readOnlyDict [ "RSS", (x, rss) ])

/// The method's figures beside the baselines' as grouped bars, and a t-SNE map of test features.
let plotReport (budget: EvalBudget) (folder: RunFolder) (result: RunResult) (data: Data) (testFeatures: torch.Tensor) =
    let series =
        readOnlyDict [
            result.Method, [| result.Eval.LinearProbeAcc; result.Eval.KnnAcc |]
            "random init", [| result.Baselines.RandomInit.LinearProbeAcc; result.Baselines.RandomInit.KnnAcc |]
            "raw pixels", [| result.Baselines.RawPixels.LinearProbeAcc; result.Baselines.RawPixels.KnnAcc |] ]
    Plots.Bars(Path.Combine(folder.PlotsDir, "accuracy.png"), $"{result.Method} on {result.Dataset}", "test top-1",
               [| "linear probe"; "kNN" |], series)
    let n = min budget.TsnePoints testFeatures.shape[0]
    use idx = torch.arange(n)
    use features = testFeatures.index_select(0L, idx)
    use labels = data.Test.Labels.index_select(0L, idx)
    use map = Tsne.Embed(features, perplexity = min 30.0 (float n / 4.0), iterations = budget.TsneIterations, seed = result.Seed)
    Plots.ClassMap(Path.Combine(folder.PlotsDir, "tsne.png"), $"t-SNE of {n} test features ({result.Method})", map, labels, data.Test.ClassNames)

/// The representation a recipe evaluates: its encoder's output (`layer` = ""); one inner layer
/// average-pooled to `pool` x `pool` (Core's LayerFeatures), for pretext tasks whose papers read
/// their features from an inner block (RotNet: Gidaris et al. 2018, Table 1, ConvB2), "branch"
/// naming a staged encoder's own branch layer; or "class-tokens", a ViT's class tokens of its last
/// `pool` blocks concatenated (DINO's linear evaluation, Core's ClassTokenFeatures), and
/// "class-tokens-patch-mean" those and the mean of the last block's patch tokens (its
/// --avgpool_patchtokens). Returns the encoder to evaluate and the suffix that names the
/// representation in baseline cache keys.
let probed (layer: string) (pool: int64) (data: Data) (encoder: Encoder) : Encoder * string =
    let input = [| data.Train.Channels; data.Train.Height; data.Train.Width |]
    match layer, box encoder with
    | "", _ -> encoder, ""
    | ("class-tokens" | "class-tokens-patch-mean"), (:? VisionTransformer as vit) ->
        if pool < 1L || pool > int64 vit.Depth then
            invalidArg "Probe" $"Probe: {layer}, the number of last blocks read: expected 1 to the ViT's depth {vit.Depth}, found {pool}"
        let patchMean = layer = "class-tokens-patch-mean"
        new ClassTokenFeatures(vit, int pool, patchMean) :> Encoder, $"""-class-tokens{pool}{if patchMean then "-patch-mean" else ""}"""
    | ("class-tokens" | "class-tokens-patch-mean"), _ ->
        invalidArg "Probe" $"Probe: {layer} needs a ViT encoder (VisionTransformer), found {encoder.GetType().Name}"
    | layer, _ when layer <> "" && (pool < 1L || pool > max data.Train.Height data.Train.Width) ->
        invalidArg "Probe" $"Probe: the pooled size of layer '{layer}': expected 1 to {max data.Train.Height data.Train.Width} (the images' side), found {pool}"
    | "branch", (:? IStagedEncoder as staged) ->
        new LayerFeatures(encoder, staged.BranchLayer, pool, input) :> Encoder,
        $"-{staged.BranchLayer}-pool{pool}"
    | "branch", _ -> invalidArg "Probe" $"Probe: branch needs an encoder with stages (IStagedEncoder), found {encoder.GetType().Name}"
    | layer, _ ->
        new LayerFeatures(encoder, layer, pool, input) :> Encoder, $"-{layer}-pool{pool}"

/// The safetensors export's `__metadata__` (string to string, docs/cli.md#weights-in-and-out): the
/// architecture (`architecture`, a Backbone's text form where the recipe has one), the input the
/// encoder reads (channels, height, width; [0, 1] pixels standardised by the training set's
/// per-channel mean and std, JSON lists), the representation the protocols read (`probe`), the
/// method, data set and seed.
let exportMetadata (request: Request) (data: Data) (architecture: string) (probe: string) =
    let list (values: float[]) = "[" + String.Join(", ", values |> Array.map (fun v -> v.ToString("R", Globalization.CultureInfo.InvariantCulture))) + "]"
    [ "format", "ssl-encoder"
      "architecture", architecture
      "input_channels", string data.Train.Channels
      "input_height", string data.Train.Height
      "input_width", string data.Train.Width
      "input_range", "[0, 1]"
      "input_mean", list data.Mean
      "input_std", list data.Std
      "probe", probe
      "method", request.Method
      "dataset", data.Name
      "seed", string request.Seed ]

/// Evaluates a trained encoder by every protocol beside its baselines, then writes result.json, the
/// exported encoder and the plots. `testAcc`: the method's own classifier accuracy where it has one;
/// `supervisedOnly`: the supervised-only baseline on the same labels where it applies; `metadata`:
/// what the export's safetensors header records of the encoder (exportMetadata).
let finish (request: Request) (env: RunEnvironment) (folder: RunFolder) (data: Data) (encoder: Encoder) (encoderName: string)
           (makeEncoder: unit -> Encoder) (summary: Ssl.Host.Engine.TrainSummary) (testAcc: float option) (supervisedOnly: float option)
           (extra: (string * float) list) (notes: string list) (metadata: (string * string) list) =
    let budget = evalBudget request.Preset
    let eval, baselines, probedFeatures =
        match data.Probed with
        | Some probe ->
            let trainFeatures, testFeatures =
                phase $"features of {probe.Train.Count:N0} training and {probe.Test.Count:N0} test images" (fun () -> extract encoder probe env.Device)
            use trainFeatures = trainFeatures
            let budgets, _ = feasibleBudgets probe
            let few = budgets |> List.map string |> String.concat ", "
            let accuracy, knn, few =
                phase $"linear probe, kNN, few-label probes ({few} labels/class)" (fun () ->
                    evaluateFeatures budget budgets probe request.Seed trainFeatures testFeatures)
            // The baselines of an evaluation set depend on the training set too (its statistics standardise the inputs).
            let name = match data.Eval with Some e -> $"{e.Name}-by-{data.Name}" | None -> data.Name
            EvalFigures(LinearProbeAcc = Nullable accuracy, KnnAcc = Nullable knn, TestAcc = Option.toNullable testAcc, FewLabelLinearAcc = few),
            protocolBaselines request probe name encoderName makeEncoder env.Device,
            Some(probe, testFeatures)
        | None ->
            eprintfn "no probe was run: %s holds no labels; pass --eval-dataset <a labelled set> to probe the encoder" data.Name
            EvalFigures(TestAcc = Option.toNullable testAcc), [| ProtocolFigures(); ProtocolFigures() |], None
    let result =
        RunResult(
            Method = request.Method, Dataset = data.Name, Seed = request.Seed, LabelsPerClass = Option.toNullable request.Labels,
            Eval = eval,
            Baselines = BaselineFigures(RandomInit = baselines[0], RawPixels = baselines[1],
                                        SupervisedOnly = SupervisedFigures(TestAcc = Option.toNullable supervisedOnly)),
            Train = TrainFigures(Epochs = summary.Epochs, Steps = summary.Steps, WallSeconds = summary.WallSeconds,
                                 ImagesPerSecond = summary.ImagesPerSecond, PeakRssMb = summary.PeakRssMb),
            Versions = env.Versions, Notes = (if notes.IsEmpty then null else Collections.Generic.List<string>(notes)))
    let result =
        if extra.IsEmpty then result
        else result.WithExtra(extra |> List.map (fun (k, v) -> Collections.Generic.KeyValuePair(k, Nullable v)))
    FaultInjection.At "eval"
    // The export is the whole encoder, also when an inner layer was evaluated (`ssl eval --layer` reads it there).
    let exported = match box encoder with :? IEncoderView as view -> view.Encoder | _ -> encoder
    Ssl.Host.Export.EncoderExport.Save(exported, Path.Combine(folder.Root, "export"), metadata = readOnlyDict metadata) |> ignore
    plotCurves folder result.Train
    match probedFeatures with
    | Some(probe, testFeatures) ->
        use testFeatures = testFeatures
        phase "plots (accuracy bars, t-SNE map)" (fun () -> plotReport budget folder result probe testFeatures)
    | None -> ()
    // result.json last: a folder holding it is a finished run whose export and plots are there too.
    folder.WriteResult result
    result
