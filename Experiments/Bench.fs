/// `ssl bench`: training-step throughput of every registered recipe, generically: the recipe's own
/// run starts (its data, models, optimizers and step) with a `StepBenchmark` as its training
/// observer, which times a window of its training steps with FLOP counters on the step's modules and
/// stops the run there — no per-recipe benchmarking code, and a new recipe is benchmarked when it is registered.
/// Each method runs in its own process (its peak RSS is its own), beside a float32 matmul peak
/// measured in that process with the same threads. With `--peer`, a recipe with a PyTorch twin
/// (Peer) runs alternately with it in each of its configurations, three rounds, and its record holds
/// the medians and the ratio to the fastest configuration.
module Ssl.Experiments.Bench

open System
open System.IO
open System.Text
open System.Text.Json
open System.Text.Json.Nodes
open TorchSharp
open Ssl.Host.Engine
open Ssl.Host.Runs
open Ssl.Host.Runtime
open Ssl.Experiments.Recipe
open Ssl.Experiments.Template

/// One method's figures (bench.json holds a list of them).
type BenchRecord =
    { method: string
      preset: string
      /// The data set the step ran on: Fashion-MNIST, or for a colour-only recipe the given colour
      /// data set or "synthetic-colour" (generated images: the throughput is real, the pixels are not).
      dataset: string
      labels_per_class: Nullable<int>
      warmup_steps: int
      steps: int
      images: int64
      seconds: float
      images_per_s: float
      /// Forward FLOPs of the preset's encoder per example (FLOP counter on a (1, C, H, W) input).
      encoder_forward_mflop_per_image: float
      /// Forward + backward FLOPs of the module named "encoder" per second over the window.
      encoder_gflop_per_s: float
      /// The same over every module of the step (heads, teachers, decoders).
      all_modules_gflop_per_s: float
      matmul_peak_gflop_per_s: float
      encoder_fraction_of_peak: float
      peak_rss_mb: float
      /// Whether the training images were streamed from their files (an image folder over --data-memory-mb).
      streamed: bool
      threads: int
      /// The convolutions' memory layout: "channels-last" (default) or "nchw" (SSL_MEMORY_FORMAT).
      memory_format: string
      /// Whether two independent passes of a step may run side by side (SideThread: MoCo's forwards and backward halves).
      side_thread: bool
      /// Milliseconds per timed step in each phase: backward, optimizer (StepBenchmark) and the rest,
      /// "forward+other" (forward passes, augmentation, losses, bookkeeping).
      phases_ms_per_step: Map<string, float>
      versions: VersionFigures
      machine: MachineInfo
      /// The figures against the PyTorch twin (`--peer`, recipes with a twin), else null.
      peer: Peer.PeerFigures option }

/// How a bench reads an image folder: `--image-size` and `--data-memory-mb` as a run's.
type FolderReading = { ImageSize: int option; DataMemoryMb: int64 }

let private asRead = { ImageSize = None; DataMemoryMb = defaultDataMemoryMb }

/// Benchmarks one recipe in this process and returns its record.
let runOne (recipe: Recipe) (preset: Preset) (warmup: int) (steps: int) (threads: int) (dataset: string) (reading: FolderReading) (out: string) =
    let env = DeviceSetup.Configure(DeviceRequest.Cpu, threads, 0L, false)
    let labels = List.tryHead recipe.Traits.LabelBudgets
    let config = recipe.Resolve preset None []
    let request: Request =
        { Method = recipe.Name; Preset = preset; Dataset = dataset; EvalDataset = None; ImageSize = reading.ImageSize; DataMemoryMb = reading.DataMemoryMb; Workers = 0; Layout = Ssl.Host.Data.FolderLayout.Auto; DataRoot = None; Labels = labels; Seed = 0L
          Device = DeviceRequest.Cpu; Threads = env.Threads; Deterministic = false; Out = out; Resume = false; Force = false
          Config = Some config; Overrides = []; Init = None }
    let peak = MachineInfo.MatmulPeakGflops()
    let perImage, streamed =
        // The FLOP count needs the images' shape only: read a folder streamed (no pixels kept), so this
        // process's peak RSS is the run's own.
        use data = Pipeline.loadData { request with Preset = Smoke; DataMemoryMb = 0L }
        use encoder = recipe.Encoder config data env.Runtime.ConvLayout
        FlopCounter.ForwardFlopsPerExample(encoder, [| data.Train.Channels; data.Train.Height; data.Train.Width |]),
        Ssl.Host.Data.ImageFolderOptions(MemoryBudgetMb = Nullable reading.DataMemoryMb).Streams data.Train.DecodedBytes
    // Rank 0 alone clears and writes the folder (several ranks: docs/distributed.md).
    let writer = Ssl.Host.Distributed.World.IsWriter
    if writer && Directory.Exists out then Directory.Delete(out, true)
    let benchmark = StepBenchmark(warmup, steps)
    match recipe.RunObserved benchmark request env (if writer then RunFolder out else RunFolder.Follow out) with
    | Evaluated _ | TrainedOnly _ -> failwith $"{recipe.Name}: the run finished before {warmup + steps} training steps; lower --steps or use a longer preset"
    | StoppedByObserver _ ->
        let m = benchmark.Result
        { method = recipe.Name; preset = Preset.name preset
          dataset = (if Directory.Exists dataset then Path.GetFileName(Path.TrimEndingDirectorySeparator dataset) else dataset)
          labels_per_class = Option.toNullable labels
          warmup_steps = warmup; steps = m.Steps; images = m.Images; seconds = m.Seconds; images_per_s = m.ImagesPerSecond
          encoder_forward_mflop_per_image = perImage / 1e6; encoder_gflop_per_s = m.EncoderGflops; all_modules_gflop_per_s = m.AllGflops
          matmul_peak_gflop_per_s = peak; encoder_fraction_of_peak = m.EncoderGflops / peak
          peak_rss_mb = ProcessStats.PeakRssMb(); streamed = streamed; threads = env.Threads
          memory_format = RuntimeOptions.Name env.Runtime.MemoryFormat
          side_thread = env.Runtime.SideThread
          phases_ms_per_step =
              let perStep (seconds: float) = 1000.0 * seconds / float m.Steps
              let timed = m.PhaseSeconds |> Seq.map (fun kv -> kv.Key, perStep kv.Value) |> Map.ofSeq
              timed |> Map.add "forward+other" (perStep m.Seconds - Seq.sum (Map.values timed))
          versions = RunFolder.CurrentVersions(); machine = MachineInfo.Current(); peer = None }

let private options = JsonSerializerOptions(WriteIndented = true)

/// The markers between which `ssl bench --readme` writes its table.
let startMarker = "<!-- bench:start -->"
let endMarker = "<!-- bench:end -->"

/// Our run of median img/s (the lower middle one for an even count), with the median img/s.
let private medianRun (runs: BenchRecord list) =
    let sorted = runs |> List.sortBy (fun r -> r.images_per_s)
    { sorted[(sorted.Length - 1) / 2] with images_per_s = Peer.median (runs |> List.map (fun r -> r.images_per_s)) }

/// A recipe's record from its pairs (ours, the twin's run in each configuration) in the order they
/// ran: our median run with the twin's figures attached.
let paired (runs: (BenchRecord * Peer.PeerRun list) list) =
    { medianRun (List.map fst runs) with peer = Some(Peer.figures (runs |> List.map (fun (o, p) -> o.images_per_s, p))) }

/// The Markdown table of the records (what `--readme FILE` writes between the bench markers) (every figure from bench.json); "—" where a recipe has no twin figures.
let table (records: BenchRecord list) =
    let sb = StringBuilder()
    let f (d: int) (x: float) = x.ToString("N" + string d, Globalization.CultureInfo.InvariantCulture)
    // One column per twin configuration that ran (every twin runs the same ones), the fastest in bold.
    let configurations =
        records |> List.tryPick (fun r -> r.peer) |> Option.map (fun p -> [ for c in p.configurations -> c.configuration ])
        |> Option.defaultValue [ "" ]
    let peerColumns (r: BenchRecord) =
        match r.peer with
        | Some p ->
            let cell (name: string) =
                match p.configurations |> Array.tryFind (fun c -> c.configuration = name) with
                | Some c when name = p.configuration -> $"**{f 0 c.images_per_s}**"
                | Some c -> f 0 c.images_per_s
                | None -> "—"
            String.Join(" | ", configurations |> List.map cell) + $" | {f 2 p.ratio}"
        | None -> String.Join(" | ", configurations |> List.map (fun _ -> "—")) + " | —"
    let peerHeader =
        String.Join(" | ", configurations |> List.map (fun c -> if c = "" then "PyTorch img/s" else $"PyTorch img/s ({c})"))
        + " | ratio to PyTorch's fastest"
    sb.AppendLine($"| method | data | img/s | {peerHeader} | encoder MFLOP/image (fwd) | encoder GFLOP/s (fwd+bwd) | all modules GFLOP/s | matmul peak GFLOP/s | encoder / peak | peak RSS MiB |") |> ignore
    sb.AppendLine("| --- | --- | --- | " + String.replicate configurations.Length "--- | " + "--- | --- | --- | --- | --- | --- | --- |") |> ignore
    for r in records do
        sb.AppendLine($"| {r.method} | {r.dataset} | {f 0 r.images_per_s} | {peerColumns r} | {f 1 r.encoder_forward_mflop_per_image} | {f 1 r.encoder_gflop_per_s} | {f 1 r.all_modules_gflop_per_s} | {f 1 r.matmul_peak_gflop_per_s} | {f 0 (100.0 * r.encoder_fraction_of_peak)} %% | {f 0 r.peak_rss_mb} |") |> ignore
    match records with
    | r :: _ ->
        sb.AppendLine() |> ignore
        sb.AppendLine($"Generated by `dotnet fsi build.fsx bench` (preset {r.preset}, {r.warmup_steps} warm-up + {r.steps} timed steps per method, {r.threads} threads) on {r.machine.CpuModel}, {r.machine.Cores} cores; TorchSharp {r.versions.TorchSharp}, libtorch {r.versions.LibTorch}, commit `{r.versions.Commit}`. Do not edit: rerun the target.") |> ignore
        match records |> List.tryPick (fun r -> r.peer) with
        | Some p ->
            let note = if String.IsNullOrEmpty p.blas_note then "" else $"; {p.blas_note}"
            sb.AppendLine() |> ignore
            sb.AppendLine($"PyTorch img/s: the PyTorch twin of the same step (`{p.program}`: torch {p.torch}, oneDNN {p.onednn}, ATen {p.cpu_capability} kernels, {p.blas}{note}; {p.threads} threads) in each configuration a PyTorch user would try for speed (layout; SafeConv's padding as ours, or plain convolutions where PyTorch computes them right), the median of {p.pairs.Length} runs alternating with ours, whose img/s is then the median of its {p.pairs.Length}; in bold the fastest configuration. Ratio = ours / PyTorch's fastest configuration (above 1: ours is faster). bench.json holds every pair. —: no twin, or not run with `--peer`.") |> ignore
        | None -> ()
        if records |> List.exists (fun r -> r.dataset = "synthetic-colour") then
            sb.AppendLine() |> ignore
            sb.AppendLine("synthetic-colour: generated 32x32 colour images, for colour-only recipes where no colour data set is installed; their throughput is real, their pixels are not.") |> ignore
    | [] -> ()
    sb.ToString()

/// Replaces the text between `start` and `stop` in `readme` with `content`; an error names the file
/// when the markers are missing.
let replaceBetween (start: string) (stop: string) (readme: string) (content: string) =
    let text = File.ReadAllText readme
    let a = text.IndexOf start
    let b = text.IndexOf stop
    if a < 0 || b < a then
        raise (Ssl.Host.Data.DataException(readme, $"a {start} ... {stop} pair of lines", "no such markers"))
    let updated = text.Substring(0, a + start.Length) + "\n" + content + text.Substring(b)
    RunFolder.WriteAtomically(readme, updated)

/// The training-step table's markers.
let replaceBetweenMarkers = replaceBetween startMarker endMarker

/// The markers between which `ssl bench --data --readme` writes its table.
let dataStartMarker = "<!-- data-bench:start -->"
let dataEndMarker = "<!-- data-bench:end -->"

/// `ssl bench`: runs one child process per method (`ssl bench --method`), writes `<out>/bench.json`
/// and, given `readme`, the table. With `peer`, each recipe with a twin runs Peer.pairs rounds of
/// our child then its twin in each of Peer.configurations; a missing python3-torch stops before any run.
let run (only: string list option) (preset: Preset) (warmup: int) (steps: int) (threads: int) (colourDataset: string option) (out: string)
        (readme: string option) (peer: bool) =
    Directory.CreateDirectory out |> ignore
    if peer then printfn "bench --peer: the PyTorch twin runs here as %s" (Peer.require ())
    let asked (r: Recipe) = match only with Some names -> List.contains r.Name names | None -> r.AliasOf.IsNone
    let methods = Registry.recipes |> List.filter (fun r -> asked r && List.contains preset r.Presets)
    let ours (r: Recipe) =
        let json = Path.Combine(out, $"{r.Name}.json")
        if File.Exists json then File.Delete json
        let args =
            [ "bench"; "--method"; r.Name; "--preset"; Preset.name preset; "--warmup"; string warmup
              "--steps"; string steps; "--threads"; string threads; "--out"; out ]
            @ (colourDataset |> Option.map (fun d -> [ "--colour-dataset"; d ]) |> Option.defaultValue [])
        let code, _ = Sweep.runChild args None
        if code = 0 && File.Exists json then Some(JsonSerializer.Deserialize<BenchRecord>(File.ReadAllText json))
        else
            eprintfn "ssl bench: %s failed with exit code %d" r.Name code
            None
    let resolvedThreads = if threads = 0 then Environment.ProcessorCount else threads
    let mutable peerFailed = false
    let records =
        [ for r in methods do
              if peer && Peer.hasTwin r.Name then
                  let runs =
                      [ for i in 1 .. Peer.pairs ->
                            ours r, [ for c in Peer.configurations -> Peer.run r preset warmup steps resolvedThreads out c i ] ]
                  let complete =
                      runs |> List.choose (fun (o, twins) ->
                          match o, List.forall Option.isSome twins with
                          | Some o, true -> Some(o, List.choose id twins)
                          | _ -> None)
                  if complete.Length = runs.Length then yield paired complete
                  else
                      peerFailed <- true
                      match runs |> List.choose fst with
                      | [] -> ()
                      | finished -> yield medianRun finished
              else
                  match ours r with
                  | Some record -> yield record
                  | None -> () ]
    let path = Path.Combine(out, "bench.json")
    RunFolder.WriteAtomically(path, JsonSerializer.Serialize(records, options))
    printfn "%s" (table records)
    printfn "bench: %s" path
    readme |> Option.iter (fun file -> replaceBetweenMarkers file (table records); printfn "bench: table written to %s" file)
    if records.Length = methods.Length && not peerFailed then 0 else 1

/// One recipe's figures of `ssl bench --ranks N` (bench-ranks.json holds a list of them): img/s of
/// one process with all the threads and of N ranks with threads / N each, medians of alternating pairs.
type RanksRecord =
    { method: string
      preset: string
      ranks: int
      threads: int
      one_process_images_per_s: float
      ranks_images_per_s: float
      /// ranks / one process: above 1, the ranks are faster.
      ratio: float
      /// Every pair in the order it ran: (one process, ranks) img/s.
      pairs: (float * float) list
      versions: VersionFigures
      machine: MachineInfo }

/// The markers between which `ssl bench --ranks N --readme` writes its table.
let ranksStartMarker = "<!-- ranks-bench:start -->"
let ranksEndMarker = "<!-- ranks-bench:end -->"

/// The Markdown table of `ssl bench --ranks` (every figure from bench-ranks.json).
let ranksTable (records: RanksRecord list) =
    let sb = StringBuilder()
    let f (d: int) (x: float) = x.ToString("N" + string d, Globalization.CultureInfo.InvariantCulture)
    match records with
    | [] -> ()
    | r :: _ ->
        sb.AppendLine($"| method | one process, {r.threads} threads: img/s | {r.ranks} ranks x {max 1 (r.threads / r.ranks)} threads: img/s | ratio |") |> ignore
        sb.AppendLine("| --- | --- | --- | --- |") |> ignore
        for x in records do
            sb.AppendLine($"| {x.method} | {f 0 x.one_process_images_per_s} | {f 0 x.ranks_images_per_s} | {f 2 x.ratio} |") |> ignore
        sb.AppendLine() |> ignore
        sb.AppendLine($"Generated by `ssl bench --ranks {r.ranks} --readme` (preset {r.preset}; medians of {r.pairs.Length} alternating pairs of child processes, the same global batch) on {r.machine.CpuModel}, {r.machine.Cores} cores; commit `{r.versions.Commit}`. Do not edit: rerun it.") |> ignore
    sb.ToString()

/// `ssl bench --ranks N`: each recipe's step on N ranks (a child `ssl bench --method --ranks N`,
/// threads / N each) against one process with all the threads, `pairs` alternating pairs; medians
/// and ratio to <out>/bench-ranks.json and, given `readme`, its table.
let ranks (only: string list option) (preset: Preset) (warmup: int) (steps: int) (threads: int) (n: int) (pairs: int)
          (colourDataset: string option) (out: string) (readme: string option) =
    let threads = if threads = 0 then Environment.ProcessorCount else threads
    let asked (r: Recipe) = match only with Some names -> List.contains r.Name names | None -> r.AliasOf.IsNone
    let methods = Registry.recipes |> List.filter (fun r -> asked r && List.contains preset r.Presets)
    let child (r: Recipe) (ranks: int) =
        let dir = Path.Combine(out, (if ranks = 1 then "one-process" else $"ranks{ranks}"))
        let json = Path.Combine(dir, $"{r.Name}.json")
        if File.Exists json then File.Delete json
        let args =
            [ "bench"; "--method"; r.Name; "--preset"; Preset.name preset; "--warmup"; string warmup; "--steps"; string steps
              "--threads"; string (max 1 (threads / ranks)); "--out"; dir ]
            @ (if ranks > 1 then [ "--ranks"; string ranks ] else [])
            @ (colourDataset |> Option.map (fun d -> [ "--colour-dataset"; d ]) |> Option.defaultValue [])
        let code, _ = Sweep.runChild args None
        if code = 0 && File.Exists json then Some (JsonSerializer.Deserialize<BenchRecord>(File.ReadAllText json)).images_per_s
        else
            eprintfn "ssl bench: %s on %d rank(s) failed with exit code %d" r.Name ranks code
            None
    let records =
        [ for r in methods do
              let runs = [ for i in 1 .. pairs ->
                               printfn "bench --ranks: %s, pair %d of %d" r.Name i pairs
                               child r 1, child r n ]
              let complete = runs |> List.choose (fun (a, b) -> Option.map2 (fun a b -> a, b) a b)
              if complete.Length = runs.Length then
                  let one, many = Peer.median (List.map fst complete), Peer.median (List.map snd complete)
                  yield { method = r.Name; preset = Preset.name preset; ranks = n; threads = threads
                          one_process_images_per_s = one; ranks_images_per_s = many; ratio = many / one; pairs = complete
                          versions = RunFolder.CurrentVersions(); machine = MachineInfo.Current() } ]
    Directory.CreateDirectory out |> ignore
    let path = Path.Combine(out, "bench-ranks.json")
    RunFolder.WriteAtomically(path, JsonSerializer.Serialize(records, options))
    printfn "%s" (ranksTable records)
    printfn "bench: %s" path
    readme |> Option.iter (fun file -> replaceBetween ranksStartMarker ranksEndMarker file (ranksTable records); printfn "bench: table written to %s" file)
    if records.Length = methods.Length then 0 else 1

/// The child's side: one method in this process, its record to `<out>/<method>.json`.
/// A colour-only recipe without `colourDataset` runs on generated colour images written once into
/// `<out>/synthetic-colour` (2 classes x 1,000 PNGs of 32x32).
/// With `folder` (`--data`), the step runs on that image folder read as `reading` says.
let runMethod (recipe: Recipe) (preset: Preset) (warmup: int) (steps: int) (threads: int) (colourDataset: string option)
              (folder: string option) (reading: FolderReading) (out: string) =
    let dataset =
        match folder, recipe.Traits.Colour, colourDataset with
        | Some path, _, _ -> path
        | None, false, _ -> "fashion-mnist"
        | None, true, Some d -> d
        | None, true, None ->
            let dir = Path.Combine(out, "synthetic-colour")
            if not (Directory.Exists dir) then
                let partial = dir + ".partial"
                if Directory.Exists partial then Directory.Delete(partial, true)
                Synthetic.writeColourFolder partial 2 1000 32 |> ignore
                Directory.Move(partial, dir)
            dir
    let record = runOne recipe preset warmup steps threads dataset (if folder.IsSome then reading else asRead) (Path.Combine(out, recipe.Name))
    // Several ranks: rank 0 reports; its img/s counts the global batch.
    if not Ssl.Host.Distributed.World.IsWriter then 0 else
    Directory.CreateDirectory out |> ignore
    RunFolder.WriteAtomically(Path.Combine(out, $"{recipe.Name}.json"), JsonSerializer.Serialize(record, options))
    printfn "%s: %.0f img/s, encoder %.1f GFLOP/s (fwd+bwd) = %.0f%% of the %.1f GFLOP/s matmul peak; peak RSS %.0f MiB"
        recipe.Name record.images_per_s record.encoder_gflop_per_s (100.0 * record.encoder_fraction_of_peak)
        record.matmul_peak_gflop_per_s record.peak_rss_mb
    printfn "%s phases (ms per step, %s): %s" recipe.Name record.memory_format
        (record.phases_ms_per_step |> Map.toList |> List.map (fun (k, v) -> $"{k} {v:F1}") |> String.concat ", ")
    0

/// A streamed bench child's budget when none is given: every folder is streamed.
let streamedBudgetMb = 0L
/// The in-memory child's: no folder is streamed.
let inMemoryBudgetMb = 1L <<< 30

/// `ssl bench --data PATH`: decode + resize throughput of an image folder on all cores (what a
/// run on it pays at load: three full reads, the median images/s), then `recipe`'s training step
/// on that folder held in memory and streamed from its files (`pairs` alternating pairs of child
/// processes, each its own peak RSS; medians), into <out>/bench-data.json. Files skipped as
/// undecodable count as read (their cost was paid).
let data (path: string) (imageSize: int option) (recipe: Recipe) (preset: Preset) (warmup: int) (steps: int) (threads: int)
         (pairs: int) (streamedMb: int64 option) (out: string) (readme: string option) =
    let options = Ssl.Host.Data.ImageFolderOptions(Size = Option.toNullable imageSize, MemoryBudgetMb = Nullable())
    let reads =
        [ for _ in 1 .. 3 ->
              let clock = Diagnostics.Stopwatch.StartNew()
              use data = Ssl.Host.Data.DataCatalog.Load(path, Ssl.Host.Data.Split.Train, folder = options)
              let seconds = clock.Elapsed.TotalSeconds
              data.FilesSeen, data.Count, seconds ]
    let files, images, _ = reads.Head
    let rates = reads |> List.map (fun (f, _, s) -> float f / s) |> List.sort
    let median = rates[1]
    printfn "decode + resize: %.0f images/s (median of 3 reads of %d files, %d decoded, on %d threads)"
        median files images Environment.ProcessorCount
    Directory.CreateDirectory out |> ignore
    let child (mode: string) (budget: int64) (i: int) =
        let dir = Path.Combine(out, $"{mode}-{i}")
        let json = Path.Combine(dir, $"{recipe.Name}.json")
        if File.Exists json then File.Delete json
        let args =
            [ "bench"; "--method"; recipe.Name; "--preset"; Preset.name preset; "--warmup"; string warmup; "--steps"; string steps
              "--threads"; string threads; "--data"; path; "--data-memory-mb"; string budget; "--in-process"; "--out"; dir ]
            @ (imageSize |> Option.map (fun n -> [ "--image-size"; string n ]) |> Option.defaultValue [])
        let code, _ = Sweep.runChild args None
        if code <> 0 || not (File.Exists json) then failwith $"ssl bench --data: the {mode} {recipe.Name} child failed with exit code {code}"
        JsonSerializer.Deserialize<BenchRecord>(File.ReadAllText json)
    let streamedBudget = defaultArg streamedMb streamedBudgetMb
    let runs = [ for i in 1 .. pairs -> child "in-memory" inMemoryBudgetMb i, child "streamed" streamedBudget i ]
    let medianOf (pick: BenchRecord -> float) (records: BenchRecord list) =
        let sorted = records |> List.map pick |> List.sort
        sorted[(sorted.Length - 1) / 2]
    let memory, streamed = List.map fst runs, List.map snd runs
    if streamed |> List.exists (fun r -> not r.streamed) then
        failwith $"ssl bench --data: the streamed child held {path} in memory: its decoded size is under --data-memory-mb {streamedBudget}"
    let rate = medianOf (fun r -> r.images_per_s)
    let rss = medianOf (fun r -> r.peak_rss_mb)
    let ratio = rate streamed / rate memory
    let target = Path.Combine(out, "bench-data.json")
    RunFolder.WriteAtomically(target,
        JsonSerializer.Serialize(
            {| path = path; image_size = Option.toNullable imageSize; files = files; decoded = images
               threads = Environment.ProcessorCount; images_per_s = median; reads_per_s = rates
               training =
                {| recipe = recipe.Name; preset = Preset.name preset; pairs = pairs; streamed_data_memory_mb = streamedBudget
                   in_memory_images_per_s = rate memory; streamed_images_per_s = rate streamed; streamed_over_in_memory = ratio
                   in_memory_peak_rss_mb = rss memory; streamed_peak_rss_mb = rss streamed
                   in_memory_runs = memory |> List.map (fun r -> r.images_per_s); streamed_runs = streamed |> List.map (fun r -> r.images_per_s) |} |},
            RunFolder.Json))
    printfn "%s %s step: %.0f img/s in memory, %.0f img/s streamed (%.2fx; medians of %d pairs); peak RSS %.0f / %.0f MiB -> %s"
        recipe.Name (Preset.name preset) (rate memory) (rate streamed) ratio pairs (rss memory) (rss streamed) target
    readme |> Option.iter (fun file ->
        let f (d: int) (x: float) = x.ToString("N" + string d, Globalization.CultureInfo.InvariantCulture)
        let r = memory.Head
        let size = imageSize |> Option.map (fun n -> $"{n} px") |> Option.defaultValue "as stored"
        let sizeFlag = imageSize |> Option.map (fun n -> $" --image-size {n}") |> Option.defaultValue ""
        let table =
            $"| folder | files | size | decode + resize img/s | {recipe.Name} {Preset.name preset} img/s in memory | streamed | streamed / in memory | peak RSS MiB in memory | streamed |\n" +
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n" +
            $"| {Path.GetFileName(Path.TrimEndingDirectorySeparator path)} | {files} | {size} | {f 0 median} | {f 0 (rate memory)} | {f 0 (rate streamed)} | {f 2 ratio} | {f 0 (rss memory)} | {f 0 (rss streamed)} |\n\n" +
            $"Generated by `ssl bench --data {path}{sizeFlag} --readme {file}` " +
            $"(medians of {pairs} alternating pairs, {r.warmup_steps} warm-up + {r.steps} timed steps, streamed with --data-memory-mb {streamedBudget}, {r.threads} threads) " +
            $"on {r.machine.CpuModel}, {r.machine.Cores} cores; commit `{r.versions.Commit}`. Do not edit: rerun it.\n"
        replaceBetween dataStartMarker dataEndMarker file table
        printfn "bench: table written to %s" file)
    0
