/// `ssl bench --peer`: the table and bench.json with the twin's columns, the error when Debian's
/// python3-torch is missing, and the PyTorch twins themselves running a couple of steps of the same
/// model as ours (parameters and forward FLOPs compared), skipped with the reason where python3-torch
/// is not installed. No timing is asserted.
module Ssl.Tests.PeerTests

open System
open System.Diagnostics
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open Expecto
open TorchSharp
open Ssl.Host.Engine
open Ssl.Host.Runs
open Ssl.Host.Runtime
open Ssl.Experiments

/// A bench record of `method` at `rate` img/s (the other figures made up).
let private record (methodName: string) (rate: float) : Bench.BenchRecord =
    { method = methodName; preset = "quick"; dataset = "fashion-mnist"; labels_per_class = Nullable(); warmup_steps = 5; steps = 30
      images = 7680L; seconds = 7680.0 / rate; images_per_s = rate; encoder_forward_mflop_per_image = 11.06
      encoder_gflop_per_s = 100.0; all_modules_gflop_per_s = 101.0; matmul_peak_gflop_per_s = 170.0; encoder_fraction_of_peak = 0.59
      peak_rss_mb = 1000.0; streamed = false; threads = 2; memory_format = "channels-last"; side_thread = true; phases_ms_per_step = Map.empty
      versions = VersionFigures(Commit = "0123456789abcdef", TorchSharp = "0.107.0", LibTorch = "2.10.0.0")
      machine = MachineInfo.Current(); peer = None }

let private twinRunIn (configuration: string) (rate: float) : Peer.PeerRun =
    { configuration = configuration; plain_layers = [||]; padded_layers = [||]; images_per_s = rate; torch = "1.13.0a0"; onednn = "2.6.3"; cpu_capability = "AVX2"; blas = "OpenBLAS 0.3.21 (OpenMP, Haswell kernels)"
      blas_note = null; threads = 2; parameters = 70330L; encoder_forward_mflop_per_image = 11.06
      phases_ms_per_step = Map [ "backward", 60.0; "optimizer", 2.0; "forward+other", 50.0 ]; losses = [| 2.3 |] }

let private twinRun = twinRunIn "nchw, safe"

/// Runs the twin program with Debian's python3 and `args`; (exit code, stdout + stderr).
let private twin (interpreterArgs: string list) (args: string list) =
    let psi = ProcessStartInfo(Peer.python, UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true)
    for a in interpreterArgs @ Peer.program :: args do psi.ArgumentList.Add a
    use p = Process.Start psi
    let output = p.StandardOutput.ReadToEndAsync()
    let error = p.StandardError.ReadToEnd()
    p.WaitForExit()
    p.ExitCode, output.Result + error

/// Skips the calling test, with the reason printed, where the twin cannot run here.
let private requireTwin () =
    try Peer.require () |> ignore
    with :? Peer.PeerUnavailableException as e ->
        printfn "skipped: %s" e.Message
        skiptest e.Message

/// Trainable parameters of a module tree.
let private parameters (m: torch.nn.Module) = m.parameters () |> Seq.sumBy (fun p -> p.numel ())

[<Tests>]
let tests =
    testList "peer" [
        test "pairs give medians and the ratio ours / twin; the table and bench.json carry them, — for recipes without a twin" {
            // Two configurations: channels-last is the faster by its median (1000 against 980), not by its best run.
            let runs =
                [ record "supervised" 1200.0, [ twinRun 980.0; twinRunIn "channels-last, plain" 1000.0 ]
                  record "supervised" 900.0, [ twinRun 1300.0; twinRunIn "channels-last, plain" 1100.0 ]
                  record "supervised" 1300.0, [ twinRun 800.0; twinRunIn "channels-last, plain" 950.0 ] ]
            let paired = Bench.paired runs
            Expect.equal paired.images_per_s 1200.0 "ours: the median of 1200, 900, 1300"
            let peer = Option.get paired.peer
            Expect.equal peer.configuration "channels-last, plain" "the fastest configuration by median"
            Expect.equal [ for c in peer.configurations -> c.configuration, c.images_per_s ] [ "nchw, safe", 980.0; "channels-last, plain", 1000.0 ]
                "every configuration's median, in the order they ran"
            Expect.equal peer.images_per_s 1000.0 "the twin: the median of 1000, 1100, 950"
            Expect.floatClose Accuracy.high peer.ratio 1.2 "median ours / median twin"
            Expect.equal [ for p in peer.pairs -> p.ours_images_per_s, p.peer_images_per_s ] [ 1200.0, 1000.0; 900.0, 1100.0; 1300.0, 950.0 ] "every pair, in order"
            Expect.floatClose Accuracy.high peer.pairs[1].ratio (900.0 / 1100.0) "each pair's ratio"
            Expect.equal peer.phases_ms_per_step (Map [ "backward", 60.0; "forward+other", 50.0; "optimizer", 2.0 ]) "the twin's phases, medians"
            let records = [ paired; record "jigsaw" 4400.0 ]
            let table = Bench.table records
            Expect.stringContains table "| method | data | img/s | PyTorch img/s (nchw, safe) | PyTorch img/s (channels-last, plain) | ratio to PyTorch's fastest |" "the twin's columns"
            Expect.stringContains table "| supervised | fashion-mnist | 1,200 | 980 | **1,000** | 1.20 | 11.1 |" "each configuration's median, the fastest in bold, and the ratio"
            Expect.stringContains table "| jigsaw | fashion-mnist | 4,400 | — | — | — | 11.1 |" "no twin: —"
            Expect.stringContains table "Ratio = ours / PyTorch's fastest configuration" "the table says what the ratio is against"
            Expect.stringContains table "torch 1.13.0a0, oneDNN 2.6.3" "the twin's versions under the table"
            Expect.stringContains table "OpenBLAS 0.3.21" "and its BLAS"
            let json = JsonSerializer.Serialize(records)
            let back = JsonSerializer.Deserialize<Bench.BenchRecord list>(json)
            Expect.equal (back |> List.map (fun r -> r.peer |> Option.map (fun p -> p.pairs.Length))) [ Some 3; None ] "bench.json keeps the pairs"
            let nodes = JsonNode.Parse(json).AsArray()
            let field (key: string) (node: JsonNode) = node[key]
            Expect.equal ((nodes[0] |> field "peer" |> field "ratio").GetValue<float>()) peer.ratio "the ratio in bench.json"
            Expect.isNull (nodes[1] |> field "peer") "no twin: null"
            Expect.stringContains (Bench.table [ record "rotnet" 900.0 ]) "| rotnet | fashion-mnist | 900 | — | — |" "a bench without --peer: —"
        }
        test "a missing python3-torch is a clear error naming the package and the command that installs it" {
            let e = Prop.throws<Peer.PeerUnavailableException> (fun () -> Peer.requireAt "/nonexistent/python3" |> ignore)
            Expect.stringContains e.Message "python3-torch" "names the package"
            Expect.stringContains e.Message Peer.installCommand "and the command"
            Expect.stringContains e.Message "/nonexistent/python3" "and the interpreter"
            Expect.equal (Program.run [| "bench"; "--peer"; "--method"; "supervised" |]) 2 "--peer with --method is a usage error"
            if File.Exists Peer.python then
                // -S: no site packages, so no torch; the twin itself names the package too.
                let code, output = twin [ "-S" ] [ "--check" ]
                Expect.equal code 3 $"peer.py without torch: {output}"
                Expect.stringContains output "python3-torch" "peer.py names the package"
                Expect.stringContains output "apt-get install" "and how to install it"
        }
        test "the twins of supervised, rotnet, moco, byol, dino and fixmatch run steps of ours' model (same parameters and forward FLOPs)" {
            requireTwin ()
            let dir = Fixtures.tempDir "peer-twins"
            for name in Peer.twins do
                let recipe = (Registry.tryFind name).Value
                let config = Peer.writeConfig recipe Recipe.Quick dir
                let json = Path.Combine(dir, $"{name}.json")
                // One timed step after one untimed (two timed for moco, whose layouts are compared step by step).
                let steps = if name = "moco" then 2 else 1
                let code, output = twin [] [ "--config"; config; "--warmup"; "1"; "--steps"; string steps; "--threads"; "1"; "--no-matmul-peak"; "--json"; json ]
                Expect.equal code 0 $"{name}: the twin ran: {output}"
                let run = JsonSerializer.Deserialize<Peer.PeerRun>(File.ReadAllText json)
                let resolved = recipe.Resolve Recipe.Quick None []
                let backbone = (Backbone.Backbone.TryParse(resolved["Encoder"].GetValue<string>())).Value
                use encoder = Backbone.instantiate Ssl.Core.Models.SafeConv.ChannelsLast None 1L backbone
                let field (key: string) = resolved[key].GetValue<int64>()
                // Heads.fs MlpHead with batch norm and DinoHead, by their parameter formulas.
                let mlpHead i h o = i * h + 2L * h + h * o + o
                let heads =
                    match name with
                    | "supervised" | "fixmatch" -> (encoder.FeatureDim + 1L) * 10L
                    | "rotnet" -> (encoder.FeatureDim + 1L) * 4L
                    | "byol" ->
                        let h, d = field "HiddenDim", field "ProjectionDim"
                        mlpHead encoder.FeatureDim h d + mlpHead d h d
                    | "dino" ->
                        let h, b = field "HeadHidden", field "HeadBottleneck"
                        (encoder.FeatureDim + 1L) * h + (h + 1L) * h + (h + 1L) * b + b * field "Outputs"
                    | _ -> (encoder.FeatureDim + 1L) * field "EmbeddingDim"
                let ours = parameters encoder + heads
                Expect.equal run.parameters ours $"{name}: trainable parameters (encoder and head)"
                let flops = FlopCounter.ForwardFlopsPerExample(encoder, 1L, 28L, 28L) / 1e6
                Expect.floatClose Accuracy.high run.encoder_forward_mflop_per_image flops $"{name}: forward MFLOP per image"
                Expect.equal run.losses.Length (1 + steps) $"{name}: a loss per step"
                Expect.isTrue (run.losses |> Array.forall (fun l -> Double.IsFinite l && l > 0.0)) $"{name}: finite, positive losses {run.losses}"
                Expect.stringContains run.blas "OpenBLAS" $"{name}: OpenBLAS loaded"
                Expect.equal (run.phases_ms_per_step |> Map.keys |> List.ofSeq) [ "backward"; "forward+other"; "optimizer" ] $"{name}: the phases"
                Expect.isTrue (run.phases_ms_per_step |> Map.forall (fun _ ms -> ms > 0.0)) $"{name}: each phase took time {run.phases_ms_per_step}"
                Expect.equal run.threads 1 $"{name}: the threads asked for"
                Expect.equal run.configuration "nchw, safe" $"{name}: the default configuration, named"
                if name = "moco" then
                    // The fastest configuration a PyTorch user tries: the same step, so the same model and losses.
                    let fast = Path.Combine(dir, $"{name}.channels-last.json")
                    let code, output =
                        twin [] [ "--config"; config; "--warmup"; "1"; "--steps"; "2"; "--threads"; "1"; "--no-matmul-peak"
                                  "--layout"; "channels-last"; "--convolutions"; "plain"; "--json"; fast ]
                    Expect.equal code 0 $"{name} channels-last, plain: the twin ran: {output}"
                    let other = JsonSerializer.Deserialize<Peer.PeerRun>(File.ReadAllText fast)
                    Expect.equal other.configuration "channels-last, plain" "the configuration, named"
                    Expect.equal other.plain_layers.Length 10 $"every convolution of query and key built plain (PyTorch 1.13 computes them right): {other.plain_layers}"
                    Expect.equal (other.parameters, other.encoder_forward_mflop_per_image) (run.parameters, run.encoder_forward_mflop_per_image) "same parameters and FLOPs"
                    for a, b in Array.zip run.losses other.losses do
                        Expect.floatClose { absolute = 1e-5; relative = 1e-4 } b a $"same losses in both layouts: {run.losses} against {other.losses}"
        }
    ]
