module Ssl.Tests.Core.LossTests

open System
open Expecto
open TorchSharp
open Ssl.Core.Losses
open Ssl.Tests

// ---- helpers: seeded float64 inputs, .NET copies for the loop oracles ----

let private unitRows (g: torch.Generator) (n: int64) (d: int64) =
    use raw = randn g [| n; d |]
    Contrastive.normalize raw

let private softplus (x: float) = if x > 30.0 then x else log (1.0 + exp x)

/// Relative tolerance against an exact softplus: torch's softplus returns x itself above its
/// threshold 20 (PyTorch's default), an error below e^-20 ≈ 2e-9.
let private softplusTolerance = 1e-8
let private softmax (xs: float[]) = let l = logSumExp xs in xs |> Array.map (fun x -> exp (x - l))
let private mean (xs: float[]) = Array.average xs

/// The argument named in an ArgumentException, and a fragment of its message.
let private rejects (argument: string) (fragment: string) (f: unit -> torch.Tensor) =
    let e = Prop.throws<ArgumentException> (fun () -> (f ()).Dispose())
    Expect.equal e.ParamName argument "names the argument"
    Expect.stringContains e.Message fragment "says what was expected or found"

// ---- contrastive ----

let private infoNceOracle (tau: float) (q: float[][]) (k: float[][]) (queue: float[][]) =
    Array.init q.Length (fun i ->
        let logits = Array.append [| dot q[i] k[i] / tau |] (queue |> Array.map (fun n -> dot q[i] n / tau))
        logSumExp logits - logits[0])
    |> mean

let private ntXentOracle (tau: float) (view1: float[][]) (view2: float[][]) =
    let z = Array.append view1 view2
    let n = view1.Length
    Array.init (2 * n) (fun i ->
        let others = [| for j in 0 .. 2 * n - 1 do if j <> i then dot z[i] z[j] / tau |]
        logSumExp others - dot z[i] z[(i + n) % (2 * n)] / tau)
    |> mean

let private ncOracle (tau: float) (z: float) (pn: float) (positive: float[]) (noise: float[][]) =
    let k = float noise[0].Length
    let p s = exp (s / tau) / z
    let h s = p s / (p s + k * pn)
    // 1 - h written as k Pn / (P + k Pn), as lemniscate's NCECriterion does: 1 - h cancels when h ≈ 1.
    let oneMinusH s = k * pn / (p s + k * pn)
    Array.init positive.Length (fun i -> -(log (h positive[i]) + (noise[i] |> Array.sumBy (fun s -> log (oneMinusH s)))))
    |> mean

let contrastiveTests =
    testList "contrastive" [
        Prop.propSmall "infoNce equals the loop oracle and is >= 0" (fun (seed: int) ->
            use g = generator seed
            let rnd = Random(seed)
            let n, d, k = int64 (rnd.Next(1, 5)), int64 (rnd.Next(1, 6)), int64 (rnd.Next(0, 7))
            let tau = 0.05 + rnd.NextDouble()
            use q = unitRows g n d
            use kPos = unitRows g n d
            use queue = unitRows g k d
            use loss = Contrastive.infoNce tau q kPos queue
            near 1e-10 "infoNce" (scalar loss) (infoNceOracle tau (rows q) (rows kPos) (rows queue))
            Expect.isGreaterThanOrEqual (scalar loss) 0.0 "InfoNCE is a cross-entropy")

        test "infoNce is log(K + 1) when all similarities are equal" {
            for k in [ 0L; 1L; 5L; 64L ] do
                use e = torch.tensor([| 0.6; 0.8 |], dtype = f64).unsqueeze(0L)
                use q = e.expand(3L, 2L)
                use queue = e.expand(k, 2L)
                use loss = Contrastive.infoNce 0.07 q q queue
                near 1e-12 $"K = {k}" (scalar loss) (log (float k + 1.0))
        }

        Prop.propSmall "infoNce does not depend on the order of the negatives" (fun (seed: int) ->
            use g = generator seed
            use q = unitRows g 3L 4L
            use kPos = unitRows g 3L 4L
            use queue = unitRows g 6L 4L
            use permutation = torch.randperm(6L, generator = g)
            use shuffled = queue.index_select(0L, permutation)
            use a = Contrastive.infoNce 0.2 q kPos queue
            use b = Contrastive.infoNce 0.2 q kPos shuffled
            near 1e-12 "shuffled queue" (scalar b) (scalar a))

        test "infoNce falls as the positive's similarity rises" {
            use g = generator 7
            use queue = unitRows g 8L 3L
            let lossAt (angle: float) =
                use q = torch.tensor([| 1.0; 0.0; 0.0 |], dtype = f64).unsqueeze(0L)
                use kPos = torch.tensor([| cos angle; sin angle; 0.0 |], dtype = f64).unsqueeze(0L)
                use loss = Contrastive.infoNce 0.1 q kPos queue
                scalar loss
            let losses = [ 3.0; 2.0; 1.0; 0.5; 0.0 ] |> List.map lossAt
            Expect.isTrue (List.pairwise losses |> List.forall (fun (a, b) -> b < a)) $"strictly falling: {losses}"
        }

        Prop.propSmall "infoNceInBatch equals the NT-Xent loop oracle, is >= 0 and symmetric in the views" (fun (seed: int) ->
            use g = generator seed
            let rnd = Random(seed)
            let n, d = int64 (rnd.Next(2, 6)), int64 (rnd.Next(1, 6))
            let tau = 0.05 + rnd.NextDouble()
            use view1 = unitRows g n d
            use view2 = unitRows g n d
            use loss = Contrastive.infoNceInBatch tau view1 view2
            use swapped = Contrastive.infoNceInBatch tau view2 view1
            near 1e-10 "NT-Xent" (scalar loss) (ntXentOracle tau (rows view1) (rows view2))
            near 1e-12 "views swapped" (scalar swapped) (scalar loss)
            Expect.isGreaterThanOrEqual (scalar loss) 0.0 "a cross-entropy")

        test "infoNceInBatch is log(2N - 1) when all similarities are equal" {
            for n in [ 2L; 3L; 16L ] do
                use e = torch.tensor([| 0.0; 1.0 |], dtype = f64).unsqueeze(0L)
                use view = e.expand(n, 2L)
                use loss = Contrastive.infoNceInBatch 0.5 view view
                near 1e-12 $"N = {n}" (scalar loss) (log (2.0 * float n - 1.0))
        }

        test "nce equals its closed form computed by hand" {
            // N = 2 anchors, k = 3 noise samples, τ = 0.5, Z = 40, Pn = 1/100.
            let positive = [| 0.9; 0.3 |]
            let noise = [| [| 0.1; -0.2; 0.4 |]; [| 0.0; 0.5; -0.7 |] |]
            let tau, z, pn = 0.5, 40.0, 0.01
            let h s = let p = exp (s / tau) / z in p / (p + 3.0 * pn)
            let expected =
                (-(log (h 0.9) + log (1.0 - h 0.1) + log (1.0 - h -0.2) + log (1.0 - h 0.4))
                 - (log (h 0.3) + log (1.0 - h 0.0) + log (1.0 - h 0.5) + log (1.0 - h -0.7))) / 2.0
            use p = torch.tensor(positive, dtype = f64)
            use s = torch.tensor(Array.concat noise, dtype = f64).reshape(2L, 3L)
            use loss = Contrastive.nce tau z pn p s
            near 1e-12 "nce" (scalar loss) expected
        }

        Prop.propSmall "nce equals the loop oracle, also for large similarities over a small τ" (fun (seed: int) ->
            use g = generator seed
            let rnd = Random(seed)
            let n, k = int64 (rnd.Next(1, 5)), int64 (rnd.Next(1, 8))
            let tau = 0.02 + rnd.NextDouble()
            use positive = randn g [| n |]
            use noise = randn g [| n; k |]
            use loss = Contrastive.nce tau 1000.0 (1.0 / 5000.0) positive noise
            Expect.isTrue (Double.IsFinite(scalar loss)) "finite"
            near softplusTolerance "nce" (scalar loss) (ncOracle tau 1000.0 (1.0 / 5000.0) (values positive) (rows noise)))

        test "estimateNormaliser is n times the mean of exp(s / τ)" {
            use s = torch.tensor([| 0.1; -0.3; 0.7; 0.2 |], dtype = torch.float32)
            let expected = 4096.0 * mean ([| 0.1; -0.3; 0.7; 0.2 |] |> Array.map (fun x -> exp (float (float32 x) / 0.07)))
            near 1e-9 "Z" (Contrastive.estimateNormaliser 4096L 0.07 s) expected
        }

        test "normalize gives unit rows in the same direction" {
            use x = torch.tensor([| 3.0; 4.0; 0.0; -2.0 |], dtype = f64).reshape(2L, 2L)
            use u = Contrastive.normalize x
            Check.close 1e-12 0.0 "unit rows" u (torch.tensor([| 0.6; 0.8; 0.0; -1.0 |], dtype = f64).reshape(2L, 2L))
        }

        test "gradients match finite differences (float64)" {
            use g = generator 3
            use q = unitRows g 3L 4L
            use kPos = unitRows g 3L 4L
            use queue = unitRows g 5L 4L
            Check.gradcheck "infoNce wrt q" 1e-6 1e-6 (fun x -> Contrastive.infoNce 0.3 x kPos queue) q
            Check.gradcheck "infoNce wrt queue" 1e-6 1e-6 (fun x -> Contrastive.infoNce 0.3 q kPos x) queue
            Check.gradcheck "infoNceInBatch wrt view1" 1e-6 1e-6 (fun x -> Contrastive.infoNceInBatch 0.3 x kPos) q
            use scores = randn g [| 3L; 5L |]
            Check.gradcheck "nce wrt positive and noise" 1e-6 1e-6
                (fun x -> Contrastive.nce 0.5 20.0 0.01 (x.select(1L, 0L)) (x.narrow(1L, 1L, 4L))) scores
            Check.gradcheck "normalize" 1e-6 1e-6 (fun x -> (Contrastive.normalize x * queue.narrow(0L, 0L, 3L)).sum()) q
        }

        test "no tensor outlives a call but the result" {
            use g = generator 4
            use q = unitRows g 3L 4L
            use queue = unitRows g 5L 4L
            use scores = randn g [| 3L; 4L |]
            use positive = scores.select(1L, 0L)
            Check.leavesOnlyResult "infoNce" (fun () -> Contrastive.infoNce 0.1 q q queue)
            Check.leavesOnlyResult "infoNceInBatch" (fun () -> Contrastive.infoNceInBatch 0.1 q q)
            Check.leavesOnlyResult "nce" (fun () -> Contrastive.nce 0.1 10.0 0.01 positive scores)
            Check.leavesOnlyResult "normalize" (fun () -> Contrastive.normalize q)
            Check.noLeak "estimateNormaliser" (fun () -> Contrastive.estimateNormaliser 10L 0.1 scores |> ignore)
        }

        test "bad shapes and hyper-parameters are named" {
            use a = torch.zeros(3L, 4L, dtype = f64)
            use b = torch.zeros(2L, 4L, dtype = f64)
            use c = torch.zeros(5L, 3L, dtype = f64)
            rejects "kPos" "expected shape (3, 4), found (2, 4)" (fun () -> Contrastive.infoNce 0.1 a b a)
            rejects "queue" "expected shape (*, 4), found (5, 3)" (fun () -> Contrastive.infoNce 0.1 a a c)
            rejects "temperature" "found 0" (fun () -> Contrastive.infoNce 0.0 a a a)
            rejects "view2" "expected shape (3, 4), found (2, 4)" (fun () -> Contrastive.infoNceInBatch 0.1 a b)
            rejects "view1" "at least 2 rows" (fun () -> Contrastive.infoNceInBatch 0.1 (a.narrow(0L, 0L, 1L)) (a.narrow(0L, 0L, 1L)))
            rejects "noise" "expected shape (3, *), found (2, 4)" (fun () -> Contrastive.nce 0.1 1.0 0.1 (a.select(1L, 0L)) b)
            rejects "noiseProbability" "found 2" (fun () -> Contrastive.nce 0.1 1.0 2.0 (a.select(1L, 0L)) a)
        }
    ]

// ---- mutual information ----

let mutualInformationTests =
    testList "mutual information" [
        Prop.propSmall "jensenShannon equals the oracle and is < 0" (fun (seed: int) ->
            use g = generator seed
            let rnd = Random(seed)
            use positive = randn g [| int64 (rnd.Next(1, 6)); 2L |] * 5.0
            use negative = randn g [| int64 (rnd.Next(1, 9)) |] * 5.0
            use estimate = MutualInformation.jensenShannon positive negative
            let expected = mean (values positive |> Array.map (fun t -> -softplus -t)) - mean (values negative |> Array.map softplus)
            near softplusTolerance "JSD estimate" (scalar estimate) expected
            Expect.isLessThan (scalar estimate) 0.0 "both terms are negative")

        Prop.prop "a constant critic T = c gives -sp(-c) - sp(c) <= -log 4, with equality at c = 0" (fun (c: FsCheck.NormalFloat) ->
            let c = Math.Clamp(c.Get, -50.0, 50.0)
            use scores = torch.ones(3L, dtype = f64) * c
            use estimate = MutualInformation.jensenShannon scores scores
            near softplusTolerance "constant critic" (scalar estimate) (-(softplus -c) - softplus c)
            Expect.isLessThanOrEqual (scalar estimate) (-log 4.0 + 1e-15) "at most -log 4")

        test "the estimate is -log 4 at T = 0 and tends to 0 for separated scores" {
            use zero = torch.zeros(4L, dtype = f64)
            use atZero = MutualInformation.jensenShannon zero zero
            near 1e-15 "T = 0" (scalar atZero) (-log 4.0)
            use high = torch.ones(4L, dtype = f64) * 30.0
            use separated = MutualInformation.jensenShannon high (-high)
            near 1e-12 "separated" (scalar separated) (-2.0 * softplus -30.0)
            Expect.isGreaterThan (scalar separated) -1e-12 "close to the supremum 0"
        }

        test "gradient and memory" {
            use g = generator 5
            use scores = randn g [| 6L |]
            Check.gradcheck "jensenShannon" 1e-6 1e-6 (fun x -> MutualInformation.jensenShannon (x.narrow(0L, 0L, 2L)) (x.narrow(0L, 2L, 4L))) scores
            Check.leavesOnlyResult "jensenShannon" (fun () -> MutualInformation.jensenShannon scores scores)
            use empty = torch.zeros(0L, dtype = f64)
            rejects "negativeScores" "at least one element" (fun () -> MutualInformation.jensenShannon scores empty)
        }
    ]

// ---- adversarial ----

let private hinge (t: float) = max 0.0 (1.0 - t)

let adversarialTests =
    testList "adversarial" [
        Prop.propSmall "hinge and non-saturating losses equal their oracles" (fun (seed: int) ->
            use g = generator seed
            use real = randn g [| 5L |] * 2.0
            use fake = randn g [| 3L |] * 2.0
            let r, f = values real, values fake
            use hd = Adversarial.hingeDiscriminator real fake
            use hg = Adversarial.hingeGenerator fake
            use nd = Adversarial.nonSaturatingDiscriminator real fake
            use ng = Adversarial.nonSaturatingGenerator fake
            near 1e-12 "hinge D" (scalar hd) (mean (r |> Array.map hinge) + mean (f |> Array.map (fun s -> hinge -s)))
            near 1e-12 "hinge G" (scalar hg) (-(mean f))
            let logSigmoid s = -(softplus -s)
            near 1e-12 "non-saturating D" (scalar nd) (-(mean (r |> Array.map logSigmoid)) - mean (f |> Array.map (fun s -> log (1.0 - exp (logSigmoid s)))))
            near 1e-12 "non-saturating G" (scalar ng) (-(mean (f |> Array.map logSigmoid))))

        test "closed forms: hinge is 0 past the margins, non-saturating is log 2 per term at 0" {
            use real = torch.tensor([| 1.0; 3.0 |], dtype = f64)
            use fake = torch.tensor([| -1.0; -2.5 |], dtype = f64)
            use hd = Adversarial.hingeDiscriminator real fake
            near 0.0 "hinge D past the margins" (scalar hd) 0.0
            use zero = torch.zeros(3L, dtype = f64)
            use nd = Adversarial.nonSaturatingDiscriminator zero zero
            use ng = Adversarial.nonSaturatingGenerator zero
            near 1e-15 "D at 0" (scalar nd) (2.0 * log 2.0)
            near 1e-15 "G at 0" (scalar ng) (log 2.0)
        }

        Prop.propSmall "bigBiGan equals the per-pair formula of Donahue & Simonyan (eq. 3-5)" (fun (seed: int) ->
            use g = generator seed
            let rnd = Random(seed)
            let n, m = int64 (rnd.Next(1, 5)), int64 (rnd.Next(1, 5))
            use realScores = randn g [| 3L; n |] * 2.0
            use fakeScores = randn g [| 3L; m |] * 2.0
            let real = { Adversarial.X = realScores[0]; Adversarial.Z = realScores[1]; Adversarial.XZ = realScores[2] }
            let fake = { Adversarial.X = fakeScores[0]; Adversarial.Z = fakeScores[1]; Adversarial.XZ = fakeScores[2] }
            let losses = Adversarial.bigBiGan real fake
            let r, f = rows realScores, rows fakeScores
            let perPair (y: float) (s: float[][]) j = hinge (y * s[0][j]) + hinge (y * s[1][j]) + hinge (y * s[2][j])
            let scoreSum (s: float[][]) j = s[0][j] + s[1][j] + s[2][j]
            let d = mean (Array.init (int n) (perPair 1.0 r)) + mean (Array.init (int m) (perPair -1.0 f))
            let eg = mean (Array.init (int n) (scoreSum r)) - mean (Array.init (int m) (scoreSum f))
            near 1e-12 "D" (scalar losses.Discriminator) d
            near 1e-12 "E/G" (scalar losses.EncoderGenerator) eg
            Expect.isGreaterThanOrEqual (scalar losses.Discriminator) 0.0 "a sum of hinges"
            for t in [ real.X; real.Z; real.XZ; fake.X; fake.Z; fake.XZ; losses.Discriminator; losses.EncoderGenerator ] do t.Dispose())

        test "gradient, memory and shapes" {
            use g = generator 6
            use scores = randn g [| 6L |]
            Check.gradcheck "nonSaturatingDiscriminator" 1e-6 1e-6 (fun x -> Adversarial.nonSaturatingDiscriminator (x.narrow(0L, 0L, 3L)) (x.narrow(0L, 3L, 3L))) scores
            Check.leavesOnlyResult "hingeDiscriminator" (fun () -> Adversarial.hingeDiscriminator scores scores)
            Check.leavesOnlyResult "hingeGenerator" (fun () -> Adversarial.hingeGenerator scores)
            Check.leavesOnlyResult "nonSaturatingDiscriminator" (fun () -> Adversarial.nonSaturatingDiscriminator scores scores)
            Check.leavesOnlyResult "nonSaturatingGenerator" (fun () -> Adversarial.nonSaturatingGenerator scores)
            let pair = { Adversarial.X = scores; Adversarial.Z = scores; Adversarial.XZ = scores }
            Check.noLeak "bigBiGan" (fun () ->
                let losses = Adversarial.bigBiGan pair pair
                losses.Discriminator.Dispose()
                losses.EncoderGenerator.Dispose())
            use short = torch.zeros(4L, dtype = f64)
            let e = Prop.throws<ArgumentException> (fun () -> Adversarial.bigBiGan pair { pair with Z = short } |> ignore)
            Expect.equal e.ParamName "fake.Z" "names the score"
            Expect.stringContains e.Message "expected shape (6), found (4)" "expected and found"
        }
    ]

// ---- entropy ----

let entropyTests =
    testList "entropy" [
        Prop.propSmall "entropy equals the oracle and lies in [0, log C]" (fun (seed: int) ->
            use g = generator seed
            let rnd = Random(seed)
            let c = rnd.Next(1, 8)
            use logits = randn g [| int64 (rnd.Next(1, 5)); int64 c |] * 4.0
            use h = Entropy.entropy logits
            let expected = rows logits |> Array.map (fun l -> softmax l |> Array.sumBy (fun p -> -p * log p)) |> mean
            near 1e-10 "entropy" (scalar h) expected
            Expect.isGreaterThanOrEqual (scalar h) -1e-15 ">= 0"
            Expect.isLessThanOrEqual (scalar h) (log (float c) + 1e-12) "<= log C")

        test "0 for one-hot-like logits, log C for uniform ones" {
            use oneHot = torch.tensor([| 1000.0; 0.0; 0.0; 0.0; -1000.0; 0.0 |], dtype = f64).reshape(2L, 3L)
            use h0 = Entropy.entropy oneHot
            Expect.isFalse (Double.IsNaN(scalar h0)) "no NaN from 0 log 0"
            near 1e-15 "one-hot row and a two-way tie" (scalar h0) (log 2.0 / 2.0)
            use sharp = torch.tensor([| 1000.0; 0.0; 0.0 |], dtype = f64).unsqueeze(0L)
            use hSharp = Entropy.entropy sharp
            near 0.0 "one-hot" (scalar hSharp) 0.0
            use uniform = torch.ones(4L, 10L, dtype = f64) * 3.0
            use hUniform = Entropy.entropy uniform
            near 1e-14 "uniform" (scalar hUniform) (log 10.0)
        }

        test "gradient and memory" {
            use g = generator 8
            use logits = randn g [| 3L; 4L |]
            Check.gradcheck "entropy" 1e-6 1e-6 Entropy.entropy logits
            Check.leavesOnlyResult "entropy" (fun () -> Entropy.entropy logits)
        }
    ]

// ---- FixMatch ----

/// FixMatch eq. 4 in loops: per image the weak view's softmax, its argmax and max, the strong
/// view's cross-entropy to that argmax where the max ≥ τ; the mean over all images. Ties go to the
/// first class, as torch's max.
let private pseudoLabelOracle (threshold: float) (weak: float[][]) (strong: float[][]) =
    let terms =
        Array.map2 (fun (w: float[]) (s: float[]) ->
            let q = softmax w
            let best = Array.max q
            let label = Array.findIndex ((=) best) q
            let kept = best >= threshold
            (if kept then logSumExp s - s[label] else 0.0), (if kept then 1.0 else 0.0), label) weak strong
    (terms |> Array.averageBy (fun (l, _, _) -> l)), (terms |> Array.averageBy (fun (_, m, _) -> m)), (terms |> Array.map (fun (_, _, k) -> int64 k))

let fixMatchTests =
    testList "fixmatch" [
        Prop.propSmall "pseudoLabelLoss equals the loop oracle: loss, mask rate, pseudo-labels" (fun (seed: int) ->
            use scope = torch.NewDisposeScope()
            use g = generator seed
            let rnd = Random(seed)
            let n, c = int64 (rnd.Next(1, 9)), int64 (rnd.Next(2, 7))
            // Scaled so that some rows pass τ and some do not.
            let weak = randn g [| n; c |] * 4.0
            let strong = randn g [| n; c |] * 2.0
            let threshold = [| 0.0; 0.5; 0.8; 0.95 |][rnd.Next(4)]
            let r = FixMatch.pseudoLabelLoss threshold weak strong
            let loss, rate, labels = pseudoLabelOracle threshold (rows weak) (rows strong)
            near 1e-12 "loss" (scalar r.Loss) loss
            near 1e-12 "mask rate" (scalar r.MaskRate) rate
            Expect.equal (r.PseudoLabels.data<int64>().ToArray()) labels "pseudo-labels"
            Expect.equal (values (r.Mask.to_type(f64))) (rows weak |> Array.map (fun w -> if Array.max (softmax w) >= threshold then 1.0 else 0.0)) "mask")

        test "the mean runs over all μB images: masked ones count as 0" {
            // Row 0 is confident (q ≈ 1 on class 0), row 1 uniform: mean = half of row 0's cross-entropy.
            use weak = torch.tensor([| 20.0; 0.0; 0.0; 0.0; 0.0; 0.0 |], dtype = f64).view(2L, 3L)
            use strong = torch.tensor([| 1.0; 2.0; 3.0; 0.0; 0.0; 9.0 |], dtype = f64).view(2L, 3L)
            let r = FixMatch.pseudoLabelLoss 0.95 weak strong
            near 1e-12 "loss" (scalar r.Loss) ((logSumExp [| 1.0; 2.0; 3.0 |] - 1.0) / 2.0)
            near 0.0 "mask rate" (scalar r.MaskRate) 0.5
        }

        test "τ above 1 masks everything: zero loss, zero gradient, mask rate 0" {
            use g = generator 5
            use weak = (randn g [| 6L; 4L |] * 10.0).requires_grad_(true)
            use strong = (randn g [| 6L; 4L |]).requires_grad_(true)
            let r = FixMatch.pseudoLabelLoss 1.01 weak strong
            near 0.0 "loss" (scalar r.Loss) 0.0
            near 0.0 "mask rate" (scalar r.MaskRate) 0.0
            r.Loss.backward()
            near 0.0 "strong gradient" (scalar (strong.grad.abs().sum())) 0.0
        }

        test "no gradient reaches the weak view's logits; the strong view's is the masked softmax minus one-hot over μB" {
            use g = generator 6
            use weak = (randn g [| 5L; 3L |] * 5.0).requires_grad_(true)
            use strong = (randn g [| 5L; 3L |]).requires_grad_(true)
            let r = FixMatch.pseudoLabelLoss 0.7 weak strong
            r.Loss.backward()
            Expect.isTrue (isNull weak.grad || scalar (weak.grad.abs().sum()) = 0.0) "weak logits get no gradient"
            let mask = values (r.Mask.to_type(f64))
            let labels = r.PseudoLabels.data<int64>().ToArray()
            let expected =
                rows strong |> Array.mapi (fun i s ->
                    softmax s |> Array.mapi (fun k p -> mask[i] * (p - (if int64 k = labels[i] then 1.0 else 0.0)) / 5.0))
            Check.close 1e-12 0.0 "strong gradient" strong.grad (torch.tensor(Array.concat expected, dtype = f64).view(5L, 3L))
            Expect.isGreaterThan (Array.sum mask) 0.0 "some rows pass τ, so the check above is not vacuous"
        }

        test "bad input names the argument; no leak" {
            use weak = torch.zeros(4L, 3L, dtype = f64)
            rejects "threshold" "τ >= 0" (fun () -> (FixMatch.pseudoLabelLoss -0.1 weak weak).Loss)
            rejects "threshold" "finite" (fun () -> (FixMatch.pseudoLabelLoss nan weak weak).Loss)
            rejects "strongLogits" "(4, 3)" (fun () -> (FixMatch.pseudoLabelLoss 0.95 weak (torch.zeros(4L, 2L, dtype = f64))).Loss)
            rejects "weakLogits" "at least one element" (fun () -> (FixMatch.pseudoLabelLoss 0.95 (torch.zeros(0L, 3L)) (torch.zeros(0L, 3L))).Loss)
            Check.noLeak "pseudoLabelLoss" (fun () ->
                let r = FixMatch.pseudoLabelLoss 0.5 weak weak
                for t in [ r.Loss; r.Mask; r.MaskRate; r.PseudoLabels ] do t.Dispose())
        }
    ]

// ---- FlexMatch, FreeMatch, SoftMatch (AdaptiveThresholds.fs), against USB's hooks in loops ----

/// Rows of class probabilities, softmax of scaled normal logits (some confident, some not).
let private probabilities (g: torch.Generator) (n: int64) (c: int64) =
    use logits = randn g [| n; c |] * 3.0
    logits.softmax(1L)

let private argmaxOf (row: float[]) = let best = Array.max row in Array.findIndex ((=) best) row

/// USB's FlexMatchThresholdingHook.update: counts of the selections (class or -1); where the
/// largest is below U, β_c = count_c / the largest count (with -1 under warm-up, without it otherwise).
let private flexStatusOracle (warmup: bool) (previous: float[]) (selected: int64[]) =
    let count k = selected |> Array.filter ((=) k) |> Array.length |> float
    let classes = previous.Length
    let all = [ -1L .. int64 classes - 1L ] |> List.map count |> List.max
    if all >= float selected.Length then previous
    else
        let largest = if warmup then all else [ 0L .. int64 classes - 1L ] |> List.map count |> List.max
        Array.init classes (fun c -> count (int64 c) / largest)

let private flexMaskOracle (threshold: float) (status: float[]) (probs: float[][]) =
    probs |> Array.map (fun q -> let b = status[argmaxOf q] in if Array.max q >= threshold * b / (2.0 - b) then 1.0 else 0.0)

let private flexSelectOracle (threshold: float) (selected: int64[]) (pool: int64[]) (probs: float[][]) =
    let updated = Array.copy selected
    probs |> Array.iteri (fun i q -> if Array.max q >= threshold then updated[int pool[i]] <- int64 (argmaxOf q))
    updated

let private longs (t: torch.Tensor) = t.data<int64>().ToArray()

let adaptiveThresholdTests =
    testList "adaptive thresholds" [
        Prop.propSmall "weightedLoss: the mean over all images of w_b times the strong view's cross-entropy" (fun (seed: int) ->
            use scope = torch.NewDisposeScope()
            use g = generator seed
            let n, c = int64 (Random(seed).Next(1, 9)), 4L
            let strong = randn g [| n; c |]
            let weights = torch.rand([| n |], dtype = f64, generator = g)
            let labels = torch.randint(c, [| n |], generator = g)
            let labelArray, weightArray = longs labels, values weights
            let expected = rows strong |> Array.mapi (fun i s -> weightArray[i] * (logSumExp s - s[int labelArray[i]])) |> Array.average
            near 1e-12 "loss" (scalar (FixMatch.weightedLoss weights labels strong)) expected)

        Prop.propSmall "FlexMatch: mask, selections and learning status equal USB's hook in loops, warm-up on and off" (fun (seed: int) ->
            use scope = torch.NewDisposeScope()
            use g = generator seed
            let rnd = Random(seed)
            let u, n, c = 40L, int64 (rnd.Next(1, 12)), int64 (rnd.Next(2, 6))
            let warmup = rnd.Next(2) = 0
            let threshold = [| 0.3; 0.6; 0.95 |][rnd.Next(3)]
            let selectedArray = Array.init (int u) (fun _ -> if rnd.Next(3) = 0 then -1L else int64 (rnd.Next(int c)))
            let selected = torch.tensor(selectedArray)
            let status = torch.rand([| c |], dtype = f64, generator = g)
            let pool = torch.randperm(u, generator = g).narrow(0L, 0L, n)
            let probs = probabilities g n c
            let mask, statusNext, selectedNext = FlexMatch.step warmup threshold status selected pool probs
            let expectedSelected = flexSelectOracle threshold selectedArray (longs pool) (rows probs)
            Expect.equal (values mask) (flexMaskOracle threshold (values status) (rows probs)) "the mask reads the status before the batch"
            Expect.equal (longs selectedNext) expectedSelected "selections"
            Check.close 1e-12 0.0 "status" statusNext (torch.tensor(flexStatusOracle warmup (values status) expectedSelected, dtype = f64)))

        test "FlexMatch: at the start (every image unselected) the status stays 0, so every threshold is 0 under warm-up" {
            use previous = torch.zeros(3L, dtype = f64)
            use selected = torch.full([| 10L |], FlexMatch.unselected.ToScalar())
            use status = FlexMatch.learningStatus true previous selected
            Expect.equal (values status) [| 0.0; 0.0; 0.0 |] "unchanged"
            use probs = torch.tensor([| 0.4; 0.3; 0.3 |], dtype = f64).view(1L, 3L)
            Expect.equal (values (FlexMatch.mask 0.95 status probs)) [| 1.0 |] "τ·M(0) = 0: the unsure image passes"
        }

        Prop.propSmall "FreeMatch: the state update, the mask from the updated state and the fairness loss equal USB in loops" (fun (seed: int) ->
            use scope = torch.NewDisposeScope()
            use g = generator seed
            let rnd = Random(seed)
            let n, c = int64 (rnd.Next(2, 12)), int64 (rnd.Next(2, 6))
            let m = [| 0.0; 0.9; 0.999 |][rnd.Next(3)]
            let start = { FreeMatch.initial c f64 with Threshold = torch.tensor(rnd.NextDouble(), dtype = f64); ClassProbabilities = probabilities g 1L c |> fun t -> t.squeeze(0L) }
            let probs = probabilities g n c
            let mask, next = FreeMatch.step m start probs
            let q = rows probs
            let hist = Array.init (int c) (fun k -> q |> Array.filter (fun r -> argmaxOf r = k) |> Array.length |> float)
            let ema (o: float) (b: float) = m * o + (1.0 - m) * b
            let tau = ema (scalar start.Threshold) (q |> Array.averageBy Array.max)
            let startP, startH = values start.ClassProbabilities, values start.Histogram
            let pModel : float[] = Array.init (int c) (fun k -> ema startP[k] (q |> Array.averageBy (fun r -> r[k])))
            let labelHist : float[] = Array.init (int c) (fun k -> ema startH[k] (hist[k] / float n))
            near 1e-12 "τ_t" (scalar next.Threshold) tau
            Check.close 1e-12 0.0 "p̃_t" next.ClassProbabilities (torch.tensor(pModel, dtype = f64))
            Check.close 1e-12 0.0 "h̃_t" next.Histogram (torch.tensor(labelHist, dtype = f64))
            let expectedMask = q |> Array.map (fun r -> if Array.max r >= tau * pModel[argmaxOf r] / Array.max pModel then 1.0 else 0.0)
            Expect.equal (values mask) expectedMask "mask from the updated state"
            // The fairness loss over the masked rows of random strong logits.
            let strong = randn g [| n; c |]
            let loss = FreeMatch.fairnessLoss next mask strong
            let kept = Array.zip (rows strong) expectedMask |> Array.filter (fun (_, w) -> w > 0.0) |> Array.map (fst >> softmax)
            let expected =
                if kept.Length = 0 then 0.0
                else
                    let inv x = if x = 0.0 then 0.0 else 1.0 / x
                    let histS = Array.init (int c) (fun k -> (kept |> Array.filter (fun r -> argmaxOf r = k) |> Array.length |> float) / float kept.Length)
                    let norm (xs: float[]) = let s = Array.sum xs in xs |> Array.map (fun x -> x / s)
                    let target = norm (Array.init (int c) (fun k -> pModel[k] * inv labelHist[k]))
                    let predicted = norm (Array.init (int c) (fun k -> (kept |> Array.averageBy (fun r -> r[k])) * inv histS[k]))
                    Array.fold2 (fun acc t p -> acc + t * log (p + 1e-12)) 0.0 target predicted
            near 1e-10 "L_f" (scalar loss) expected)

        Prop.propSmall "SoftMatch: alignment, μ_t and σ²_t updated before the weights, as USB's hooks in loops" (fun (seed: int) ->
            use scope = torch.NewDisposeScope()
            use g = generator seed
            let rnd = Random(seed)
            let n, c = int64 (rnd.Next(2, 12)), int64 (rnd.Next(2, 6))
            let m = [| 0.0; 0.9; 0.999 |][rnd.Next(3)]
            let first = rnd.Next(2) = 0
            let start =
                { SoftMatch.initial c f64 with
                    ClassProbabilities = (probabilities g 1L c).squeeze(0L); Mean = torch.tensor(rnd.NextDouble(), dtype = f64)
                    Variance = torch.tensor(0.01 + rnd.NextDouble(), dtype = f64); Steps = torch.tensor((if first then 0.0 else 5.0), dtype = f64) }
            let probs = probabilities g n c
            let weights, next = SoftMatch.step m 2.0 start probs
            let q = rows probs
            let batchMean = Array.init (int c) (fun k -> q |> Array.averageBy (fun r -> r[k]))
            let pModel = if first then batchMean else Array.map2 (fun o b -> m * o + (1.0 - m) * b) (values start.ClassProbabilities) batchMean
            let aligned = q |> Array.map (fun r -> let a = Array.init (int c) (fun k -> r[k] * (1.0 / float c + 1e-6) / (pModel[k] + 1e-6)) in let s = Array.sum a in a |> Array.map (fun x -> x / s))
            let conf = aligned |> Array.map Array.max
            let avg = Array.average conf
            let var = (conf |> Array.sumBy (fun x -> (x - avg) ** 2.0)) / float (n - 1L)
            let mu = m * scalar start.Mean + (1.0 - m) * avg
            let sigma2 = m * scalar start.Variance + (1.0 - m) * var
            Check.close 1e-12 0.0 "p_model" next.ClassProbabilities (torch.tensor(pModel, dtype = f64))
            near 1e-12 "μ_t" (scalar next.Mean) mu
            near 1e-12 "σ²_t" (scalar next.Variance) sigma2
            let expected = conf |> Array.map (fun x -> let d = min (x - mu) 0.0 in exp (-(d * d) / (2.0 * sigma2 / 4.0)))
            Check.close 1e-12 0.0 "weights" weights (torch.tensor(expected, dtype = f64)))

        Prop.propSmall "UDA: sharpened soft targets, the confidence mask and the weighted soft cross-entropy equal loops" (fun (seed: int) ->
            use scope = torch.NewDisposeScope()
            use g = generator seed
            let rnd = Random(seed)
            let n, c = int64 (rnd.Next(1, 9)), int64 (rnd.Next(2, 6))
            let weak = randn g [| n; c |] * 3.0
            let strong = randn g [| n; c |]
            let temperature, threshold = [| 0.4; 1.0 |][rnd.Next(2)], [| 0.5; 0.8 |][rnd.Next(2)]
            let soft, mask = Uda.targets temperature threshold weak
            let w = rows weak
            Check.close 1e-12 0.0 "targets" soft (torch.tensor(Array.concat (w |> Array.map (fun r -> softmax (r |> Array.map (fun x -> x / temperature)))), dtype = f64).view(n, c))
            Expect.equal (values mask) (w |> Array.map (fun r -> if Array.max (softmax r) >= threshold then 1.0 else 0.0)) "mask"
            let t, m = rows soft, values mask
            let expected = rows strong |> Array.mapi (fun i s -> let l = logSumExp s in m[i] * (Array.map2 (fun ti si -> -ti * (si - l)) t[i] s |> Array.sum)) |> Array.average
            near 1e-12 "loss" (scalar (Uda.consistencyLoss mask soft strong)) expected)

        test "UDA: TSA thresholds grow from about 1/K towards 1 under every schedule; none keeps every example" {
            for schedule in [ Uda.Linear; Uda.Exponential; Uda.Logarithmic ] do
                Expect.isLessThan (Uda.tsaThreshold schedule 0.0 10) (Uda.tsaThreshold schedule 0.5 10) $"{schedule} grows"
                Expect.isLessThan (Uda.tsaThreshold schedule 0.5 10) (Uda.tsaThreshold schedule 1.0 10) $"{schedule} grows"
            near 1e-12 "linear at the end" (Uda.tsaThreshold Uda.Linear 1.0 10) 1.0
            near 1e-12 "exp at the end" (Uda.tsaThreshold Uda.Exponential 1.0 10) 1.0
            near 1e-12 "log at the end" (Uda.tsaThreshold Uda.Logarithmic 1.0 10) ((1.0 - exp -5.0) * 0.9 + 0.1)
            near 1e-12 "linear at the start" (Uda.tsaThreshold Uda.Linear 0.0 10) 0.1
            near 1e-12 "linear midway" (Uda.tsaThreshold Uda.Linear 0.5 10) 0.55
            near 1e-12 "log midway" (Uda.tsaThreshold Uda.Logarithmic 0.5 4) ((1.0 - exp -2.5) * 0.75 + 0.25)
            near 1e-12 "exp midway" (Uda.tsaThreshold Uda.Exponential 0.5 4) (exp -2.5 * 0.75 + 0.25)
            near 0.0 "none" (Uda.tsaThreshold Uda.NoAnnealing 0.0 10) 1.0
        }

        test "bad input names the argument" {
            use probs = torch.full([| 1L; 3L |], (1.0 / 3.0).ToScalar(), dtype = f64)
            rejects "probs" "at least 2 rows" (fun () -> (snd (SoftMatch.step 0.9 2.0 (SoftMatch.initial 3L f64) probs)).Mean)
            rejects "probs" "(*, 4)" (fun () -> FreeMatch.mask (FreeMatch.initial 4L f64) probs)
            rejects "weights" "(2)" (fun () -> FixMatch.weightedLoss (torch.ones(3L)) (torch.zeros(2L, dtype = torch.int64)) (torch.zeros(2L, 3L)))
        }
    ]

// ---- MixMatch ----

let private oneHot (labels: int[]) (classes: int) =
    torch.tensor(Array.init (labels.Length * classes) (fun i -> if labels[i / classes] = i % classes then 1.0 else 0.0), dtype = f64)
        .reshape(int64 labels.Length, int64 classes)

let mixMatchTests =
    testList "mixmatch" [
        test "sampleBeta: in [0, 1], mean 1/2 and variance 1/(4(2α + 1)), replayable from its seed" {
            for alpha in [ 0.75; 2.0 ] do
                use g = generator 11
                use draws = MixMatch.sampleBeta alpha g torch.CPU 20000L
                let xs = values draws
                Expect.isTrue (xs |> Array.forall (fun x -> x >= 0.0 && x <= 1.0)) "in [0, 1]"
                near 0.01 $"mean (α = {alpha})" (mean xs) 0.5
                let variance = xs |> Array.averageBy (fun x -> (x - 0.5) ** 2.0)
                near 0.005 $"variance (α = {alpha})" variance (1.0 / (4.0 * (2.0 * alpha + 1.0)))
            use g1 = generator 12
            use g2 = generator 12
            use a = MixMatch.sampleBeta 0.75 g1 torch.CPU 8L
            use b = MixMatch.sampleBeta 0.75 g2 torch.CPU 8L
            Check.close 0.0 0.0 "same seed, same draws" a b
        }

        Prop.propSmall "mixMatchLambda is max(λ, 1 - λ) >= 0.5" (fun (seed: int) ->
            use g = generator seed
            use lambdas = MixMatch.sampleBeta 0.75 g torch.CPU 16L
            use primed = MixMatch.mixMatchLambda lambdas
            Array.iter2 (fun l p -> near 0.0 "max" p (max l (1.0 - l)); Expect.isGreaterThanOrEqual p 0.5 "λ' >= 0.5") (values lambdas) (values primed))

        Prop.propSmall "mixUpWith equals the loop oracle, mixes convexly and keeps targets summing to 1" (fun (seed: int) ->
            use g = generator seed
            let rnd = Random(seed)
            let n, classes = rnd.Next(1, 6), rnd.Next(2, 5)
            use inputs = randn g [| int64 n; 2L; 3L |]
            use targets = oneHot (Array.init n (fun _ -> rnd.Next classes)) classes
            use lambdas = torch.rand([| int64 n |], dtype = f64, generator = g)
            use permutation = torch.randperm(int64 n, generator = g)
            let mixedInputs, mixedTargets = MixMatch.mixUpWith lambdas permutation inputs targets
            use mixedInputs = mixedInputs
            use mixedTargets = mixedTargets
            let l, p = values lambdas, values permutation |> Array.map int
            let x, xm = rows (inputs.reshape(int64 n, 6L)), rows (mixedInputs.reshape(int64 n, 6L))
            for i in 0 .. n - 1 do
                for j in 0 .. 5 do
                    let own, partner, mixed = x[i][j], x[p[i]][j], xm[i][j]
                    near 1e-12 "oracle" mixed (l[i] * own + (1.0 - l[i]) * partner)
                    Expect.isTrue (mixed >= min own partner - 1e-12 && mixed <= max own partner + 1e-12) "between the two inputs"
            for row in rows mixedTargets do near 1e-12 "targets sum to 1" (Array.sum row) 1.0)

        test "mixUpWith: λ = 1 is the identity, λ = 0 the partner" {
            use g = generator 13
            use inputs = randn g [| 4L; 3L |]
            use targets = oneHot [| 0; 1; 2; 1 |] 3
            use permutation = torch.tensor([| 2L; 0L; 3L; 1L |])
            use ones = torch.ones(4L, dtype = f64)
            let same, sameTargets = MixMatch.mixUpWith ones permutation inputs targets
            Check.close 0.0 0.0 "λ = 1 inputs" same inputs
            Check.close 0.0 0.0 "λ = 1 targets" sameTargets targets
            use zeros = torch.zeros(4L, dtype = f64)
            let partner, _ = MixMatch.mixUpWith zeros permutation inputs targets
            Check.close 0.0 0.0 "λ = 0 inputs" partner (inputs.index_select(0L, permutation))
            for t in [ same; sameTargets; partner ] do t.Dispose()
        }

        test "mixUp and mixMatchMixUp replay from their seed; MixMatch keeps each row mostly itself" {
            use inputs = torch.eye(6L, dtype = f64)
            use targets = torch.eye(6L, dtype = f64)
            let draw mix seed =
                use g = generator seed
                mix g inputs targets
            for name, mix in [ "mixUp", MixMatch.mixUp 0.75; "mixMatchMixUp", MixMatch.mixMatchMixUp 0.75 ] do
                let a, aTargets = draw mix 21
                let b, bTargets = draw mix 21
                Check.close 0.0 0.0 $"{name}: same seed" a b
                for row in rows aTargets do near 1e-12 $"{name}: targets sum to 1" (Array.sum row) 1.0
                for t in [ a; aTargets; b; bTargets ] do t.Dispose()
            let _, mixedTargets = draw (MixMatch.mixMatchMixUp 0.75) 22
            use mixedTargets = mixedTargets
            use own = mixedTargets.diagonal()
            Expect.isTrue (values own |> Array.forall (fun w -> w >= 0.5)) "λ' >= 0.5 on each row's own label"
        }

        Prop.propSmall "sharpen equals p^(1/T) / Σ p^(1/T) and keeps the argmax; T = 1 is the identity" (fun (seed: int) ->
            use g = generator seed
            let rnd = Random(seed)
            use logits = randn g [| 3L; int64 (rnd.Next(2, 6)) |] * 3.0
            use p = logits.softmax(1L)
            let t = 0.1 + 2.0 * rnd.NextDouble()
            use sharpened = MixMatch.sharpen t p
            use identity = MixMatch.sharpen 1.0 p
            Check.close 1e-12 1e-12 "T = 1" identity p
            Array.iter2 (fun (row: float[]) (sharp: float[]) ->
                let powered = row |> Array.map (fun x -> x ** (1.0 / t))
                let total = Array.sum powered
                Array.iter2 (near 1e-9 "oracle") sharp (powered |> Array.map (fun x -> x / total))
                Expect.equal (Array.findIndex ((=) (Array.max sharp)) sharp) (Array.findIndex ((=) (Array.max row)) row) "argmax kept")
                (rows p) (rows sharpened))

        test "sharpen tends to one-hot as T -> 0" {
            use p = torch.tensor([| 0.2; 0.5; 0.3 |], dtype = f64).unsqueeze(0L)
            let peak t = use s = MixMatch.sharpen t p in (values s)[1]
            let peaks = [ 1.0; 0.5; 0.1; 0.01 ] |> List.map peak
            Expect.isTrue (List.pairwise peaks |> List.forall (fun (a, b) -> b > a)) $"rising: {peaks}"
            near 1e-15 "T = 0.01" (List.last peaks) 1.0
        }

        test "guessLabels is the sharpened mean of K softmaxes, without gradient" {
            use g = generator 14
            use logits = (randn g [| 2L; 3L; 4L |]).requires_grad_(true)
            use guess = MixMatch.guessLabels 0.5 logits
            Expect.isFalse guess.requires_grad "a target: no gradient"
            use expected = MixMatch.sharpen 0.5 ((logits.softmax(2L)[0] + logits.softmax(2L)[1]) / 2.0)
            Check.close 1e-12 1e-12 "oracle" guess expected
        }

        test "alignDistribution scales by p(y) / running and renormalises; equal marginals change nothing" {
            use p = torch.tensor([| 0.5; 0.3; 0.2; 0.1; 0.6; 0.3 |], dtype = f64).view(2L, 3L)
            use uniform = torch.full([| 3L |], (1.0 / 3.0).ToScalar(), dtype = f64)
            use same = MixMatch.alignDistribution uniform uniform p
            Check.close 1e-12 1e-12 "running = target: unchanged" same p
            use running = torch.tensor([| 0.5; 0.25; 0.25 |], dtype = f64)
            use aligned = MixMatch.alignDistribution uniform running p
            // Row 1: (0.5/0.5, 0.3/0.25, 0.2/0.25) = (1, 1.2, 0.8), / 3; row 2: (0.2, 2.4, 1.2), / 3.8.
            use expected = torch.tensor([| 1.0 / 3.0; 0.4; 0.8 / 3.0; 0.2 / 3.8; 2.4 / 3.8; 1.2 / 3.8 |], dtype = f64).view(2L, 3L)
            Check.close 1e-12 1e-12 "the over-predicted class turned down" aligned expected
            let e = Prop.throws<ArgumentException> (fun () -> MixMatch.alignDistribution (uniform.narrow(0L, 0L, 2L)) uniform p |> ignore)
            Expect.stringContains e.Message "target" "names the wrong argument"
        }

        test "guessLabelsAligned updates the running mean first, then sharpens the aligned mean of K softmaxes" {
            use g = generator 15
            use logits = randn g [| 2L; 3L; 4L |] * 2.0
            use target = torch.full([| 4L |], 0.25.ToScalar(), dtype = f64)
            use running = torch.tensor([| 0.4; 0.2; 0.2; 0.2 |], dtype = f64)
            use before = running.clone()
            use guess = MixMatch.guessLabelsAligned 0.5 0.9 target running logits
            use averaged = (logits.softmax(2L)[0] + logits.softmax(2L)[1]) / 2.0
            use expectedRunning = before * 0.9 + averaged.mean([| 0L |]) * 0.1
            Check.close 1e-6 1e-6 "p̃ ← 0.9 p̃ + 0.1 batch mean" running expectedRunning
            use expected = MixMatch.sharpen 0.5 (MixMatch.alignDistribution target expectedRunning averaged)
            Check.close 1e-6 1e-6 "sharpen(align(mean))" guess expected
            use plain = MixMatch.guessLabels 0.5 logits
            Expect.isTrue (guess.sub(plain).abs().max().item<float>() > 1e-3) "alignment changed the guess (control)"
        }

        Prop.propSmall "softCrossEntropy and consistencyL2 equal their oracles" (fun (seed: int) ->
            use g = generator seed
            let rnd = Random(seed)
            let n, c = int64 (rnd.Next(1, 5)), int64 (rnd.Next(2, 6))
            use logits = randn g [| n; c |] * 2.0
            use targets = (randn g [| n; c |]).softmax(1L)
            use ce = MixMatch.softCrossEntropy logits targets
            use l2 = MixMatch.consistencyL2 logits targets
            let l, t = rows logits, rows targets
            let expectedCe = Array.map2 (fun (l: float[]) (t: float[]) -> let z = logSumExp l in Array.fold2 (fun acc x y -> acc - y * (x - z)) 0.0 l t) l t |> mean
            let expectedL2 = (Array.map2 (fun (l: float[]) (t: float[]) -> Array.fold2 (fun acc p y -> acc + (y - p) ** 2.0) 0.0 (softmax l) t) l t |> Array.sum) / float (n * c)
            near 1e-12 "soft cross-entropy" (scalar ce) expectedCe
            near 1e-12 "L2 consistency" (scalar l2) expectedL2)

        test "softCrossEntropy with one-hot targets is the usual cross-entropy; consistency is 0 at the target" {
            use g = generator 15
            use logits = randn g [| 4L; 3L |]
            use labels = torch.tensor([| 0L; 2L; 1L; 2L |])
            use targets = oneHot [| 0; 2; 1; 2 |] 3
            use soft = MixMatch.softCrossEntropy logits targets
            use hard = torch.nn.functional.cross_entropy(logits, labels)
            near 1e-12 "one-hot" (scalar soft) (scalar hard)
            use p = logits.softmax(1L)
            use l2 = MixMatch.consistencyL2 logits p
            near 0.0 "at the target" (scalar l2) 0.0
        }

        test "linearRampUp rises linearly to its maximum and stays there" {
            Expect.equal (MixMatch.linearRampUp 16000L 100.0 0L) 0.0 "start"
            near 1e-15 "middle" (MixMatch.linearRampUp 16000L 100.0 4000L) 25.0
            Expect.equal (MixMatch.linearRampUp 16000L 100.0 16000L) 100.0 "end of the ramp"
            Expect.equal (MixMatch.linearRampUp 16000L 100.0 50000L) 100.0 "after the ramp"
            let e = Prop.throws<ArgumentException> (fun () -> MixMatch.linearRampUp 0L 1.0 0L |> ignore)
            Expect.equal e.ParamName "rampSteps" "names the parameter"
        }

        test "gradients, memory and shapes" {
            use g = generator 16
            use logits = randn g [| 3L; 4L |]
            use targets = (randn g [| 3L; 4L |]).softmax(1L)
            Check.gradcheck "softCrossEntropy" 1e-6 1e-6 (fun x -> MixMatch.softCrossEntropy x targets) logits
            Check.gradcheck "consistencyL2" 1e-6 1e-6 (fun x -> MixMatch.consistencyL2 x targets) logits
            Check.gradcheck "mixUpWith" 1e-6 1e-6 (fun x ->
                use lambdas = torch.tensor([| 0.9; 0.6; 0.7 |], dtype = f64)
                use permutation = torch.tensor([| 1L; 2L; 0L |])
                let mixed, mixedTargets = MixMatch.mixUpWith lambdas permutation x targets
                mixedTargets.Dispose()
                (mixed * logits).sum()) logits
            use stack = randn g [| 2L; 3L; 4L |]
            use lambdas = torch.ones(3L, dtype = f64) * 0.7
            use permutation = torch.tensor([| 1L; 2L; 0L |])
            Check.leavesOnlyResult "sampleBeta" (fun () -> MixMatch.sampleBeta 0.75 g torch.CPU 5L)
            Check.leavesOnlyResult "mixMatchLambda" (fun () -> MixMatch.mixMatchLambda lambdas)
            Check.leavesOnlyResult "sharpen" (fun () -> MixMatch.sharpen 0.5 targets)
            Check.leavesOnlyResult "guessLabels" (fun () -> MixMatch.guessLabels 0.5 stack)
            Check.leavesOnlyResult "softCrossEntropy" (fun () -> MixMatch.softCrossEntropy logits targets)
            Check.leavesOnlyResult "consistencyL2" (fun () -> MixMatch.consistencyL2 logits targets)
            let disposesPair (a: torch.Tensor, b: torch.Tensor) = a.Dispose(); b.Dispose()
            Check.noLeak "mixUpWith" (fun () -> MixMatch.mixUpWith lambdas permutation logits targets |> disposesPair)
            Check.noLeak "mixUp" (fun () -> MixMatch.mixUp 0.75 g logits targets |> disposesPair)
            Check.noLeak "mixMatchMixUp" (fun () -> MixMatch.mixMatchMixUp 0.75 g logits targets |> disposesPair)
            use wrong = torch.zeros(2L, dtype = f64)
            rejects "lambdas" "expected shape (3), found (2)" (fun () -> fst (MixMatch.mixUpWith wrong permutation logits targets))
            rejects "permutation" "int64" (fun () -> fst (MixMatch.mixUpWith lambdas lambdas logits targets))
            rejects "targets" "expected shape (3, 4), found (2)" (fun () -> MixMatch.softCrossEntropy logits wrong)
            rejects "alpha" "found -1" (fun () -> MixMatch.sampleBeta -1.0 g torch.CPU 2L)
        }
    ]

// ---- triplet ----

let private batchHardOracle (embeddings: float[][]) (labels: int64[]) =
    // The documented distance: sqrt(squared distance + 1e-12).
    let distance (a: float[]) (b: float[]) = sqrt (Array.fold2 (fun acc x y -> acc + (x - y) ** 2.0) 0.0 a b + 1e-12)
    let n = embeddings.Length
    Array.init n (fun a ->
        let hardestPositive = [ for p in 0 .. n - 1 do if labels[p] = labels[a] then distance embeddings[a] embeddings[p] ] |> List.max
        let negatives = [ for q in 0 .. n - 1 do if labels[q] <> labels[a] then distance embeddings[a] embeddings[q] ]
        if negatives.IsEmpty then 0.0 else softplus (hardestPositive - List.min negatives))
    |> mean

/// Loop oracle of Triplet.semiHard: squared distances; for every anchor and positive p ≠ a, the
/// closest negative farther than p, else the farthest negative; hinge with the margin; mean over pairs.
let private semiHardOracle (margin: float) (embeddings: float[][]) (labels: int64[]) =
    let distance (a: float[]) (b: float[]) = Array.fold2 (fun acc x y -> acc + (x - y) ** 2.0) 0.0 a b
    let n = embeddings.Length
    let losses =
        [ for a in 0 .. n - 1 do
            for p in 0 .. n - 1 do
                if p <> a && labels[p] = labels[a] then
                    let dap = distance embeddings[a] embeddings[p]
                    let negatives = [ for q in 0 .. n - 1 do if labels[q] <> labels[a] then distance embeddings[a] embeddings[q] ]
                    if negatives.IsEmpty then 0.0
                    else
                        let farther = negatives |> List.filter (fun d -> d > dap)
                        let dan = if farther.IsEmpty then List.max negatives else List.min farther
                        max (dap - dan + margin) 0.0 ]
    if losses.IsEmpty then 0.0 else List.average losses

let tripletTests =
    testList "triplet" [
        Prop.propSmall "semiHard equals the loop oracle" (fun (seed: int) ->
            use g = generator seed
            let rnd = Random(seed)
            let n = rnd.Next(2, 9)
            let labelArray = Array.init n (fun _ -> int64 (rnd.Next 3))
            let margin = rnd.NextDouble()
            use embeddings = randn g [| int64 n; 3L |]
            use labels = torch.tensor(labelArray)
            use loss = Triplet.semiHard margin embeddings labels
            near 1e-9 "semi-hard" (scalar loss) (semiHardOracle margin (rows embeddings) labelArray))

        test "semiHard: separated clusters give 0, a collapsed batch gives the margin" {
            use labels = torch.tensor([| 0L; 0L; 1L; 1L |])
            use separated = torch.tensor([| 0.0; 1.0; 11.0; 12.0 |], dtype = f64).unsqueeze(1L)
            use zero = Triplet.semiHard 0.5 separated labels
            Expect.equal (scalar zero) 0.0 "every positive closer than every negative by more than the margin"
            // All embeddings equal: every distance 0, no negative farther, the farthest is at 0: loss = margin.
            use collapsed = torch.ones(4L, 3L, dtype = f64)
            use atMargin = Triplet.semiHard 0.5 collapsed labels
            near 1e-12 "collapse costs the margin" (scalar atMargin) 0.5
            // Points 0, 2 (label 0) and 1, 3 (label 1), margin 6. Anchor 0: positive at squared distance
            // 4, negatives at 1 and 9: the semi-hard one is at 9, loss 4 - 9 + 6 = 1. Anchor 2: positive
            // at 4, both negatives at 1, none farther: the farthest (1), loss 9. By symmetry the
            // other two anchors give 9 and 1: mean 5.
            use line = torch.tensor([| 0.0; 2.0; 1.0; 3.0 |], dtype = f64).unsqueeze(1L)
            near 1e-9 "hand-computed" (scalar (Triplet.semiHard 6.0 line labels)) 5.0
        }

        test "semiHard: gradient, memory, shapes, one label" {
            use g = generator 19
            use embeddings = randn g [| 6L; 3L |]
            use labels = torch.tensor([| 0L; 0L; 1L; 1L; 2L; 2L |])
            Check.gradcheck "semiHard" 1e-6 1e-6 (fun x -> Triplet.semiHard 0.5 x labels) embeddings
            Check.leavesOnlyResult "semiHard" (fun () -> Triplet.semiHard 0.5 embeddings labels)
            use one = torch.zeros(6L, dtype = torch.int64)
            use oneLabel = (embeddings.detach().clone()).requires_grad_(true)
            use loss = Triplet.semiHard 0.5 oneLabel one
            Expect.equal (scalar loss) 0.0 "no negatives"
            use gradient = torch.autograd.grad([| loss |], [| oneLabel |])[0]
            Expect.isTrue (values gradient |> Array.forall Double.IsFinite) "finite gradient"
            use floatLabels = torch.zeros(6L, dtype = f64)
            rejects "labels" "integer labels" (fun () -> Triplet.semiHard 0.5 embeddings floatLabels)
            rejects "margin" "expected a number >= 0" (fun () -> Triplet.semiHard -1.0 embeddings labels)
        }

        Prop.propSmall "batchHardSoftMargin equals the loop oracle" (fun (seed: int) ->
            use g = generator seed
            let rnd = Random(seed)
            let n = rnd.Next(2, 9)
            let labelArray = Array.init n (fun _ -> int64 (rnd.Next 3))
            use embeddings = randn g [| int64 n; 3L |]
            use labels = torch.tensor(labelArray)
            use loss = Triplet.batchHardSoftMargin embeddings labels
            near 1e-9 "batch-hard" (scalar loss) (batchHardOracle (rows embeddings) labelArray))

        test "well-separated clusters give log(1 + e^-margin) per anchor" {
            use embeddings = torch.tensor([| 0.0; 1.0; 11.0; 12.0 |], dtype = f64).unsqueeze(1L)
            use labels = torch.tensor([| 0L; 0L; 1L; 1L |])
            use loss = Triplet.batchHardSoftMargin embeddings labels
            near 1e-9 "closed form" (scalar loss) ((log (1.0 + exp -10.0) + log (1.0 + exp -9.0)) / 2.0)
            use far = torch.tensor([| 0.0; 1.0; 101.0; 102.0 |], dtype = f64).unsqueeze(1L)
            use farLoss = Triplet.batchHardSoftMargin far labels
            Expect.isLessThan (scalar farLoss) 1e-30 "zero-ish"
        }

        test "a batch of one label has no negatives: loss 0 with finite gradients" {
            use g = generator 17
            use embeddings = (randn g [| 4L; 2L |]).requires_grad_(true)
            use labels = torch.zeros(4L, dtype = torch.int64)
            use loss = Triplet.batchHardSoftMargin embeddings labels
            Expect.equal (scalar loss) 0.0 "no negatives"
            use gradient = torch.autograd.grad([| loss |], [| embeddings |])[0]
            Expect.isTrue (values gradient |> Array.forall Double.IsFinite) "finite gradient"
        }

        test "gradient, memory and shapes" {
            use g = generator 18
            use embeddings = randn g [| 6L; 3L |]
            use labels = torch.tensor([| 0L; 0L; 1L; 1L; 2L; 2L |])
            Check.gradcheck "batchHardSoftMargin" 1e-6 1e-6 (fun x -> Triplet.batchHardSoftMargin x labels) embeddings
            Check.leavesOnlyResult "batchHardSoftMargin" (fun () -> Triplet.batchHardSoftMargin embeddings labels)
            use floatLabels = torch.zeros(6L, dtype = f64)
            rejects "labels" "integer labels" (fun () -> Triplet.batchHardSoftMargin embeddings floatLabels)
            rejects "labels" "expected shape (6), found (3)" (fun () -> Triplet.batchHardSoftMargin embeddings (labels.narrow(0L, 0L, 3L)))
        }
    ]

// ---- transformation (EnAET) ----

let transformationTests =
    testList "transformation" [
        Prop.propSmall "klDivergence equals Σ p_o log(p_o / p_t), is >= 0 and 0 for equal inputs" (fun (seed: int) ->
            use g = generator seed
            let rnd = Random(seed)
            let n, c = int64 (rnd.Next(1, 5)), int64 (rnd.Next(2, 6))
            use original = randn g [| n; c |] * 2.0
            use transformed = randn g [| n; c |] * 2.0
            use kl = Transformation.klDivergence original transformed
            use self = Transformation.klDivergence original original
            let expected =
                Array.map2 (fun o t -> Array.fold2 (fun acc p q -> acc + p * log (p / q)) 0.0 (softmax o) (softmax t)) (rows original) (rows transformed)
                |> mean
            near 1e-10 "KL" (scalar kl) expected
            Expect.isGreaterThanOrEqual (scalar kl) 0.0 "KL >= 0"
            near 0.0 "KL(p || p)" (scalar self) 0.0)

        test "klDivergence is KL(original || transformed), not the reverse" {
            use original = torch.tensor([| 0.0; 2.0 |], dtype = f64).unsqueeze(0L)
            use transformed = torch.tensor([| 1.0; 0.0 |], dtype = f64).unsqueeze(0L)
            use kl = Transformation.klDivergence original transformed
            let p, q = softmax [| 0.0; 2.0 |], softmax [| 1.0; 0.0 |]
            near 1e-12 "direction" (scalar kl) (p[0] * log (p[0] / q[0]) + p[1] * log (p[1] / q[1]))
            Expect.isGreaterThan (abs (scalar kl - (q[0] * log (q[0] / p[0]) + q[1] * log (q[1] / p[1])))) 0.1 "differs from the reverse"
        }

        test "parameterRegression is the mean squared error over all entries" {
            use predicted = torch.tensor([| 1.0; 2.0; 3.0; 4.0; 5.0; 6.0 |], dtype = f64).reshape(2L, 3L)
            use actual = torch.tensor([| 1.0; 0.0; 3.0; 4.0; 5.0; 9.0 |], dtype = f64).reshape(2L, 3L)
            use loss = Transformation.parameterRegression predicted actual
            near 1e-15 "MSE" (scalar loss) ((4.0 + 9.0) / 6.0)
        }

        test "gradients, memory and shapes" {
            use g = generator 19
            use both = randn g [| 2L; 3L; 4L |]
            Check.gradcheck "klDivergence wrt both" 1e-6 1e-6 (fun x -> Transformation.klDivergence x[0] x[1]) both
            Check.gradcheck "parameterRegression" 1e-6 1e-6 (fun x -> Transformation.parameterRegression x[0] x[1]) both
            use a = both[0]
            use b = both[1]
            Check.leavesOnlyResult "klDivergence" (fun () -> Transformation.klDivergence a b)
            Check.leavesOnlyResult "parameterRegression" (fun () -> Transformation.parameterRegression a b)
            rejects "transformedLogits" "expected shape (3, 4), found (4, 3)" (fun () -> Transformation.klDivergence a (b.t()))
            rejects "actual" "expected shape (3, 4), found (4, 3)" (fun () -> Transformation.parameterRegression a (b.t()))
        }
    ]

// ---- values computed by PyTorch from the papers' reference code ----

/// Inputs shared with tests/Core/reference/losses_reference.py: exact binary fractions
/// ((37 i + 23 j + 11 seed) mod 97 - 48) / 32 · scale, so both sides start from identical doubles.
let private referenceInput (rowCount: int) (columnCount: int) (seed: int) (scale: float) =
    use flat =
        torch.tensor(
            Array.init (rowCount * columnCount) (fun n ->
                float ((37 * (n / columnCount) + 23 * (n % columnCount) + 11 * seed) % 97 - 48) / 32.0 * scale),
            dtype = f64)
    flat.reshape(int64 rowCount, int64 columnCount)

/// The output of losses_reference.py, kept in tests/Core/reference/losses_reference.txt.
let private pytorch =
    dict [
        // PyTorch 1.13.0a0, float64; generated by tests/Core/reference/losses_reference.py
        "infoNce", [| 3.5485000923478527 |]
        "infoNceInBatch", [| 1.5566791417969161 |]
        "nceNormaliser", [| 37110993.26293242 |]
        "nce", [| 14.350088471136933 |]
        "jensenShannon", [| -2.3461810466880952 |]
        "hingeDiscriminator", [| 2.416666666666667 |]
        "hingeGenerator", [| 0.0625 |]
        "nonSaturatingDiscriminator", [| 1.8091241636763418 |]
        "nonSaturatingGenerator", [| 0.8839037706473919 |]
        "bigBiGanDiscriminator", [| 6.604166666666666 |]
        "bigBiGanEncoderGenerator", [| 2.114583333333333 |]
        "entropy", [| 0.4791968860899187 |]
        "sharpen", [| 0.043272518255360055; 0.18218410672442614; 0.7670237388799485; 0.007519636140265293; 0.8164248162489401; 0.008003947261188834; 0.03369787663948774; 0.14187335985038338; 0.01024984989404102; 0.043153479905783214; 0.1816829365531958; 0.76491373364698 |]
        "guessLabels", [| 0.18432479360705398; 0.7760363672919761; 0.00760799284018286; 0.03203084626078717; 0.34214150907462043; 0.028682878366785815; 0.12075942848301799; 0.5084161840755758; 0.043272518255360055; 0.18218410672442614; 0.7670237388799485; 0.007519636140265293 |]
        "softCrossEntropy", [| 2.025573811330282 |]
        "consistencyL2", [| 0.12573594528317114 |]
        "batchHardSoftMargin", [| 1.9165781151973007 |]
        "klDivergence", [| 1.0669665946652434 |]
        "parameterRegression", [| 1.30224609375 |]
    ]

let private matchesPytorch (tolerance: float) (name: string) (actual: torch.Tensor) =
    let expected = pytorch[name]
    let got = values actual
    Expect.equal got.Length expected.Length $"{name}: element count"
    Array.iter2 (near tolerance name) got expected

let pytorchReferenceTests =
    testList "pytorch reference" [
        test "contrastive" {
            use scope = torch.NewDisposeScope()
            let input r c seed = Contrastive.normalize (referenceInput r c seed 1.0)
            matchesPytorch 1e-12 "infoNce" (Contrastive.infoNce 0.2 (input 4 5 1) (input 4 5 2) (input 6 5 3))
            matchesPytorch 1e-12 "infoNceInBatch" (Contrastive.infoNceInBatch 0.5 (input 4 5 4) (input 4 5 5))
            let positive = (referenceInput 3 1 6 1.0).squeeze(1L)
            let noise = referenceInput 3 5 7 1.0
            let similarities = torch.cat([| positive.unsqueeze(1L); noise |], 1L)
            let z = Contrastive.estimateNormaliser 4096L 0.1 similarities
            let expectedNormaliser = pytorch["nceNormaliser"]
            near 1e-12 "nceNormaliser" z expectedNormaliser[0]
            matchesPytorch 1e-12 "nce" (Contrastive.nce 0.1 z (1.0 / 4096.0) positive noise)
        }
        test "mutual information and adversarial" {
            use scope = torch.NewDisposeScope()
            matchesPytorch 1e-12 "jensenShannon" (MutualInformation.jensenShannon (referenceInput 2 3 8 3.0) (referenceInput 1 7 9 3.0))
            let real, fake = referenceInput 3 4 10 2.0, referenceInput 3 3 11 2.0
            matchesPytorch 1e-12 "hingeDiscriminator" (Adversarial.hingeDiscriminator real[0] fake[0])
            matchesPytorch 1e-12 "hingeGenerator" (Adversarial.hingeGenerator fake[0])
            matchesPytorch 1e-12 "nonSaturatingDiscriminator" (Adversarial.nonSaturatingDiscriminator real[0] fake[0])
            matchesPytorch 1e-12 "nonSaturatingGenerator" (Adversarial.nonSaturatingGenerator fake[0])
            let scores (s: torch.Tensor) = { Adversarial.X = s[0]; Adversarial.Z = s[1]; Adversarial.XZ = s[2] }
            let losses = Adversarial.bigBiGan (scores real) (scores fake)
            matchesPytorch 1e-12 "bigBiGanDiscriminator" losses.Discriminator
            matchesPytorch 1e-12 "bigBiGanEncoderGenerator" losses.EncoderGenerator
        }
        test "entropy, MixMatch, triplet and EnAET" {
            use scope = torch.NewDisposeScope()
            matchesPytorch 1e-12 "entropy" (Entropy.entropy (referenceInput 3 5 12 3.0))
            matchesPytorch 1e-12 "sharpen" (MixMatch.sharpen 0.5 ((referenceInput 3 4 13 1.0).softmax(1L)))
            matchesPytorch 1e-12 "guessLabels" (MixMatch.guessLabels 0.5 ((referenceInput 6 4 14 1.0).reshape(2L, 3L, 4L)))
            let logits, targets = referenceInput 3 4 15 2.0, (referenceInput 3 4 16 1.0).softmax(1L)
            matchesPytorch 1e-12 "softCrossEntropy" (MixMatch.softCrossEntropy logits targets)
            matchesPytorch 1e-12 "consistencyL2" (MixMatch.consistencyL2 logits targets)
            // PyTorch's cdist has no 1e-12 under the square root: about 1e-13 apart.
            matchesPytorch 1e-9 "batchHardSoftMargin"
                (Triplet.batchHardSoftMargin (referenceInput 6 3 17 1.0) (torch.tensor([| 0L; 0L; 1L; 1L; 2L; 2L |])))
            matchesPytorch 1e-12 "klDivergence" (Transformation.klDivergence (referenceInput 3 4 18 2.0) (referenceInput 3 4 19 2.0))
            matchesPytorch 1e-12 "parameterRegression" (Transformation.parameterRegression (referenceInput 3 8 20 1.0) (referenceInput 3 8 21 1.0))
        }
    ]

// ---- every loss keeps its inputs' device and dtype ----

let deviceTests =
    testList "device and dtype" [
        for device in Check.devices () do
            for dtype in [ torch.float32; torch.float64 ] do
                test $"results on {device.``type``} in {dtype}" {
                    use scope = torch.NewDisposeScope()
                    use g = new torch.Generator(0UL, device)
                    let x = torch.randn([| 4L; 3L |], dtype = dtype, device = device, generator = g)
                    let labels = torch.tensor([| 0L; 0L; 1L; 1L |], device = device)
                    let mixed, _ = MixMatch.mixMatchMixUp 0.75 g x x
                    let results =
                        [ "infoNce", Contrastive.infoNce 0.1 x x x
                          "infoNceInBatch", Contrastive.infoNceInBatch 0.1 x x
                          "nce", Contrastive.nce 0.1 10.0 0.1 (x.select(1L, 0L)) x
                          "jensenShannon", MutualInformation.jensenShannon x x
                          "hingeDiscriminator", Adversarial.hingeDiscriminator x x
                          "entropy", Entropy.entropy x
                          "mixMatchMixUp", mixed
                          "sharpen", MixMatch.sharpen 0.5 (x.softmax(1L))
                          "guessLabels", MixMatch.guessLabels 0.5 (x.unsqueeze(0L))
                          "softCrossEntropy", MixMatch.softCrossEntropy x x
                          "batchHardSoftMargin", Triplet.batchHardSoftMargin x labels
                          "semiHard", Triplet.semiHard 0.5 x labels
                          "klDivergence", Transformation.klDivergence x x ]
                    for name, r in results do
                        Expect.equal r.dtype dtype $"{name}: dtype"
                        Expect.equal r.device_type device.``type`` $"{name}: device"
                        Expect.isTrue (Double.IsFinite(r.sum().to_type(f64).item<float>())) $"{name}: finite"
                }
    ]

// ---- virtual adversarial training ----

/// A linear softmax classifier x ↦ x·W, whose KL(p(x) || p(x + r)) has the closed-form Hessian
/// H = W (diag(p) - p pᵀ) Wᵀ at r = 0 for each example.
let private linearHessians (w: torch.Tensor) (x: torch.Tensor) =
    use p = x.mm(w).softmax(1L)
    use covariance = torch.diag_embed(p) - p.unsqueeze(2L) * p.unsqueeze(1L)
    w.unsqueeze(0L).matmul(covariance).matmul(w.t().unsqueeze(0L))

let vatTests =
    testList "vat" [
        Prop.propSmall "one power-iteration step is H·d normalised (linear softmax, float64)" (fun (seed: int) ->
            use g = generator seed
            let rnd = Random(seed)
            let n, d, c = int64 (rnd.Next(1, 5)), int64 (rnd.Next(2, 7)), int64 (rnd.Next(2, 5))
            use w = randn g [| d; c |]
            use x = randn g [| n; d |]
            use initial = randn g [| n; d |]
            let classify (z: torch.Tensor) = z.mm(w)
            use logits = classify x
            use direction = Vat.perturbationDirection 1e-6 1 classify x logits initial
            use hessians = linearHessians w x
            use hd = hessians.matmul(initial.unsqueeze(2L)).squeeze(2L)
            use expected = hd / hd.norm(1, keepdim = true)
            Check.close 1e-5 1e-5 "direction" direction expected)

        Prop.propSmall "power iteration reaches the top eigenvector of H (linear softmax, float64)" (fun (seed: int) ->
            use g = generator seed
            use w = randn g [| 6L; 4L |]
            use x = randn g [| 3L; 6L |]
            use initial = randn g [| 3L; 6L |]
            let classify (z: torch.Tensor) = z.mm(w)
            use logits = classify x
            use direction = Vat.perturbationDirection 1e-6 60 classify x logits initial
            use hessians = linearHessians w x
            let struct (eigenvalues, eigenvectors) = torch.linalg.eigh(hessians)
            use eigenvalues = eigenvalues
            use eigenvectors = eigenvectors
            for i in 0L .. 2L do
                let top, second = eigenvalues[i, 5L].item<float>(), eigenvalues[i, 4L].item<float>()
                if second < 0.8 * top then
                    use v = eigenvectors[i].select(1L, 5L)
                    let cosine = abs ((direction[i] * v).sum().item<float>())
                    Expect.isGreaterThan cosine 0.999 $"example {i}: |cos(direction, top eigenvector)|")

        // xi = 1e-6 (the papers' value) does not survive float32: a 1e-6 step spread over 784 pixels
        // is below the rounding of inputs of order 1, and the direction it gave had cosine -0.50 to
        // 0.55 with the float64 one (measured 2026-11-28 on this net, seeds 3-4). Steps of 1e-3 to
        // 1e-2 gave cosine > 0.998, 10 (lyakaap/VAT-pytorch's) 0.63-0.83 (the net's kinks). VatEntMin
        // uses 1e-2; this test holds it to the float64 power iteration at 1e-6.
        test "unit norm per example; float32 with xi = 1e-2 follows float64 with xi = 1e-6 (28x28 conv net)" {
            use g = new torch.Generator(3UL)
            torch.manual_seed(3L) |> ignore
            use net = torch.nn.Sequential(torch.nn.Conv2d(1L, 16L, 3L), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16L * 26L * 26L, 5L))
            use x = torch.randn([| 4L; 1L; 28L; 28L |], generator = g)
            use initial = torch.randn([| 4L; 1L; 28L; 28L |], generator = g)
            let classify (z: torch.Tensor) = net.forward z
            use logits = classify x
            use direction = Vat.perturbationDirection 1e-2 1 classify x logits initial
            Expect.equal direction.dtype torch.float32 "float32 direction"
            use norms = direction.flatten(1L).norm(1)
            Check.close 1e-5 0.0 "norms" norms (torch.ones(4L))
            net.``to``(torch.float64) |> ignore
            let classify64 (z: torch.Tensor) = net.forward z
            use x64 = x.to_type(f64)
            use logits64 = classify64 x64
            use reference = Vat.perturbationDirection 1e-6 1 classify64 x64 logits64 (initial.to_type(f64))
            use cosine = (direction.to_type(f64) * reference).flatten(1L).sum(1L)
            Expect.isGreaterThan (cosine.min().item<float>()) 0.99 "float32 direction follows the float64 one"
        }

        Prop.propSmall "the adversarial direction beats a random one; loss ≥ 0" (fun (seed: int) ->
            use g = generator seed
            use w = randn g [| 6L; 4L |] * 2.0
            use x = randn g [| 5L; 6L |]
            let classify (z: torch.Tensor) = z.mm(w)
            use clean = (classify x).detach().requires_grad_(true)
            use vat = Vat.virtualAdversarialLoss 1e-6 0.05 30 g classify x clean
            use random = randn g [| 5L; 6L |]
            use randomUnit = random / random.norm(1, keepdim = true)
            use randomKl = Transformation.klDivergence clean (classify (x + randomUnit * 0.05))
            Expect.isGreaterThanOrEqual (scalar vat) 0.0 "KL ≥ 0"
            Expect.isGreaterThanOrEqual (scalar vat) (scalar randomKl * (1.0 - 1e-6)) "worst case ≥ a random direction")

        test "bad arguments name themselves; memory" {
            use x = torch.randn(2L, 3L, dtype = f64)
            use w = torch.randn(3L, 4L, dtype = f64)
            let classify (z: torch.Tensor) = z.mm(w)
            use logits = classify x
            rejects "xi" "> 0" (fun () -> Vat.perturbationDirection 0.0 1 classify x logits x)
            rejects "iterations" "at least 1" (fun () -> Vat.perturbationDirection 1e-6 0 classify x logits x)
            rejects "initial" "" (fun () -> Vat.perturbationDirection 1e-6 1 classify x logits (torch.zeros(2L, 4L)))
            rejects "epsilon" "> 0" (fun () -> Vat.virtualAdversarialLoss 1e-6 -1.0 1 (new torch.Generator(1UL)) classify x logits)
            Check.leavesOnlyResult "perturbationDirection" (fun () -> Vat.perturbationDirection 1e-6 2 classify x logits x)
            use g = new torch.Generator(1UL)
            Check.leavesOnlyResult "virtualAdversarialLoss" (fun () -> Vat.virtualAdversarialLoss 1e-6 1.0 1 g classify x logits)
        }
    ]

let private siameseTests =
    testList "siamese" [
        Prop.propSmall "negativeCosine equals the row-loop oracle, lies in [-1, 1] and is -1 for p along z" (fun (seed: int) ->
            use g = generator seed
            let n, d = 2L + int64 (abs seed % 5), 1L + int64 (abs seed % 7)
            use p = randn g [| n; d |]
            use z = randn g [| n; d |]
            let cosine (a: float[]) (b: float[]) =
                Array.fold2 (fun s x y -> s + x * y) 0.0 a b / (sqrt (Array.sumBy (fun x -> x * x) a) * sqrt (Array.sumBy (fun x -> x * x) b))
            let oracle = -(Array.map2 cosine (rows p) (rows z) |> Array.average)
            use loss = Siamese.negativeCosine p z
            Expect.floatClose Accuracy.high (scalar loss) oracle "oracle"
            Expect.isTrue (scalar loss >= -1.0 - 1e-12 && scalar loss <= 1.0 + 1e-12) "in [-1, 1]"
            use scaled = z * 3.0
            use along = Siamese.negativeCosine scaled z
            Expect.floatClose Accuracy.high (scalar along) -1.0 "p along z")
        test "the stop-gradient: gradients reach the predictions, never the targets" {
            use p = torch.randn(4L, 3L, dtype = f64, requires_grad = true)
            use z = torch.randn(4L, 3L, dtype = f64, requires_grad = true)
            use loss = Siamese.simSiam p p z z
            loss.backward()
            Expect.isNotNull p.grad "p has a gradient"
            Expect.isNull z.grad "z has none"
            use q = torch.randn(4L, 3L, dtype = f64, requires_grad = true)
            use target = torch.randn(4L, 3L, dtype = f64, requires_grad = true)
            use byol = Siamese.normalisedSquaredError q target
            byol.backward()
            Expect.isNotNull q.grad "BYOL's prediction has a gradient"
            Expect.isNull target.grad "its target none"
        }
        Prop.propSmall "simSiam is ½ D(p1, z2) + ½ D(p2, z1); BYOL's error is 2 + 2 D(p, z)" (fun (seed: int) ->
            use g = generator seed
            use p1 = randn g [| 5L; 4L |]
            use p2 = randn g [| 5L; 4L |]
            use z1 = randn g [| 5L; 4L |]
            use z2 = randn g [| 5L; 4L |]
            use d12 = Siamese.negativeCosine p1 z2
            use d21 = Siamese.negativeCosine p2 z1
            use both = Siamese.simSiam p1 p2 z1 z2
            Expect.floatClose Accuracy.high (scalar both) (0.5 * scalar d12 + 0.5 * scalar d21) "symmetric sum"
            use mse = Siamese.normalisedSquaredError p1 z2
            Expect.floatClose Accuracy.high (scalar mse) (2.0 + 2.0 * scalar d12) "2 - 2 cos")
        test "outputStd: 0 for collapsed outputs, about 1/sqrt(D) for outputs spread over the sphere" {
            use same = torch.ones(64L, 16L, dtype = f64)
            Expect.floatClose Accuracy.high (Siamese.outputStd same) 0.0 "collapse"
            use g = new torch.Generator(3UL)
            use spread = torch.randn([| 4096L; 256L |], dtype = f64, generator = g)
            Expect.floatClose { absolute = 2e-3; relative = 0.0 } (Siamese.outputStd spread) (1.0 / sqrt 256.0) "1/sqrt(D)"
            let e = Prop.throws<ArgumentException> (fun () -> Siamese.outputStd (torch.ones(1L, 3L)) |> ignore)
            Expect.stringContains e.Message "at least 2 rows" "one row has no spread"
            let e = Prop.throws<ArgumentException> (fun () -> Siamese.negativeCosine (torch.ones(2L, 3L)) (torch.ones(2L, 4L)) |> ignore)
            Expect.stringContains e.Message "z" "names the mismatched argument"
        }
    ]

let private barlowTwinsTests =
    testList "barlow twins" [
        Prop.propSmall "the loss equals a loop over the standardised columns' cross-correlation" (fun (seed: int) (percent: byte) ->
            use g = generator seed
            let n, d = 3L + int64 (abs seed % 6), 1L + int64 (abs seed % 5)
            let lambda = float percent / 100.0
            use z1 = randn g [| n; d |]
            use z2 = randn g [| n; d |]
            let columns (t: torch.Tensor) =
                let r = rows t
                [| for j in 0 .. int d - 1 ->
                       let c = r |> Array.map (fun row -> row[j])
                       let mean = Array.average c
                       let var = c |> Array.averageBy (fun x -> (x - mean) * (x - mean))
                       c |> Array.map (fun x -> (x - mean) / sqrt (var + 1e-5)) |] 
            let a, b = columns z1, columns z2
            let c i j = Array.fold2 (fun s x y -> s + x * y) 0.0 a[i] b[j] / float n
            let mutable oracle = 0.0
            for i in 0 .. int d - 1 do
                for j in 0 .. int d - 1 do
                    oracle <- oracle + (if i = j then (1.0 - c i i) ** 2.0 else lambda * (c i j) ** 2.0)
            use loss = Siamese.barlowTwins lambda z1 z2
            Expect.floatClose Accuracy.high (scalar loss) oracle "oracle"
            use cc = Siamese.crossCorrelation z1 z2
            Expect.floatClose Accuracy.high (scalar (cc.[0L, 0L])) (c 0 0) "C₀₀"
            Expect.isTrue (cc.abs().max() |> scalar <= 1.0 + 1e-9) "entries in [-1, 1]")
        Prop.propSmall "a positive scale and a shift of any dimension leave it unchanged (the per-dimension standardisation)" (fun (seed: int) ->
            use g = generator seed
            use z1 = randn g [| 16L; 4L |]
            use z2 = randn g [| 16L; 4L |]
            use scale = torch.rand([| 1L; 4L |], dtype = f64, generator = g) * 1.5 + 0.5
            use shift = randn g [| 1L; 4L |]
            use before = Siamese.barlowTwins 0.3 z1 z2
            use moved = z1 * scale + shift
            use after = Siamese.barlowTwins 0.3 moved z2
            Expect.floatClose { absolute = 1e-6; relative = 1e-4 } (scalar after) (scalar before) "invariant")
        test "0 when both views are the same decorrelated unit-variance embedding (C = I); gradients reach both views" {
            use g = generator 5
            use raw = randn g [| 32L; 6L |]
            use centred = raw - raw.mean([| 0L |], keepdim = true)
            let struct (q, _) = torch.linalg.qr(centred)
            use z = q * sqrt 32.0
            use loss = Siamese.barlowTwins 5e-3 z z
            Expect.floatClose { absolute = 1e-8; relative = 0.0 } (scalar loss) 0.0 "identity"
            use a = randn g [| 8L; 3L |]
            use b = randn g [| 8L; 3L |]
            a.requires_grad <- true
            b.requires_grad <- true
            use l = Siamese.barlowTwins 5e-3 a b
            l.backward()
            Expect.isNotNull a.grad "view 1"
            Expect.isNotNull b.grad "view 2: no stop-gradient"
        }
        test "λ = 0 keeps only the invariance term; bad input is named" {
            use g = generator 9
            use z1 = randn g [| 10L; 4L |]
            use z2 = randn g [| 10L; 4L |]
            use cc = Siamese.crossCorrelation z1 z2
            use invariance = (1.0 - cc.diagonal()).square().sum()
            use loss = Siamese.barlowTwins 0.0 z1 z2
            Expect.floatClose Accuracy.high (scalar loss) (scalar invariance) "diagonal only"
            let e = Prop.throws<ArgumentException> (fun () -> Siamese.barlowTwins -1.0 z1 z2 |> ignore)
            Expect.stringContains e.Message "lambda: expected a value ≥ 0, found -1" "lambda"
            let e = Prop.throws<ArgumentException> (fun () -> Siamese.crossCorrelation (torch.ones(1L, 3L)) (torch.ones(1L, 3L)) |> ignore)
            Expect.stringContains e.Message "at least 2 rows" "one row"
            Check.noLeak "barlowTwins" (fun () -> (Siamese.barlowTwins 5e-3 z1 z2).Dispose())
        }
    ]

// ---- DINO ----

/// main_dino.py's DINOLoss as loops: Σ over teacher crops i and student crops v ≠ i of
/// mean_n −Σ_k softmax((t − c)/τ_t) log softmax(s/τ_s), divided by the number of pairs.
let private dinoOracle (tauS: float) (tauT: float) (crops: int) (center: float[]) (teacher: float[][]) (student: float[][]) =
    let n = student.Length / crops
    let globals = teacher.Length / n
    let mutable total, terms = 0.0, 0
    for i in 0 .. globals - 1 do
        for v in 0 .. crops - 1 do
            if v <> i then
                let perImage =
                    Array.init n (fun b ->
                        let p = softmax (Array.map2 (fun t c -> (t - c) / tauT) teacher[i * n + b] center)
                        let s = student[v * n + b] |> Array.map (fun x -> x / tauS)
                        let l = logSumExp s
                        -(Array.fold2 (fun acc pk sk -> acc + pk * (sk - l)) 0.0 p s))
                total <- total + mean perImage
                terms <- terms + 1
    total / float terms

let private dinoTests =
    testList "dino" [
        Prop.propSmall "loss equals the DINOLoss loop over pairs of different crops" (fun (seed: int) ->
            use g = generator seed
            let rnd = Random(seed)
            let crops, n, k = rnd.Next(2, 5), int64 (rnd.Next(1, 4)), int64 (rnd.Next(1, 6))
            let globals = rnd.Next(1, min crops 2 + 1)
            let tauS, tauT = 0.05 + rnd.NextDouble(), 0.02 + rnd.NextDouble()
            use teacher = randn g [| int64 globals * n; k |] * 3.0
            use student = randn g [| int64 crops * n; k |] * 3.0
            use center = randn g [| k |]
            use loss = Dino.loss tauS tauT crops center teacher student
            near 1e-10 "loss" (scalar loss) (dinoOracle tauS tauT crops (values center) (rows teacher) (rows student)))
        Prop.propSmall "pairs of the same crop are skipped: with one teacher crop, the student's crop 0 does not matter" (fun (seed: int) ->
            use g = generator seed
            use teacher = randn g [| 3L; 5L |] * 2.0
            use student = randn g [| 9L; 5L |] * 2.0
            use otherCrop0 = torch.cat([| randn g [| 3L; 5L |] * 5.0; student.narrow(0L, 3L, 6L) |], 0L)
            use center = randn g [| 5L |]
            use loss = Dino.loss 0.1 0.04 3 center teacher student
            use changed = Dino.loss 0.1 0.04 3 center teacher otherCrop0
            near 1e-12 "crop 0 pairs only with itself" (scalar changed) (scalar loss)
            use otherCrop1 = torch.cat([| student.narrow(0L, 0L, 3L); randn g [| 3L; 5L |] * 5.0; student.narrow(0L, 6L, 3L) |], 0L)
            use changed1 = Dino.loss 0.1 0.04 3 center teacher otherCrop1
            Expect.isFalse (abs (scalar changed1 - scalar loss) < 1e-12) "crop 1 pairs with teacher crop 0")
        test "no gradient reaches the teacher or the center; the student gets one" {
            use teacher = torch.randn(4L, 6L, dtype = f64, requires_grad = true)
            use student = torch.randn(8L, 6L, dtype = f64, requires_grad = true)
            use center = torch.randn(6L, dtype = f64, requires_grad = true)
            use loss = Dino.loss 0.1 0.04 4 center teacher student
            loss.backward()
            Expect.isNull teacher.grad "teacher has none"
            Expect.isNull center.grad "center has none"
            Expect.isNotNull student.grad "student has one"
            Expect.isGreaterThan (student.grad.abs().sum().item<float>()) 0.0 "non-zero"
        }
        Prop.propSmall "student = teacher on identical crops at equal temperatures: the loss is the teacher's entropy, and any other student costs more" (fun (seed: int) ->
            use g = generator seed
            let rnd = Random(seed)
            let tau = 0.05 + rnd.NextDouble()
            use logits = randn g [| 3L; 7L |] * 2.0
            use teacher = logits.repeat(2L, 1L)
            use student = logits.repeat(4L, 1L)
            use center = torch.zeros(7L, dtype = f64)
            use loss = Dino.loss tau tau 4 center teacher student
            use targets = Dino.teacherProbabilities tau center teacher
            let entropy = Dino.entropy targets
            near 1e-10 "H(P, P) = H(P)" (scalar loss) entropy
            use other = randn g [| 12L; 7L |]
            use worse = Dino.loss tau tau 4 center teacher other
            Expect.isGreaterThanOrEqual (scalar worse) (entropy - 1e-12) "Gibbs: H(P, Q) >= H(P)")
        Prop.propSmall "centering: shifting the teacher's logits and the center by one vector leaves the loss unchanged" (fun (seed: int) ->
            use g = generator seed
            use teacher = randn g [| 4L; 5L |]
            use student = randn g [| 6L; 5L |]
            use center = randn g [| 5L |]
            use shift = randn g [| 5L |] * 4.0
            use shiftedTeacher = teacher + shift
            use shiftedCenter = center + shift
            use before = Dino.loss 0.1 0.04 3 center teacher student
            use after = Dino.loss 0.1 0.04 3 shiftedCenter shiftedTeacher student
            near 1e-9 "shift" (scalar after) (scalar before)
            use centred = Dino.loss 0.1 0.04 3 shift teacher student
            Expect.isFalse (abs (scalar centred - scalar (Dino.loss 0.1 0.04 3 (torch.zeros(5L, dtype = f64)) teacher student)) < 1e-12) "the center matters")
        Prop.propSmall "updatedCenter is m·c + (1 − m)·mean of the teacher rows, without gradient" (fun (seed: int) ->
            use g = generator seed
            let m = Random(seed).NextDouble()
            use center = randn g [| 4L |]
            use teacher = randn g [| 6L; 4L |]
            use updated = Dino.updatedCenter m center teacher
            let t = rows teacher
            let expected = Array.init 4 (fun j -> m * (values center)[j] + (1.0 - m) * (t |> Array.averageBy (fun r -> r[j])))
            Array.iter2 (near 1e-12 "center") (values updated) expected
            Expect.isFalse updated.requires_grad "no gradient"
            use kept = Dino.updatedCenter 1.0 center teacher
            Array.iter2 (near 0.0 "m = 1 keeps the center") (values kept) (values center))
        test "the teacher temperature follows np.linspace(0.04, 0.07, 30) over the warm-up, then 0.07" {
            let t = Dino.teacherTemperature 0.04 0.07 30
            near 1e-15 "epoch 0" (t 0) 0.04
            near 1e-15 "epoch 1" (t 1) (0.04 + 0.03 / 29.0)
            near 1e-15 "epoch 29" (t 29) 0.07
            near 1e-15 "epoch 30" (t 30) 0.07
            near 1e-15 "epoch 99" (t 99) 0.07
            Expect.isTrue (Seq.pairwise [ for e in 0 .. 40 -> t e ] |> Seq.forall (fun (a, b) -> b >= a)) "non-decreasing"
            near 1e-15 "no warm-up" (Dino.teacherTemperature 0.04 0.07 0 0) 0.07
            near 1e-15 "one warm-up epoch: linspace of one point" (Dino.teacherTemperature 0.04 0.07 1 0) 0.04
        }
        test "entropy is log K for uniform rows and 0 for one-hot rows; bad shapes are errors naming the argument" {
            use uniform = torch.ones([| 3L; 8L |], dtype = f64) / 8.0
            near 1e-12 "uniform" (Dino.entropy uniform) (log 8.0)
            use oneHot = torch.eye(4L, dtype = f64)
            near 0.0 "one-hot" (Dino.entropy oneHot) 0.0
            rejects "student" "multiple of crops = 3" (fun () -> Dino.loss 0.1 0.04 3 (torch.zeros(4L)) (torch.zeros(2L, 4L)) (torch.zeros(4L, 4L)))
            rejects "teacher" "global crops" (fun () -> Dino.loss 0.1 0.04 2 (torch.zeros(4L)) (torch.zeros(3L, 4L)) (torch.zeros(4L, 4L)))
            rejects "crops" "at least 2" (fun () -> Dino.loss 0.1 0.04 1 (torch.zeros(4L)) (torch.zeros(2L, 4L)) (torch.zeros(2L, 4L)))
            rejects "center" "K" (fun () -> Dino.loss 0.1 0.04 2 (torch.zeros(3L)) (torch.zeros(2L, 4L)) (torch.zeros(4L, 4L)))
        }
    ]

[<Tests>]
let tests =
    testList "core.losses" [
        contrastiveTests
        siameseTests
        barlowTwinsTests
        dinoTests
        mutualInformationTests
        adversarialTests
        entropyTests
        mixMatchTests
        fixMatchTests
        adaptiveThresholdTests
        tripletTests
        transformationTests
        vatTests
        pytorchReferenceTests
        deviceTests
    ]
