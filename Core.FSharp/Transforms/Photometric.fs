/// Photometric transforms of image batches, as torchvision defines them and SimCLR composes them
/// (Chen et al. 2020, Appendix A): colour jitter, random grayscale, Gaussian blur; and cutout
/// (DeVries & Taylor 2017). Images are float tensors (N, C, H, W) with values in [0, 1], C = 1 or 3
/// where colour matters; results stay on the images' device and dtype.
module Ssl.Core.Transforms.Photometric

open TorchSharp
open type TorchSharp.torch
open type TorchSharp.torch.nn.functional
// Last, so F#'s float, int64, log, exp, ... win over torch's dtype fields and tensor functions.
open Microsoft.FSharp.Core.Operators
open Ssl.Core.Shape

let private expectImages (images: Tensor) = expect "images" [| Any; Any; Any; Any |] images

let private expectGrayOrRgb (images: Tensor) =
    expectImages images
    if images.shape[1] <> 1L && images.shape[1] <> 3L then
        invalidArg "images" $"images: expected 1 or 3 channels, found shape {show images.shape}"

let private expectFactors (count: int64) (factors: Tensor) = expect "factors" [| Exactly count |] factors

/// Per-image factors as a (N, 1, 1, 1) tensor on the images' device and dtype.
let private perImage (factors: Tensor) (images: Tensor) =
    factors.``to``(images.device).to_type(images.dtype).view(-1L, 1L, 1L, 1L)

/// torchvision's `_blend`: factor · images + (1 - factor) · other, clamped to [0, 1].
let private blend (factors: Tensor) (other: Tensor) (images: Tensor) =
    use scope = NewDisposeScope()
    let f = perImage factors images
    (images * f + other * (f.neg() + 1.0)).clamp(0.0.ToScalar(), 1.0.ToScalar()).MoveToOuterDisposeScope()

/// Luma of each image (ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B, torchvision's rgb_to_grayscale);
/// a 1-channel image is its own luma. images: (N, 1 or 3, H, W) → (N, 1, H, W).
let toGrayscale (images: Tensor) : Tensor =
    expectGrayOrRgb images
    if images.shape[1] = 1L then images.clone()
    else
        use scope = NewDisposeScope()
        let weights = tensor([| 0.299; 0.587; 0.114 |], dtype = images.dtype, device = images.device).view(1L, 3L, 1L, 1L)
        (images * weights).sum(1L, keepdim = true).MoveToOuterDisposeScope()

/// Multiplies each image by its factor, clamped to [0, 1] (torchvision adjust_brightness).
/// factors: (N) ≥ 0; images: (N, C, H, W) → (N, C, H, W).
let adjustBrightness (factors: Tensor) (images: Tensor) : Tensor =
    expectImages images
    expectFactors images.shape[0] factors
    use scope = NewDisposeScope()
    (blend factors (zeros_like(images)) images).MoveToOuterDisposeScope()

/// Blends each image with the mean of its luma (torchvision adjust_contrast); factor 1 is the identity.
/// factors: (N) ≥ 0; images: (N, 1 or 3, H, W) → same shape.
let adjustContrast (factors: Tensor) (images: Tensor) : Tensor =
    expectGrayOrRgb images
    expectFactors images.shape[0] factors
    use scope = NewDisposeScope()
    let mean = (toGrayscale images).mean([| 1L; 2L; 3L |], keepdim = true)
    (blend factors mean images).MoveToOuterDisposeScope()

/// Blends each image with its luma (torchvision adjust_saturation); factor 0 gives gray, 1 the
/// identity; a 1-channel image is returned unchanged. factors: (N) ≥ 0; images: (N, 1 or 3, H, W).
let adjustSaturation (factors: Tensor) (images: Tensor) : Tensor =
    expectGrayOrRgb images
    expectFactors images.shape[0] factors
    if images.shape[1] = 1L then images.clone()
    else
        use scope = NewDisposeScope()
        (blend factors (toGrayscale images) images).MoveToOuterDisposeScope()

/// Blends each image with its smoothed copy (torchvision adjust_sharpness, PIL ImageEnhance.Sharpness;
/// EnAET's "sharpness" transformation, Wang et al. 2019, Sec. 3.2): the smoothed copy replaces every
/// interior pixel by the 3x3 average weighted [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 and keeps the
/// one-pixel border; factor 0 gives the smoothed image, 1 the identity, above 1 sharpens; clamped
/// to [0, 1]. Built from shifted slices (no convolution). factors: (N) ≥ 0; images: (N, C, H, W)
/// → same shape; an image with H or W below 3 has no interior and is returned unchanged.
let adjustSharpness (factors: Tensor) (images: Tensor) : Tensor =
    expectImages images
    expectFactors images.shape[0] factors
    let height, width = images.shape[2], images.shape[3]
    if height < 3L || width < 3L then images.clone()
    else
        use scope = NewDisposeScope()
        let window dy dx = images.narrow(2L, dy, height - 2L).narrow(3L, dx, width - 2L)
        let neighbourhood = Seq.reduce (+) [ for dy in 0L .. 2L do for dx in 0L .. 2L -> window dy dx ]
        let smoothedInterior = (neighbourhood + window 1L 1L * 4.0) / 13.0
        let smoothed = images.clone()
        smoothed.narrow(2L, 1L, height - 2L).narrow(3L, 1L, width - 2L).copy_(smoothedInterior) |> ignore
        (blend factors smoothed images).MoveToOuterDisposeScope()

/// RGB → HSV, all three in [0, 1] (torchvision `_rgb2hsv`). rgb: (N, 3, H, W) → (N, 3, H, W).
let private rgbToHsv (rgb: Tensor) =
    use scope = NewDisposeScope()
    let channels = rgb.unbind(1L)
    let r, g, b = channels[0], channels[1], channels[2]
    let maxc = rgb.amax([| 1L |])
    let minc = rgb.amin([| 1L |])
    let gray = maxc.eq(minc)
    let one = ones_like(maxc)
    let chroma = maxc - minc
    let saturation = chroma / where(gray, one, maxc)
    let divisor = where(gray, one, chroma)
    let rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    let isR, isG = maxc.eq(r), maxc.eq(g)
    let hueR = isR.to_type(rgb.dtype) * (bc - gc)
    let hueG = isG.logical_and(isR.logical_not()).to_type(rgb.dtype) * (rc - bc + 2.0)
    let hueB = isG.logical_not().logical_and(isR.logical_not()).to_type(rgb.dtype) * (gc - rc + 4.0)
    let hue = ((hueR + hueG + hueB) / 6.0 + 1.0).fmod(1.0.ToScalar())
    stack([| hue; saturation; maxc |], 1L).MoveToOuterDisposeScope()

/// HSV → RGB (torchvision `_hsv2rgb`). hsv: (N, 3, H, W) → (N, 3, H, W).
let private hsvToRgb (hsv: Tensor) =
    use scope = NewDisposeScope()
    let channels = hsv.unbind(1L)
    let h, s, v = channels[0], channels[1], channels[2]
    let sector = (h * 6.0).floor()
    let within = h * 6.0 - sector
    let p = (v * (s.neg() + 1.0)).clamp(0.0.ToScalar(), 1.0.ToScalar())
    let q = (v * ((s * within).neg() + 1.0)).clamp(0.0.ToScalar(), 1.0.ToScalar())
    let t = (v * ((s * (within.neg() + 1.0)).neg() + 1.0)).clamp(0.0.ToScalar(), 1.0.ToScalar())
    let sectorIndex = sector.to_type(ScalarType.Int64).remainder(6L.ToScalar())
    let mask = sectorIndex.unsqueeze(1).eq(arange(6L, dtype = ScalarType.Int64, device = hsv.device).view(1L, 6L, 1L, 1L)).to_type(hsv.dtype)
    let red = stack([| v; q; p; p; t; v |], 1L)
    let green = stack([| t; v; v; q; p; p |], 1L)
    let blue = stack([| p; p; t; v; v; q |], 1L)
    stack([| (mask * red).sum(1L); (mask * green).sum(1L); (mask * blue).sum(1L) |], 1L).MoveToOuterDisposeScope()

/// Shifts each image's hue by its factor (in turns, [-0.5, 0.5]) in HSV space (torchvision
/// adjust_hue); a 1-channel image is returned unchanged. factors: (N); images: (N, 1 or 3, H, W).
let adjustHue (factors: Tensor) (images: Tensor) : Tensor =
    expectGrayOrRgb images
    expectFactors images.shape[0] factors
    if images.shape[1] = 1L then images.clone()
    else
        use scope = NewDisposeScope()
        let hsv = rgbToHsv images
        let hue = (hsv.narrow(1L, 0L, 1L) + perImage factors images).remainder(1.0.ToScalar())
        (hsvToRgb (cat([| hue; hsv.narrow(1L, 1L, 2L) |], 1L))).MoveToOuterDisposeScope()

/// Colour jitter as torchvision's ColorJitter (SimCLR, Chen et al. 2020, Appendix A, strength s:
/// 0.8s, 0.8s, 0.8s, 0.2s): per image, brightness, contrast and saturation factors uniform in
/// [max(0, 1 - x), 1 + x], a hue shift uniform in [-hue, hue], applied in an order drawn per image.
/// A zero strength leaves that adjustment out. images: (N, 1 or 3, H, W) → same shape.
let colorJitter (brightness: float) (contrast: float) (saturation: float) (hue: float) (generator: Generator) (images: Tensor) : Tensor =
    for name, strength in [ "brightness", brightness; "contrast", contrast; "saturation", saturation ] do
        if strength < 0.0 then invalidArg name $"{name}: expected a strength >= 0, found {strength}"
    if hue < 0.0 || hue > 0.5 then invalidArg "hue" $"hue: expected a strength in [0, 0.5], found {hue}"
    expectGrayOrRgb images
    use scope = NewDisposeScope()
    let count = images.shape[0]
    let device = images.device
    let factor strength = Draw.uniform generator (max 0.0 (1.0 - strength)) (1.0 + strength) [| count |] device
    let adjustments =
        [| adjustBrightness, factor brightness, brightness > 0.0
           adjustContrast, factor contrast, contrast > 0.0
           adjustSaturation, factor saturation, saturation > 0.0
           adjustHue, Draw.uniform generator (-hue) hue [| count |] device, hue > 0.0 |]
    // Row n: the order of the four adjustments for image n (argsort of uniform keys).
    let order = (Draw.uniform generator 0.0 1.0 [| count; 4L |] device).argsort(1L)
    let mutable current = images
    for step in 0L .. 3L do
        let scheduled = order.select(1L, step)
        for index, (adjust, factors, active) in Array.indexed adjustments do
            if active then
                // Images differ in which adjustment comes at this step: adjust the subset batched.
                let chosen = scheduled.eq((int64 index).ToScalar()).nonzero().squeeze(1L)
                if chosen.shape[0] > 0L then
                    let adjusted = adjust (factors.index_select(0L, chosen)) (current.index_select(0L, chosen))
                    current <- current.index_copy(0L, chosen, adjusted)
    let result = if obj.ReferenceEquals(current, images) then images.clone() else current
    result.MoveToOuterDisposeScope()

/// Replaces each image by its luma (repeated over the channels) with probability `probability`,
/// drawn per image (torchvision RandomGrayscale; SimCLR uses 0.2).
/// images: (N, 1 or 3, H, W) → same shape.
let randomGrayscale (probability: float) (generator: Generator) (images: Tensor) : Tensor =
    if probability < 0.0 || probability > 1.0 then
        invalidArg "probability" $"probability: expected a value in [0, 1], found {probability}"
    expectGrayOrRgb images
    use scope = NewDisposeScope()
    let chosen = Draw.bernoulli generator probability images.shape[0] images.device
    where(chosen.view(-1L, 1L, 1L, 1L), (toGrayscale images).expand_as(images), images).MoveToOuterDisposeScope()

/// The normalised 1-D Gaussian kernels, one per sigma (torchvision `_get_gaussian_kernel1d`):
/// taps at -(k-1)/2 .. (k-1)/2. sigmas: (N) > 0 → (N, kernelSize), on the sigmas' device and dtype.
let gaussianKernels (kernelSize: int64) (sigmas: Tensor) : Tensor =
    if kernelSize < 1L || kernelSize % 2L = 0L then
        invalidArg "kernelSize" $"kernelSize: expected a positive odd size, found {kernelSize}"
    expect "sigmas" [| Any |] sigmas
    use scope = NewDisposeScope()
    let half = float (kernelSize - 1L) / 2.0
    let taps = arange(kernelSize, dtype = sigmas.dtype, device = sigmas.device) - half
    let weights = ((taps.unsqueeze(0) / sigmas.unsqueeze(1)).square() * -0.5).exp()
    (weights / weights.sum(1L, keepdim = true)).MoveToOuterDisposeScope()

/// Blurs each image with its own Gaussian of standard deviation sigmas[n] (pixels), separably (a
/// vertical then a horizontal pass, one grouped convolution each), with reflect padding
/// (torchvision gaussian_blur). sigmas: (N) > 0; images: (N, C, H, W) with H, W > kernelSize / 2
/// → (N, C, H, W).
let gaussianBlur (kernelSize: int64) (sigmas: Tensor) (images: Tensor) : Tensor =
    expectImages images
    let count, channels, height, width = images.shape[0], images.shape[1], images.shape[2], images.shape[3]
    expect "sigmas" [| Exactly count |] sigmas
    let radius = kernelSize / 2L
    if height <= radius || width <= radius then
        invalidArg "kernelSize" $"kernelSize: reflect padding needs images larger than kernelSize / 2 = {radius}, found {show images.shape}"
    use scope = NewDisposeScope()
    let kernels = gaussianKernels kernelSize (sigmas.``to``(images.device).to_type(images.dtype))
    let perChannel = kernels.repeat_interleave(channels, 0L)
    let padded = pad(images, [| radius; radius; radius; radius |], PaddingModes.Reflect)
    let planes = padded.reshape(1L, count * channels, height + 2L * radius, width + 2L * radius)
    let vertical = conv2d(planes, perChannel.view(count * channels, 1L, kernelSize, 1L), groups = count * channels)
    let both = conv2d(vertical, perChannel.view(count * channels, 1L, 1L, kernelSize), groups = count * channels)
    both.view(count, channels, height, width).MoveToOuterDisposeScope()

/// Gaussian blur with sigma uniform in [sigmaMin, sigmaMax] per image (SimCLR, Chen et al. 2020,
/// Appendix A: sigma in [0.1, 2.0], kernel 10% of the image side).
/// images: (N, C, H, W) → (N, C, H, W).
let randomGaussianBlur (kernelSize: int64) (sigmaMin: float, sigmaMax: float) (generator: Generator) (images: Tensor) : Tensor =
    if not (0.0 < sigmaMin && sigmaMin <= sigmaMax) then
        invalidArg "sigma" $"sigma: expected 0 < min <= max, found ({sigmaMin}, {sigmaMax})"
    expectImages images
    use scope = NewDisposeScope()
    let sigmas = Draw.uniform generator sigmaMin sigmaMax [| images.shape[0] |] images.device
    (gaussianBlur kernelSize sigmas images).MoveToOuterDisposeScope()

/// Zeroes a size × size square in each image: rows [y - size/2, y - size/2 + size) and the same
/// for columns about centres[n] = (y, x), clipped at the borders (DeVries & Taylor 2017, Sec. 3).
/// centres: (N, 2) int64 pixel positions; images: (N, C, H, W) → (N, C, H, W).
let cutoutAt (size: int64) (centres: Tensor) (images: Tensor) : Tensor =
    if size < 1L then invalidArg "size" $"size: expected a positive side in pixels, found {size}"
    expectImages images
    let count, height, width = images.shape[0], images.shape[2], images.shape[3]
    expect "centres" [| Exactly count; Exactly 2L |] centres
    use scope = NewDisposeScope()
    let starts = centres.``to``(images.device).to_type(ScalarType.Int64) - size / 2L
    let inside (length: int64) (start: Tensor) =
        let positions = arange(length, dtype = ScalarType.Int64, device = images.device).unsqueeze(0)
        positions.ge(start.unsqueeze(1)).logical_and(positions.lt(start.unsqueeze(1) + size))
    let rows = inside height (starts.select(1L, 0L))
    let columns = inside width (starts.select(1L, 1L))
    let hole = rows.view(count, 1L, height, 1L).logical_and(columns.view(count, 1L, 1L, width))
    images.masked_fill(hole, 0.0.ToScalar()).MoveToOuterDisposeScope()

/// Cutout (DeVries & Taylor 2017, Sec. 3): a size × size square zeroed in each image about a centre
/// drawn uniformly over the whole image, so the square may lie partly outside it.
/// images: (N, C, H, W) → (N, C, H, W).
let cutout (size: int64) (generator: Generator) (images: Tensor) : Tensor =
    expectImages images
    use scope = NewDisposeScope()
    let count = images.shape[0]
    let ys = Draw.integers generator 0L (images.shape[2] - 1L) [| count |] images.device
    let xs = Draw.integers generator 0L (images.shape[3] - 1L) [| count |] images.device
    (cutoutAt size (stack([| ys; xs |], 1L)) images).MoveToOuterDisposeScope()

/// The HSV noise of S4L's Exemplar preprocessing (google-research/s4l, preprocess.py
/// get_hsvnoise_preprocess): per image v' = clamp(v^(2^a)·2^b + c, 0, 1) with a ~ U(-2, 2),
/// b ~ U(-0.5, 0.5), c ~ U(-0.1, 0.1) on saturation and value, and a hue shift. A grey image is its
/// value channel; on colour images we apply the value noise to every channel and leave hue and
/// saturation alone. images: (N, C, H, W) in [0, 1] → same shape.
let valueNoise (generator: Generator) (images: Tensor) : Tensor =
    expectImages images
    use scope = NewDisposeScope()
    let n = images.shape[0]
    let uniform (low: float) (high: float) =
        Draw.rows generator 0L n (fun rows -> rand([| rows; 1L; 1L; 1L |], dtype = images.dtype, device = images.device, generator = generator)) * (high - low) + low
    let powerOfTwo (exponent: Tensor) = (exponent * log 2.0).exp()
    let power = powerOfTwo (uniform -2.0 2.0)
    let scale = powerOfTwo (uniform -0.5 0.5)
    let shift = uniform -0.1 0.1
    (images.clamp_min(0.0).pow(power) * scale + shift).clamp(0.0.ToScalar(), 1.0.ToScalar()).MoveToOuterDisposeScope()
