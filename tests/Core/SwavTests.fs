/// SwAV's Sinkhorn codes, swapped prediction loss, prototypes and queue (Core's Swav) against loop oracles of
/// main_swav.py in float64, closed forms and the properties the paper relies on.
module Ssl.Tests.Core.SwavTests

open System
open Expecto
open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Tests

let private full (dtype: torch.ScalarType) (shape: int64[]) (value: float) = torch.full(shape, Scalar.op_Implicit value, dtype = dtype)

let private rejects (argument: string) (fragment: string) (f: unit -> unit) =
    let e = Prop.throws<ArgumentException> f
    Expect.equal e.ParamName argument "names the argument"
    Expect.stringContains e.Message fragment "says what was expected or found"

/// Scores of unit projections against unit prototypes, as the recipe makes them: cosines (B, K) in `dim` dimensions.
let private cosines (g: torch.Generator) (b: int64) (k: int64) (dim: int64) =
    use z = torch.nn.functional.normalize(randn g [| b; dim |], p = 2.0, dim = 1L)
    use c = torch.nn.functional.normalize(randn g [| k; dim |], p = 2.0, dim = 1L)
    z.matmul(c.t())

/// main_swav.py's distributed_sinkhorn on one process, loop by loop: Q = exp(scores / ε)ᵀ (K, B) over its total, then
/// `iterations` times rows (prototypes) to 1/K and columns (samples) to 1/B; Q · B, transposed.
let private sinkhornOracle (epsilon: float) (iterations: int) (scores: float[][]) =
    let b, k = scores.Length, scores[0].Length
    let q = Array.init k (fun j -> Array.init b (fun i -> exp (scores[i][j] / epsilon)))
    let total = q |> Array.sumBy Array.sum
    for j in 0 .. k - 1 do for i in 0 .. b - 1 do q[j][i] <- q[j][i] / total
    for _ in 1 .. iterations do
        for j in 0 .. k - 1 do
            let row = Array.sum q[j]
            for i in 0 .. b - 1 do q[j][i] <- q[j][i] / row / float k
        for i in 0 .. b - 1 do
            let column = q |> Array.sumBy (fun r -> r[i])
            for j in 0 .. k - 1 do q[j][i] <- q[j][i] / column / float b
    Array.init b (fun i -> Array.init k (fun j -> q[j][i] * float b))

/// main_swav.py's loss loop: for each codes crop i, Σ over crops v ≠ i of −mean_b Σ_k q log softmax(p_v / τ), over V − 1;
/// then the mean over the codes crops.
let private swappedOracle (tau: float) (codes: float[][][]) (scores: float[][]) =
    let n = codes[0].Length
    let crops = scores.Length / n
    let logSoftmax (xs: float[]) = let l = logSumExp (xs |> Array.map (fun x -> x / tau)) in xs |> Array.map (fun x -> x / tau - l)
    let perCrop i =
        let others = [ for v in 0 .. crops - 1 do if v <> i then Array.average (Array.init n (fun b -> -(dot codes.[i].[b] (logSoftmax scores.[v * n + b])))) ]
        List.sum others / float (crops - 1)
    Array.average (Array.init codes.Length perCrop)

/// Each prototype's mass over the batch (a column sum of the codes (B, K)).
let private masses (codes: torch.Tensor) = values (codes.sum(0L))

let private sinkhornTests =
    testList "sinkhorn" [
        Prop.propSmall "equals distributed_sinkhorn's loops in float64" (fun (seed: int) ->
            use g = generator seed
            let rnd = Random(seed)
            let b, k, iterations = int64 (rnd.Next(1, 7)), int64 (rnd.Next(1, 8)), rnd.Next(1, 6)
            let epsilon = 0.05 + rnd.NextDouble()
            use scores = randn g [| b; k |]
            use codes = Swav.sinkhorn epsilon iterations scores
            let expected = sinkhornOracle epsilon iterations (rows scores)
            Array.iter2 (Array.iter2 (near 1e-10 "code")) (rows codes) expected)
        Prop.propSmall "every sample's code is non-negative and sums to 1, after any number of iterations" (fun (seed: int) ->
            use g = generator seed
            let rnd = Random(seed)
            use scores = cosines g (int64 (rnd.Next(1, 40))) (int64 (rnd.Next(1, 20))) 8L
            use codes = Swav.sinkhorn 0.05 (rnd.Next(1, 5)) scores
            Expect.isTrue (codes.ge(torch.tensor(0.0, dtype = f64)).all().item<bool>()) "non-negative"
            values (codes.sum(1L)) |> Array.iter (near 1e-12 "a sample's code sums to 1" 1.0))
        Prop.propSmall "prototype masses: within 50% of B/K after 3 iterations on cosines in 128 dimensions, within 1e-9 after 200" (fun (seed: int) ->
            // The bound and how far 3 iterations are from it: docs/experiments/swav.md, "Sinkhorn's marginals".
            use g = generator seed
            let b, k = 64L, 16L
            use scores = cosines g b k 128L
            use three = Swav.sinkhorn 0.05 3 scores
            use limit = Swav.sinkhorn 0.05 200 scores
            let target = float b / float k
            masses three |> Array.iter (fun m -> Expect.isLessThan (abs (m - target) / target) 0.5 "3 iterations: within 50% of B/K")
            masses limit |> Array.iter (near 1e-9 "200 iterations: B/K" target))
        Prop.propSmall "the prototypes' L1 distance from B/K never grows from one iteration to the next" (fun (seed: int) ->
            use g = generator seed
            let rnd = Random(seed)
            let b, k = int64 (rnd.Next(2, 40)), int64 (rnd.Next(2, 12))
            use scores = cosines g b k (int64 (rnd.Next(2, 32)))
            let distance iterations =
                use codes = Swav.sinkhorn 0.05 iterations scores
                masses codes |> Array.sumBy (fun m -> abs (m - float b / float k))
            let distances = [ for i in 1 .. 5 -> distance i ]
            for a, next in List.pairwise distances do Expect.isLessThanOrEqual next (a + 1e-12) "non-increasing")
        Prop.propSmall "adding a constant to every score changes nothing; scaling the scores by c is ε / c" (fun (seed: int) ->
            use g = generator seed
            use scores = randn g [| 5L; 4L |]
            use codes = Swav.sinkhorn 0.1 3 scores
            use shifted = Swav.sinkhorn 0.1 3 (scores + 7.5)
            Array.iter2 (near 1e-12 "shift") (values shifted) (values codes)
            use scaled = Swav.sinkhorn 0.2 3 (scores * 2.0)
            Array.iter2 (near 1e-12 "scale") (values scaled) (values codes))
        test "uniform scores give uniform codes 1/K; one prototype per sample by far gives one-hot codes" {
            use uniform = Swav.sinkhorn 0.05 3 (full f64 [| 6L; 4L |] 0.3)
            values uniform |> Array.iter (near 1e-14 "1/K" 0.25)
            use diagonal = Swav.sinkhorn 0.05 3 (torch.eye(5L, dtype = f64))
            Array.iter2 (near 1e-8 "one-hot") (values diagonal) (values (torch.eye(5L, dtype = f64)))
        }
        test "no gradient: the codes are detached from the scores, on their device and dtype" {
            use scores = torch.randn(4L, 3L, requires_grad = true)
            use codes = Swav.sinkhorn 0.05 3 scores
            Expect.isFalse codes.requires_grad "codes carry no gradient"
            Expect.equal codes.dtype torch.float32 "the scores' dtype"
            Expect.equal codes.device.``type`` scores.device.``type`` "the scores' device"
        }
        test "float32 cosines at ε = 0.05 stay finite" {
            use g = generator 3
            use scores = (cosines g 256L 300L 128L).to_type(torch.float32)
            use codes = Swav.sinkhorn 0.05 3 scores
            Expect.isTrue (codes.isfinite().all().item<bool>()) "finite"
        }
        test "bad arguments are errors naming the argument" {
            rejects "epsilon" "> 0" (fun () -> (Swav.sinkhorn 0.0 3 (torch.zeros(2L, 2L))).Dispose())
            rejects "iterations" "at least 1" (fun () -> (Swav.sinkhorn 0.05 0 (torch.zeros(2L, 2L))).Dispose())
            rejects "scores" "(*, *)" (fun () -> (Swav.sinkhorn 0.05 3 (torch.zeros(2L))).Dispose())
            rejects "scores" "at least one element" (fun () -> (Swav.sinkhorn 0.05 3 (torch.zeros(0L, 3L))).Dispose())
        }
        test "leaves no tensor alive" {
            use scores = torch.randn(8L, 5L)
            Check.leavesOnlyResult "sinkhorn" (fun () -> Swav.sinkhorn 0.05 3 scores)
        }
    ]

let private swappedTests =
    testList "swapped prediction" [
        Prop.propSmall "equals main_swav's loss loop in float64" (fun (seed: int) ->
            use g = generator seed
            let rnd = Random(seed)
            let crops, n, k = rnd.Next(2, 6), int64 (rnd.Next(1, 5)), int64 (rnd.Next(1, 7))
            let assigned = rnd.Next(1, min crops 3 + 1)
            let tau = 0.05 + rnd.NextDouble()
            use scores = randn g [| int64 crops * n; k |] * 2.0
            use codes = torch.softmax(randn g [| int64 assigned; n; k |], 2)
            use loss = Swav.swappedPrediction tau codes scores
            let expected = swappedOracle tau [| for i in 0L .. int64 assigned - 1L -> rows (codes[i]) |] (rows scores)
            near 1e-10 "loss" (scalar loss) expected)
        Prop.propSmall "a crop does not predict its own codes: with codes of crop 0 only, crop 0's scores do not matter" (fun (seed: int) ->
            use g = generator seed
            use scores = randn g [| 9L; 4L |]
            use codes = torch.softmax(randn g [| 1L; 3L; 4L |], 2)
            use otherCrop0 = torch.cat([| randn g [| 3L; 4L |] * 5.0; scores.narrow(0L, 3L, 6L) |], 0L)
            use loss = Swav.swappedPrediction 0.1 codes scores
            use changed = Swav.swappedPrediction 0.1 codes otherCrop0
            near 1e-12 "crop 0" (scalar changed) (scalar loss)
            use otherCrop2 = torch.cat([| scores.narrow(0L, 0L, 6L); randn g [| 3L; 4L |] * 5.0 |], 0L)
            use changed2 = Swav.swappedPrediction 0.1 codes otherCrop2
            Expect.isFalse (abs (scalar changed2 - scalar loss) < 1e-12) "crop 2 predicts crop 0's codes")
        test "uniform codes against equal scores cost log K; codes equal to the predictions cost their entropy, any other more" {
            use codes = (full f64 [| 2L; 3L; 5L |] 0.2)
            use loss = Swav.swappedPrediction 0.1 codes (torch.zeros(12L, 5L, dtype = f64))
            near 1e-12 "log K" (scalar loss) (log 5.0)
            use g = generator 7
            use logits = randn g [| 3L; 5L |]
            use scores = logits.repeat(4L, 1L)
            use predictions = torch.softmax(logits / 0.1, 1)
            use matching = predictions.unsqueeze(0L).repeat(2L, 1L, 1L)
            let entropy = -(predictions * predictions.log()).sum(1L).mean() |> scalar
            near 1e-10 "H(q, q) = H(q)" (scalar (Swav.swappedPrediction 0.1 matching scores)) entropy
            use other = randn g [| 12L; 5L |]
            Expect.isGreaterThanOrEqual (scalar (Swav.swappedPrediction 0.1 matching other)) (entropy - 1e-12) "Gibbs"
        }
        test "no gradient reaches the codes; the scores get one" {
            use codes = torch.softmax(torch.randn(2L, 3L, 4L, dtype = f64), 2).requires_grad_(true)
            use scores = torch.randn(12L, 4L, dtype = f64, requires_grad = true)
            use loss = Swav.swappedPrediction 0.1 codes scores
            loss.backward()
            Expect.isNull codes.grad "codes have none"
            Expect.isGreaterThan (scores.grad.abs().sum().item<float>()) 0.0 "scores have one"
        }
        test "bad arguments are errors naming the argument" {
            let codes () = (full torch.float32 [| 2L; 3L; 4L |] 0.25)
            rejects "temperature" "> 0" (fun () -> (Swav.swappedPrediction -1.0 (codes ()) (torch.zeros(6L, 4L))).Dispose())
            rejects "codes" "(*, *, *)" (fun () -> (Swav.swappedPrediction 0.1 (torch.zeros(3L, 4L)) (torch.zeros(6L, 4L))).Dispose())
            rejects "scores" "(*, 4)" (fun () -> (Swav.swappedPrediction 0.1 (codes ()) (torch.zeros(6L, 5L))).Dispose())
            rejects "scores" "V >= 2" (fun () -> (Swav.swappedPrediction 0.1 (codes ()) (torch.zeros(7L, 4L))).Dispose())
            rejects "scores" "V >= 2" (fun () -> (Swav.swappedPrediction 0.1 (full torch.float32 [| 1L; 3L; 4L |] 0.25) (torch.zeros(3L, 4L))).Dispose())
            rejects "scores" "codes' 3 crops" (fun () -> (Swav.swappedPrediction 0.1 (full torch.float32 [| 3L; 2L; 4L |] 0.25) (torch.zeros(4L, 4L))).Dispose())
        }
        test "leaves no tensor alive; prototypesUsed counts the distinct winners" {
            use codes = torch.softmax(torch.randn(2L, 4L, 6L), 2)
            use scores = torch.randn(16L, 6L)
            Check.leavesOnlyResult "swappedPrediction" (fun () -> Swav.swappedPrediction 0.1 codes scores)
            use winners = torch.tensor([| 0.9; 0.1; 0.0; 0.8; 0.2; 0.0; 0.1; 0.0; 0.9 |]).reshape(3L, 3L)
            Check.noLeak "prototypesUsed" (fun () -> Expect.equal (Swav.prototypesUsed winners) 2 "prototypes 0 and 2")
            use uniform = Swav.sinkhorn 0.05 3 (torch.zeros(5L, 7L))
            Expect.equal (Swav.prototypesUsed uniform) 1 "collapsed: one"
        }
    ]

let private moduleTests =
    testList "prototypes and queue" [
        test "Normalise puts every prototype on the unit sphere; the scores are z·Cᵀ" {
            use prototypes = new Prototypes(6L, 10L)
            prototypes.Normalise()
            values (prototypes.Weight.norm(1)) |> Array.iter (near 1e-6 "unit" 1.0)
            use z = torch.randn(3L, 6L)
            use scores = prototypes.forward z
            Check.close 1e-6 1e-6 "z Cᵀ" scores (z.matmul(prototypes.Weight.t()))
            Expect.isEmpty (prototypes.named_parameters () |> Seq.filter (fun struct (name, _) -> name.Contains "bias")) "no bias"
        }
        test "Frozen stops the gradient to the prototypes, not to the projections" {
            use prototypes = new Prototypes(4L, 5L)
            prototypes.Frozen <- true
            use z = torch.randn([| 3L; 4L |], requires_grad = true)
            use loss = (prototypes.forward z).square().sum()
            loss.backward()
            Expect.isNull prototypes.Weight.grad "frozen: none"
            Expect.isNotNull z.grad "the projections get one"
            prototypes.Frozen <- false
            use again = (prototypes.forward z).square().sum()
            again.backward()
            Expect.isNotNull prototypes.Weight.grad "unfrozen: one"
        }
        test "the queue shifts down and writes the newest at the top; full once its last slot is written" {
            use queue = new AssignmentQueue(2L, 5L, 3L)
            Expect.isFalse (queue.IsFull 0L) "empty"
            use first = torch.ones(2L, 3L)
            use second = (full torch.float32 [| 2L; 3L |] 2.0)
            queue.Push(0L, first)
            queue.Push(0L, second)
            Expect.equal (values (queue.Embeddings(0L).select(1L, 0L))) [| 2.0; 2.0; 1.0; 1.0; 0.0 |] "newest first"
            Expect.isFalse (queue.IsFull 0L) "one slot left"
            Expect.equal (values (queue.Embeddings 1L)) (Array.zeroCreate 15) "crop 1 untouched"
            use third = (full torch.float32 [| 2L; 3L |] 3.0)
            queue.Push(0L, third)
            Expect.equal (values (queue.Embeddings(0L).select(1L, 0L))) [| 3.0; 3.0; 2.0; 2.0; 1.0 |] "oldest dropped"
            Expect.isTrue (queue.IsFull 0L) "full"
            use many = torch.arange(21.0).reshape(7L, 3L)
            queue.Push(1L, many)
            Expect.equal (values (queue.Embeddings(1L).select(1L, 0L))) [| 0.0; 3.0; 6.0; 9.0; 12.0 |] "B > length: the first rows"
            Expect.contains (queue.named_buffers () |> Seq.map (fun struct (name, _) -> name)) "embeddings" "a buffer, checkpointed"
            rejects "crop" "[0, 1]" (fun () -> queue.Push(2L, first))
            rejects "projections" "(*, 3)" (fun () -> queue.Push(0L, torch.zeros(2L, 4L)))
        }
        test "Assigned: the batch's scores alone until the queue is full, then the stored projections' scores above them" {
            use queue = new AssignmentQueue(1L, 4L, 2L)
            let score (z: torch.Tensor) = z.sum(1L, keepdim = true)
            use scores = torch.tensor([| 10.0f; 20.0f |]).reshape(2L, 1L)
            use z = torch.ones(2L, 2L)
            use first = queue.Assigned(0L, score, scores, z)
            Expect.equal (values first) [| 10.0; 20.0 |] "empty: the batch alone"
            use second = queue.Assigned(0L, score, scores, z * 2.0)
            Expect.equal (values second) [| 10.0; 20.0 |] "half full: the batch alone"
            use third = queue.Assigned(0L, score, scores, z)
            Expect.equal (values third) [| 4.0; 4.0; 2.0; 2.0; 10.0; 20.0 |] "full: the queue's scores (newest first), then the batch's"
            Expect.isFalse third.requires_grad "no gradient"
        }
    ]

[<Tests>]
let tests = testList "swav" [ sinkhornTests; swappedTests; moduleTests ]
