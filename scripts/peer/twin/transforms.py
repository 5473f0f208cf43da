"""Ssl's batched augmentations, op for op: Core.FSharp/Transforms/Draw.fs (random draws, float64,
from an explicit generator), Geometric.fs (random resized crop, flip, the RotNet batch) and
Photometric.fs (colour jitter); Experiments/Views.fs (MoCo's view). Images (N, C, H, W) float.
"""
import math

import torch
import torch.nn.functional as F

from .data import standardise


# ---- Draw.fs ------------------------------------------------------------------------------------
def uniform(generator, low: float, high: float, shape) -> torch.Tensor:
    unit = torch.rand(shape, dtype=torch.float64, generator=generator)
    return unit * (high - low) + low


def integers_up_to(generator, highs: torch.Tensor) -> torch.Tensor:
    unit = torch.rand(highs.shape, dtype=torch.float64, generator=generator)
    return (unit * (highs + 1.0)).floor().minimum(highs).to(torch.int64)


def bernoulli(generator, probability: float, count: int) -> torch.Tensor:
    return torch.rand([count], dtype=torch.float64, generator=generator).lt(probability)


# ---- Geometric.fs -------------------------------------------------------------------------------
def rotate(quarter_turns: int, images: torch.Tensor) -> torch.Tensor:
    return images.rot90(((quarter_turns % 4) + 4) % 4, (2, 3)).contiguous()


def rotation_batch(images: torch.Tensor):
    """(N, C, S, S) -> every image at 0, 90, 180, 270 degrees (4N, C, S, S) and labels (4N)."""
    count = images.shape[0]
    rotated = torch.cat([rotate(k, images) for k in range(4)], 0)
    labels = torch.arange(4, dtype=torch.int64).repeat_interleave(count)
    return rotated, labels


def random_horizontal_flip(probability: float, generator, images: torch.Tensor) -> torch.Tensor:
    flipped = bernoulli(generator, probability, images.shape[0])
    return torch.where(flipped.view(-1, 1, 1, 1), images.flip([3]), images)


def resized_crop(out_height: int, out_width: int, boxes: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    count = images.shape[0]
    height, width = float(images.shape[2]), float(images.shape[3])
    b = boxes.to(torch.float64)
    top, left, box_height, box_width = b.select(1, 0), b.select(1, 1), b.select(1, 2), b.select(1, 3)
    zero = torch.zeros_like(top)
    theta = torch.stack([box_width / width, zero, (left * 2.0 + box_width) / width - 1.0,
                         zero, box_height / height, (top * 2.0 + box_height) / height - 1.0], 1) \
        .view(count, 2, 3).to(images.dtype)
    grid = F.affine_grid(theta, [count, images.shape[1], out_height, out_width], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def sample_crop_boxes(scale, ratio, generator, count: int, height: int, width: int) -> torch.Tensor:
    """Geometric.sampleCropBoxes: torchvision's RandomResizedCrop boxes, 10 tries, batched."""
    scale_min, scale_max = scale
    ratio_min, ratio_max = ratio
    tries = 10
    h, w = float(height), float(width)
    area = uniform(generator, scale_min, scale_max, [count, tries]) * (h * w)
    aspect = uniform(generator, math.log(ratio_min), math.log(ratio_max), [count, tries]).exp()
    try_width = (area * aspect).sqrt().round()
    try_height = (area / aspect).sqrt().round()
    fits = try_width.gt(0.0).logical_and(try_width.le(w)).logical_and(try_height.gt(0.0)).logical_and(try_height.le(h))
    first = fits.to(torch.int32).argmax(1, keepdim=True)
    any_fits = fits.any(1)
    input_ratio = w / h
    if input_ratio < ratio_min:
        fallback_width, fallback_height = w, round(w / ratio_min)
    elif input_ratio > ratio_max:
        fallback_width, fallback_height = round(h * ratio_max), h
    else:
        fallback_width, fallback_height = w, h
    box_width = torch.where(any_fits, try_width.gather(1, first).squeeze(1),
                            torch.full_like(any_fits, fallback_width, dtype=torch.float64))
    box_height = torch.where(any_fits, try_height.gather(1, first).squeeze(1),
                             torch.full_like(any_fits, fallback_height, dtype=torch.float64))
    random_top = integers_up_to(generator, box_height.neg() + h).to(torch.float64)
    random_left = integers_up_to(generator, box_width.neg() + w).to(torch.float64)
    top = torch.where(any_fits, random_top, ((box_height.neg() + h) / 2.0).floor())
    left = torch.where(any_fits, random_left, ((box_width.neg() + w) / 2.0).floor())
    return torch.stack([top, left, box_height, box_width], 1)


def random_resized_crop(scale, ratio, size, generator, images: torch.Tensor) -> torch.Tensor:
    boxes = sample_crop_boxes(scale, ratio, generator, images.shape[0], images.shape[2], images.shape[3])
    return resized_crop(size[0], size[1], boxes, images)


# ---- Photometric.fs -----------------------------------------------------------------------------
def _per_image(factors: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return factors.to(images.dtype).view(-1, 1, 1, 1)


def _blend(factors, other, images):
    f = _per_image(factors, images)
    return (images * f + other * (f.neg() + 1.0)).clamp(0.0, 1.0)


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images.clone()
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def adjust_brightness(factors, images):
    return _blend(factors, torch.zeros_like(images), images)


def adjust_contrast(factors, images):
    mean = to_grayscale(images).mean([1, 2, 3], keepdim=True)
    return _blend(factors, mean, images)


def _colour_only(name: str):
    def adjust(factors, images):
        if images.shape[1] == 1:
            return images.clone()
        raise ValueError(f"{name}: the twin mirrors the grey (1-channel) path only, found {images.shape[1]} channels")
    return adjust


def color_jitter(brightness, contrast, saturation, hue, generator, images: torch.Tensor) -> torch.Tensor:
    """Photometric.colorJitter: per image factors and an order of the four adjustments drawn per image,
    each step adjusting the subset of images whose turn it is (batched)."""
    count = images.shape[0]

    def factor(strength):
        return uniform(generator, max(0.0, 1.0 - strength), 1.0 + strength, [count])

    adjustments = [(adjust_brightness, factor(brightness), brightness > 0.0),
                   (adjust_contrast, factor(contrast), contrast > 0.0),
                   (_colour_only("saturation"), factor(saturation), saturation > 0.0),
                   (_colour_only("hue"), uniform(generator, -hue, hue, [count]), hue > 0.0)]
    order = uniform(generator, 0.0, 1.0, [count, 4]).argsort(1)
    current = images
    for step in range(4):
        scheduled = order.select(1, step)
        for index, (adjust, factors, active) in enumerate(adjustments):
            if active:
                chosen = scheduled.eq(index).nonzero().squeeze(1)
                if chosen.shape[0] > 0:
                    adjusted = adjust(factors.index_select(0, chosen), current.index_select(0, chosen))
                    current = current.index_copy(0, chosen, adjusted)
    return images.clone() if current is images else current


def gaussian_kernels(kernel_size: int, sigmas: torch.Tensor) -> torch.Tensor:
    """Photometric.gaussianKernels: normalised 1-D kernels, one per sigma, (N, k)."""
    half = float(kernel_size - 1) / 2.0
    taps = torch.arange(kernel_size, dtype=sigmas.dtype) - half
    weights = ((taps.unsqueeze(0) / sigmas.unsqueeze(1)).square() * -0.5).exp()
    return weights / weights.sum(1, keepdim=True)


def gaussian_blur(kernel_size: int, sigmas: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Photometric.gaussianBlur: separable, reflect padding, a grouped convolution per pass."""
    count, channels, height, width = images.shape
    radius = kernel_size // 2
    kernels = gaussian_kernels(kernel_size, sigmas.to(images.dtype))
    per_channel = kernels.repeat_interleave(channels, 0)
    padded = F.pad(images, [radius, radius, radius, radius], mode="reflect")
    planes = padded.reshape(1, count * channels, height + 2 * radius, width + 2 * radius)
    vertical = F.conv2d(planes, per_channel.view(count * channels, 1, kernel_size, 1), groups=count * channels)
    both = F.conv2d(vertical, per_channel.view(count * channels, 1, 1, kernel_size), groups=count * channels)
    return both.view(count, channels, height, width)


def random_gaussian_blur(kernel_size: int, sigma, generator, images: torch.Tensor) -> torch.Tensor:
    """Photometric.randomGaussianBlur: sigma uniform in [min, max] per image."""
    sigmas = uniform(generator, sigma[0], sigma[1], [images.shape[0]])
    return gaussian_blur(kernel_size, sigmas, images)


# ---- Views.fs -----------------------------------------------------------------------------------
def moco_view(augmentation: dict, mean, std, generator, x: torch.Tensor) -> torch.Tensor:
    """Views.view on grey images: crop, brightness/contrast jitter, flip, standardise ([0, 1] in)."""
    if x.shape[1] != 1:
        raise ValueError(f"moco view: the twin mirrors grey (1-channel) images, found {x.shape[1]} channels")
    h, w = x.shape[2], x.shape[3]
    cropped = random_resized_crop(tuple(augmentation["CropScale"]), (3.0 / 4.0, 4.0 / 3.0), (h, w), generator, x)
    jittered = color_jitter(augmentation["Jitter"], augmentation["Jitter"], 0.0, 0.0, generator, cropped)
    flipped = random_horizontal_flip(augmentation["FlipProbability"], generator, jittered)
    return standardise(flipped, mean, std)


def per_group(groups: int, forward, x: torch.Tensor) -> torch.Tensor:
    """Views.perGroup: forward on `groups` equal sub-batches, each through batch norm alone."""
    if x.shape[0] % groups != 0:
        raise ValueError(f"batch: expected a multiple of {groups} images, found {x.shape[0]}")
    return torch.cat([forward(chunk) for chunk in x.chunk(groups, 0)], 0)


def shuffled_per_group(groups: int, generator, forward, x: torch.Tensor) -> torch.Tensor:
    """Views.shuffledPerGroup: per group after a random shuffle of the rows, rows back in x's order."""
    if groups == 1:
        return forward(x)
    order = torch.randperm(x.shape[0], generator=generator)
    shuffled = per_group(groups, forward, x.index_select(0, order))
    return shuffled.index_select(0, order.argsort())


def sometimes(generator, probability: float, f, images: torch.Tensor) -> torch.Tensor:
    """Views.sometimes: f on the images a Bernoulli(p) draw per image picks, the draw first; p <= 0 draws nothing."""
    if probability <= 0.0:
        return images
    chosen = bernoulli(generator, probability, images.shape[0])
    return torch.where(chosen.view(-1, 1, 1, 1), f(images), images)


def multi_crop_pixels(jitter: float, flip: float, jitter_probability: float, scale, side: int, generator, x: torch.Tensor):
    """Views.multiCropPixels on grey images: resized crop of `scale` to side x side, flip, brightness
    and contrast jitter with probability `jitter_probability` (grayscale is the identity)."""
    if x.shape[1] != 1:
        raise ValueError(f"multi-crop view: the twin mirrors grey (1-channel) images, found {x.shape[1]} channels")
    cropped = random_resized_crop(tuple(scale), (3.0 / 4.0, 4.0 / 3.0), (side, side), generator, x)
    flipped = random_horizontal_flip(flip, generator, cropped)
    return sometimes(generator, jitter_probability, lambda i: color_jitter(jitter, jitter, 0.0, 0.0, generator, i), flipped)


# ---- SemiSupervised.fs and RandAugment.fs ---------------------------------------------------------
def integers(generator, low: int, high: int, count: int) -> torch.Tensor:
    """Draw.integers: `count` integers uniform in [low, high], int64."""
    return torch.randint(low, high + 1, (count,), dtype=torch.int64, generator=generator)


def weak_augment(padding: int, flip: float, generator, images: torch.Tensor) -> torch.Tensor:
    """SemiSupervised.weakAugment: translation by up to `padding` pixels (black padding, crop back)
    and a horizontal flip."""
    count, height, width = images.shape[0], images.shape[2], images.shape[3]
    padded = F.pad(images, [padding, padding, padding, padding])
    tops = integers(generator, 0, 2 * padding, count)
    lefts = integers(generator, 0, 2 * padding, count)
    boxes = torch.stack([tops, lefts, torch.full_like(tops, height), torch.full_like(tops, width)], 1).to(torch.float64)
    return random_horizontal_flip(flip, generator, resized_crop(height, width, boxes, padded))


# RandAugment.pool: FixMatch's (USB's) operations with their magnitude ranges, in order.
RAND_AUGMENT_POOL = [("auto_contrast", 0.0, 1.0), ("brightness", 0.05, 0.95), ("color", 0.05, 0.95), ("contrast", 0.05, 0.95),
                     ("equalize", 0.0, 1.0), ("identity", 0.0, 1.0), ("posterize", 4.0, 8.0), ("rotate", -30.0, 30.0),
                     ("sharpness", 0.05, 0.95), ("shear_x", -0.3, 0.3), ("shear_y", -0.3, 0.3), ("solarize", 0.0, 256.0),
                     ("translate_x", -0.3, 0.3), ("translate_y", -0.3, 0.3)]


def _levels(images):
    return (images * 255.0).round().clamp(0.0, 255.0)


def _auto_contrast(images):
    low = images.amin([2, 3], keepdim=True)
    high = images.amax([2, 3], keepdim=True)
    span = high - low
    stretched = (images - low) / span.clamp_min(1e-12)
    return torch.where(span.gt(0.0), stretched.clamp(0.0, 1.0), images)


def _equalize(images):
    n, c, h, w = images.shape
    q = _levels(images).to(torch.int64).view(n * c, h * w)
    histogram = torch.zeros(n * c, 256, dtype=torch.int64).scatter_add_(1, q, torch.ones_like(q))
    top_count = histogram.gather(1, q.amax([1], keepdim=True))
    step = (top_count.neg() + h * w).div(255, rounding_mode="floor")
    before = histogram.cumsum(1) - histogram
    lut = (before + step.div(2, rounding_mode="floor")).div(step.clamp_min(1), rounding_mode="floor").clamp_max(255)
    equalised = (lut.gather(1, q).to(images.dtype) / 255.0).view(n, c, h, w)
    return torch.where(step.gt(0).view(n, c, 1, 1), equalised, images)


def _posterize(bits, images):
    b = _per_image(bits, images)
    unit = (8.0 - b.floor().clamp(1.0, 8.0)).exp2()
    posterized = (_levels(images) / unit).floor() * unit / 255.0
    return torch.where(b.ge(8.0), images, posterized)


def _solarize(thresholds, images):
    return torch.where((images * 255.0).lt(_per_image(thresholds, images)), images, images.neg() + 1.0)


def adjust_sharpness(factors, images):
    """Photometric.adjustSharpness: blend with the [[1,1,1],[1,5,1],[1,1,1]]/13 smoothed interior."""
    height, width = images.shape[2], images.shape[3]
    if height < 3 or width < 3:
        return images.clone()

    def window(dy, dx):
        return images.narrow(2, dy, height - 2).narrow(3, dx, width - 2)

    neighbourhood = None
    for dy in range(3):
        for dx in range(3):
            neighbourhood = window(dy, dx) if neighbourhood is None else neighbourhood + window(dy, dx)
    smoothed_interior = (neighbourhood + window(1, 1) * 4.0) / 13.0
    smoothed = images.clone()
    smoothed.narrow(2, 1, height - 2).narrow(3, 1, width - 2).copy_(smoothed_interior)
    return _blend(factors, smoothed, images)


def _warp_by_inverse(inverse, images):
    n, h, w = images.shape[0], images.shape[2], images.shape[3]
    dtype = torch.float64
    ys = (torch.arange(h, dtype=dtype) + 0.5).view(h, 1).expand(h, w)
    xs = (torch.arange(w, dtype=dtype) + 0.5).view(1, w).expand(h, w)
    centres = torch.stack([xs, ys, torch.ones_like(xs)], 2).view(1, h * w, 3)
    sources = centres.matmul(inverse.transpose(1, 2))
    to_unit = torch.tensor([2.0 / float(w), 2.0 / float(h)], dtype=dtype)
    grid = (sources * to_unit - 1.0).view(n, h, w, 2).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _geometric_inverse(op: str, m, height: int, width: int):
    zero, one = torch.zeros_like(m), torch.ones_like(m)

    def matrices(entries):
        return torch.stack(entries, 1).view(-1, 2, 3)

    if op == "shear_x":
        return matrices([one, m, zero, zero, one, zero])
    if op == "shear_y":
        return matrices([one, zero, zero, m, one, zero])
    if op == "translate_x":
        return matrices([one, zero, m * float(width), zero, one, zero])
    if op == "translate_y":
        return matrices([one, zero, zero, zero, one, m * float(height)])
    radians = m * (math.pi / 180.0)
    cosine, sine = radians.cos(), radians.sin()
    cx, cy = float(width) / 2.0, float(height) / 2.0
    return matrices([cosine, sine.neg(), cosine.neg() * cx + sine * cy + cx, sine, cosine, sine.neg() * cx - cosine * cy + cy])


def rand_augment_apply(op: str, magnitudes, images):
    """RandAugment.apply: `op` on every image at its magnitude (grey images: color is the identity)."""
    m = magnitudes.to(torch.float64)
    if op == "identity":
        return images.clone()
    if op == "auto_contrast":
        return _auto_contrast(images)
    if op == "brightness":
        return adjust_brightness(m, images)
    if op == "color":
        if images.shape[1] != 1:
            raise ValueError(f"RandAugment color: the twin mirrors grey (1-channel) images, found {images.shape[1]} channels")
        return images.clone()
    if op == "contrast":
        return adjust_contrast(m, images)
    if op == "equalize":
        return _equalize(images)
    if op == "posterize":
        return _posterize(m, images)
    if op == "sharpness":
        return adjust_sharpness(m, images)
    if op == "solarize":
        return _solarize(m, images)
    return _warp_by_inverse(_geometric_inverse(op, m, images.shape[2], images.shape[3]), images)


def rand_augment(operations: int, generator, images):
    """RandAugment.randAugment: per round, each image draws an operation and a magnitude in its range;
    each operation runs once on the images that drew it."""
    count = images.shape[0]
    lows = torch.tensor([low for _, low, _ in RAND_AUGMENT_POOL], dtype=torch.float64)
    highs = torch.tensor([high for _, _, high in RAND_AUGMENT_POOL], dtype=torch.float64)
    augmented = images
    for _ in range(operations):
        choices = integers(generator, 0, len(RAND_AUGMENT_POOL) - 1, count)
        unit = uniform(generator, 0.0, 1.0, [count])
        low, high = lows.index_select(0, choices), highs.index_select(0, choices)
        magnitudes = low + unit * (high - low)
        result = augmented.clone()
        for k, (op, _, _) in enumerate(RAND_AUGMENT_POOL):
            chosen = choices.eq(k).nonzero().flatten()
            if chosen.numel() > 0:
                result.index_copy_(0, chosen, rand_augment_apply(op, magnitudes.index_select(0, chosen), augmented.index_select(0, chosen)))
        augmented = result
    return images.clone() if operations == 0 else augmented


def random_cutout(max_fraction: float, fill: float, generator, images):
    """RandAugment.randomCutout: a square of side floor(u max_fraction min(H, W)) about a uniform
    centre, clipped at the borders, filled with `fill`."""
    count, height, width = images.shape[0], images.shape[2], images.shape[3]
    sides = uniform(generator, 0.0, max_fraction * float(min(height, width)), [count]).floor().to(torch.int64)
    ys = integers(generator, 0, height - 1, count)
    xs = integers(generator, 0, width - 1, count)
    starts = torch.stack([ys, xs], 1) - sides.div(2, rounding_mode="floor").unsqueeze(1)

    def inside(length, start):
        positions = torch.arange(length, dtype=torch.int64).unsqueeze(0)
        return positions.ge(start.unsqueeze(1)).logical_and(positions.lt((start + sides).unsqueeze(1)))

    rows = inside(height, starts.select(1, 0))
    columns = inside(width, starts.select(1, 1))
    hole = rows.view(count, 1, height, 1).logical_and(columns.view(count, 1, 1, width))
    return images.masked_fill(hole, fill)


def strong_augment(operations: int, cutout_fraction: float, fill: float, generator, images):
    """RandAugment.strongAugment: rand_augment, then random_cutout."""
    return random_cutout(cutout_fraction, fill, generator, rand_augment(operations, generator, images))
