/// FixMatch's strong augmentation (Sohn et al. 2020, Sec. 2.3 and Appendix, Table 12): RandAugment
/// (Cubuk et al. 2020) in FixMatch's variant, where each of the N = 2 operations an image gets is
/// drawn with replacement from a pool of 14 and given a magnitude drawn uniformly from its own range
/// (no global magnitude M), followed by Cutout of a square of side up to half the image. The pool,
/// its ranges and the grey fill follow USB's FixMatch pool (microsoft/Semi-supervised-learning,
/// semilearn/datasets/augmentation/randaugment.py); each operation is PIL's definition on 8-bit
/// levels 0..255, mapped to [0, 1]. Batched: each image draws its own operations and magnitudes from
/// the one generator (deterministic per seed), and each operation runs once on the images that drew it.
/// Images are float tensors (N, C, H, W) in [0, 1], C = 1 or 3; results keep the images' shape,
/// device and dtype, and stay in [0, 1].
module Ssl.Core.Transforms.RandAugment

open TorchSharp
open type TorchSharp.torch
open type TorchSharp.torch.nn.functional
// Last, so F#'s float, int64, log, exp, ... win over torch's dtype fields and tensor functions.
open Microsoft.FSharp.Core.Operators
open Ssl.Core.Shape

/// One operation of the pool. Its magnitude is in the operation's own unit (see `pool`).
[<RequireQualifiedAccess>]
type Op =
    | Identity
    /// Per channel, stretches [min, max] to [0, 1] (PIL ImageOps.autocontrast, cutoff 0); magnitude unused.
    | AutoContrast
    /// Blend with black by a factor (PIL ImageEnhance.Brightness); 1 is the identity.
    | Brightness
    /// Blend with the luma by a factor (PIL ImageEnhance.Color); 1 is the identity, as is any factor on grey images.
    | Color
    /// Blend with the mean luma by a factor (PIL ImageEnhance.Contrast); 1 is the identity.
    | Contrast
    /// Per-channel histogram equalisation over 256 levels (PIL ImageOps.equalize); magnitude unused.
    | Equalize
    /// Keeps this many high bits of each 8-bit level (PIL ImageOps.posterize); 8 is the identity.
    | Posterize
    /// Counter-clockwise rotation about the centre by this many degrees (PIL Image.rotate); 0 is the identity.
    | Rotate
    /// Blend with a smoothed copy by a factor (PIL ImageEnhance.Sharpness); 1 is the identity.
    | Sharpness
    /// Input x = x + m·y about the top-left corner (PIL's AFFINE (1, m, 0, 0, 1, 0)); 0 is the identity.
    | ShearX
    /// Input y = y + m·x (PIL's AFFINE (1, 0, 0, m, 1, 0)); 0 is the identity.
    | ShearY
    /// Inverts the levels at or above this threshold (PIL ImageOps.solarize); 256 is the identity.
    | Solarize
    /// Input x = x + m·W, m a fraction of the width (USB's TranslateX); 0 is the identity.
    | TranslateX
    /// Input y = y + m·H, m a fraction of the height; 0 is the identity.
    | TranslateY

/// FixMatch's pool with each operation's magnitude range [low, high] (Table 12; USB's list and order).
let pool : (Op * float * float)[] =
    [| Op.AutoContrast, 0.0, 1.0; Op.Brightness, 0.05, 0.95; Op.Color, 0.05, 0.95; Op.Contrast, 0.05, 0.95
       Op.Equalize, 0.0, 1.0; Op.Identity, 0.0, 1.0; Op.Posterize, 4.0, 8.0; Op.Rotate, -30.0, 30.0
       Op.Sharpness, 0.05, 0.95; Op.ShearX, -0.3, 0.3; Op.ShearY, -0.3, 0.3; Op.Solarize, 0.0, 256.0
       Op.TranslateX, -0.3, 0.3; Op.TranslateY, -0.3, 0.3 |]

let private expectImages (images: Tensor) =
    expect "images" [| Any; Any; Any; Any |] images
    if images.shape[1] <> 1L && images.shape[1] <> 3L then
        invalidArg "images" $"images: expected 1 or 3 channels, found shape {show images.shape}"

/// Per-image values (N) as (N, 1, 1, 1) on the images' device and dtype.
let private perImage (values: Tensor) (images: Tensor) =
    values.``to``(images.device).to_type(images.dtype).view(-1L, 1L, 1L, 1L)

/// The 8-bit level of each value, round(x · 255), as float.
let private levels (images: Tensor) = (images * 255.0).round().clamp(0.0.ToScalar(), 255.0.ToScalar())

/// Per channel, (x − min) / (max − min); a constant channel is left as it is.
let private autoContrast (images: Tensor) =
    use scope = NewDisposeScope()
    let low = images.amin([| 2L; 3L |], keepdim = true)
    let high = images.amax([| 2L; 3L |], keepdim = true)
    let span = high - low
    let stretched = (images - low) / span.clamp_min(1e-12.ToScalar())
    where(span.gt(0.0.ToScalar()), stretched.clamp(0.0.ToScalar(), 1.0.ToScalar()), images).MoveToOuterDisposeScope()

/// PIL's equalize per channel plane: h the histogram of the 256 levels, step = (Σh − h[highest level
/// present]) // 255, level i ↦ min(255, (step // 2 + Σ_{j<i} h[j]) // step); the plane is left as it
/// is where step = 0 (fewer than 256 pixels off the top level, or a single level). Via scatter_add and cumsum.
let private equalize (images: Tensor) =
    use scope = NewDisposeScope()
    let n, c, h, w = images.shape[0], images.shape[1], images.shape[2], images.shape[3]
    let q = (levels images).to_type(ScalarType.Int64).view(n * c, h * w)
    let histogram = zeros([| n * c; 256L |], dtype = ScalarType.Int64, device = images.device).scatter_add_(1L, q, ones_like(q))
    let topCount = histogram.gather(1L, q.amax([| 1L |], keepdim = true))
    let step = (topCount.neg() + h * w).div(255L.ToScalar(), rounding_mode = RoundingMode.floor)
    let before = histogram.cumsum(1L) - histogram
    let lut = (before + step.div(2L.ToScalar(), rounding_mode = RoundingMode.floor)).div(step.clamp_min(1L.ToScalar()), rounding_mode = RoundingMode.floor).clamp_max(255L.ToScalar())
    let equalised = (lut.gather(1L, q).to_type(images.dtype) / 255.0).view(n, c, h, w)
    where(step.gt(0L.ToScalar()).view(n, c, 1L, 1L), equalised, images).MoveToOuterDisposeScope()

/// Keeps the top floor(bits) bits of each level; 8 bits or more leave the image as it is.
let private posterize (bits: Tensor) (images: Tensor) =
    use scope = NewDisposeScope()
    let b = perImage bits images
    let unit = (8.0 - b.floor().clamp(1.0.ToScalar(), 8.0.ToScalar())).exp2()
    let posterized = (levels images / unit).floor() * unit / 255.0
    where(b.ge(8.0.ToScalar()), images, posterized).MoveToOuterDisposeScope()

/// x where its level 255·x is below the threshold, 1 − x at or above it.
let private solarize (thresholds: Tensor) (images: Tensor) =
    use scope = NewDisposeScope()
    where((images * 255.0).lt(perImage thresholds images), images, images.neg() + 1.0).MoveToOuterDisposeScope()

/// Samples each image through its map from output to input positions, in pixels with the origin at
/// the image's top-left corner and pixel centres at i + 0.5 (PIL's Image.transform convention):
/// input = A (x, y) + t. Bilinear, zeros outside. inverse: (N, 2, 3), float64.
let private warpByInverse (inverse: Tensor) (images: Tensor) =
    use scope = NewDisposeScope()
    let n, h, w = images.shape[0], images.shape[2], images.shape[3]
    let dtype, device = ScalarType.Float64, images.device
    let ys = (arange(h, dtype = dtype, device = device) + 0.5).view(h, 1L).expand(h, w)
    let xs = (arange(w, dtype = dtype, device = device) + 0.5).view(1L, w).expand(h, w)
    let centres = stack([| xs; ys; ones_like(xs) |], 2L).view(1L, h * w, 3L)
    let sources = centres.matmul(inverse.``to``(device).transpose(1L, 2L))
    let toUnit = tensor([| 2.0 / float w; 2.0 / float h |], dtype = dtype, device = device)
    let grid = (sources * toUnit - 1.0).view(n, h, w, 2L).to_type(images.dtype)
    grid_sample(images, grid, GridSampleMode.Bilinear, GridSamplePaddingMode.Zeros, align_corners = false).MoveToOuterDisposeScope()

/// (N, 2, 3) maps [[a, b, c], [d, e, f]] from (N) float64 entries.
let private matrices (entries: Tensor list) = stack(Array.ofList entries, 1L).view(-1L, 2L, 3L)

/// The affine operations' output-to-input maps for magnitudes m (N) float64 on images (H, W).
let private geometricInverse (op: Op) (m: Tensor) (height: int64) (width: int64) =
    use scope = NewDisposeScope()
    let zero, one = zeros_like(m), ones_like(m)
    let result =
        match op with
        | Op.ShearX -> matrices [ one; m; zero; zero; one; zero ]
        | Op.ShearY -> matrices [ one; zero; zero; m; one; zero ]
        | Op.TranslateX -> matrices [ one; zero; m * float width; zero; one; zero ]
        | Op.TranslateY -> matrices [ one; zero; zero; zero; one; m * float height ]
        | _ ->
            // input = c + R (p − c), R = [[cos, −sin], [sin, cos]]: with y down, a counter-clockwise turn.
            let radians = m * (System.Math.PI / 180.0)
            let cosine, sine = radians.cos(), radians.sin()
            let cx, cy = float width / 2.0, float height / 2.0
            matrices [ cosine; sine.neg(); cosine.neg() * cx + sine * cy + cx; sine; cosine; sine.neg() * cx - cosine * cy + cy ]
    result.MoveToOuterDisposeScope()

/// Applies `op` to every image at its magnitude. magnitudes: (N), in the op's unit (`Op`);
/// images: (N, 1 or 3, H, W) in [0, 1] → same shape.
let apply (op: Op) (magnitudes: Tensor) (images: Tensor) : Tensor =
    expectImages images
    expect "magnitudes" [| Exactly images.shape[0] |] magnitudes
    use scope = NewDisposeScope()
    let m = magnitudes.to_type(ScalarType.Float64)
    let result =
        match op with
        | Op.Identity -> images.clone()
        | Op.AutoContrast -> autoContrast images
        | Op.Brightness -> Photometric.adjustBrightness m images
        | Op.Color -> Photometric.adjustSaturation m images
        | Op.Contrast -> Photometric.adjustContrast m images
        | Op.Equalize -> equalize images
        | Op.Posterize -> posterize m images
        | Op.Sharpness -> Photometric.adjustSharpness m images
        | Op.Solarize -> solarize m images
        | Op.Rotate | Op.ShearX | Op.ShearY | Op.TranslateX | Op.TranslateY ->
            warpByInverse (geometricInverse op m images.shape[2] images.shape[3]) images
    result.MoveToOuterDisposeScope()

/// Applies to image n the operation pool[choices[n]] at magnitudes[n]: each operation runs once, on
/// the images that chose it. choices: (N) int64 in [0, pool size); magnitudes: (N); images: (N, 1 or 3, H, W).
let applyChosen (choices: Tensor) (magnitudes: Tensor) (images: Tensor) : Tensor =
    expectImages images
    let count = images.shape[0]
    expect "choices" [| Exactly count |] choices
    expect "magnitudes" [| Exactly count |] magnitudes
    use scope = NewDisposeScope()
    let choices = choices.``to``(images.device).to_type(ScalarType.Int64)
    if count > 0L && (choices.min().item<int64>() < 0L || choices.max().item<int64>() >= int64 pool.Length) then
        invalidArg "choices" $"choices: expected indices in [0, {pool.Length}), found [{choices.min().item<int64>()}, {choices.max().item<int64>()}]"
    let magnitudes = magnitudes.``to``(images.device)
    let result = images.clone()
    for k in 0 .. pool.Length - 1 do
        let chosen = choices.eq((int64 k).ToScalar()).nonzero().flatten()
        if chosen.numel () > 0L then
            let op, _, _ = pool[k]
            result.index_copy_(0L, chosen, apply op (magnitudes.index_select(0L, chosen)) (images.index_select(0L, chosen))) |> ignore
    result.MoveToOuterDisposeScope()

/// FixMatch's RandAugment: `operations` rounds (the paper's N = 2), in each of which every image
/// draws an operation uniformly from `pool` (with replacement across rounds) and a magnitude
/// uniform in its range. images: (N, 1 or 3, H, W) in [0, 1] → same shape.
let randAugment (operations: int) (generator: Generator) (images: Tensor) : Tensor =
    if operations < 0 then invalidArg "operations" $"operations: expected a count >= 0, found {operations}"
    expectImages images
    use scope = NewDisposeScope()
    let count, device = images.shape[0], images.device
    let lows = tensor(pool |> Array.map (fun (_, low, _) -> low), dtype = ScalarType.Float64, device = device)
    let highs = tensor(pool |> Array.map (fun (_, _, high) -> high), dtype = ScalarType.Float64, device = device)
    let mutable augmented = images
    for _ in 1 .. operations do
        let choices = Draw.integers generator 0L (int64 pool.Length - 1L) [| count |] device
        let unit = Draw.uniform generator 0.0 1.0 [| count |] device
        let low, high = lows.index_select(0L, choices), highs.index_select(0L, choices)
        augmented <- applyChosen choices (low + unit * (high - low)) augmented
    (if operations = 0 then images.clone() else augmented).MoveToOuterDisposeScope()

/// Fills in image n the square of side sides[n] about centres[n] = (y, x) with `fill`: rows
/// [y − s/2, y − s/2 + s) and the same for columns (s/2 rounded down), clipped at the borders
/// (DeVries & Taylor 2017, Sec. 3). sides: (N) int64 ≥ 0; centres: (N, 2) int64;
/// images: (N, C, H, W) → same shape.
let cutoutSquares (fill: float) (sides: Tensor) (centres: Tensor) (images: Tensor) : Tensor =
    expect "images" [| Any; Any; Any; Any |] images
    let count, height, width = images.shape[0], images.shape[2], images.shape[3]
    expect "sides" [| Exactly count |] sides
    expect "centres" [| Exactly count; Exactly 2L |] centres
    use scope = NewDisposeScope()
    let sides = sides.``to``(images.device).to_type(ScalarType.Int64)
    if count > 0L && sides.min().item<int64>() < 0L then
        invalidArg "sides" $"sides: expected sides >= 0 pixels, found {sides.min().item<int64>()}"
    let starts = centres.``to``(images.device).to_type(ScalarType.Int64) - sides.div(2L.ToScalar(), rounding_mode = RoundingMode.floor).unsqueeze(1)
    let inside (length: int64) (start: Tensor) =
        let positions = arange(length, dtype = ScalarType.Int64, device = images.device).unsqueeze(0)
        positions.ge(start.unsqueeze(1)).logical_and(positions.lt((start + sides).unsqueeze(1)))
    let rows = inside height (starts.select(1L, 0L))
    let columns = inside width (starts.select(1L, 1L))
    let hole = rows.view(count, 1L, height, 1L).logical_and(columns.view(count, 1L, 1L, width))
    images.masked_fill(hole, fill.ToScalar()).MoveToOuterDisposeScope()

/// FixMatch's Cutout (USB's, after RandAugment): per image a side of floor(u · maxFraction ·
/// min(H, W)) pixels, u uniform in [0, 1) (FixMatch: maxFraction 0.5), about a centre uniform over
/// the pixels, filled with `fill` (0.5: the pool's grey, USB's (125, 123, 114) / 255 rounded; kekmodel's 127).
/// USB shifts a square that crosses the left or top border inwards; here it is clipped, as DeVries &
/// Taylor. images: (N, C, H, W) → same shape.
let randomCutout (maxFraction: float) (fill: float) (generator: Generator) (images: Tensor) : Tensor =
    if not (maxFraction >= 0.0 && maxFraction <= 1.0) then
        invalidArg "maxFraction" $"maxFraction: expected a fraction of the image side in [0, 1], found {maxFraction}"
    expect "images" [| Any; Any; Any; Any |] images
    use scope = NewDisposeScope()
    let count, height, width, device = images.shape[0], images.shape[2], images.shape[3], images.device
    let sides = (Draw.uniform generator 0.0 (maxFraction * float (min height width)) [| count |] device).floor().to_type(ScalarType.Int64)
    let ys = Draw.integers generator 0L (height - 1L) [| count |] device
    let xs = Draw.integers generator 0L (width - 1L) [| count |] device
    (cutoutSquares fill sides (stack([| ys; xs |], 1L)) images).MoveToOuterDisposeScope()

/// FixMatch's strong augmentation A(·) (Sec. 2.3): `randAugment operations`, then `randomCutout
/// cutoutFraction fill`. The paper: 2 operations, cutout up to 0.5 of the side, grey fill.
/// images: (N, 1 or 3, H, W) in [0, 1] → same shape.
let strongAugment (operations: int) (cutoutFraction: float) (fill: float) (generator: Generator) (images: Tensor) : Tensor =
    use scope = NewDisposeScope()
    images |> randAugment operations generator |> randomCutout cutoutFraction fill generator |> fun x -> x.MoveToOuterDisposeScope()
