/// Properties of the batched transforms, each against a slow loop oracle or a closed form, plus
/// memory (nothing left alive but the results) and device/dtype checks.
module Ssl.Tests.Core.TransformTests

open System
open Expecto
open TorchSharp
open Ssl.Core.Transforms
open Ssl.Tests

type private Tensor = torch.Tensor

let private generator (seed: int) = new torch.Generator(uint64 (abs seed), torch.CPU)

/// Uniform [0, 1) images from a seed.
let private images (seed: int) (dtype: torch.ScalarType) (shape: int64[]) =
    use g = generator seed
    torch.rand(shape, dtype = dtype, generator = g)

let private values (t: Tensor) =
    use scope = torch.NewDisposeScope()
    t.detach().cpu().to_type(torch.ScalarType.Float64).contiguous().data<float>().ToArray()

let private longs (t: Tensor) =
    use scope = torch.NewDisposeScope()
    t.cpu().to_type(torch.ScalarType.Int64).contiguous().data<int64>().ToArray()

/// A small size in [low, high] from an arbitrary integer.
let private size (low: int) (high: int) (n: int) = int64 (low + (abs (n % (high - low + 1))))

let private disposeAll (tensors: Tensor list) = for t in tensors do t.Dispose()

/// Bilinear sample of one plane (h × w, row-major) at pixel coordinates (x, y), zeros outside:
/// the definition grid_sample implements.
let private bilinear (plane: float[]) (h: int) (w: int) (x: float) (y: float) =
    let x0, y0 = floor x, floor y
    let fx, fy = x - x0, y - y0
    let at (row: float) (col: float) =
        let r, c = int row, int col
        if r >= 0 && r < h && c >= 0 && c < w then plane[r * w + c] else 0.0
    (1.0 - fy) * ((1.0 - fx) * at y0 x0 + fx * at y0 (x0 + 1.0)) + fy * ((1.0 - fx) * at (y0 + 1.0) x0 + fx * at (y0 + 1.0) (x0 + 1.0))

/// The warp oracle: output pixel (y, x) of image n samples the input at `source n (u, v)`, where
/// (u, v) are the output pixel's normalised coordinates; all in .NET loops.
let private warpOracle (source: int -> float * float -> float * float) (input: Tensor) =
    let n, c, h, w = int input.shape[0], int input.shape[1], int input.shape[2], int input.shape[3]
    let data = values input
    let out = Array.zeroCreate (n * c * h * w)
    for i in 0 .. n - 1 do
        for ch in 0 .. c - 1 do
            let plane = Array.sub data ((i * c + ch) * h * w) (h * w)
            for y in 0 .. h - 1 do
                for x in 0 .. w - 1 do
                    let u, v = (2.0 * float x + 1.0) / float w - 1.0, (2.0 * float y + 1.0) / float h - 1.0
                    let su, sv = source i (u, v)
                    out[((i * c + ch) * h + y) * w + x] <- bilinear plane h w (((su + 1.0) * float w - 1.0) / 2.0) (((sv + 1.0) * float h - 1.0) / 2.0)
    torch.tensor(out, dtype = torch.ScalarType.Float64).view(input.shape)

/// Inverse of a 3 × 3 matrix (row-major) by cofactors.
let private invert3 (m: float[]) =
    let at r c = m[3 * r + c]
    let cof r c =
        let rows = [| 0; 1; 2 |] |> Array.filter ((<>) r)
        let cols = [| 0; 1; 2 |] |> Array.filter ((<>) c)
        let minor = at rows[0] cols[0] * at rows[1] cols[1] - at rows[0] cols[1] * at rows[1] cols[0]
        if (r + c) % 2 = 0 then minor else -minor
    let det = at 0 0 * cof 0 0 + at 0 1 * cof 0 1 + at 0 2 * cof 0 2
    Array.init 9 (fun k -> cof (k % 3) (k / 3) / det)

let private homographySource (h: float[]) (u: float, v: float) =
    let inv = invert3 h
    let z = inv[6] * u + inv[7] * v + inv[8]
    (inv[0] * u + inv[1] * v + inv[2]) / z, (inv[3] * u + inv[4] * v + inv[5]) / z

let private affineAsHomography (m: float[]) = Array.append m [| 0.0; 0.0; 1.0 |]

let geometricTests =
    testList "geometric" [
        Prop.propSmall "four quarter-turns are the identity, and k then 4 - k" (fun (seed: int) (k: int) (n: int) ->
            use scope = torch.NewDisposeScope()
            let x = images seed torch.ScalarType.Float32 [| size 1 3 n; 2L; size 2 5 seed; size 2 5 k |]
            let four = Geometric.rotate k (Geometric.rotate k (Geometric.rotate k (Geometric.rotate k x)))
            Check.close 0.0 0.0 "four turns" four x
            Check.close 0.0 0.0 "k then 4 - k" (Geometric.rotate (4 - k) (Geometric.rotate k x)) x)

        test "rotate 1 turns counter-clockwise (loop oracle)" {
            use scope = torch.NewDisposeScope()
            let x = images 3 torch.ScalarType.Float64 [| 2L; 1L; 3L; 4L |]
            let data = values x
            let expected = Array.init (2 * 4 * 3) (fun k ->
                let n, i, j = k / 12, (k / 3) % 4, k % 3
                // out[i, j] = in[j, W - 1 - i]: the top row of the output is the input's right column.
                data[n * 12 + j * 4 + (3 - i)])
            Check.close 0.0 0.0 "rot90" (Geometric.rotate 1 x) (torch.tensor(expected).view(2L, 1L, 4L, 3L))
        }

        test "rotationBatch stacks the four rotations with their labels" {
            use scope = torch.NewDisposeScope()
            let x = images 4 torch.ScalarType.Float32 [| 3L; 2L; 4L; 4L |]
            let rotated, labels = Geometric.rotationBatch x
            Expect.sequenceEqual rotated.shape [| 12L; 2L; 4L; 4L |] "shape"
            Expect.sequenceEqual (longs labels) [| 0L; 0L; 0L; 1L; 1L; 1L; 2L; 2L; 2L; 3L; 3L; 3L |] "labels"
            for k in 0 .. 3 do
                Check.close 0.0 0.0 $"block {k}" (rotated.narrow(0L, 3L * int64 k, 3L)) (Geometric.rotate k x)
            let e = Prop.throws<ArgumentException> (fun () -> Geometric.rotationBatch (torch.zeros(1L, 1L, 3L, 4L)) |> ignore)
            Expect.stringContains e.Message "(1, 1, 3, 4)" "names the shape found"
        }

        Prop.propSmall "flipping twice is the identity, also at random with the same seed" (fun (seed: int) ->
            use scope = torch.NewDisposeScope()
            let x = images seed torch.ScalarType.Float32 [| 4L; 2L; 3L; 5L |]
            Check.close 0.0 0.0 "flip flip" (Geometric.horizontalFlip (Geometric.horizontalFlip x)) x
            use g1 = generator seed
            use g2 = generator seed
            let once = Geometric.randomHorizontalFlip 0.5 g1 x
            Check.close 0.0 0.0 "random flip twice" (Geometric.randomHorizontalFlip 0.5 g2 once) x)

        test "random flip with probability 1 and 0, against the column oracle" {
            use scope = torch.NewDisposeScope()
            use g = generator 1
            let x = images 5 torch.ScalarType.Float64 [| 2L; 1L; 2L; 3L |]
            let data = values x
            let mirrored = Array.init 12 (fun k -> data[k - k % 3 + (2 - k % 3)])
            Check.close 0.0 0.0 "p = 1" (Geometric.randomHorizontalFlip 1.0 g x) (torch.tensor(mirrored).view(x.shape))
            Check.close 0.0 0.0 "p = 0" (Geometric.randomHorizontalFlip 0.0 g x) x
        }

        test "resizedCrop: the whole image at its size, and a box at its own size is the slice" {
            use scope = torch.NewDisposeScope()
            let x = images 6 torch.ScalarType.Float64 [| 2L; 3L; 6L; 7L |]
            let whole = torch.tensor([| 0.0; 0.0; 6.0; 7.0; 0.0; 0.0; 6.0; 7.0 |]).view(2L, 4L)
            Check.close 1e-12 0.0 "whole image" (Geometric.resizedCrop 6L 7L whole x) x
            let box = torch.tensor([| 1.0; 2.0; 3.0; 4.0; 2.0; 0.0; 3.0; 4.0 |]).view(2L, 4L)
            let crops = Geometric.resizedCrop 3L 4L box x
            Check.close 1e-12 0.0 "image 0" (crops.narrow(0L, 0L, 1L)) (x.narrow(0L, 0L, 1L).narrow(2L, 1L, 3L).narrow(3L, 2L, 4L))
            Check.close 1e-12 0.0 "image 1" (crops.narrow(0L, 1L, 1L)) (x.narrow(0L, 1L, 1L).narrow(2L, 2L, 3L).narrow(3L, 0L, 4L))
        }

        Prop.propSmall "random resized crop: shape, boxes inside, area and ratio in range" (fun (seed: int) (n: int) ->
            use scope = torch.NewDisposeScope()
            let h, w = size 8 20 n, size 8 20 seed
            use g = generator seed
            let boxes = Geometric.sampleCropBoxes (0.3, 0.9) (0.75, 4.0 / 3.0) g (16L, h, w) torch.CPU
            for row in Array.chunkBySize 4 (values boxes) do
                let top, left, bh, bw = row[0], row[1], row[2], row[3]
                Expect.isTrue (top >= 0.0 && left >= 0.0 && top + bh <= float h && left + bw <= float w && bh >= 1.0 && bw >= 1.0) $"box {row} inside {h} x {w}"
                Expect.equal (top, left, bh, bw) (round top, round left, round bh, round bw) "whole pixels"
            let x = images seed torch.ScalarType.Float32 [| 3L; 1L; h; w |]
            use g2 = generator seed
            Expect.sequenceEqual (Geometric.randomResizedCrop (0.08, 1.0) (0.75, 4.0 / 3.0) (5L, 6L) g2 x).shape [| 3L; 1L; 5L; 6L |] "shape")

        test "random resized crop with scale (1, 1) and ratio (1, 1) is the identity on a square image" {
            use scope = torch.NewDisposeScope()
            use g = generator 7
            let x = images 7 torch.ScalarType.Float32 [| 3L; 3L; 9L; 9L |]
            Check.close 1e-6 0.0 "identity crop" (Geometric.randomResizedCrop (1.0, 1.0) (1.0, 1.0) (9L, 9L) g x) x
        }

        test "affine: identity matrices give the image back; a quarter-turn matrix equals rotate" {
            use scope = torch.NewDisposeScope()
            let x = images 8 torch.ScalarType.Float64 [| 2L; 2L; 5L; 5L |]
            let identity = torch.tensor([| 1.0; 0.0; 0.0; 0.0; 1.0; 0.0 |]).repeat(2L, 1L)
            Check.close 1e-12 0.0 "identity" (Geometric.affineWarp identity x) x
            // Input position p moves to A p: (x, y) -> (y, -x) turns counter-clockwise on screen.
            let quarter = torch.tensor([| 0.0; 1.0; 0.0; -1.0; 0.0; 0.0 |]).repeat(2L, 1L)
            Check.close 1e-12 0.0 "quarter-turn" (Geometric.affineWarp quarter x) (Geometric.rotate 1 x)
            use g = generator 8
            let warped, matrices = Geometric.randomAffine 0.0 0.0 (1.0, 1.0) 0.0 g x
            Check.close 1e-12 0.0 "zero ranges: identity matrices" matrices identity
            Check.close 1e-12 0.0 "zero ranges: identity warp" warped x
        }

        Prop.propSmall "random affine: its matrices reproduce the warp (affineWarp, homography path, loop oracle)" (fun (seed: int) ->
            use scope = torch.NewDisposeScope()
            let x = images seed torch.ScalarType.Float64 [| 2L; 2L; 5L; 6L |]
            use g = generator seed
            let warped, matrices = Geometric.randomAffine 30.0 0.2 (0.8, 1.2) 15.0 g x
            Expect.sequenceEqual matrices.shape [| 2L; 6L |] "matrices (N, 6)"
            Check.close 1e-12 0.0 "affineWarp" (Geometric.affineWarp matrices x) warped
            let homographies = torch.cat([| matrices; torch.zeros(2L, 2L, dtype = torch.ScalarType.Float64) |], 1L)
            Check.close 1e-9 0.0 "projectiveWarp of [A | t; 0 0 1]" (Geometric.projectiveWarp homographies x) warped
            let m = values matrices
            Check.close 1e-9 0.0 "loop oracle" warped (warpOracle (fun n -> homographySource (affineAsHomography m[6 * n .. 6 * n + 5])) x))

        test "similarity and Euclidean warps are restricted affines" {
            use scope = torch.NewDisposeScope()
            let x = images 9 torch.ScalarType.Float64 [| 8L; 1L; 4L; 4L |]
            use g = generator 9
            let _, similarity = Geometric.randomSimilarity 45.0 0.1 (0.5, 1.5) g x
            let _, euclidean = Geometric.randomEuclidean 45.0 0.1 g x
            for m in Array.chunkBySize 6 (values similarity) do
                Expect.floatClose Accuracy.high m[0] m[4] "a = e (no shear)"
                Expect.floatClose Accuracy.high m[1] (-m[3]) "b = -d (no shear)"
            for m in Array.chunkBySize 6 (values euclidean) do
                Expect.floatClose Accuracy.high (m[0] * m[4] - m[1] * m[3]) 1.0 "det = 1"
                Expect.floatClose Accuracy.high (m[0] * m[0] + m[3] * m[3]) 1.0 "unit columns"
        }

        test "on a non-square image a Euclidean warp is a rotation in pixel units, within its ranges" {
            use scope = torch.NewDisposeScope()
            let h, w = 4.0, 6.0
            use g = generator 13
            let _, euclidean = Geometric.randomEuclidean 30.0 0.1 g (torch.zeros(16L, 1L, 4L, 6L))
            for m in Array.chunkBySize 6 (values euclidean) do
                // Back to pixel units about the centre: diag(W/2, H/2) A diag(2/W, 2/H).
                let a, b, d, e = m[0], m[1] * w / h, m[3] * h / w, m[4]
                Expect.floatClose Accuracy.high (a * a + d * d) 1.0 "unit first column"
                Expect.floatClose Accuracy.high (b * b + e * e) 1.0 "unit second column"
                Expect.floatClose Accuracy.high (a * b + d * e) 0.0 "orthogonal columns"
                Expect.isTrue (abs (atan2 d a) <= Math.PI / 6.0 + 1e-12) "angle within 30 degrees"
                Expect.isTrue (abs m[2] <= 0.2 + 1e-12 && abs m[5] <= 0.2 + 1e-12) "shift within 0.1 of the side"
        }

        Prop.propSmall "random projective: parameters reproduce the warp (loop oracle); zero distortion is the identity" (fun (seed: int) ->
            use scope = torch.NewDisposeScope()
            let x = images seed torch.ScalarType.Float64 [| 2L; 1L; 6L; 5L |]
            use g = generator seed
            let warped, parameters = Geometric.randomProjective (0.8, 1.2) 0.125 g x
            Expect.sequenceEqual parameters.shape [| 2L; 8L |] "parameters (N, 8)"
            Check.close 1e-12 0.0 "projectiveWarp" (Geometric.projectiveWarp parameters x) warped
            let p = values parameters
            Check.close 1e-9 0.0 "loop oracle" warped (warpOracle (fun n -> homographySource (Array.append p[8 * n .. 8 * n + 7] [| 1.0 |])) x)
            let same, identity = Geometric.randomProjective (1.0, 1.0) 0.0 g x
            Check.close 1e-12 0.0 "identity parameters" identity (torch.tensor([| 1.0; 0.0; 0.0; 0.0; 1.0; 0.0; 0.0; 0.0 |]).repeat(2L, 1L))
            Check.close 1e-12 0.0 "identity warp" same x)

        test "the corners of a random homography land on the drawn corners' range" {
            use scope = torch.NewDisposeScope()
            use g = generator 10
            let _, parameters = Geometric.randomProjective (1.0, 1.0) 0.1 g (torch.zeros(64L, 1L, 4L, 4L))
            for h in Array.chunkBySize 8 (values parameters) do
                for cx, cy in [ -1.0, -1.0; 1.0, -1.0; 1.0, 1.0; -1.0, 1.0 ] do
                    let z = h[6] * cx + h[7] * cy + 1.0
                    let u, v = (h[0] * cx + h[1] * cy + h[2]) / z, (h[3] * cx + h[4] * cy + h[5]) / z
                    Expect.isTrue (abs (u - cx) <= 0.2 + 1e-9 && abs (v - cy) <= 0.2 + 1e-9) $"corner ({cx}, {cy}) moved to ({u}, {v}), more than 0.1 of the side"
        }

        test "warps are differentiable in the images (float64 finite differences)" {
            use scope = torch.NewDisposeScope()
            let x = images 11 torch.ScalarType.Float64 [| 1L; 1L; 3L; 3L |]
            let weights = images 12 torch.ScalarType.Float64 [| 1L; 1L; 3L; 3L |]
            let affine = torch.tensor([| 0.9; 0.2; 0.1; -0.1; 1.1; 0.05 |]).view(1L, 6L)
            Check.gradcheck "affineWarp" 1e-6 1e-6 (fun t -> (Geometric.affineWarp affine t * weights).sum()) x
            let homography = torch.tensor([| 0.9; 0.2; 0.1; -0.1; 1.1; 0.05; 0.1; -0.05 |]).view(1L, 8L)
            Check.gradcheck "projectiveWarp" 1e-6 1e-6 (fun t -> (Geometric.projectiveWarp homography t * weights).sum()) x
            Check.gradcheck "resizedCrop" 1e-6 1e-6 (fun t -> (Geometric.resizedCrop 2L 2L (torch.tensor([| 0.5; 0.0; 2.5; 3.0 |]).view(1L, 4L)) t).square().sum()) x
        }

        test "bad hyper-parameters name the parameter" {
            use g = generator 0
            use x = torch.zeros(1L, 1L, 4L, 4L)
            let e = Prop.throws<ArgumentException> (fun () -> Geometric.randomAffine 10.0 0.1 (0.0, 1.0) 0.0 g x |> ignore)
            Expect.stringContains e.Message "scale" "names scale"
            let e = Prop.throws<ArgumentException> (fun () -> Geometric.affineWarp (torch.zeros(2L, 6L)) x |> ignore)
            Expect.stringContains e.Message "(1, 6) or (1, 2, 3), found (2, 6)" "expected and found"
        }
    ]

/// 1-D Gaussian taps, normalised (the oracle of torchvision's kernel).
let private gaussianTaps (k: int) (sigma: float) =
    let raw = Array.init k (fun i -> exp (-0.5 * ((float i - float (k - 1) / 2.0) / sigma) ** 2.0))
    raw |> Array.map (fun v -> v / Array.sum raw)

let private reflect (n: int) (i: int) = if i < 0 then -i elif i >= n then 2 * (n - 1) - i else i

let photometricTests =
    testList "photometric" [
        test "colour jitter with zero strengths is the identity (1 and 3 channels)" {
            use scope = torch.NewDisposeScope()
            use g = generator 1
            for channels in [ 1L; 3L ] do
                let x = images 1 torch.ScalarType.Float32 [| 4L; channels; 5L; 5L |]
                Check.close 0.0 0.0 $"C = {channels}" (Photometric.colorJitter 0.0 0.0 0.0 0.0 g x) x
        }

        test "adjustments against closed forms and loop oracles" {
            use scope = torch.NewDisposeScope()
            let x = images 2 torch.ScalarType.Float64 [| 2L; 3L; 3L; 4L |]
            let data = values x
            let factors = torch.tensor([| 0.5; 1.7 |], dtype = torch.ScalarType.Float64)
            let luma n y x' = 0.299 * data[(n * 3 + 0) * 12 + y * 4 + x'] + 0.587 * data[(n * 3 + 1) * 12 + y * 4 + x'] + 0.114 * data[(n * 3 + 2) * 12 + y * 4 + x']
            let index n c y x' = ((n * 3 + c) * 3 + y) * 4 + x'
            let oracle (other: int -> int -> int -> float) =
                torch.tensor(Array.init 72 (fun k ->
                    let n, c, y, x' = k / 36, (k / 12) % 3, (k / 4) % 3, k % 4
                    let f = [| 0.5; 1.7 |][n]
                    min 1.0 (max 0.0 (f * data[index n c y x'] + (1.0 - f) * other n y x'))), dtype = torch.ScalarType.Float64).view(x.shape)
            Check.close 1e-12 0.0 "brightness" (Photometric.adjustBrightness factors x) (oracle (fun _ _ _ -> 0.0))
            let meanLuma n = Seq.average [ for y in 0 .. 2 do for x' in 0 .. 3 -> luma n y x' ]
            Check.close 1e-12 0.0 "contrast" (Photometric.adjustContrast factors x) (oracle (fun n _ _ -> meanLuma n))
            Check.close 1e-12 0.0 "saturation" (Photometric.adjustSaturation factors x) (oracle luma)
            let gray = Photometric.adjustSaturation (torch.zeros(2L, dtype = torch.ScalarType.Float64)) x
            Check.close 1e-12 0.0 "saturation 0: equal channels" (gray.narrow(1L, 0L, 1L)) (gray.narrow(1L, 2L, 1L))
            let noHue = Photometric.adjustHue (torch.zeros(2L, dtype = torch.ScalarType.Float64)) x
            Check.close 1e-12 0.0 "hue 0" noHue x
            let half = torch.full([| 2L |], (0.5).ToScalar(), dtype = torch.ScalarType.Float64)
            Check.close 1e-12 0.0 "hue +1/2 twice" (Photometric.adjustHue half (Photometric.adjustHue half x)) x
        }

        test "sharpness: loop oracle of the weighted 3x3 smoothing, border kept, factor 1 the identity" {
            use scope = torch.NewDisposeScope()
            let h, w = 4, 5
            let x = images 21 torch.ScalarType.Float64 [| 2L; 2L; int64 h; int64 w |]
            let d = values x
            let factors = [| 0.3; 1.6 |]
            let expected = Array.init (2 * 2 * h * w) (fun k ->
                let plane, y, x' = k / (h * w), (k / w) % h, k % w
                let at yy xx = d[plane * h * w + yy * w + xx]
                let smoothed =
                    if y = 0 || y = h - 1 || x' = 0 || x' = w - 1 then at y x'
                    else (Seq.sum [ for dy in -1 .. 1 do for dx in -1 .. 1 -> at (y + dy) (x' + dx) ] + 4.0 * at y x') / 13.0
                let f = factors[plane / 2]
                min 1.0 (max 0.0 (f * at y x' + (1.0 - f) * smoothed)))
            let sharpened = Photometric.adjustSharpness (torch.tensor(factors, dtype = torch.ScalarType.Float64)) x
            Check.close 1e-12 0.0 "oracle" sharpened (torch.tensor(expected).view(x.shape))
            Check.close 1e-12 0.0 "factor 1" (Photometric.adjustSharpness (torch.ones(2L, dtype = torch.ScalarType.Float64)) x) x
        }

        test "a hue shift of 1/3 turns red to green and green to blue" {
            use scope = torch.NewDisposeScope()
            let primaries = torch.tensor([| 1.0; 0.0; 0.0; 0.0; 1.0; 0.0 |], dtype = torch.ScalarType.Float32).view(2L, 3L, 1L, 1L)
            let shifted = Photometric.adjustHue (torch.full([| 2L |], (1.0 / 3.0).ToScalar())) primaries
            Check.close 1e-6 0.0 "red -> green, green -> blue" shifted (torch.tensor([| 0.0; 1.0; 0.0; 0.0; 0.0; 1.0 |]).view(2L, 3L, 1L, 1L))
        }

        Prop.propSmall "colour jitter: values in [0, 1], brightness alone uses the first factors drawn" (fun (seed: int) ->
            use scope = torch.NewDisposeScope()
            let x = images seed torch.ScalarType.Float32 [| 6L; 3L; 4L; 4L |]
            use g = generator seed
            let jittered = Photometric.colorJitter 0.8 0.8 0.8 0.2 g x
            Expect.isTrue (jittered.ge(0.0f.ToScalar()).all().item<bool>() && jittered.le(1.0f.ToScalar()).all().item<bool>()) "in [0, 1]"
            use g1 = generator seed
            use g2 = generator seed
            let expected = Photometric.adjustBrightness (Draw.uniform g2 0.6 1.4 [| 6L |] torch.CPU) x
            Check.close 1e-6 0.0 "brightness only" (Photometric.colorJitter 0.4 0.0 0.0 0.0 g1 x) expected)

        test "colour jitter applies each image's own factors in its own drawn order (per-image oracle)" {
            use scope = torch.NewDisposeScope()
            let count = 6L
            let x = images 14 torch.ScalarType.Float64 [| count; 3L; 3L; 3L |]
            use g = generator 14
            let jittered = Photometric.colorJitter 0.5 0.5 0.5 0.1 g x
            use replay = generator 14
            let draw low high = values (Draw.uniform replay low high [| count |] torch.CPU)
            let factors = [| draw 0.5 1.5; draw 0.5 1.5; draw 0.5 1.5; draw -0.1 0.1 |]
            let keys = values (Draw.uniform replay 0.0 1.0 [| count; 4L |] torch.CPU)
            let adjustments = [| Photometric.adjustBrightness; Photometric.adjustContrast; Photometric.adjustSaturation; Photometric.adjustHue |]
            for n in 0 .. int count - 1 do
                let order = Array.init 4 (fun k -> k) |> Array.sortBy (fun k -> keys[n * 4 + k])
                let mutable image = x.narrow(0L, int64 n, 1L)
                for k in order do
                    image <- adjustments[k] (torch.tensor([| factors[k][n] |], dtype = torch.ScalarType.Float64)) image
                Check.close 1e-12 0.0 $"image {n}" (jittered.narrow(0L, int64 n, 1L)) image
        }

        test "grayscale: luma weights, equal channels at probability 1, identity at 0" {
            use scope = torch.NewDisposeScope()
            let x = images 3 torch.ScalarType.Float64 [| 3L; 3L; 2L; 2L |]
            let d = values x
            let luma = Array.init 12 (fun k -> let n, p = k / 4, k % 4 in 0.299 * d[n * 12 + p] + 0.587 * d[n * 12 + 4 + p] + 0.114 * d[n * 12 + 8 + p])
            Check.close 1e-12 0.0 "luma" (Photometric.toGrayscale x) (torch.tensor(luma).view(3L, 1L, 2L, 2L))
            use g = generator 3
            let gray = Photometric.randomGrayscale 1.0 g x
            for c in 0L .. 2L do Check.close 0.0 0.0 $"channel {c}" (gray.narrow(1L, c, 1L)) (Photometric.toGrayscale x)
            Check.close 0.0 0.0 "p = 0" (Photometric.randomGrayscale 0.0 g x) x
        }

        test "Gaussian blur: loop oracle with reflect padding, constants kept, mean nearly kept" {
            use scope = torch.NewDisposeScope()
            let h, w, k = 5, 6, 5
            let x = images 4 torch.ScalarType.Float64 [| 2L; 1L; int64 h; int64 w |]
            let sigmas = [| 0.7; 1.6 |]
            let d = values x
            let expected = Array.init (2 * h * w) (fun idx ->
                let n, y, x' = idx / (h * w), (idx / w) % h, idx % w
                let taps = gaussianTaps k sigmas[n]
                Seq.sum [ for i in 0 .. k - 1 do
                            for j in 0 .. k - 1 ->
                                taps[i] * taps[j] * d[n * h * w + reflect h (y + i - k / 2) * w + reflect w (x' + j - k / 2)] ])
            let s = torch.tensor(sigmas, dtype = torch.ScalarType.Float64)
            let blurred = Photometric.gaussianBlur (int64 k) s x
            Check.close 1e-12 0.0 "oracle" blurred (torch.tensor(expected).view(x.shape))
            let constant = torch.full([| 2L; 3L; 5L; 6L |], (0.3).ToScalar(), dtype = torch.ScalarType.Float64)
            Check.close 1e-12 0.0 "constant" (Photometric.gaussianBlur 5L s constant) constant
            let big = images 5 torch.ScalarType.Float64 [| 2L; 1L; 32L; 32L |]
            Check.close 0.01 0.0 "mean" ((Photometric.gaussianBlur 5L s big).mean([| 2L; 3L |])) (big.mean([| 2L; 3L |]))
            let kernels = Photometric.gaussianKernels 7L s
            Check.close 1e-12 0.0 "kernels sum to 1" (kernels.sum(1L)) (torch.ones(2L, dtype = torch.ScalarType.Float64))
            Check.close 0.0 0.0 "kernels symmetric" kernels (kernels.flip([| 1L |]))
            Check.gradcheck "gaussianBlur" 1e-6 1e-6 (fun t -> (Photometric.gaussianBlur 3L s t).square().sum()) (x.narrow(2L, 0L, 3L).narrow(3L, 0L, 3L))
            let e = Prop.throws<ArgumentException> (fun () -> Photometric.gaussianKernels 4L s |> ignore)
            Expect.stringContains e.Message "kernelSize: expected a positive odd size, found 4" "names the parameter"
        }

        Prop.propSmall "random blur keeps a constant image" (fun (seed: int) ->
            use scope = torch.NewDisposeScope()
            use g = generator seed
            let constant = torch.full([| 3L; 2L; 6L; 6L |], (0.7).ToScalar())
            Check.close 1e-6 0.0 "constant" (Photometric.randomGaussianBlur 5L (0.1, 2.0) g constant) constant)

        Prop.propSmall "cutout zeroes exactly the square about the centre (loop oracle)" (fun (seed: int) (side: int) ->
            use scope = torch.NewDisposeScope()
            let length = size 1 6 side
            let x = images seed torch.ScalarType.Float64 [| 3L; 2L; 7L; 8L |] + 0.1
            use g = generator seed
            let cut = Photometric.cutout length g x
            use g2 = generator seed
            let ys = longs (Draw.integers g2 0L 6L [| 3L |] torch.CPU)
            let xs = longs (Draw.integers g2 0L 7L [| 3L |] torch.CPU)
            let d = values x
            let expected = Array.init (3 * 2 * 7 * 8) (fun k ->
                let n, y, x' = k / 112, int64 ((k / 8) % 7), int64 (k % 8)
                let inside (c: int64) (p: int64) = p >= c - length / 2L && p < c - length / 2L + length
                if inside ys[n] y && inside xs[n] x' then 0.0 else d[k])
            Check.close 0.0 0.0 "cutout" cut (torch.tensor(expected).view(x.shape)))
    ]

let patchTests =
    testList "patches" [
        Prop.propSmall "patch grid: count and content (slice oracle)" (fun (seed: int) (a: int) (b: int) ->
            use scope = torch.NewDisposeScope()
            let p, s = size 1 4 a, size 1 3 b
            let h, w = p + size 0 6 seed, p + size 0 6 (a + b)
            let x = images seed torch.ScalarType.Float32 [| 2L; 2L; h; w |]
            let grid = Patches.patchGrid p s x
            let gh, gw = (h - p) / s + 1L, (w - p) / s + 1L
            Expect.sequenceEqual grid.shape [| 2L; gh; gw; 2L; p; p |] "shape"
            for i in 0L .. gh - 1L do
                for j in 0L .. gw - 1L do
                    Check.close 0.0 0.0 $"patch ({i}, {j})" (grid.select(1L, i).select(1L, j)) (x.narrow(2L, i * s, p).narrow(3L, j * s, p)))

        test "CPC v2's grid: 7 × 7 patches of 64 with stride 32 on 256 × 256" {
            use x = torch.zeros(1L, 3L, 256L, 256L)
            use grid = Patches.patchGrid 64L 32L x
            Expect.sequenceEqual grid.shape [| 1L; 7L; 7L; 3L; 64L; 64L |] "shape"
        }

        Prop.propSmall "relative patch pairs: labels 0..7, patches at the returned positions and labelled offsets" (fun (seed: int) ->
            use scope = torch.NewDisposeScope()
            let p, gap, jitter = 3L, 2L, 1L
            let x = images seed torch.ScalarType.Float32 [| 8L; 2L; 16L; 17L |]
            use g = generator seed
            let centres, neighbours, labels, positions = Patches.relativePatchPairs p gap jitter g x
            let labelValues, pos = longs labels, longs positions
            for n in 0 .. 7 do
                let label = labelValues[n]
                Expect.isTrue (label >= 0L && label <= 7L) "label in 0..7"
                let cy, cx, ny, nx = pos[4 * n], pos[4 * n + 1], pos[4 * n + 2], pos[4 * n + 3]
                let image = x.narrow(0L, int64 n, 1L).squeeze(0L)
                Check.close 0.0 0.0 "centre" (centres.select(0L, int64 n)) (image.narrow(1L, cy, p).narrow(2L, cx, p))
                Check.close 0.0 0.0 "neighbour" (neighbours.select(0L, int64 n)) (image.narrow(1L, ny, p).narrow(2L, nx, p))
                let dy, dx = Patches.neighbourOffsets[int label]
                Expect.isTrue (abs (ny - cy - int64 dy * (p + gap)) <= 2L * jitter && abs (nx - cx - int64 dx * (p + gap)) <= 2L * jitter)
                    $"label {label}: offset ({ny - cy}, {nx - cx}) is ({dy}, {dx}) slots up to the jitter"
                for top, left in [ cy, cx; ny, nx ] do
                    Expect.isTrue (top >= 0L && left >= 0L && top + p <= 16L && left + p <= 17L) "inside the image")

        test "relative patch pairs name the size they need" {
            use g = generator 0
            use x = torch.zeros(1L, 1L, 14L, 20L)
            let e = Prop.throws<ArgumentException> (fun () -> Patches.relativePatchPairs 3L 2L 1L g x |> ignore)
            Expect.stringContains e.Message "expected H, W >= 3·patchSize + 2·gap + 2·jitter = 15, found (1, 1, 14, 20)" "geometry"
        }

        test "jigsaw permutation set: size, distinct permutations, reported distances recomputed" {
            for size, seed in [ 100, 0L; 30, 5L; 1, 0L ] do
                let set = Patches.permutationSet size seed
                Expect.equal set.Permutations.Length size "size"
                for perm in set.Permutations do Expect.sequenceEqual (Array.sort perm) [| 0 .. 8 |] "a permutation of 0..8"
                Expect.equal (set.Permutations |> Array.distinct |> Array.length) size "distinct"
                let distances = [| for a in 0 .. size - 1 do
                                     for b in a + 1 .. size - 1 ->
                                         Array.fold2 (fun d x y -> if x <> y then d + 1 else d) 0 set.Permutations[a] set.Permutations[b] |]
                if size > 1 then
                    Expect.equal set.MinimumHamming (Array.min distances) "minimum recomputed"
                    Expect.floatClose Accuracy.high set.MeanHamming (Array.averageBy float distances) "mean recomputed"
            let hundred = Patches.permutationSet 100 0L
            Expect.equal (hundred.MinimumHamming, Math.Round(hundred.MeanHamming, 2)) (2, 8.08) "documented distances of the seed-0 set of 100"
            Expect.equal (Patches.permutationSet 100 0L).Permutations hundred.Permutations "the same seed gives the same set"
        }

        Prop.propSmall "jigsaw: tiles are the slices at their positions, and unshuffle to them" (fun (seed: int) ->
            use scope = torch.NewDisposeScope()
            let permutations = Patches.permutationTensor { Patches.Permutations = [| [| 0 .. 8 |]; [| 8 .. -1 .. 0 |]; [| 3; 1; 4; 0; 5; 8; 2; 6; 7 |] |]; MinimumHamming = 0; MeanHamming = 0.0 } torch.CPU
            let x = images seed torch.ScalarType.Float32 [| 4L; 2L; 11L; 10L |]
            use g1 = generator seed
            let tiles, positions = Patches.jigsawTiles 3L 2L g1 x
            use g2 = generator seed
            let shuffled, labels = Patches.jigsaw permutations 3L 2L g2 x
            Expect.sequenceEqual shuffled.shape [| 4L; 9L; 2L; 2L; 2L |] "shape"
            let pos, labelValues, perms = longs positions, longs labels, longs permutations
            for n in 0 .. 3 do
                for t in 0 .. 8 do
                    let top, left = pos[(n * 9 + t) * 2], pos[(n * 9 + t) * 2 + 1]
                    Expect.isTrue (top >= int64 (t / 3) * 3L && left >= int64 (t % 3) * 3L) "tile in its cell's row and column band"
                    let image = x.select(0L, int64 n)
                    Check.close 0.0 0.0 $"tile {t}" (tiles.select(0L, int64 n).select(0L, int64 t)) (image.narrow(1L, top, 2L).narrow(2L, left, 2L))
                Expect.isTrue (labelValues[n] >= 0L && labelValues[n] < 3L) "label in range"
                for place in 0 .. 8 do
                    let source = perms[int labelValues[n] * 9 + place]
                    Check.close 0.0 0.0 $"place {place}" (shuffled.select(0L, int64 n).select(0L, int64 place)) (tiles.select(0L, int64 n).select(0L, source)))
    ]

let colorTests =
    testList "colour" [
        test "Lab known values: white, black, pure red" {
            use scope = torch.NewDisposeScope()
            let rgb = torch.tensor([| 1.0; 0.0; 1.0; 1.0; 0.0; 0.0; 1.0; 0.0; 0.0 |], dtype = torch.ScalarType.Float64).view(1L, 3L, 1L, 3L)
            let lab = Color.rgbToLab rgb
            Check.close 1e-9 0.0 "white" (lab.select(3L, 0L)) (torch.tensor([| 100.0; 0.0; 0.0 |]).view(1L, 3L, 1L))
            Check.close 1e-9 0.0 "black" (lab.select(3L, 1L)) (torch.zeros(1L, 3L, 1L))
            Check.close 0.005 0.0 "red" (lab.select(3L, 2L)) (torch.tensor([| 53.24; 80.09; 67.20 |]).view(1L, 3L, 1L))
        }

        Prop.propSmall "Lab round trip within 1e-4 on [0, 1] RGB (float64)" (fun (seed: int) ->
            use scope = torch.NewDisposeScope()
            let rgb = images seed torch.ScalarType.Float64 [| 2L; 3L; 4L; 5L |]
            Check.close 1e-4 0.0 "round trip" (Color.labToRgb (Color.rgbToLab rgb)) rgb)

        test "Lab conversions are differentiable (float64 finite differences)" {
            use scope = torch.NewDisposeScope()
            let rgb = images 1 torch.ScalarType.Float64 [| 1L; 3L; 2L; 2L |] * 0.8 + 0.1
            Check.gradcheck "rgbToLab" 1e-6 1e-5 (fun t -> (Color.rgbToLab t).square().sum()) rgb
            let lab = Color.rgbToLab rgb
            Check.gradcheck "labToRgb" 1e-6 1e-5 (fun t -> (Color.labToRgb t).square().sum()) lab
        }

        test "ab gamut: 261 bins on the grid of 10, holding every 8-bit colour's bin" {
            use scope = torch.NewDisposeScope()
            let bins = Color.abGamut 10.0 64
            Expect.sequenceEqual bins.shape [| 261L; 2L |] "the documented count"
            let set = values bins |> Array.chunkBySize 2 |> Array.map (fun ab -> ab[0], ab[1]) |> Set.ofArray
            Expect.isTrue (Set.forall (fun (a, b) -> a % 10.0 = 0.0 && b % 10.0 = 0.0) set) "multiples of 10"
            Expect.isTrue (set.Contains((0.0, 0.0))) "gray is in gamut"
            use g = generator 2
            let colours = (torch.randint(0L, 256L, [| 1L; 3L; 1L; 300L |], dtype = torch.ScalarType.Float64, generator = g)) / 255.0
            let lab = values (Color.rgbToLab colours)
            for i in 0 .. 299 do
                let bin = Math.Round(lab[300 + i] / 10.0) * 10.0 + 0.0, Math.Round(lab[600 + i] / 10.0) * 10.0 + 0.0
                Expect.isTrue (set.Contains bin) $"bin {bin} of a random 8-bit colour is in the set"
        }

        Prop.propSmall "soft-encoding: 5 nearest bins, Gaussian weights (loop oracle), sums to 1" (fun (seed: int) ->
            use scope = torch.NewDisposeScope()
            let bins = torch.tensor([| for a in -2.0 .. 2.0 do for b in -2.0 .. 2.0 do yield! [| 10.0 * a; 10.0 * b |] |]).view(25L, 2L)
            let ab = images seed torch.ScalarType.Float64 [| 2L; 2L; 2L; 3L |] * 50.0 - 25.0
            let encoded = Color.softEncode 5 5.0 bins ab
            Expect.sequenceEqual encoded.shape [| 2L; 25L; 2L; 3L |] "shape"
            Check.close 1e-12 0.0 "sums to 1" (encoded.sum(1L)) (torch.ones(2L, 2L, 3L, dtype = torch.ScalarType.Float64))
            Check.close 0.0 0.0 "5 non-zeros" (encoded.gt(0.0.ToScalar()).sum(1L)) (torch.full([| 2L; 2L; 3L |], (5L).ToScalar()))
            let a, centres = values ab, values bins
            let expected = Array.zeroCreate (2 * 25 * 6)
            for n in 0 .. 1 do
                for p in 0 .. 5 do
                    let x, y = a[n * 12 + p], a[n * 12 + 6 + p]
                    let nearest = Array.init 25 (fun q -> q, (x - centres[2 * q]) ** 2.0 + (y - centres[2 * q + 1]) ** 2.0) |> Array.sortBy snd |> Array.take 5
                    let weights = nearest |> Array.map (fun (_, d2) -> exp (-d2 / 50.0))
                    for (q, _), wq in Array.zip nearest weights do
                        expected[(n * 25 + q) * 6 + p] <- wq / Array.sum weights
            Check.close 1e-9 0.0 "oracle" encoded (torch.tensor(expected).view(encoded.shape)))

        test "annealed mean: T = 1 is the mean, T -> 0 the mode, a one-hot its bin; differentiable" {
            use scope = torch.NewDisposeScope()
            let bins = torch.tensor([| 0.0; 0.0; 10.0; 0.0; 0.0; 20.0; -10.0; -10.0 |], dtype = torch.ScalarType.Float64).view(4L, 2L)
            let z = torch.tensor([| 0.1; 0.5; 0.3; 0.1 |], dtype = torch.ScalarType.Float64).view(1L, 4L, 1L, 1L)
            let mean = [| 0.5 * 10.0 + 0.1 * -10.0; 0.3 * 20.0 + 0.1 * -10.0 |]
            Check.close 1e-12 0.0 "T = 1" (Color.annealedMean 1.0 bins z) (torch.tensor(mean).view(1L, 2L, 1L, 1L))
            Check.close 1e-9 0.0 "T = 0.01" (Color.annealedMean 0.01 bins z) (torch.tensor([| 10.0; 0.0 |]).view(1L, 2L, 1L, 1L))
            let tempered = [| 0.1; 0.5; 0.3; 0.1 |] |> Array.map (fun p -> p ** (1.0 / 0.38))
            let weights = tempered |> Array.map (fun t -> t / Array.sum tempered)
            let expected = [| weights[1] * 10.0 - weights[3] * 10.0; weights[2] * 20.0 - weights[3] * 10.0 |]
            Check.close 1e-12 0.0 "T = 0.38 (the paper's)" (Color.annealedMean 0.38 bins z) (torch.tensor(expected).view(1L, 2L, 1L, 1L))
            let oneHot = torch.tensor([| 0.0; 0.0; 1.0; 0.0 |], dtype = torch.ScalarType.Float64).view(1L, 4L, 1L, 1L)
            Check.close 1e-12 0.0 "one-hot" (Color.annealedMean 0.38 bins oneHot) (torch.tensor([| 0.0; 20.0 |]).view(1L, 2L, 1L, 1L))
            Check.gradcheck "annealedMean" 1e-6 1e-6 (fun t -> (Color.annealedMean 0.38 bins t).square().sum()) z
        }
    ]

/// Images of whole 8-bit levels (k / 255), as the data sets hold them.
let private levelImages (seed: int) (shape: int64[]) =
    use scope = torch.NewDisposeScope()
    ((images seed torch.ScalarType.Float64 shape * 255.0).floor() / 255.0).MoveToOuterDisposeScope()

/// Per-pixel oracle: `f` of each value, image n's magnitude m[n]; images (N, C, H, W) float64.
let private pointwise (f: float -> float -> float) (m: float[]) (x: Tensor) =
    let d = values x
    let per = d.Length / m.Length
    torch.tensor(Array.init d.Length (fun k -> f m[k / per] d[k]), dtype = torch.ScalarType.Float64).view(x.shape)

/// PIL's ImageOps.equalize on one band of 8-bit levels, as a loop.
let private equalizeBand (levels: int[]) =
    let h = Array.zeroCreate 256
    for l in levels do h[l] <- h[l] + 1
    let present = h |> Array.filter (fun c -> c > 0)
    let step = if present.Length <= 1 then 0 else (Array.sum present - Array.last present) / 255
    if step = 0 then levels
    else
        let lut = Array.zeroCreate 256
        let mutable n = step / 2
        for i in 0 .. 255 do
            lut[i] <- min 255 (n / step)
            n <- n + h[i]
        levels |> Array.map (fun l -> lut[l])

let private magnitudes (m: float[]) = torch.tensor(m, dtype = torch.ScalarType.Float64)

let randAugmentTests =
    testList "randaugment" [
        Prop.propSmall "FixMatch's strong augmentation keeps the shape, the dtype and [0, 1] (1 and 3 channels)" (fun (seed: int) ->
            use scope = torch.NewDisposeScope()
            let channels = if seed % 2 = 0 then 1L else 3L
            let x = images seed torch.ScalarType.Float32 [| size 1 12 seed; channels; size 4 12 (seed / 3); size 4 12 (seed / 7) |]
            use g = generator seed
            let y = RandAugment.strongAugment 2 0.5 0.5 g x
            Expect.equal y.shape x.shape "shape"
            Expect.equal y.dtype x.dtype "dtype"
            Expect.isGreaterThanOrEqual (y.min().item<float32>()) 0.0f ">= 0"
            Expect.isLessThanOrEqual (y.max().item<float32>()) 1.0f "<= 1")

        test "every operation keeps [0, 1] at both ends of its range" {
            use scope = torch.NewDisposeScope()
            for channels in [ 1L; 3L ] do
                let x = images 3 torch.ScalarType.Float64 [| 4L; channels; 7L; 6L |]
                for op, low, high in RandAugment.pool do
                    for m in [ low; high ] do
                        let y = RandAugment.apply op (magnitudes (Array.create 4 m)) x
                        Expect.equal y.shape x.shape $"{op} shape"
                        Expect.isTrue (y.min().item<float>() >= 0.0 && y.max().item<float>() <= 1.0) $"{op} at {m}, C = {channels}: in [0, 1]"
        }

        test "neutral magnitudes are the identity; Identity at any magnitude; Color on grey at any factor" {
            use scope = torch.NewDisposeScope()
            for channels in [ 1L; 3L ] do
                let x = levelImages 4 [| 3L; channels; 6L; 5L |]
                for op, m in [ RandAugment.Op.Brightness, 1.0; RandAugment.Op.Color, 1.0; RandAugment.Op.Contrast, 1.0
                               RandAugment.Op.Sharpness, 1.0; RandAugment.Op.Posterize, 8.0; RandAugment.Op.Solarize, 256.0
                               RandAugment.Op.Rotate, 0.0; RandAugment.Op.ShearX, 0.0; RandAugment.Op.ShearY, 0.0
                               RandAugment.Op.TranslateX, 0.0; RandAugment.Op.TranslateY, 0.0; RandAugment.Op.Identity, 0.7 ] do
                    Check.close 1e-12 0.0 $"{op} at {m}, C = {channels}" (RandAugment.apply op (magnitudes (Array.create 3 m)) x) x
            let grey = levelImages 5 [| 3L; 1L; 6L; 5L |]
            Check.close 0.0 0.0 "Color on grey" (RandAugment.apply RandAugment.Op.Color (magnitudes [| 0.05; 0.5; 0.95 |]) grey) grey
            // Not neutral: these do change an image, so the checks above can fail.
            Expect.isFalse ((RandAugment.apply RandAugment.Op.Solarize (magnitudes [| 128.0; 128.0; 128.0 |]) grey).allclose(grey)) "solarize 128 changes"
            Expect.isFalse ((RandAugment.apply RandAugment.Op.Rotate (magnitudes [| 30.0; 30.0; 30.0 |]) grey).allclose(grey)) "rotate 30 changes"
        }

        Prop.propSmall "solarize, posterize, brightness and contrast against per-pixel oracles" (fun (seed: int) ->
            use scope = torch.NewDisposeScope()
            let rnd = Random(seed)
            let n = int (size 1 4 seed)
            let x = levelImages seed [| int64 n; 1L; 5L; 4L |]
            let thresholds = Array.init n (fun _ -> rnd.NextDouble() * 256.0)
            Check.close 1e-12 0.0 "solarize" (RandAugment.apply RandAugment.Op.Solarize (magnitudes thresholds) x)
                (pointwise (fun t v -> if 255.0 * v >= t then 1.0 - v else v) thresholds x)
            let bits = Array.init n (fun _ -> 4.0 + rnd.NextDouble() * 4.0)
            let posterized (b: float) (v: float) =
                let level = int (Math.Round(v * 255.0))
                float (level &&& ~~~((1 <<< (8 - int b)) - 1)) / 255.0
            Check.close 1e-12 0.0 "posterize" (RandAugment.apply RandAugment.Op.Posterize (magnitudes bits) x) (pointwise posterized bits x)
            let factors = Array.init n (fun _ -> 0.05 + rnd.NextDouble() * 0.9)
            Check.close 1e-12 0.0 "brightness" (RandAugment.apply RandAugment.Op.Brightness (magnitudes factors) x)
                (pointwise (fun f v -> min 1.0 (max 0.0 (f * v))) factors x)
            let d = values x
            let means = Array.init n (fun i -> Array.average d[i * 20 .. i * 20 + 19])
            let contrast = RandAugment.apply RandAugment.Op.Contrast (magnitudes factors) x
            let expected = Array.init d.Length (fun k -> let f = factors[k / 20] in min 1.0 (max 0.0 (f * d[k] + (1.0 - f) * means[k / 20])))
            Check.close 1e-12 0.0 "contrast: blend with the grey mean" contrast (torch.tensor(expected).view(x.shape)))

        Prop.propSmall "autocontrast and equalize against per-channel loop oracles (PIL's definitions)" (fun (seed: int) ->
            use scope = torch.NewDisposeScope()
            let n, c, h, w = int (size 1 3 seed), 3, int (size 16 24 (seed / 5)), int (size 16 24 (seed / 11))
            // A narrow band of levels, so that autocontrast stretches and equalize has work to do.
            let x = ((images seed torch.ScalarType.Float64 [| int64 n; int64 c; int64 h; int64 w |] * 60.0 + 50.0).floor() / 255.0)
            let none = magnitudes (Array.zeroCreate n)
            let d = values x
            let plane = h * w
            let stretched =
                Array.init d.Length (fun k ->
                    let p = d[(k / plane) * plane .. (k / plane) * plane + plane - 1]
                    let lo, hi = Array.min p, Array.max p
                    if hi > lo then (d[k] - lo) / (hi - lo) else d[k])
            Check.close 1e-12 0.0 "autocontrast" (RandAugment.apply RandAugment.Op.AutoContrast none x) (torch.tensor(stretched).view(x.shape))
            let equalised =
                Array.init (n * c) (fun i -> d[i * plane .. i * plane + plane - 1] |> Array.map (fun v -> int (Math.Round(v * 255.0))) |> equalizeBand)
                |> Array.concat |> Array.map (fun l -> float l / 255.0)
            Check.close 1e-12 0.0 "equalize" (RandAugment.apply RandAugment.Op.Equalize none x) (torch.tensor(equalised).view(x.shape)))

        test "geometric operations: rotate 90 is a quarter turn, translations shift whole pixels with black, shears sample PIL's map" {
            use scope = torch.NewDisposeScope()
            let x = images 7 torch.ScalarType.Float64 [| 2L; 3L; 8L; 8L |]
            Check.close 1e-9 0.0 "rotate 90" (RandAugment.apply RandAugment.Op.Rotate (magnitudes [| 90.0; 90.0 |]) x) (Geometric.rotate 1 x)
            Check.close 1e-9 0.0 "rotate -90" (RandAugment.apply RandAugment.Op.Rotate (magnitudes [| -90.0; -90.0 |]) x) (Geometric.rotate 3 x)
            // TranslateX m: output column j shows input column j + m·W.
            let shifted = RandAugment.apply RandAugment.Op.TranslateX (magnitudes [| 2.0 / 8.0; -1.0 / 8.0 |]) x
            let d = values x
            let expected =
                Array.init d.Length (fun k ->
                    let n, j = k / (3 * 64), k % 8
                    let source = j + (if n = 0 then 2 else -1)
                    if source >= 0 && source < 8 then d[k - j + source] else 0.0)
            Check.close 1e-9 0.0 "translate x" shifted (torch.tensor(expected).view(x.shape))
            let down = RandAugment.apply RandAugment.Op.TranslateY (magnitudes [| -3.0 / 8.0; 0.0 |]) x
            Check.close 1e-9 0.0 "translate y: rows move down" (down.narrow(0L, 0L, 1L).narrow(2L, 3L, 5L)) (x.narrow(0L, 0L, 1L).narrow(2L, 0L, 5L))
            Check.close 0.0 0.0 "translate y: black above" (down.narrow(0L, 0L, 1L).narrow(2L, 0L, 3L)) (torch.zeros(1L, 3L, 3L, 8L, dtype = torch.ScalarType.Float64))
            let shears = [| 0.3; -0.2 |]
            let oracle (transpose: bool) =
                Array.init d.Length (fun k ->
                    let n, c, y, j = k / 192, (k / 64) % 3, (k / 8) % 8, k % 8
                    let plane = d[(n * 3 + c) * 64 .. (n * 3 + c) * 64 + 63]
                    // PIL's AFFINE (1, m, 0, 0, 1, 0) on pixel centres, then back to index coordinates.
                    if transpose then bilinear plane 8 8 (float j) (float y + shears[n] * (float j + 0.5))
                    else bilinear plane 8 8 (float j + shears[n] * (float y + 0.5)) (float y))
            Check.close 1e-9 0.0 "shear x" (RandAugment.apply RandAugment.Op.ShearX (magnitudes shears) x) (torch.tensor(oracle false).view(x.shape))
            Check.close 1e-9 0.0 "shear y" (RandAugment.apply RandAugment.Op.ShearY (magnitudes shears) x) (torch.tensor(oracle true).view(x.shape))
        }

        test "applyChosen runs each image's own operation: the same as applying them one image at a time" {
            use scope = torch.NewDisposeScope()
            let x = images 8 torch.ScalarType.Float64 [| 14L; 3L; 6L; 6L |]
            let choices = Array.init 14 (fun i -> int64 ((i * 5) % 14))
            let m = Array.init 14 (fun i -> let _, low, high = RandAugment.pool[int choices[i]] in low + (high - low) * float i / 13.0)
            let batched = RandAugment.applyChosen (torch.tensor(choices)) (magnitudes m) x
            for i in 0 .. 13 do
                let op, _, _ = RandAugment.pool[int choices[i]]
                let alone = RandAugment.apply op (magnitudes [| m[i] |]) (x.narrow(0L, int64 i, 1L))
                Check.close 1e-12 0.0 $"image {i} ({op})" (batched.narrow(0L, int64 i, 1L)) alone
            let e = Prop.throws<ArgumentException> (fun () -> RandAugment.applyChosen (torch.tensor([| 0L; 14L |])) (magnitudes [| 0.0; 0.0 |]) (x.narrow(0L, 0L, 2L)) |> ignore)
            Expect.stringContains e.Message "[0, 14)" "names the valid range"
            let e = Prop.throws<ArgumentException> (fun () -> RandAugment.apply RandAugment.Op.Rotate (magnitudes [| 1.0 |]) (torch.zeros(1L, 2L, 4L, 4L)) |> ignore)
            Expect.stringContains e.Message "1 or 3 channels" "names the channel rule"
        }

        Prop.propSmall "cutout fills exactly the clipped square with the fill value" (fun (seed: int) ->
            use scope = torch.NewDisposeScope()
            let rnd = Random(seed)
            let n, h, w = int (size 1 4 seed), int (size 4 12 (seed / 3)), int (size 4 12 (seed / 5))
            let sides = Array.init n (fun _ -> int64 (rnd.Next(0, 7)))
            let centres = Array.init n (fun _ -> [| int64 (rnd.Next(h)); int64 (rnd.Next(w)) |])
            let x = torch.zeros([| int64 n; 2L; int64 h; int64 w |], dtype = torch.ScalarType.Float64)
            let y = RandAugment.cutoutSquares 0.5 (torch.tensor(sides)) (torch.tensor(Array.concat centres).view(int64 n, 2L)) x
            let expected =
                Array.init (n * 2 * h * w) (fun k ->
                    let i, r, c = k / (2 * h * w), (k / w) % h, k % w
                    let top, left = centres[i][0] - sides[i] / 2L, centres[i][1] - sides[i] / 2L
                    if int64 r >= top && int64 r < top + sides[i] && int64 c >= left && int64 c < left + sides[i] then 0.5 else 0.0)
            Check.close 0.0 0.0 "square" y (torch.tensor(expected).view(x.shape))
            // Away from the borders the hole is side² pixels per channel.
            let inner = RandAugment.cutoutSquares 0.5 (torch.tensor([| 4L |])) (torch.tensor([| 6L; 6L |]).view(1L, 2L)) (torch.zeros(1L, 1L, 12L, 12L))
            Expect.equal (inner.eq(0.5f.ToScalar()).sum().item<int64>()) 16L "4 x 4 hole")

        test "randomCutout: sides up to the fraction of the side, grey fill; fraction 0 is the identity" {
            use scope = torch.NewDisposeScope()
            let x = torch.zeros(64L, 1L, 16L, 16L)
            use g = generator 9
            let y = RandAugment.randomCutout 0.5 0.5 g x
            let holes = values (y.eq(0.5f.ToScalar()).sum([| 1L; 2L; 3L |]))
            Expect.isTrue (holes |> Array.forall (fun a -> a <= 64.0)) "at most (16/2)² pixels"
            Expect.isTrue (holes |> Array.exists (fun a -> a > 16.0)) "some large holes"
            Expect.isTrue (values y |> Array.forall (fun v -> v = 0.0 || v = 0.5)) "only the fill value"
            Check.close 0.0 0.0 "fraction 0" (RandAugment.randomCutout 0.0 0.5 g x) x
            let e = Prop.throws<ArgumentException> (fun () -> RandAugment.randomCutout 1.5 0.5 g x |> ignore)
            Expect.stringContains e.Message "maxFraction" "names the argument"
        }

        test "the same generator seed gives the same output, another seed another; no tensor leaks" {
            use x = images 10 torch.ScalarType.Float32 [| 16L; 3L; 10L; 10L |]
            let run seed =
                use g = generator seed
                RandAugment.strongAugment 2 0.5 0.5 g x
            use a = run 11
            use b = run 11
            use c = run 12
            Check.close 0.0 0.0 "same seed" a b
            Expect.isFalse (a.allclose(c)) "another seed differs"
            Check.noLeak "strongAugment" (fun () -> (run 13).Dispose())
            Check.leavesOnlyResult "randAugment" (fun () -> use g = generator 14 in RandAugment.randAugment 2 g x)
            Check.leavesOnlyResult "randomCutout" (fun () -> use g = generator 15 in RandAugment.randomCutout 0.5 0.5 g x)
        }
    ]

/// Every transform, run on `x` (N = 4, C = 3, 12 × 12) with a fresh generator: its results. The
/// extra inputs are made here, outside the calls the memory check watches.
let private everyTransform (x: Tensor) : (string * (unit -> Tensor list)) list =
    let g () = generator 1
    let run name (f: torch.Generator -> Tensor list) = name, (fun () -> use gen = g () in f gen)
    let device = x.device
    let bins = torch.tensor([| 0.0; 0.0; 10.0; 0.0; 0.0; 10.0; -10.0; 0.0; 0.0; -10.0 |], device = device).view(5L, 2L)
    let permutations = torch.tensor([| 0L .. 8L |], device = device).view(1L, 9L)
    let ab = x.narrow(1L, 0L, 2L) * 10.0
    let probabilities = x.narrow(1L, 0L, 1L).expand(4L, 5L, 12L, 12L).softmax(1L)
    [ run "rotate" (fun _ -> [ Geometric.rotate 1 x ])
      run "rotationBatch" (fun _ -> let a, b = Geometric.rotationBatch x in [ a; b ])
      run "horizontalFlip" (fun _ -> [ Geometric.horizontalFlip x ])
      run "randomHorizontalFlip" (fun g -> [ Geometric.randomHorizontalFlip 0.5 g x ])
      run "randomResizedCrop" (fun g -> [ Geometric.randomResizedCrop (0.08, 1.0) (0.75, 1.33) (8L, 8L) g x ])
      run "randomAffine" (fun g -> let a, b = Geometric.randomAffine 20.0 0.1 (0.9, 1.1) 10.0 g x in [ a; b ])
      run "randomSimilarity" (fun g -> let a, b = Geometric.randomSimilarity 20.0 0.1 (0.9, 1.1) g x in [ a; b ])
      run "randomEuclidean" (fun g -> let a, b = Geometric.randomEuclidean 20.0 0.1 g x in [ a; b ])
      run "randomProjective" (fun g -> let a, b = Geometric.randomProjective (0.8, 1.2) 0.1 g x in [ a; b ])
      run "colorJitter" (fun g -> [ Photometric.colorJitter 0.4 0.4 0.4 0.1 g x ])
      run "randomGrayscale" (fun g -> [ Photometric.randomGrayscale 0.5 g x ])
      run "toGrayscale" (fun _ -> [ Photometric.toGrayscale x ])
      run "randomGaussianBlur" (fun g -> [ Photometric.randomGaussianBlur 3L (0.1, 2.0) g x ])
      run "cutout" (fun g -> [ Photometric.cutout 4L g x ])
      run "patchGrid" (fun _ -> [ Patches.patchGrid 4L 2L x ])
      run "relativePatchPairs" (fun g -> let a, b, c, d = Patches.relativePatchPairs 2L 1L 1L g x in [ a; b; c; d ])
      run "jigsawTiles" (fun g -> let a, b = Patches.jigsawTiles 4L 3L g x in [ a; b ])
      run "jigsaw" (fun g -> let a, b = Patches.jigsaw permutations 4L 3L g x in [ a; b ])
      run "rgbToLab" (fun _ -> [ Color.rgbToLab x ])
      run "labToRgb" (fun _ -> [ Color.labToRgb x ])
      run "softEncode" (fun _ -> [ Color.softEncode 5 5.0 bins ab ])
      run "annealedMean" (fun _ -> [ Color.annealedMean 0.38 bins probabilities ]) ]

let memoryAndDeviceTests =
    testList "memory and device" [
        for device in Check.devices () do
            let deviceName = string device.``type``
            for dtype in [ torch.ScalarType.Float32; torch.ScalarType.Float64 ] do
                test $"every transform leaves only its results, on {deviceName} {dtype}" {
                    use x = (images 1 dtype [| 4L; 3L; 12L; 12L |]).``to``(device)
                    for name, f in everyTransform x do
                        let results = f ()
                        let first = List.head results
                        Expect.equal first.device_type device.``type`` $"{name}: device"
                        Expect.equal first.dtype dtype $"{name}: dtype"
                        disposeAll results
                        Check.noLeak name (fun () -> disposeAll (f ()))
                }
        test "single-result transforms leave exactly their result" {
            use x = images 1 torch.ScalarType.Float32 [| 4L; 3L; 12L; 12L |]
            use identity = torch.eye(2L, 3L).expand(4L, 2L, 3L)
            use sigmas = torch.ones(4L)
            Check.leavesOnlyResult "rotate" (fun () -> Geometric.rotate 2 x)
            Check.leavesOnlyResult "affineWarp" (fun () -> Geometric.affineWarp identity x)
            Check.leavesOnlyResult "gaussianBlur" (fun () -> Photometric.gaussianBlur 3L sigmas x)
            Check.noLeak "permutationSet" (fun () -> Patches.permutationSet 5 0L |> ignore)
            Check.noLeak "abGamut" (fun () -> (Color.abGamut 10.0 4).Dispose())
        }
    ]

/// Every transform that draws per image, as (name, generator → images → results).
let private drawingTransforms : (string * (torch.Generator -> Tensor -> Tensor list)) list =
    let permutations = torch.tensor([| 0L .. 8L |]).view(1L, 9L)
    [ "randomHorizontalFlip", (fun g x -> [ Geometric.randomHorizontalFlip 0.5 g x ])
      "randomResizedCrop", (fun g x -> [ Geometric.randomResizedCrop (0.08, 1.0) (0.75, 1.33) (8L, 8L) g x ])
      "randomAffine", (fun g x -> let a, b = Geometric.randomAffine 20.0 0.1 (0.9, 1.1) 10.0 g x in [ a; b ])
      "randomProjective", (fun g x -> let a, b = Geometric.randomProjective (0.8, 1.2) 0.1 g x in [ a; b ])
      "colorJitter", (fun g x -> [ Photometric.colorJitter 0.4 0.4 0.4 0.1 g x ])
      "randomGrayscale", (fun g x -> [ Photometric.randomGrayscale 0.5 g x ])
      "randomGaussianBlur", (fun g x -> [ Photometric.randomGaussianBlur 3L (0.1, 2.0) g x ])
      "cutout", (fun g x -> [ Photometric.cutout 4L g x ])
      "valueNoise", (fun g x -> [ Photometric.valueNoise g x ])
      "relativePatchPairs", (fun g x -> let a, b, c, d = Patches.relativePatchPairs 2L 1L 1L g x in [ a; b; c; d ])
      "jigsaw", (fun g x -> let a, b = Patches.jigsaw permutations 4L 3L g x in [ a; b ])
      "strongAugment", (fun g x -> [ RandAugment.strongAugment 2 0.5 0.5 g x ])
      "a pipeline (crop, flip, jitter, RandAugment)",
          (fun g x -> [ Geometric.randomResizedCrop (0.2, 1.0) (0.75, 1.33) (12L, 12L) g x
                        |> Geometric.randomHorizontalFlip 0.5 g |> Photometric.colorJitter 0.4 0.4 0.0 0.0 g
                        |> RandAugment.randAugment 2 g ]) ]

/// Draw.RowShard: ranks that each transform their rows of a global batch with the step's seed get
/// one process's results on the global batch, row for row (docs/distributed.md, "Draws").
let rowShardTests =
    testList "row shards" [
        test "every per-image transform: the ranks' rows are one process's rows" {
          for seed, ranks, rows in [ 3, 2, 3L; 11, 3, 2L ] do
            use scope = torch.NewDisposeScope()
            let x = images seed torch.ScalarType.Float32 [| int64 ranks * rows; 3L; 12L; 12L |]
            for name, transform in drawingTransforms do
                use one = generator seed
                let expected = transform one x
                let parts =
                    [ for rank in 0 .. ranks - 1 ->
                        use shard = new Draw.RowShard(uint64 (abs seed), torch.CPU, rank, ranks)
                        transform shard (x.narrow(0L, int64 rank * rows, rows)) ]
                expected |> List.iteri (fun i whole ->
                    Check.close 0.0 0.0 $"{name}, result {i}, {ranks} ranks of {rows}" (torch.cat([| for p in parts -> p[i] |], 0L)) whole)
        }
        test "a draw that is not per image (a permutation) is one process's on every rank" {
            use one = generator 9
            use shard = new Draw.RowShard(9UL, torch.CPU, 1, 2)
            Expect.sequenceEqual (longs (torch.randperm(10L, generator = shard))) (longs (torch.randperm(10L, generator = one))) "randperm"
            Expect.throws (fun () -> new Draw.RowShard(9UL, torch.CPU, 2, 2) |> ignore) "rank 2 of 2"
        } ]

[<Tests>]
let tests = testList "core.transforms" [ geometricTests; photometricTests; patchTests; colorTests; randAugmentTests; memoryAndDeviceTests; rowShardTests ]
