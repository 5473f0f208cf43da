/// CIE Lab colour space and the quantised ab gamut of colourisation (Zhang et al. 2016, "Colorful
/// image colorization"): soft-encoding of ab to the nearest bins and annealed-mean decoding.
/// Images are float tensors (N, 3, H, W); results stay on the inputs' device and dtype.
module Ssl.Core.Transforms.Color

open System
open TorchSharp
open type TorchSharp.torch
// Last, so F#'s float, int64, log, exp, ... win over torch's dtype fields and tensor functions.
open Microsoft.FSharp.Core.Operators
open Ssl.Core.Shape

/// Linear sRGB → CIE XYZ (IEC 61966-2-1, D65), rows X, Y, Z.
let private rgbToXyz =
    [| 0.4124564; 0.3575761; 0.1804375
       0.2126729; 0.7151522; 0.0721750
       0.0193339; 0.1191920; 0.9503041 |]

/// CIE XYZ → linear sRGB: the inverse of `rgbToXyz`, by cofactors.
let private xyzToRgb =
    let at row column = rgbToXyz[3 * row + column]
    let cofactor row column =
        let rows = Array.except [ row ] [| 0; 1; 2 |]
        let columns = Array.except [ column ] [| 0; 1; 2 |]
        let minor = at rows[0] columns[0] * at rows[1] columns[1] - at rows[0] columns[1] * at rows[1] columns[0]
        if (row + column) % 2 = 0 then minor else -minor
    let determinant = at 0 0 * cofactor 0 0 + at 0 1 * cofactor 0 1 + at 0 2 * cofactor 0 2
    Array.init 9 (fun k -> cofactor (k % 3) (k / 3) / determinant)

/// The reference white (D65) as the matrix maps RGB white, so white has a = b = 0 exactly.
let private white = Array.init 3 (fun row -> rgbToXyz[3 * row] + rgbToXyz[3 * row + 1] + rgbToXyz[3 * row + 2])

/// δ = 6/29, the knee of CIE's cube-root function f.
let private delta = 6.0 / 29.0

let private matrixOn (values: float[]) (like: Tensor) =
    tensor(values, dtype = ScalarType.Float64, device = like.device).view(3L, 3L).to_type(like.dtype)

/// Applies a 3 × 3 matrix over the channel dimension. pixels: (N, 3, H, W).
let private applyMatrix (matrix: Tensor) (pixels: Tensor) =
    einsum("ij,njhw->nihw", matrix, pixels)

/// sRGB (gamma-encoded, D65, values in [0, 1]) → CIE Lab: L in [0, 100], a and b roughly in
/// [-128, 127]. Exact formulas: the sRGB transfer function (IEC 61966-2-1), the sRGB→XYZ matrix, and
/// CIE 1976 L*a*b* with f(t) = t^(1/3) above (6/29)^3 and t/(3·(6/29)^2) + 4/29 below.
/// rgb: (N, 3, H, W) → (N, 3, H, W) with channels L, a, b. Differentiable.
let rgbToLab (rgb: Tensor) : Tensor =
    expect "rgb" [| Any; Exactly 3L; Any; Any |] rgb
    use scope = NewDisposeScope()
    let linear = where(rgb.le(0.04045.ToScalar()), rgb / 12.92, ((rgb.clamp_min(0.04045.ToScalar()) + 0.055) / 1.055).pow(2.4.ToScalar()))
    let xyz = applyMatrix (matrixOn rgbToXyz rgb) linear / tensor(white, dtype = rgb.dtype, device = rgb.device).view(1L, 3L, 1L, 1L)
    let knee = delta ** 3.0
    let f = where(xyz.gt(knee.ToScalar()), xyz.clamp_min(knee.ToScalar()).pow((1.0 / 3.0).ToScalar()), xyz / (3.0 * delta * delta) + 4.0 / 29.0)
    let fx, fy, fz = f.select(1L, 0L), f.select(1L, 1L), f.select(1L, 2L)
    stack([| fy * 116.0 - 16.0; (fx - fy) * 500.0; (fy - fz) * 200.0 |], 1L).MoveToOuterDisposeScope()

/// CIE Lab → sRGB, the exact inverse of `rgbToLab`. Colours outside the sRGB gamut give values
/// outside [0, 1] (not clamped: clamp for display). lab: (N, 3, H, W) → (N, 3, H, W). Differentiable.
let labToRgb (lab: Tensor) : Tensor =
    expect "lab" [| Any; Exactly 3L; Any; Any |] lab
    use scope = NewDisposeScope()
    let fy = (lab.select(1L, 0L) + 16.0) / 116.0
    let f = stack([| fy + lab.select(1L, 1L) / 500.0; fy; fy - lab.select(1L, 2L) / 200.0 |], 1L)
    let ratio = where(f.gt(delta.ToScalar()), f.pow(3.0.ToScalar()), (f - 4.0 / 29.0) * (3.0 * delta * delta))
    let xyz = ratio * tensor(white, dtype = lab.dtype, device = lab.device).view(1L, 3L, 1L, 1L)
    let linear = applyMatrix (matrixOn xyzToRgb lab) xyz
    let knee = 0.0031308
    let encoded = where(linear.le(knee.ToScalar()), linear * 12.92, linear.clamp_min(knee.ToScalar()).pow((1.0 / 2.4).ToScalar()) * 1.055 - 0.055)
    encoded.MoveToOuterDisposeScope()

/// The in-gamut ab bins of colourisation (Zhang et al. 2016, Sec. 2.1: ab space quantised with grid
/// size 10; 313 bins in gamut there, counted from ImageNet's pixels). Here the gamut is that of sRGB,
/// sampled on a regular grid of `levels` values per channel (256: every 8-bit colour): each sample
/// is converted to Lab and its (a, b) rounded to the nearest multiple of gridSize; the bins hit form
/// the set. With gridSize 10 all 2^24 8-bit colours hit 261 bins, and 64 levels already hit the same
/// 261 from 1/64 of the samples; 128 levels hit 262, one bin touched only by colours between
/// 8-bit levels. 8-bit sRGB pixels cannot reach the paper's 313 under these formulas and this
/// rounding: its count reflects a different conversion or binning.
/// Result: (Q, 2) float64 on the CPU, bin centres (a, b), sorted by a then b.
let abGamut (gridSize: float) (levels: int) : Tensor =
    if gridSize < 1.0 then invalidArg "gridSize" $"gridSize: expected a bin size >= 1, found {gridSize}"
    if levels < 2 || levels > 256 then invalidArg "levels" $"levels: expected 2 .. 256 samples per channel, found {levels}"
    use scope = NewDisposeScope()
    let values = arange(int64 levels, dtype = ScalarType.Float64) / float (levels - 1)
    let grid = meshgrid([| values; values |], indexing = "ij")
    // Bins are indexed on a 256 × 256 board of ab cells centred on ab = 0, wide enough for sRGB.
    let board = 256L
    let hit = zeros(board * board, dtype = ScalarType.Bool)
    for red in 0 .. levels - 1 do
        use inner = NewDisposeScope()
        let rgb = stack([| full_like(grid[0], (float red / float (levels - 1)).ToScalar()); grid[0]; grid[1] |], 0L).unsqueeze(0)
        let cells = ((rgbToLab rgb).narrow(1L, 1L, 2L) / gridSize).round().to_type(ScalarType.Int64) + board / 2L
        hit.index_fill_(0L, (cells.select(1L, 0L) * board + cells.select(1L, 1L)).flatten(), true.ToScalar()) |> ignore
    let index = hit.nonzero().squeeze(1L)
    let a = (index.div(board.ToScalar(), rounding_mode = RoundingMode.floor) - board / 2L).to_type(ScalarType.Float64) * gridSize
    let b = (index.remainder(board.ToScalar()) - board / 2L).to_type(ScalarType.Float64) * gridSize
    stack([| a; b |], 1L).MoveToOuterDisposeScope()

/// Soft-encoding of ab values over the bins (Zhang et al. 2016, Sec. 2.1): each pixel's ab is
/// spread over its `neighbours` nearest bins (the paper: 5) with weights from a Gaussian kernel of
/// width `sigma` (the paper: 5) on the distance, normalised to sum to 1.
/// bins: (Q, 2) bin centres (a, b); ab: (N, 2, H, W) → (N, Q, H, W), on ab's device and dtype.
let softEncode (neighbours: int) (sigma: float) (bins: Tensor) (ab: Tensor) : Tensor =
    expect "bins" [| Any; Exactly 2L |] bins
    expect "ab" [| Any; Exactly 2L; Any; Any |] ab
    if neighbours < 1 || int64 neighbours > bins.shape[0] then
        invalidArg "neighbours" $"neighbours: expected 1 .. Q = {bins.shape[0]} bins, found {neighbours}"
    if sigma <= 0.0 then invalidArg "sigma" $"sigma: expected a positive kernel width, found {sigma}"
    use scope = NewDisposeScope()
    let count, height, width = ab.shape[0], ab.shape[2], ab.shape[3]
    let centres = bins.``to``(ab.device).to_type(ab.dtype)
    let pixels = ab.permute(0L, 2L, 3L, 1L).reshape(-1L, 2L)
    let squared = (pixels.unsqueeze(1) - centres.unsqueeze(0)).square().sum(2L)
    let struct (nearest, index) = squared.topk(neighbours, dim = 1, largest = false)
    let weights = (nearest / (-2.0 * sigma * sigma)).softmax(1L)
    let encoded = zeros_like(squared).scatter(1L, index, weights)
    encoded.view(count, height, width, -1L).permute(0L, 3L, 1L, 2L).contiguous().MoveToOuterDisposeScope()

/// Annealed-mean decoding (Zhang et al. 2016, Sec. 2.2, eq. 5): the distribution over bins is
/// re-tempered, f_T(z) = exp(log z / T) / Σ_q exp(log z_q / T), and the ab value is its mean over
/// the bin centres. T = 1 gives the mean, T → 0 the mode; the paper uses T = 0.38.
/// bins: (Q, 2); probabilities: (N, Q, H, W), non-negative, summing to 1 over Q → ab (N, 2, H, W).
let annealedMean (temperature: float) (bins: Tensor) (probabilities: Tensor) : Tensor =
    if temperature <= 0.0 then invalidArg "temperature" $"temperature: expected > 0, found {temperature}"
    expect "bins" [| Any; Exactly 2L |] bins
    expect "probabilities" [| Any; Exactly bins.shape[0]; Any; Any |] probabilities
    use scope = NewDisposeScope()
    // Clamped so empty bins get weight 0 (not NaN) at every temperature.
    let tempered = (probabilities.clamp_min(1e-30.ToScalar()).log() / temperature).softmax(1L)
    let centres = bins.``to``(probabilities.device).to_type(probabilities.dtype)
    einsum("nqhw,qc->nchw", tempered, centres).MoveToOuterDisposeScope()
