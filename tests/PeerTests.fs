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

let private twinRun (rate: float) : Peer.PeerRun =
    { images_per_s = rate; torch = "1.13.0a0"; onednn = "2.6.3"; cpu_capability = "AVX2"; blas = "OpenBLAS 0.3.21 (OpenMP, Haswell kernels)"
      blas_note = null; threads = 2; parameters = 70330L; encoder_forward_mflop_per_image = 11.06
      phases_ms_per_step = Map [ "backward", 60.0; "optimizer", 2.0; "forward+other", 50.0 ]; losses = [| 2.3 |] }

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
            let runs = [ record "supervised" 1200.0, twinRun 1000.0; record "supervised" 900.0, twinRun 1100.0; record "supervised" 1300.0, twinRun 950.0 ]
            let paired = Bench.paired runs
            Expect.equal paired.images_per_s 1200.0 "ours: the median of 1200, 900, 1300"
            let peer = Option.get paired.peer
            Expect.equal peer.images_per_s 1000.0 "the twin: the median of 1000, 1100, 950"
            Expect.floatClose Accuracy.high peer.ratio 1.2 "median ours / median twin"
            Expect.equal [ for p in peer.pairs -> p.ours_images_per_s, p.peer_images_per_s ] [ 1200.0, 1000.0; 900.0, 1100.0; 1300.0, 950.0 ] "every pair, in order"
            Expect.floatClose Accuracy.high peer.pairs[1].ratio (900.0 / 1100.0) "each pair's ratio"
            Expect.equal peer.phases_ms_per_step (Map [ "backward", 60.0; "forward+other", 50.0; "optimizer", 2.0 ]) "the twin's phases, medians"
            let records = [ paired; record "jigsaw" 4400.0 ]
            let table = Bench.table records
            Expect.stringContains table "| method | data | img/s | PyTorch img/s | ratio |" "the twin's columns"
            Expect.stringContains table "| supervised | fashion-mnist | 1,200 | 1,000 | 1.20 | 11.1 |" "the twin's median and the ratio"
            Expect.stringContains table "| jigsaw | fashion-mnist | 4,400 | — | — | 11.1 |" "no twin: —"
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
        test "the twins of supervised, rotnet and moco run two steps of ours' model (same parameters and forward FLOPs)" {
            requireTwin ()
            let dir = Fixtures.tempDir "peer-twins"
            for name in Peer.twins do
                let recipe = (Registry.tryFind name).Value
                let config = Peer.writeConfig recipe Recipe.Quick dir
                let json = Path.Combine(dir, $"{name}.json")
                let code, output = twin [] [ "--config"; config; "--warmup"; "1"; "--steps"; "2"; "--threads"; "1"; "--no-matmul-peak"; "--json"; json ]
                Expect.equal code 0 $"{name}: the twin ran: {output}"
                let run = JsonSerializer.Deserialize<Peer.PeerRun>(File.ReadAllText json)
                let resolved = recipe.Resolve Recipe.Quick None []
                let backbone = (Backbone.Backbone.TryParse(resolved["Encoder"].GetValue<string>())).Value
                use encoder = Backbone.instantiate Ssl.Core.Models.SafeConv.ChannelsLast None 1L backbone
                let outputs =
                    match name with
                    | "supervised" -> 10L
                    | "rotnet" -> 4L
                    | _ -> resolved["EmbeddingDim"].GetValue<int64>()
                let ours = parameters encoder + (encoder.FeatureDim + 1L) * outputs
                Expect.equal run.parameters ours $"{name}: trainable parameters (encoder and head)"
                let flops = FlopCounter.ForwardFlopsPerExample(encoder, 1L, 28L, 28L) / 1e6
                Expect.floatClose Accuracy.high run.encoder_forward_mflop_per_image flops $"{name}: forward MFLOP per image"
                Expect.equal run.losses.Length 3 $"{name}: a loss per step"
                Expect.isTrue (run.losses |> Array.forall (fun l -> Double.IsFinite l && l > 0.0)) $"{name}: finite, positive losses {run.losses}"
                Expect.stringContains run.blas "OpenBLAS" $"{name}: OpenBLAS loaded"
                Expect.equal (run.phases_ms_per_step |> Map.keys |> List.ofSeq) [ "backward"; "forward+other"; "optimizer" ] $"{name}: the phases"
                Expect.isTrue (run.phases_ms_per_step |> Map.forall (fun _ ms -> ms > 0.0)) $"{name}: each phase took time {run.phases_ms_per_step}"
                Expect.equal run.threads 1 $"{name}: the threads asked for"
        }
    ]
