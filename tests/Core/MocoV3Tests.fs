/// MoCo v3: the in-batch contrastive loss against a float64 loop oracle and its closed forms, the
/// stop-gradient through the keys, the instance accuracy, the MLP heads, and the recipe on a ViT (its
/// patch projection frozen) and on a convolutional backbone.
module Ssl.Tests.Core.MocoV3Tests

open System
open System.IO
open System.Text.Json.Nodes
open Expecto
open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Tests

let private unit (a: float[]) = let n = max (sqrt (dot a a)) 1e-12 in a |> Array.map (fun x -> x / n)

/// ctr(q, k) of Algorithm 1, loop by loop: 2τ · mean over i of (logsumexp_j q̄ᵢ·k̄ⱼ/τ − q̄ᵢ·k̄ᵢ/τ).
let private ctrOracle (tau: float) (q: float[][]) (k: float[][]) =
    let q, k = Array.map unit q, Array.map unit k
    let terms = Array.init q.Length (fun i -> let logits = k |> Array.map (fun kj -> dot q[i] kj / tau) in logSumExp logits - logits[i])
    2.0 * tau * Array.average terms

/// The fraction of rows whose own key is strictly the most similar, loop by loop.
let private accuracyOracle (q: float[][]) (k: float[][]) =
    let q, k = Array.map unit q, Array.map unit k
    let hits = Array.init q.Length (fun i -> if Array.forall id [| for j in 0 .. k.Length - 1 -> j = i || dot q[i] k[i] > dot q[i] k[j] |] then 1.0 else 0.0)
    Array.average hits

let private rejects (argument: string) (fragment: string) (f: unit -> unit) =
    let e = Prop.throws<ArgumentException> f
    Expect.equal e.ParamName argument "names the argument"
    Expect.stringContains e.Message fragment "says what was expected or found"

let private lossTests =
    testList "loss" [
        Prop.propSmall "contrastive equals the loop oracle, is >= 0, and symmetric is ctr(q1, k2) + ctr(q2, k1)" (fun (seed: int) ->
            use g = generator seed
            let n = 1L + int64 (abs seed % 6)
            let d = 1L + int64 (abs (seed / 7) % 5)
            let tau = 0.05 + float (abs seed % 20) / 10.0
            use q1 = randn g [| n; d |]
            use q2 = randn g [| n; d |]
            use k1 = randn g [| n; d |]
            use k2 = randn g [| n; d |]
            use loss = MocoV3.contrastive tau q1 k2
            near 1e-10 "contrastive" (scalar loss) (ctrOracle tau (rows q1) (rows k2))
            Expect.isGreaterThanOrEqual (scalar loss) 0.0 ">= 0"
            use both = MocoV3.symmetric tau q1 q2 k1 k2
            near 1e-10 "symmetric" (scalar both) (ctrOracle tau (rows q1) (rows k2) + ctrOracle tau (rows q2) (rows k1)))

        test "equal similarities give 2τ·log N a term, 4τ·log N symmetrised" {
            for n, tau in [ 1L, 0.2; 2L, 1.0; 5L, 0.2; 8L, 0.07 ] do
                use same = torch.ones(n, 3L, dtype = f64)
                use loss = MocoV3.contrastive tau same same
                near 1e-12 $"N = {n}, τ = {tau}" (scalar loss) (2.0 * tau * log (float n))
                use both = MocoV3.symmetric tau same same same same
                near 1e-12 $"symmetric, N = {n}" (scalar both) (4.0 * tau * log (float n))
        }

        Prop.propSmall "invariant to the rows' norms and to permuting queries and keys together" (fun (seed: int) ->
            use g = generator seed
            use q = randn g [| 5L; 4L |]
            use k = randn g [| 5L; 4L |]
            use scales = torch.rand([| 5L; 1L |], dtype = f64, generator = g) * 10.0 + 0.1
            use permutation = torch.randperm(5L, generator = g)
            use loss = MocoV3.contrastive 0.2 q k
            use scaled = MocoV3.contrastive 0.2 (q * scales) (k * scales.flip(0L))
            use permuted = MocoV3.contrastive 0.2 (q.index_select(0L, permutation)) (k.index_select(0L, permutation))
            near 1e-10 "scaled rows" (scalar scaled) (scalar loss)
            near 1e-10 "permuted rows" (scalar permuted) (scalar loss))

        test "no gradient reaches the keys (stop-gradient); the queries' matches finite differences" {
            use g = generator 3
            use q = (randn g [| 4L; 3L |]).requires_grad_(true)
            use k = (randn g [| 4L; 3L |]).requires_grad_(true)
            use loss = MocoV3.contrastive 0.2 q k
            loss.backward()
            Expect.isTrue (isNull k.grad || scalar (k.grad.abs().sum()) = 0.0) "keys get no gradient"
            Expect.isGreaterThan (scalar (q.grad.abs().sum())) 0.0 "queries get one"
            use q0 = randn g [| 4L; 3L |]
            use k0 = randn g [| 4L; 3L |]
            Check.gradcheck "contrastive wrt q" 1e-6 1e-6 (fun x -> MocoV3.contrastive 0.3 x k0) q0
            Check.gradcheck "symmetric wrt q1" 1e-6 1e-6 (fun x -> MocoV3.symmetric 0.3 x q0 k0 k0) q0
        }

        Prop.propSmall "instanceAccuracy equals the loop oracle" (fun (seed: int) ->
            use g = generator seed
            let n = 1L + int64 (abs seed % 7)
            use q = randn g [| n; 3L |]
            use k = q + randn g [| n; 3L |] * 0.5
            near 1e-12 "accuracy" (MocoV3.instanceAccuracy q k) (accuracyOracle (rows q) (rows k)))

        test "instanceAccuracy: 1 for distinct directions matched to themselves, 0 when every key is the same (ties miss)" {
            use eye = torch.eye(4L, dtype = f64)
            near 0.0 "identity" (MocoV3.instanceAccuracy eye (eye * 3.0)) 1.0
            use same = torch.ones(4L, 2L, dtype = f64)
            near 0.0 "all equal" (MocoV3.instanceAccuracy same same) 0.0
        }

        test "no tensor outlives a call but the result" {
            use g = generator 4
            use q = randn g [| 3L; 4L |]
            use k = randn g [| 3L; 4L |]
            Check.leavesOnlyResult "contrastive" (fun () -> MocoV3.contrastive 0.2 q k)
            Check.leavesOnlyResult "symmetric" (fun () -> MocoV3.symmetric 0.2 q k k q)
            Check.noLeak "instanceAccuracy" (fun () -> MocoV3.instanceAccuracy q k |> ignore)
        }

        test "bad shapes and hyper-parameters are named" {
            use a = torch.zeros(3L, 4L, dtype = f64)
            use b = torch.zeros(2L, 4L, dtype = f64)
            use flat = torch.zeros(3L, dtype = f64)
            use empty = torch.zeros(0L, 4L, dtype = f64)
            rejects "k" "expected shape (3, 4), found (2, 4)" (fun () -> (MocoV3.contrastive 0.2 a b).Dispose())
            rejects "q" "found (3)" (fun () -> (MocoV3.contrastive 0.2 flat flat).Dispose())
            rejects "q" "at least one element" (fun () -> (MocoV3.contrastive 0.2 empty empty).Dispose())
            rejects "temperature" "found 0" (fun () -> (MocoV3.contrastive 0.0 a a).Dispose())
            rejects "temperature" "found -1" (fun () -> (MocoV3.symmetric (-1.0) a a a a).Dispose())
            rejects "k" "expected shape (3, 4), found (2, 4)" (fun () -> MocoV3.instanceAccuracy a b |> ignore)
        }
    ]

let private mlpTests =
    testList "mlp" [
        test "builder.py's layers: linear without bias, BN and ReLU between, a last BN without affine where asked" {
            use projector = MocoV3Mlp.create 3 8L 16L 4L true
            let names = [ for struct (name, _) in projector.named_children () -> name ]
            Expect.sequenceEqual names [ "fc1"; "bn1"; "relu1"; "fc2"; "bn2"; "relu2"; "fc3"; "bn3" ] "projector layers"
            let count = projector.parameters () |> Seq.sumBy (fun p -> p.numel ())
            Expect.equal count (8L * 16L + 2L * 16L + 16L * 16L + 2L * 16L + 16L * 4L) "weights and the hidden BNs' affine only"
            use predictor = MocoV3Mlp.create 2 4L 16L 4L false
            Expect.sequenceEqual [ for struct (name, _) in predictor.named_children () -> name ] [ "fc1"; "bn1"; "relu1"; "fc2" ] "predictor layers"
            use x = torch.randn(5L, 8L)
            use y = projector.forward x
            Expect.sequenceEqual y.shape [| 5L; 4L |] "(N, outputDim)"
            let meanAbs = y.mean([| 0L |]).abs().max().item<float32>()
            Expect.isLessThan meanAbs 1e-4f "the last BN standardises each output over the batch"
        }
        test "bad sizes are named" {
            rejects "layers" "found 0" (fun () -> (MocoV3Mlp.create 0 4L 4L 4L true).Dispose())
            rejects "hiddenDim" "found 0" (fun () -> (MocoV3Mlp.create 2 4L 0L 4L true).Dispose())
        }
    ]

/// metrics.jsonl's step records (those with a loss).
let private steps (dir: string) =
    File.ReadAllLines(Path.Combine(dir, "metrics.jsonl"))
    |> Array.map (fun l -> JsonNode.Parse(l).AsObject())
    |> Array.filter (fun o -> o.ContainsKey "loss")

let private recipeTests =
    testList "recipe" [
        test "on a ViT the patch projection stays at its initialisation; the rest trains; loss, instance_acc and momentum are logged" {
            let dir = Fixtures.tempDir "moco-v3-vit"
            Expect.equal (Ssl.Experiments.Program.run [| "train"; "moco-v3"; "--preset"; "smoke"; "--out"; dir |]) 0 "exit code"
            let logged = steps dir
            Expect.isNonEmpty logged "step records"
            for key in [ "loss"; "instance_acc"; "momentum" ] do Expect.isTrue (logged[0].ContainsKey key) $"{key} logged"
            // The run seeds torch with --seed (0) before building: the first encoder drawn then is the initial one.
            torch.manual_seed(0L) |> ignore
            use initial = VisionTransformer.Tiny(1L, 7L, 1, 4L)
            use trained = VisionTransformer.Tiny(1L, 7L, 1, 4L)
            Ssl.Host.Export.EncoderExport.Load(trained, Path.Combine(dir, "export", "encoder.dat"))
            Check.close 0.0 0.0 "patch projection" trained.PatchEmbedding.Weight initial.PatchEmbedding.Weight
            Check.close 0.0 0.0 "patch bias" trained.PatchEmbedding.Bias initial.PatchEmbedding.Bias
            let moved = (trained.ClassToken - initial.ClassToken).abs().max().item<float32>()
            Expect.isGreaterThan moved 0.0f "the class token trained"
        }
        test "ssl train moco-v3 --preset smoke --set Encoder=smallconvnet-16 runs, probing the output" {
            let dir = Fixtures.tempDir "moco-v3-convnet"
            Expect.equal (Ssl.Experiments.Program.run [| "train"; "moco-v3"; "--preset"; "smoke"; "--out"; dir; "--set"; "Encoder=smallconvnet-16" |]) 0 "exit code"
            let config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))
            let layer = config.["probe"].["layer"].GetValue<string>()
            Expect.equal layer "" "class tokens fall back to the output"
            Expect.isTrue (File.Exists(Path.Combine(dir, "result.json"))) "result.json"
        }
    ]

[<Tests>]
let tests = testList "moco v3" [ lossTests; mlpTests; recipeTests ]
