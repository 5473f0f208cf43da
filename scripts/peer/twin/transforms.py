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
