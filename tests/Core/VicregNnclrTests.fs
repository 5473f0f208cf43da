/// VICReg's three terms, the in-batch InfoNCE from anchors to candidates (MoCo v3, NNCLR) and NNCLR's neighbours and loss,
/// each against a float64 loop oracle, with closed forms, gradient paths and bad input.
module Ssl.Tests.Core.VicregNnclrTests

open System
open Expecto
open TorchSharp
open Ssl.Core.Losses
open Ssl.Tests

let private unitRows (r: float[][]) = r |> Array.map (fun row -> let n = sqrt (dot row row) in row |> Array.map (fun x -> x / max n 1e-12))

/// main_vicreg.py's forward as loops over dimensions and rows: (invariance, variance, covariance).
let private vicregOracle (epsilon: float) (z1: float[][]) (z2: float[][]) =
    let n, d = z1.Length, z1[0].Length
    let invariance = Array.fold2 (fun s (a: float[]) (b: float[]) -> s + Array.fold2 (fun t x y -> t + (x - y) ** 2.0) 0.0 a b) 0.0 z1 z2 / float (n * d)
    let column (z: float[][]) j = z |> Array.map (fun row -> row[j])
    let mean (xs: float[]) = Array.average xs
    let hinge (z: float[][]) =
        [| for j in 0 .. d - 1 ->
               let c = column z j
               let m = mean c
               let var = (c |> Array.sumBy (fun x -> (x - m) ** 2.0)) / float (n - 1)
               max 0.0 (1.0 - sqrt (var + epsilon)) |] |> Array.average
    let offDiagonal (z: float[][]) =
        let means = Array.init d (fun j -> mean (column z j))
        let mutable total = 0.0
        for i in 0 .. d - 1 do
            for j in 0 .. d - 1 do
                if i <> j then
                    let c = Array.init n (fun r -> (z[r][i] - means[i]) * (z[r][j] - means[j])) |> Array.sum
                    total <- total + (c / float (n - 1)) ** 2.0
        total / float d
    invariance, (hinge z1 + hinge z2) / 2.0, offDiagonal z1 + offDiagonal z2

/// Row i of anchors picks row i of candidates among all: mean over i of logsumexp_j(a_i·c_j/τ) − a_i·c_i/τ.
let private acrossOracle (tau: float) (anchors: float[][]) (candidates: float[][]) =
    Array.init anchors.Length (fun i ->
        logSumExp (candidates |> Array.map (fun c -> dot anchors[i] c / tau)) - dot anchors[i] candidates[i] / tau)
    |> Array.average

[<Tests>]
let tests =
    testList "vicreg and nnclr" [
        testList "vicreg" [
            Prop.propSmall "each term equals main_vicreg.py's as loops" (fun (seed: int) ->
                use g = generator seed
                let n, d = 2L + int64 (abs seed % 7), 1L + int64 (abs seed % 5)
                use z1 = randn g [| n; d |] * 0.7
                use z2 = randn g [| n; d |] * 1.3
                let invariance, variance, covariance = Vicreg.terms 1e-4 z1 z2
                let i, v, c = vicregOracle 1e-4 (rows z1) (rows z2)
                Expect.floatClose Accuracy.high (scalar invariance) i "invariance"
                Expect.floatClose Accuracy.high (scalar variance) v "variance"
                Expect.floatClose Accuracy.high (scalar covariance) c "covariance"
                use loss = Vicreg.weighted 25.0 25.0 1.0 (invariance, variance, covariance)
                Expect.floatClose Accuracy.high (scalar loss) (25.0 * i + 25.0 * v + c) "eq. 6"
                for t in [ invariance; variance; covariance ] do t.Dispose())
            Prop.propSmall "a shift of the embeddings leaves variance and covariance unchanged; equal views have no invariance term" (fun (seed: int) ->
                use g = generator seed
                use z = randn g [| 12L; 4L |]
                use shift = randn g [| 1L; 4L |]
                use moved = z + shift
                let i0, v0, c0 = Vicreg.terms 1e-4 z z
                let i1, v1, c1 = Vicreg.terms 1e-4 moved moved
                Expect.floatClose Accuracy.high (scalar i0) 0.0 "same views"
                Expect.floatClose Accuracy.high (scalar v1) (scalar v0) "variance"
                Expect.floatClose Accuracy.high (scalar c1) (scalar c0) "covariance"
                for t in [ i0; v0; c0; i1; v1; c1 ] do t.Dispose())
            test "closed forms: decorrelated columns of std ≥ 1 cost nothing but invariance; a collapsed batch pays the full hinge" {
                use g = generator 3
                use raw = randn g [| 32L; 6L |]
                use centred = raw - raw.mean([| 0L |], keepdim = true)
                let struct (q, _) = torch.linalg.qr(centred)
                use z = q * sqrt 31.0 * 2.0
                let i, v, c = Vicreg.terms 1e-4 z z
                Expect.floatClose Accuracy.high (scalar v) 0.0 "std 2 ≥ 1: no hinge"
                Expect.floatClose { absolute = 1e-9; relative = 0.0 } (scalar c) 0.0 "orthogonal columns"
                use collapsed = torch.ones([| 8L; 3L |], dtype = f64)
                let _, vc, cc = Vicreg.terms 1e-4 collapsed collapsed
                Expect.floatClose Accuracy.high (scalar vc) (1.0 - sqrt 1e-4) "the full hinge, 1 − √ε"
                Expect.floatClose Accuracy.high (scalar cc) 0.0 "no covariance"
                for t in [ i; v; c; vc; cc ] do t.Dispose()
            }
            test "gradients reach both views; bad input is named; nothing leaks" {
                use g = generator 4
                use a = randn g [| 8L; 3L |]
                use b = randn g [| 8L; 3L |]
                a.requires_grad <- true
                b.requires_grad <- true
                use loss = Vicreg.weighted 25.0 25.0 1.0 (Vicreg.terms 1e-4 a b)
                loss.backward()
                Expect.isNotNull a.grad "view 1"
                Expect.isNotNull b.grad "view 2: no stop-gradient"
                let e = Prop.throws<ArgumentException> (fun () -> Vicreg.terms 1e-4 (torch.ones(1L, 3L)) (torch.ones(1L, 3L)) |> ignore)
                Expect.stringContains e.Message "at least 2 rows" "one row"
                let e = Prop.throws<ArgumentException> (fun () -> Vicreg.terms 1e-4 (torch.ones(4L, 3L)) (torch.ones(4L, 2L)) |> ignore)
                Expect.equal e.ParamName "z2" "names the mismatched view"
                let e = Prop.throws<ArgumentException> (fun () -> Vicreg.terms 0.0 (torch.ones(4L, 3L)) (torch.ones(4L, 3L)) |> ignore)
                Expect.stringContains e.Message "epsilon: expected a finite number > 0, found 0" "epsilon"
                let e = Prop.throws<ArgumentException> (fun () -> (Vicreg.weighted -1.0 25.0 1.0 (a, a, a)).Dispose())
                Expect.stringContains e.Message "invarianceWeight: expected a finite weight ≥ 0, found -1" "weight"
                use x = randn g [| 8L; 3L |]
                use y = randn g [| 8L; 3L |]
                Check.noLeak "Vicreg" (fun () -> let i, v, c = Vicreg.terms 1e-4 x y in (Vicreg.weighted 1.0 1.0 1.0 (i, v, c)).Dispose(); i.Dispose(); v.Dispose(); c.Dispose())
            }
        ]
        testList "in-batch InfoNCE across" [
            Prop.propSmall "equals the loop oracle; log N when all similarities are equal" (fun (seed: int) ->
                use g = generator seed
                let n, d = 1L + int64 (abs seed % 7), 1L + int64 (abs seed % 4)
                use a = Contrastive.normalize (randn g [| n; d |])
                use c = Contrastive.normalize (randn g [| n; d |])
                let tau = 0.1 + float (abs seed % 10) / 10.0
                use loss = Contrastive.infoNceAcross tau a c
                Expect.floatClose Accuracy.high (scalar loss) (acrossOracle tau (rows a) (rows c)) "oracle"
                use same = torch.ones([| n; d |], dtype = f64) / sqrt (float d)
                use equal = Contrastive.infoNceAcross tau same same
                Expect.floatClose Accuracy.high (scalar equal) (log (float n)) "log N")
            Prop.propSmall "permuting the images (rows of both) leaves it unchanged" (fun (seed: int) ->
                use g = generator seed
                use a = Contrastive.normalize (randn g [| 6L; 3L |])
                use c = Contrastive.normalize (randn g [| 6L; 3L |])
                use order = torch.randperm(6L, generator = g)
                use before = Contrastive.infoNceAcross 0.2 a c
                use after = Contrastive.infoNceAcross 0.2 (a.index_select(0L, order)) (c.index_select(0L, order))
                Expect.floatClose Accuracy.high (scalar after) (scalar before) "invariant")
        ]
        testList "nnclr" [
            Prop.propSmall "the neighbour is the support row of largest cosine, found by a loop" (fun (seed: int) ->
                use g = generator seed
                let k, n = 1L + int64 (abs seed % 9), 1L + int64 (abs seed % 5)
                use support = Contrastive.normalize (randn g [| k; 3L |])
                use z = Contrastive.normalize (randn g [| n; 3L |])
                let neighbours, index = Nnclr.nearest support z
                let s = rows support
                let expected = rows z |> Array.map (fun row -> Array.init s.Length id |> Array.maxBy (fun j -> dot row s[j]))
                Expect.sequenceEqual (index.data<int64>().ToArray() |> Array.map int) expected "indices"
                Expect.sequenceEqual (rows neighbours) (expected |> Array.map (fun j -> s[j])) "rows"
                neighbours.Dispose()
                index.Dispose())
            Prop.propSmall "the loss is ½ InfoNCE(NN₁, p₂) + ½ InfoNCE(NN₂, p₁) of the normalised rows, as loops" (fun (seed: int) ->
                use g = generator seed
                let n = 2L + int64 (abs seed % 5)
                use nn1 = Contrastive.normalize (randn g [| n; 4L |])
                use nn2 = Contrastive.normalize (randn g [| n; 4L |])
                use p1 = randn g [| n; 4L |] * 3.0
                use p2 = randn g [| n; 4L |]
                use loss = Nnclr.loss 0.1 nn1 nn2 p1 p2
                let expected = acrossOracle 0.1 (rows nn1) (unitRows (rows p2)) / 2.0 + acrossOracle 0.1 (rows nn2) (unitRows (rows p1)) / 2.0
                Expect.floatClose Accuracy.high (scalar loss) expected "oracle")
            test "gradients reach the predictions, never the neighbours; bad input is named; nothing leaks" {
                use g = generator 7
                use support = Contrastive.normalize (randn g [| 16L; 4L |])
                use z = randn g [| 5L; 4L |]
                z.requires_grad <- true
                let neighbours, index = Nnclr.nearest support (Contrastive.normalize z)
                Expect.isFalse neighbours.requires_grad "no gradient through the look-up"
                use p1 = randn g [| 5L; 4L |]
                use p2 = randn g [| 5L; 4L |]
                p1.requires_grad <- true
                p2.requires_grad <- true
                use loss = Nnclr.loss 0.1 neighbours neighbours p1 p2
                loss.backward()
                Expect.isNotNull p1.grad "p1"
                Expect.isNotNull p2.grad "p2"
                Expect.isNull z.grad "the neighbours' side"
                neighbours.Dispose()
                index.Dispose()
                let e = Prop.throws<ArgumentException> (fun () -> Nnclr.nearest support (torch.ones(2L, 3L, dtype = f64)) |> ignore)
                Expect.equal e.ParamName "z" "a width other than the support's"
                let e = Prop.throws<ArgumentException> (fun () -> (Nnclr.loss 0.0 support support support support).Dispose())
                Expect.stringContains e.Message "temperature" "temperature"
                use q = Contrastive.normalize (randn g [| 5L; 4L |])
                Check.noLeak "Nnclr" (fun () ->
                    let nn, i = Nnclr.nearest support q
                    (Nnclr.loss 0.2 nn nn q q).Dispose()
                    nn.Dispose()
                    i.Dispose())
            }
        ]
    ]
