/// Geometric transforms of image batches: quarter-turn rotations (RotNet), flips, random resized
/// crops (SimCLR), and affine and projective warps that return their parameters (AET, EnAET).
/// Images are float tensors (N, C, H, W); results stay on the images' device and dtype.
/// Warps use normalised coordinates as `affine_grid` does (align_corners = false): x from -1 (left
/// edge of the image) to 1 (right edge), y from -1 (top edge) to 1 (bottom edge).
module Ssl.Core.Transforms.Geometric

open System
open TorchSharp
open type TorchSharp.torch
// Last, so F#'s float, int64, log, exp, ... win over torch's dtype fields and tensor functions.
open Microsoft.FSharp.Core.Operators
open type TorchSharp.torch.nn.functional
open Ssl.Core.Shape

let private expectImages (images: Tensor) = expect "images" [| Any; Any; Any; Any |] images

/// Rotates every image counter-clockwise by `quarterTurns` × 90° (any integer, taken modulo 4).
/// images: (N, C, H, W) → (N, C, H, W) for an even count, (N, C, W, H) for an odd one.
/// Gidaris et al. 2018, "Unsupervised representation learning by predicting image rotations", Sec. 2.2.
let rotate (quarterTurns: int) (images: Tensor) : Tensor =
    expectImages images
    let turns = ((quarterTurns % 4) + 4) % 4
    use scope = NewDisposeScope()
    images.rot90(int64 turns, Nullable<struct (int64 * int64)>(struct (2L, 3L))).contiguous().MoveToOuterDisposeScope()

/// The RotNet batch: every image rotated by 0°, 90°, 180° and 270°, and the rotation labels.
/// images: (N, C, S, S), square → rotated (4N, C, S, S), image n rotated by k at row k·N + n;
/// labels (4N) int64, label k = k quarter-turns counter-clockwise.
/// Gidaris et al. 2018, Sec. 2.2 (all four rotations of an image in the same mini-batch).
let rotationBatch (images: Tensor) : Tensor * Tensor =
    expectImages images
    if images.shape[2] <> images.shape[3] then
        invalidArg "images" $"images: expected square images (H = W) to stack all four rotations, found {show images.shape}"
    use scope = NewDisposeScope()
    let count = images.shape[0]
    let rotated = cat([| for k in 0..3 -> rotate k images |], 0L)
    let labels = arange(4L, dtype = ScalarType.Int64, device = images.device).repeat_interleave(count)
    rotated.MoveToOuterDisposeScope(), labels.MoveToOuterDisposeScope()

/// Mirrors every image left to right. images: (N, C, H, W) → (N, C, H, W).
let horizontalFlip (images: Tensor) : Tensor =
    expectImages images
    images.flip([| 3L |])

/// Mirrors each image left to right with probability `probability`, drawn per image.
/// images: (N, C, H, W) → (N, C, H, W).
let randomHorizontalFlip (probability: float) (generator: Generator) (images: Tensor) : Tensor =
    if probability < 0.0 || probability > 1.0 then
        invalidArg "probability" $"probability: expected a value in [0, 1], found {probability}"
    expectImages images
    use scope = NewDisposeScope()
    let flipped = Draw.bernoulli generator probability images.shape[0] images.device
    where(flipped.view(-1L, 1L, 1L, 1L), images.flip([| 3L |]), images).MoveToOuterDisposeScope()

/// Crops a box out of each image and resizes it (bilinear, edge pixels repeated) to
/// `outHeight` × `outWidth`.
/// boxes: (N, 4) float as (top, left, height, width) in pixels, the box covering pixel rows
/// [top, top + height) and columns [left, left + width); images: (N, C, H, W) →
/// (N, C, outHeight, outWidth). A box covering the whole image at the same size gives the image back.
let resizedCrop (outHeight: int64) (outWidth: int64) (boxes: Tensor) (images: Tensor) : Tensor =
    if outHeight < 1L || outWidth < 1L then
        invalidArg "outHeight" $"outHeight, outWidth: expected positive sizes, found {outHeight} × {outWidth}"
    expectImages images
    let count = images.shape[0]
    expect "boxes" [| Exactly count; Exactly 4L |] boxes
    use scope = NewDisposeScope()
    let height, width = float images.shape[2], float images.shape[3]
    let b = boxes.to_type(ScalarType.Float64).``to``(images.device)
    let top, left, boxHeight, boxWidth = b.select(1L, 0L), b.select(1L, 1L), b.select(1L, 2L), b.select(1L, 3L)
    let zero = zeros_like(top)
    // The box's edges in normalised coordinates are the images of the output's edges, -1 and 1.
    let theta =
        stack([| boxWidth / width; zero; (left * 2.0 + boxWidth) / width - 1.0
                 zero; boxHeight / height; (top * 2.0 + boxHeight) / height - 1.0 |], 1L)
            .view(count, 2L, 3L).to_type(images.dtype)
    let grid = affine_grid(theta, [| count; images.shape[1]; outHeight; outWidth |], align_corners = false)
    grid_sample(images, grid, GridSampleMode.Bilinear, GridSamplePaddingMode.Border, align_corners = false)
        .MoveToOuterDisposeScope()

/// Draws one crop box per image the way torchvision's RandomResizedCrop does (as used by SimCLR,
/// Chen et al. 2020, Appendix A): up to 10 tries of an area fraction uniform in
/// [scaleMin, scaleMax] and a log-uniform aspect ratio (width / height) in [ratioMin, ratioMax],
/// sides rounded to whole pixels; the first try that fits the image is taken, at a uniformly drawn
/// whole-pixel position; if none fits, the central crop with the ratio clamped to the range.
/// Result: (count, 4) float64 on `device`, rows (top, left, height, width) as `resizedCrop` takes.
let sampleCropBoxes (scaleMin: float, scaleMax: float) (ratioMin: float, ratioMax: float) (generator: Generator)
                    (count: int64, height: int64, width: int64) (device: Device) : Tensor =
    if not (0.0 < scaleMin && scaleMin <= scaleMax && scaleMax <= 1.0) then
        invalidArg "scale" $"scale: expected 0 < min <= max <= 1, found ({scaleMin}, {scaleMax})"
    if not (0.0 < ratioMin && ratioMin <= ratioMax) then
        invalidArg "ratio" $"ratio: expected 0 < min <= max, found ({ratioMin}, {ratioMax})"
    use scope = NewDisposeScope()
    let tries = 10L
    let h, w = float height, float width
    let area = Draw.uniform generator scaleMin scaleMax [| count; tries |] device * (h * w)
    let aspect = (Draw.uniform generator (log ratioMin) (log ratioMax) [| count; tries |] device).exp()
    let tryWidth = (area * aspect).sqrt().round()
    let tryHeight = (area / aspect).sqrt().round()
    let fits =
        tryWidth.gt(0.0.ToScalar()).logical_and(tryWidth.le(w.ToScalar()))
            .logical_and(tryHeight.gt(0.0.ToScalar())).logical_and(tryHeight.le(h.ToScalar()))
    let first = fits.to_type(ScalarType.Int32).argmax(1L, keepdim = true)
    let anyFits = fits.any(1L)
    let fallbackWidth, fallbackHeight =
        let inputRatio = w / h
        if inputRatio < ratioMin then w, Math.Round(w / ratioMin)
        elif inputRatio > ratioMax then Math.Round(h * ratioMax), h
        else w, h
    let boxWidth = where(anyFits, tryWidth.gather(1L, first).squeeze(1L), full_like(anyFits, fallbackWidth, dtype = ScalarType.Float64))
    let boxHeight = where(anyFits, tryHeight.gather(1L, first).squeeze(1L), full_like(anyFits, fallbackHeight, dtype = ScalarType.Float64))
    let randomTop = (Draw.integersUpTo generator (boxHeight.neg() + h)).to_type(ScalarType.Float64)
    let randomLeft = (Draw.integersUpTo generator (boxWidth.neg() + w)).to_type(ScalarType.Float64)
    let top = where(anyFits, randomTop, ((boxHeight.neg() + h) / 2.0).floor())
    let left = where(anyFits, randomLeft, ((boxWidth.neg() + w) / 2.0).floor())
    stack([| top; left; boxHeight; boxWidth |], 1L).MoveToOuterDisposeScope()

/// Random resized crop (torchvision's RandomResizedCrop, SimCLR's first augmentation, Chen et al.
/// 2020, Appendix A; defaults there: scale (0.08, 1), ratio (3/4, 4/3)): boxes from
/// `sampleCropBoxes`, resized bilinearly (without antialiasing) by `resizedCrop`.
/// images: (N, C, H, W) → (N, C, outHeight, outWidth).
let randomResizedCrop (scale: float * float) (ratio: float * float) (outHeight: int64, outWidth: int64)
                      (generator: Generator) (images: Tensor) : Tensor =
    expectImages images
    use scope = NewDisposeScope()
    let boxes = sampleCropBoxes scale ratio generator (images.shape[0], images.shape[2], images.shape[3]) images.device
    (resizedCrop outHeight outWidth boxes images).MoveToOuterDisposeScope()

/// The inverse of each affine map. matrices: (N, 2, 3) → (N, 2, 3).
let invertAffine (matrices: Tensor) : Tensor =
    expect "matrices" [| Any; Exactly 2L; Exactly 3L |] matrices
    use scope = NewDisposeScope()
    let linear = matrices.narrow(2L, 0L, 2L)
    let inverse = linalg.inv(linear)
    let shift = inverse.matmul(matrices.narrow(2L, 2L, 1L)).neg()
    cat([| inverse; shift |], 2L).MoveToOuterDisposeScope()

/// Warps each image by an affine map: the pixel at normalised position p of the input moves to
/// A p + t in the output (bilinear sampling, zeros outside the input).
/// matrices: (N, 2, 3) or (N, 6) rows [A | t] in normalised coordinates; images: (N, C, H, W) →
/// (N, C, H, W).
let affineWarp (matrices: Tensor) (images: Tensor) : Tensor =
    expectImages images
    let count = images.shape[0]
    if not (matrices.shape = [| count; 6L |] || matrices.shape = [| count; 2L; 3L |]) then
        invalidArg "matrices" $"matrices: expected shape ({count}, 6) or ({count}, 2, 3), found {show matrices.shape}"
    use scope = NewDisposeScope()
    let forward = matrices.view(count, 2L, 3L).to_type(ScalarType.Float64).``to``(images.device)
    // affine_grid maps output positions to the input positions they sample: the inverse map.
    let sampling = (invertAffine forward).to_type(images.dtype)
    let grid = affine_grid(sampling, images.shape, align_corners = false)
    grid_sample(images, grid, GridSampleMode.Bilinear, GridSamplePaddingMode.Zeros, align_corners = false)
        .MoveToOuterDisposeScope()

/// Random affine warp with its parameters, the regression target of AET (Zhang et al. 2019,
/// "AET vs. AED", Sec. 3.1 and 4.1) and EnAET (Wang et al. 2019, Sec. 3.2). Per image: rotation
/// angle uniform in [-degrees, degrees], translation uniform in [-translate, translate] of the width
/// (x) and of the height (y), scale uniform in [scaleMin, scaleMax], x-shear angle uniform in
/// [-shearDegrees, shearDegrees]; in pixel units about the image centre the linear part is
/// s · R(angle) · [[1, tan shear], [0, 1]] (y down, so a positive angle turns clockwise on screen).
/// images: (N, C, H, W) → warped (N, C, H, W) and matrices (N, 6): the forward map [A | t] row by row
/// in normalised coordinates (as `affineWarp` takes them), float64.
let randomAffine (degrees: float) (translate: float) (scaleMin: float, scaleMax: float) (shearDegrees: float)
                 (generator: Generator) (images: Tensor) : Tensor * Tensor =
    if degrees < 0.0 then invalidArg "degrees" $"degrees: expected >= 0, found {degrees}"
    if translate < 0.0 || translate > 1.0 then invalidArg "translate" $"translate: expected a fraction in [0, 1], found {translate}"
    if not (0.0 < scaleMin && scaleMin <= scaleMax) then
        invalidArg "scale" $"scale: expected 0 < min <= max, found ({scaleMin}, {scaleMax})"
    if shearDegrees < 0.0 || shearDegrees >= 90.0 then invalidArg "shearDegrees" $"shearDegrees: expected a value in [0, 90), found {shearDegrees}"
    expectImages images
    use scope = NewDisposeScope()
    let count = images.shape[0]
    let device = images.device
    let draw low high = Draw.uniform generator low high [| count |] device
    let angle = draw (-degrees) degrees * (Math.PI / 180.0)
    let shiftX, shiftY = draw (-translate) translate, draw (-translate) translate
    let scale = draw scaleMin scaleMax
    let shear = (draw (-shearDegrees) shearDegrees * (Math.PI / 180.0)).tan()
    let cosine, sine = angle.cos() * scale, angle.sin() * scale
    let aspect = float images.shape[2] / float images.shape[3]
    // Pixel-frame linear map L, expressed in normalised coordinates: diag(2/W, 2/H) L diag(W/2, H/2).
    let matrices =
        stack([| cosine; (cosine * shear - sine) * aspect; shiftX * 2.0
                 sine / aspect; sine * shear + cosine; shiftY * 2.0 |], 1L)
    let warped = affineWarp matrices images
    warped.MoveToOuterDisposeScope(), matrices.MoveToOuterDisposeScope()

/// Random similarity (rotation, translation, isotropic scale; no shear): `randomAffine` restricted,
/// one of AET's transformation families (Zhang et al. 2019, Sec. 4.1).
/// images: (N, C, H, W) → warped (N, C, H, W) and matrices (N, 6) as `randomAffine`.
let randomSimilarity (degrees: float) (translate: float) (scale: float * float) (generator: Generator) (images: Tensor) =
    randomAffine degrees translate scale 0.0 generator images

/// Random Euclidean (rigid) warp, rotation and translation only: `randomAffine` with scale 1 and no
/// shear. images: (N, C, H, W) → warped (N, C, H, W) and matrices (N, 6) as `randomAffine`.
let randomEuclidean (degrees: float) (translate: float) (generator: Generator) (images: Tensor) =
    randomAffine degrees translate (1.0, 1.0) 0.0 generator images

/// The 3 × 3 homographies of 8 parameters (h33 = 1). parameters: (N, 8) → (N, 3, 3).
let homographyMatrices (parameters: Tensor) : Tensor =
    expect "parameters" [| Any; Exactly 8L |] parameters
    use scope = NewDisposeScope()
    cat([| parameters; ones_like(parameters.narrow(1L, 0L, 1L)) |], 1L).view(-1L, 3L, 3L).MoveToOuterDisposeScope()

/// The normalised coordinates (x, y) of the pixel centres, (H, W, 2), as `affine_grid` places them.
let private pixelCentres (height: int64) (width: int64) (dtype: ScalarType) (device: Device) =
    use scope = NewDisposeScope()
    let xs = (arange(width, dtype = dtype, device = device) * 2.0 + 1.0) / float width - 1.0
    let ys = (arange(height, dtype = dtype, device = device) * 2.0 + 1.0) / float height - 1.0
    let grid = meshgrid([| ys; xs |], indexing = "ij")
    stack([| grid[1]; grid[0] |], 2L).MoveToOuterDisposeScope()

/// Warps each image by a homography: the pixel at normalised position p of the input moves to
/// H p (homogeneous, divided by its third coordinate) in the output; bilinear, zeros outside.
/// parameters: (N, 8), the first 8 entries of H row by row with h33 = 1; images: (N, C, H, W) →
/// (N, C, H, W). The sampling grid is built here, batched, from the inverse homography.
let projectiveWarp (parameters: Tensor) (images: Tensor) : Tensor =
    expectImages images
    let count, height, width = images.shape[0], images.shape[2], images.shape[3]
    expect "parameters" [| Exactly count; Exactly 8L |] parameters
    use scope = NewDisposeScope()
    let forward = homographyMatrices (parameters.to_type(ScalarType.Float64).``to``(images.device))
    let inverse = linalg.inv(forward)
    let centres = pixelCentres height width ScalarType.Float64 images.device
    let homogeneous = cat([| centres; ones(height, width, 1L, dtype = ScalarType.Float64, device = images.device) |], 2L)
    let source = homogeneous.view(1L, height * width, 3L).matmul(inverse.transpose(1L, 2L))
    let grid = (source.narrow(2L, 0L, 2L) / source.narrow(2L, 2L, 1L)).view(count, height, width, 2L)
    grid_sample(images, grid.to_type(images.dtype), GridSampleMode.Bilinear, GridSamplePaddingMode.Zeros, align_corners = false)
        .MoveToOuterDisposeScope()

/// Random projective warp with its 8 homography parameters, AET's projective family (Zhang et al.
/// 2019, Sec. 4.1): each image is scaled about its centre by a factor uniform in
/// [scaleMin, scaleMax], then each of its four corners is moved by a shift uniform in
/// [-distortion, distortion] of the width (x) and of the height (y); the homography taking the
/// corners to their new places is solved per image (batched 8 × 8 linear systems).
/// images: (N, C, H, W) → warped (N, C, H, W) and parameters (N, 8), float64, as `projectiveWarp`
/// takes them. AET also turns by a random quarter-turn: compose with `rotate`.
let randomProjective (scaleMin: float, scaleMax: float) (distortion: float) (generator: Generator) (images: Tensor) : Tensor * Tensor =
    if not (0.0 < scaleMin && scaleMin <= scaleMax) then
        invalidArg "scale" $"scale: expected 0 < min <= max, found ({scaleMin}, {scaleMax})"
    if distortion < 0.0 || distortion >= 0.5 then
        invalidArg "distortion" $"distortion: expected a fraction in [0, 0.5), found {distortion}"
    expectImages images
    use scope = NewDisposeScope()
    let count = images.shape[0]
    let device = images.device
    let corners = tensor([| -1.0; -1.0; 1.0; -1.0; 1.0; 1.0; -1.0; 1.0 |], dtype = ScalarType.Float64, device = device).view(1L, 4L, 2L)
    let scale = Draw.uniform generator scaleMin scaleMax [| count; 1L; 1L |] device
    let moved = corners * scale + Draw.uniform generator (-2.0 * distortion) (2.0 * distortion) [| count; 4L; 2L |] device
    let x, y = corners.select(2L, 0L).expand(count, 4L), corners.select(2L, 1L).expand(count, 4L)
    let u, v = moved.select(2L, 0L), moved.select(2L, 1L)
    let one, zero = ones_like(x), zeros_like(x)
    // Each correspondence (x, y) → (u, v) gives two rows of the direct linear transform with h33 = 1.
    let rowsU = stack([| x; y; one; zero; zero; zero; (u * x).neg(); (u * y).neg() |], 2L)
    let rowsV = stack([| zero; zero; zero; x; y; one; (v * x).neg(); (v * y).neg() |], 2L)
    let system = stack([| rowsU; rowsV |], 2L).view(count, 8L, 8L)
    let targets = stack([| u; v |], 2L).view(count, 8L, 1L)
    let parameters = linalg.solve(system, targets).view(count, 8L)
    let warped = projectiveWarp parameters images
    warped.MoveToOuterDisposeScope(), parameters.MoveToOuterDisposeScope()
