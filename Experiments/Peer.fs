/// The PyTorch twins of `ssl bench --peer`: scripts/peer/peer.py (copied beside ssl.dll as peer/)
/// runs a recipe's training step in PyTorch 1.13 (Debian's python3-torch) with the same model,
/// optimiser, batch, augmentations and timing as ours, from the config document ours resolves, so
/// that speed is a ratio to PyTorch measured in the same bench call (DESIGN.md, Results).
/// Here: which recipes have a twin, the configurations each twin runs in (what a PyTorch user would
/// try for speed; ours is compared with the fastest), how one is started (Debian's /usr/bin/python3,
/// libopenblas0-openmp first on LD_LIBRARY_PATH: the stock libblas.so.3 is netlib's reference BLAS),
/// what it reports, and the figures of a recipe's alternating pairs.
module Ssl.Experiments.Peer

open System
open System.Diagnostics
open System.IO
open System.Runtime.InteropServices
open System.Text.Json
open Ssl.Host.Runs
open Ssl.Experiments.Recipe
open Ssl.Experiments.Template

/// The twin or its interpreter is missing: the message names the package and how to install it.
type PeerUnavailableException(message: string) =
    inherit Exception(message)

/// The recipes scripts/peer/twin/recipes.py mirrors.
let twins = [ "supervised"; "rotnet"; "moco"; "byol"; "dino"; "fixmatch" ]

let hasTwin (name: string) = List.contains name twins

/// A configuration of the twin (peer.py --layout and --convolutions).
type TwinConfiguration =
    { Layout: string
      Convolutions: string }
    /// As the twin's JSON names it: "<layout>, <convolutions>".
    member c.Name = $"{c.Layout}, {c.Convolutions}"

/// The configurations every twin runs, each in every pair: NCHW with SafeConv's padding (the same
/// convolutions and FLOPs as ours), NCHW with plain convolutions (a PyTorch script as written) and
/// channels-last with plain convolutions (solo-learn's `channels_last`); plain only where PyTorch
/// computes the convolution right (scripts/peer/twin/models.py checks each against float64).
let configurations =
    [ { Layout = "nchw"; Convolutions = "safe" }
      { Layout = "nchw"; Convolutions = "plain" }
      { Layout = "channels-last"; Convolutions = "plain" } ]

/// Alternating (ours, twin) pairs per recipe: run-to-run spread is about ±10%, so a single pair says little.
let pairs = 3

/// Debian's interpreter, the one python3-torch installs for (a `python3` on PATH may be another).
let python = "/usr/bin/python3"

/// What installs the twin's dependencies.
let installCommand = "sudo apt-get install python3-torch libopenblas0-openmp"

/// The twin program beside ssl.dll.
let program = Path.Combine(AppContext.BaseDirectory, "peer", "peer.py")

/// libopenblas0-openmp's libblas.so.3 folder (Debian multiarch).
let openblasFolder =
    let triple = if RuntimeInformation.ProcessArchitecture = Architecture.Arm64 then "aarch64-linux-gnu" else "x86_64-linux-gnu"
    $"/usr/lib/{triple}/openblas-openmp"

/// A start of the twin under `interpreter` with OpenBLAS first on LD_LIBRARY_PATH.
let private startInfo (interpreter: string) (args: string list) =
    let psi = ProcessStartInfo(interpreter, UseShellExecute = false)
    for a in program :: args do psi.ArgumentList.Add a
    let inherited = Environment.GetEnvironmentVariable "LD_LIBRARY_PATH"
    psi.Environment["LD_LIBRARY_PATH"] <- if String.IsNullOrEmpty inherited then openblasFolder else $"{openblasFolder}:{inherited}"
    psi

/// Checks that the twin runs under `interpreter` (`peer.py --check`: torch imports and OpenBLAS
/// loads) and returns what it reports (torch, oneDNN and BLAS versions, threads) as one JSON line;
/// otherwise a PeerUnavailableException naming python3-torch and the install command.
let requireAt (interpreter: string) =
    let missing (what: string) =
        raise (PeerUnavailableException
                   $"ssl bench --peer: the PyTorch twins need Debian's python3-torch and libopenblas0-openmp for {interpreter}; {what}. Install them with `{installCommand}` (`dotnet fsi build.fsx bench` does)")
    if not (File.Exists interpreter) then missing $"found no {interpreter}"
    if not (File.Exists program) then
        raise (PeerUnavailableException $"ssl bench --peer: expected the twin program at {program} (built from scripts/peer/), found no such file; rebuild")
    let psi = startInfo interpreter [ "--check" ]
    psi.RedirectStandardOutput <- true
    psi.RedirectStandardError <- true
    use p = Process.Start psi
    let output = p.StandardOutput.ReadToEndAsync()
    let error = p.StandardError.ReadToEnd()
    p.WaitForExit()
    if p.ExitCode <> 0 then missing $"`{interpreter} {program} --check` said: {error.Trim()}"
    output.Result.Trim()

/// requireAt Debian's /usr/bin/python3.
let require () = requireAt python

/// What the twin writes (a subset of its JSON).
type PeerRun =
    { /// The configuration it ran in (TwinConfiguration.Name).
      configuration: string
      /// The convolutions built plain, and those kept padded because PyTorch computed them wrong.
      plain_layers: string[]
      padded_layers: string[]
      images_per_s: float
      torch: string
      onednn: string
      cpu_capability: string
      blas: string
      blas_note: string
      threads: int
      parameters: int64
      encoder_forward_mflop_per_image: float
      /// Milliseconds per timed step: backward, optimizer (zero_grad, gradient norm, step) and forward+other, as ours.
      phases_ms_per_step: Map<string, float>
      losses: float[] }

/// The config document the twin of `recipe` reads: `<out>/<name>.peer-config.json`.
let writeConfig (recipe: Recipe) (preset: Preset) (out: string) =
    let path = Path.Combine(out, $"{recipe.Name}.peer-config.json")
    RunFolder.WriteAtomically(path, (configDocument recipe preset []).ToJsonString(JsonSerializerOptions(WriteIndented = true)))
    path

/// Runs the twin of `recipe` once in `configuration` (its output inherited) with the bench's warm-up,
/// steps and threads; its JSON goes to `<out>/<name>.peer-<layout>-<convolutions>-<index>.json`.
/// None (and a line on stderr) when it fails.
let run (recipe: Recipe) (preset: Preset) (warmup: int) (steps: int) (threads: int) (out: string) (configuration: TwinConfiguration) (index: int) =
    let config = writeConfig recipe preset out
    let json = Path.Combine(out, $"{recipe.Name}.peer-{configuration.Layout}-{configuration.Convolutions}-{index}.json")
    if File.Exists json then File.Delete json
    let args =
        [ "--config"; config; "--warmup"; string warmup; "--steps"; string steps; "--threads"; string threads
          "--layout"; configuration.Layout; "--convolutions"; configuration.Convolutions; "--json"; json ]
    use p = Process.Start(startInfo python args)
    p.WaitForExit()
    if p.ExitCode = 0 && File.Exists json then Some(JsonSerializer.Deserialize<PeerRun>(File.ReadAllText json))
    else
        eprintfn "ssl bench --peer: the twin of %s failed with exit code %d" recipe.Name p.ExitCode
        None

/// One alternating pair: our img/s, the twin's, and their ratio.
type PeerPair =
    { ours_images_per_s: float
      peer_images_per_s: float
      /// ours / twin: above 1, ours is faster.
      ratio: float }

/// A recipe's figures against one configuration of its twin.
type ConfigurationFigures =
    { configuration: string
      /// Median img/s of this configuration's runs.
      images_per_s: float
      /// Median of ours / this median.
      ratio: float
      pairs: PeerPair[] }

/// A recipe's figures against its twin: medians over the pairs and every pair, against the twin's
/// fastest configuration (highest median img/s), with every configuration's figures beside.
type PeerFigures =
    { program: string
      /// The fastest configuration, which the figures below are of.
      configuration: string
      torch: string
      onednn: string
      cpu_capability: string
      blas: string
      blas_note: string
      threads: int
      /// Median img/s of the twin's runs.
      images_per_s: float
      /// Median of ours / median of the twin's.
      ratio: float
      /// Each phase's median over the twin's runs, milliseconds per timed step (empty from a twin without phases).
      phases_ms_per_step: Map<string, float>
      pairs: PeerPair[]
      /// Every configuration that ran, in Peer.configurations' order.
      configurations: ConfigurationFigures[] }

/// The median of a non-empty list (the mean of the middle two for an even count).
let median (values: float list) =
    match List.sort values with
    | [] -> invalidArg "values" "values: expected at least one figure, found none"
    | sorted ->
        let n = sorted.Length
        if n % 2 = 1 then sorted[n / 2] else (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0

/// The figures of one configuration's pairs (ours img/s, twin run), in the order they ran.
let private configurationFigures (pairs: (float * PeerRun) list) =
    let oursMedian = median (pairs |> List.map fst)
    let peerMedian = median (pairs |> List.map (fun (_, p) -> p.images_per_s))
    { configuration = (snd pairs.Head).configuration; images_per_s = peerMedian; ratio = oursMedian / peerMedian
      pairs = [| for ours, p in pairs -> { ours_images_per_s = ours; peer_images_per_s = p.images_per_s; ratio = ours / p.images_per_s } |] }

/// The figures of the pairs (ours img/s, the twin's runs: one per configuration), in the order they
/// ran: against the fastest configuration, every configuration beside.
let figures (pairs: (float * PeerRun list) list) =
    match pairs with
    | [] -> invalidArg "pairs" "pairs: expected at least one (ours, twin) pair, found none"
    | _ ->
        let byConfiguration =
            pairs |> List.collect (fun (ours, runs) -> runs |> List.map (fun r -> ours, r))
            |> List.groupBy (fun (_, r) -> r.configuration)
        let all = byConfiguration |> List.map (fun (_, runs) -> configurationFigures runs, runs)
        let fastest, runs = all |> List.maxBy (fun (f, _) -> f.images_per_s)
        let first = snd runs.Head
        { program = "scripts/peer/peer.py"; configuration = fastest.configuration; torch = first.torch; onednn = first.onednn
          cpu_capability = first.cpu_capability; blas = first.blas; blas_note = first.blas_note; threads = first.threads
          images_per_s = fastest.images_per_s; ratio = fastest.ratio
          phases_ms_per_step =
              let runs = runs |> List.map snd |> List.filter (fun p -> not (isNull (box p.phases_ms_per_step)))
              runs |> List.collect (fun p -> Map.keys p.phases_ms_per_step |> List.ofSeq) |> List.distinct
              |> List.map (fun k -> k, median (runs |> List.choose (fun p -> Map.tryFind k p.phases_ms_per_step)))
              |> Map.ofList
          pairs = fastest.pairs
          configurations = all |> List.map fst |> Array.ofList }
