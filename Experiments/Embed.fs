/// Using a trained encoder (docs/cli.md#using-a-trained-encoder): `ssl embed` writes the features of
/// every image of a data set, `ssl neighbours` draws test images beside their nearest training images.
/// Both read the representation the run's protocols read (config.json's probe), as `ssl eval` does.
module Ssl.Experiments.Embed

open System
open System.IO
open Argu
open Spectre.Console
open TorchSharp
open Ssl.Host.Data
open Ssl.Host.Eval
open Ssl.Host.Export
open Ssl.Host.Reporting
open Ssl.Host.Runtime
open Ssl.Experiments.Cli

/// One part of the data to encode: its name in the outputs ("train", "test", or "all" for an image
/// folder read as one set that serves both splits) and its images.
type Part = { Split: string; Set: ImageDataset }

/// The run's data (its training set's statistics standardise every input; its shape fixes the
/// encoder's) and the parts to encode: the run's own splits, or every image of `dataset`.
type Loaded =
    { Run: Data
      Parts: Part list
      Name: string
      Other: (ImageDataset * ImageDataset) option }

    interface IDisposable with
        member l.Dispose() =
            (l.Run :> IDisposable).Dispose()
            match l.Other with
            | Some(train, test) ->
                train.Dispose()
                if not (Object.ReferenceEquals(train, test)) then test.Dispose()
            | None -> ()

let private partsOf (train: ImageDataset) (test: ImageDataset) =
    if Object.ReferenceEquals(train, test) then [ { Split = "all"; Set = train } ]
    else [ { Split = "train"; Set = train }; { Split = "test"; Set = test } ]

/// A name that is safe in a file name: letters, digits, '-' and '.' kept, anything else '_'.
let private safeName (text: string) =
    String(text |> Seq.map (fun ch -> if Char.IsLetterOrDigit ch || ch = '-' || ch = '.' then ch else '_') |> Array.ofSeq)

/// Reads the run's data as the run read it (a smoke run: its first 2,000 training and 1,000 test
/// images) and, where `dataset` names another set, every image of that one, converted to the run's
/// channels and, for an image folder, resized to the run's size; a built-in set of another size is
/// refused, naming both sizes.
let load (run: TrainedRun.Run) (threads: int) (dataset: string option) (layout: string option) (dataRoot: string option)
         (memoryMb: int64 option) (workers: int option) =
    match memoryMb with
    | Some n when n < 0L -> invalidArg "--data-memory-mb" $"--data-memory-mb: expected a size in MiB, 0 or more (0 streams every image folder), found {n}"
    | _ -> ()
    match workers with
    | Some n when n < 1 -> invalidArg "--workers" $"--workers: expected at least 1 decoding thread, found {n}"
    | _ -> ()
    match dataset with
    | Some d when not (Array.contains d DataCatalog.Names || Directory.Exists d) ->
        let known = String.concat ", " DataCatalog.Names
        invalidArg "--dataset" $"--dataset: expected one of {known} or an image-folder path, found '{d}'"
    | _ -> ()
    let request =
        { TrainedRun.request run threads with
            EvalDataset = None
            DataRoot = dataRoot
            DataMemoryMb = defaultArg memoryMb defaultDataMemoryMb
            Workers = defaultArg workers 0 }
    let data = Pipeline.loadData request
    try
        match dataset with
        | None ->
            if layout.IsSome then invalidArg "--layout" "--layout: says how --dataset's image folder is read; the run's own data set is read with the run's layout"
            let name = Path.GetFileName(Path.TrimEndingDirectorySeparator run.Dataset)
            // An image folder read as one set serves both splits (a smoke run's: the first images of it
            // twice): its training side is every image the run read.
            let oneSet = DataCatalog.IsFolder run.Dataset && (ImageFolder.ChooseLayout(run.Dataset, run.Layout)).Layout <> FolderLayout.Split
            let parts = if oneSet then [ { Split = "all"; Set = data.Train } ] else partsOf data.Train data.Test
            { Run = data; Parts = parts; Name = name; Other = None }
        | Some other ->
            let train = data.Train
            let square = train.Height = train.Width
            let folder = DataCatalog.IsFolder other
            if folder && not square then
                invalidArg "--dataset" $"--dataset: an image folder is resized to the run's square images; this run's are {train.Height}x{train.Width}"
            let readAll =
                { request with
                    Preset = Quick
                    ImageSize = (if folder then Some(int train.Height) else None)
                    Layout = layout |> Option.map ImageFolder.ParseLayout |> Option.defaultValue FolderLayout.Auto }
            let otherTrain, otherTest = Pipeline.readSplits readAll other (Some(int train.Channels)) "--dataset"
            let shape (d: ImageDataset) = $"{d.Channels}x{d.Height}x{d.Width}"
            if (otherTrain.Height, otherTrain.Width, otherTrain.Channels) <> (train.Height, train.Width, train.Channels) then
                let found = shape otherTrain
                otherTrain.Dispose()
                if not (Object.ReferenceEquals(otherTrain, otherTest)) then otherTest.Dispose()
                invalidArg "--dataset" $"--dataset: expected images of the run's {shape train}, found {found} in '{other}'"
            { Run = data; Parts = partsOf otherTrain otherTest; Name = Path.GetFileName(Path.TrimEndingDirectorySeparator other)
              Other = Some(otherTrain, otherTest) }
    with _ ->
        (data :> IDisposable).Dispose()
        reraise ()

/// The layer and pool to read: --layer and --pool where given, else the run's probe (as `ssl eval`).
let private representation (run: TrainedRun.Run) (layer: string option) (pool: int option) =
    match layer with
    | Some "output" -> "", 0L
    | Some l ->
        let p = int64 (defaultArg pool 2)
        if p < 1L then invalidArg "--pool" $"--pool: expected a positive size, found {p}"
        l, p
    | None ->
        if pool.IsSome then invalidArg "--pool" "--pool: sets the pooling of --layer; expected --layer with it, found none"
        run.ProbeLayer, run.ProbePool

/// The run's encoder (trained, or `randomInit`) at the representation `layer`/`pool` reads, on the device.
let probedEncoder (run: TrainedRun.Run) (data: Data) (env: RunEnvironment) (layer: string) (pool: int64) (randomInit: bool) =
    let encoder = TrainedRun.encoder run data env.Runtime.ConvLayout randomInit
    let probed, _ =
        try Pipeline.probed layer pool data encoder
        with _ ->
            encoder.Dispose()
            reraise ()
    probed.``to``(env.Device) |> ignore
    probed

/// A UTF-8 text file written through a PendingFile: renamed into place by `Commit`, deleted if not committed.
type private TextOutput(path: string) =
    let pending = new Ssl.Host.Export.PendingFile(path)
    let writer = new StreamWriter(pending.Stream, Text.UTF8Encoding(false), 1 <<< 16, leaveOpen = true)
    let mutable committed = false
    member _.Writer = writer
    member _.Commit() =
        writer.Dispose()
        pending.Commit()
        committed <- true
    interface IDisposable with
        member _.Dispose() =
            if not committed then
                writer.Dispose()
                pending.Dispose()

/// The output prefix: --out with a .npy or .parquet ending dropped, else <run>/embed/<data set>[-random-init].
let private outputPrefix (run: TrainedRun.Run) (out: string option) (name: string) (randomInit: bool) =
    match out with
    | Some o ->
        let full = Path.GetFullPath o
        if full.EndsWith(".npy", StringComparison.OrdinalIgnoreCase) || full.EndsWith(".parquet", StringComparison.OrdinalIgnoreCase) then
            Path.ChangeExtension(full, null)
        else full
    | None -> Path.Combine(run.Dir, "embed", safeName name + (if randomInit then "-random-init" else ""))

/// The device and threads of a command that reads a run's encoder, set up as the run's runtime.
let configure (run: TrainedRun.Run) (device: string option) (threads: int option) =
    let env =
        DeviceSetup.Configure(DeviceSetup.Parse(defaultArg device "cpu"), threads = defaultArg threads 0, seed = run.Seed,
                              runtime = Commands.runtimeOptions run.MemoryFormat None 0)
    for note in env.Notes do AnsiConsole.MarkupLine $"[yellow]{Markup.Escape note}[/]"
    env

/// `ssl embed <run-dir>`: the features of every image of the data set, at the representation the
/// run's protocols read, as <prefix>.npy (float32 (N, D)), <prefix>.files.txt (one line per row) and
/// <prefix>.parquet (one row per image), each through a temp file renamed at the end.
let embed (args: ParseResults<EmbedArgs>) =
    let run = TrainedRun.read (args.GetResult EmbedArgs.Run_Dir)
    let batchSize = args.GetResult(EmbedArgs.Batch_Size, defaultValue = 512)
    if batchSize < 1 then invalidArg "--batch-size" $"--batch-size: expected at least 1 image, found {batchSize}"
    let layer, pool = representation run (args.TryGetResult EmbedArgs.Layer) (args.TryGetResult EmbedArgs.Pool)
    let randomInit = args.Contains EmbedArgs.Random_Init
    let env = configure run (args.TryGetResult EmbedArgs.Device) (args.TryGetResult EmbedArgs.Threads)
    use loaded =
        load run env.Threads (args.TryGetResult EmbedArgs.Dataset) (args.TryGetResult EmbedArgs.Layout) (args.TryGetResult EmbedArgs.Data_Root)
            (args.TryGetResult EmbedArgs.Data_Memory_Mb) (args.TryGetResult EmbedArgs.Workers)
    use encoder = probedEncoder run loaded.Run env layer pool randomInit
    let prefix = outputPrefix run (args.TryGetResult EmbedArgs.Out) loaded.Name randomInit
    let total = loaded.Parts |> List.sumBy (fun p -> p.Set.Count)
    let streamed = loaded.Parts |> List.exists (fun p -> p.Set.IsStreamed)
    let what = if layer = "" then "the encoder's output" else $"layer '{layer}' pooled {pool}"
    let how = if streamed then " (streamed from its files)" else ""
    let weights = if randomInit then "random-initialised" else "trained"
    AnsiConsole.MarkupLine
        $"embedding {total:N0} images of {Markup.Escape loaded.Name}{how} with {Markup.Escape run.Recipe.Name}'s {weights} encoder at {Markup.Escape what} ({encoder.FeatureDim} features), {env.DeviceName}, {env.Threads} threads"
    use npy = new NpyWriter(prefix + ".npy")
    use parquet = new EmbeddingParquet(prefix + ".parquet")
    use text = new TextOutput(prefix + ".files.txt")
    let progress = Ssl.Host.Engine.CountProgress("embed", total)
    let written = ref 0L
    for part in loaded.Parts do
        let labels = part.Set.Labels.data<int64>().ToArray()
        let names = part.Set.ClassNames
        Features.ForEachBatch(encoder, part.Set, loaded.Run.Mean, loaded.Run.Std, env.Device, Action<int64, torch.Tensor>(fun start features ->
            use features = features
            let rows = int features.shape[0]
            let width = int features.shape[1]
            let values = features.contiguous().data<float32>().ToArray()
            npy.Append(ReadOnlySpan values, width)
            for i in 0 .. rows - 1 do
                let index = start + int64 i
                let file = match part.Set.Files with null -> null | files -> files[int index]
                let label = labels[int index]
                parquet.Append(index, file, part.Split, (if label >= 0L then Nullable(int label) else Nullable()), ReadOnlySpan(values, i * width, width))
                let id = if isNull file then $"{part.Split}/{index}" else file
                text.Writer.WriteLine(if label >= 0L then $"{id}\t{label}\t{names[int label]}" else id)
            written.Value <- written.Value + int64 rows
            progress.Report written.Value), batchSize)
    npy.Commit()
    parquet.Commit()
    text.Commit()
    let seconds = progress.Elapsed.TotalSeconds
    AnsiConsole.MarkupLine
        $"embedded {written.Value:N0} images x {npy.Columns} features in {seconds:F1} s ({float written.Value / max seconds 1e-9:N0} img/s); peak RSS {ProcessStats.PeakRssMb():N0} MiB"
    for ext in [ ".npy"; ".files.txt"; ".parquet" ] do
        AnsiConsole.MarkupLine $"wrote {Markup.Escape(prefix + ext)}"
    0

/// The `k` nearest rows of `pool` (N, D) to each row of `queries` (Q, D) by cosine similarity, nearest
/// first, leaving out row `exclude[q]` of the pool for query q where given (a query drawn from the
/// pool itself is not its own neighbour): (indices (Q, K), similarities (Q, K)).
let nearest (queries: torch.Tensor) (pool: torch.Tensor) (k: int) (exclude: int64[] option) =
    use scope = torch.NewDisposeScope()
    let q = torch.nn.functional.normalize(queries, dim = 1L)
    let p = torch.nn.functional.normalize(pool, dim = 1L)
    let sims = q.matmul(p.t())
    match exclude with
    | Some rows ->
        let index = torch.tensor(rows).view(-1L, 1L)
        let excluded = torch.tensor(Array.create rows.Length Single.NegativeInfinity, dtype = sims.dtype).view(-1L, 1L)
        sims.scatter_(1L, index, excluded) |> ignore
    | None -> ()
    let struct (values, indices) = sims.topk(k, dim = 1)
    indices.MoveToOuterDisposeScope(), values.MoveToOuterDisposeScope()

/// `ssl neighbours <run-dir>`: `--queries` test images drawn with `--seed` (or the `--query` image files), each beside its `--k`
/// nearest training images by the trained encoder and by the random-initialised one (seeded as the
/// run's random-init baseline), drawn side by side as one PNG.
let neighbours (args: ParseResults<NeighboursArgs>) =
    let run = TrainedRun.read (args.GetResult NeighboursArgs.Run_Dir)
    let queryCount = args.GetResult(NeighboursArgs.Queries, defaultValue = 8)
    let k = args.GetResult(NeighboursArgs.K, defaultValue = 8)
    if queryCount < 1 then invalidArg "--queries" $"--queries: expected at least 1 query image, found {queryCount}"
    if k < 1 then invalidArg "--k" $"--k: expected at least 1 neighbour, found {k}"
    let seed = args.GetResult(NeighboursArgs.Seed, defaultValue = 0L)
    let layer, pool = representation run (args.TryGetResult NeighboursArgs.Layer) (args.TryGetResult NeighboursArgs.Pool)
    let env = configure run (args.TryGetResult NeighboursArgs.Device) (args.TryGetResult NeighboursArgs.Threads)
    use loaded =
        load run env.Threads (args.TryGetResult NeighboursArgs.Dataset) (args.TryGetResult NeighboursArgs.Layout)
            (args.TryGetResult NeighboursArgs.Data_Root) (args.TryGetResult NeighboursArgs.Data_Memory_Mb) (args.TryGetResult NeighboursArgs.Workers)
    let train, test, sameSet =
        match loaded.Parts with
        | [ all ] -> all.Set, all.Set, true
        | parts -> (parts |> List.find (fun p -> p.Split = "train")).Set, (parts |> List.find (fun p -> p.Split = "test")).Set, false
    let poolSize = if sameSet then train.Count - 1L else train.Count
    if int64 k > poolSize then
        invalidArg "--k" $"--k: expected at most {poolSize} (the training images a query can be matched with), found {k}"
    let given = args.GetResults NeighboursArgs.Query
    // The queries: image files (--query), each decoded to the run's channels and size, or test images
    // drawn with --seed; a drawn query of a set that serves both splits is not its own neighbour.
    let querySet, picks =
        if not given.IsEmpty then
            if args.Contains NeighboursArgs.Queries then invalidArg "--query" "--query: names the query images; expected no --queries (--random) beside it"
            for path in given do
                if not (File.Exists path) then raise (DataException(path, "an image file to query with (--query)", "no such file"))
            let square = train.Height = train.Width
            let sizing = ImageSizing(int train.Channels, int train.Height, int train.Width, (if square then Nullable(int train.Height) else Nullable()), not square)
            let bytes = StreamedImages(Array.ofList given, sizing, 1).Read(Array.init given.Length int64)
            use pinned = torch.tensor(bytes, ReadOnlySpan<int64>([| int64 given.Length; train.Channels; train.Height; train.Width |]), dtype = torch.uint8)
            new ImageDataset("query", Split.Test, pinned.clone(), torch.tensor(Array.create given.Length -1L), train.ClassNames, Array.ofList given), None
        else
            let count = int (min (int64 queryCount) test.Count)
            let picks =
                use generator = new torch.Generator(uint64 seed)
                use order = torch.randperm(test.Count, generator = generator)
                order.data<int64>().ToArray() |> Array.truncate count
            test.Subset picks, Some picks
    use querySet = querySet
    let queryCount = int querySet.Count
    use queryImages = querySet.Rows(0L, querySet.Count)
    let labelled = train.IsLabelled && querySet.IsLabelled
    let trainLabels = train.Labels.data<int64>().ToArray()
    let queryLabels = querySet.Labels.data<int64>().ToArray()
    let panel (randomInit: bool) =
        use encoder = probedEncoder run loaded.Run env layer pool randomInit
        let which = if randomInit then "random-init" else "trained"
        eprintfn "neighbours: features of %d training images (%s encoder) ..." train.Count which
        use poolFeatures = Features.Extract(encoder, train, loaded.Run.Mean, loaded.Run.Std, env.Device)
        use queryFeatures = Features.Extract(encoder, querySet, loaded.Run.Mean, loaded.Run.Std, env.Device)
        let indices, sims = nearest queryFeatures poolFeatures k (if sameSet then picks else None)
        use indices = indices
        use sims = sims
        let rows = indices.data<int64>().ToArray()
        let similarities = sims.data<float32>().ToArray() |> Array.chunkBySize k
        use flat = train.Batch rows
        let neighbourImages = flat.view(int64 queryCount, int64 k, train.Channels, train.Height, train.Width)
        let agrees =
            if labelled then Some(Array.init queryCount (fun q -> Array.init k (fun j -> trainLabels[int rows[q * k + j]] = queryLabels[q])))
            else None
        let title = if randomInit then $"random init (seed {run.Seed})" else $"trained {run.Recipe.Name}"
        let share = agrees |> Option.map (fun a -> a |> Array.collect id |> Array.averageBy (fun b -> if b then 1.0 else 0.0))
        NeighbourPanel(title, queryImages, neighbourImages, similarities, (match agrees with Some a -> a | None -> null)), share
    let trained, trainedShare = panel false
    let random, randomShare = panel true
    let out =
        args.TryGetResult NeighboursArgs.Out
        |> Option.defaultWith (fun () -> Path.Combine(run.Dir, "plots", $"neighbours-{safeName loaded.Name}.png"))
    let struct (width, height) =
        try NeighbourGrid.Save(out, [| trained; random |])
        finally
            trained.Neighbours.Dispose()
            random.Neighbours.Dispose()
    let what = if layer = "" then "the encoder's output" else $"layer '{layer}' pooled {pool}"
    let queries = if given.IsEmpty then $"{queryCount} test images of {loaded.Name} (seed {seed})" else $"{queryCount} --query images"
    AnsiConsole.MarkupLine
        $"{Markup.Escape queries}, {k} nearest training images of {Markup.Escape loaded.Name} each by cosine similarity of {Markup.Escape what}"
    match trainedShare, randomShare with
    | Some t, Some r -> AnsiConsole.MarkupLine $"neighbours of the query's class: trained [bold]{t:P0}[/], random init {r:P0}"
    | _ -> ()
    AnsiConsole.MarkupLine $"wrote {Markup.Escape out} ({width}x{height} pixels)"
    0
