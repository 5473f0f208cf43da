"""Fashion-MNIST as Ssl reads it: the IDX files (.gz or raw) of /usr/share/datasets/fashion-mnist
(Debian's dataset-fashion-mnist) or of $SSL_DATA/fashion-mnist, images as uint8 (N, 1, 28, 28) and
labels as int64 (N); the training set's per-channel mean and standard deviation of pixels in [0, 1]
(ImageDataset.ChannelStatistics); `smoke` keeps the first 2,000 training images (Pipeline.readSplits).
"""
import gzip
import os
import struct

import torch

DEBIAN_FOLDER = "/usr/share/datasets/fashion-mnist"
SMOKE_IMAGES = 2000


class DataError(Exception):
    """A missing or malformed data file: names the file, what was expected and what was found."""

    def __init__(self, path: str, expected: str, found: str):
        super().__init__(f"{path}: expected {expected}, found {found}")


def _folders() -> list:
    root = os.environ.get("SSL_DATA")
    extra = [os.path.join(root, "fashion-mnist"), root] if root else []
    return extra + [DEBIAN_FOLDER]


def _find(name: str) -> str:
    for folder in _folders():
        for candidate in (os.path.join(folder, name + ".gz"), os.path.join(folder, name)):
            if os.path.isfile(candidate):
                return candidate
    searched = ", ".join(_folders())
    raise DataError(name, f"the Fashion-MNIST file {name}[.gz] in one of {searched} "
                    "(install Debian's dataset-fashion-mnist or set SSL_DATA)", "no such file")


def _read(path: str) -> bytes:
    with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
        return f.read()


def _idx(name: str, magic: int, dims: int) -> torch.Tensor:
    path = _find(name)
    raw = _read(path)
    header = 4 + 4 * dims
    if len(raw) < header or struct.unpack(">I", raw[:4])[0] != magic:
        found = f"magic {raw[:4].hex()}" if len(raw) >= 4 else f"{len(raw)} bytes"
        raise DataError(path, f"an IDX file with magic {magic:08x}", found)
    shape = struct.unpack(">" + "I" * dims, raw[4:header])
    count = 1
    for d in shape:
        count *= d
    if len(raw) - header != count:
        raise DataError(path, f"{count} bytes of data for shape {shape}", f"{len(raw) - header}")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).view(*shape)


def load_train(preset: str):
    """(images uint8 (N, 1, 28, 28), labels int64 (N), mean [1], std [1]) of the training set."""
    images = _idx("train-images-idx3-ubyte", 0x00000803, 3).unsqueeze(1)
    labels = _idx("train-labels-idx1-ubyte", 0x00000801, 1).to(torch.int64)
    if images.shape[0] != labels.shape[0]:
        raise DataError("train-labels-idx1-ubyte", f"{images.shape[0]} labels (one per image)", f"{labels.shape[0]}")
    if preset == "smoke":
        images, labels = images[:SMOKE_IMAGES].clone(), labels[:SMOKE_IMAGES].clone()
    pixels = images.to(torch.float64).div_(255.0).transpose(0, 1).reshape(images.shape[1], -1)
    mean = pixels.mean(1).tolist()
    std = pixels.std(1, unbiased=False).tolist()
    return images, labels, mean, std


def to_input(images: torch.Tensor, mean: list, std: list) -> torch.Tensor:
    """Features.ToInput: uint8 (N, C, H, W) -> float32 standardised with mean and std per channel."""
    c = images.shape[1]
    m = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
    return images.to(torch.float32).div_(255.0).sub_(m).div_(s)


def unit_pixels(images: torch.Tensor) -> torch.Tensor:
    """Pipeline.unitPixels: ToInput with mean 0 and std 1, pixel values in [0, 1]."""
    c = images.shape[1]
    return to_input(images, [0.0] * c, [1.0] * c)


def standardise(pixels: torch.Tensor, mean: list, std: list) -> torch.Tensor:
    """Pipeline.standardise: [0, 1] pixels (N, C, H, W) -> (pixels - mean) / std per channel."""
    c = len(mean)
    m = torch.tensor(mean, dtype=pixels.dtype).view(1, c, 1, 1)
    s = torch.tensor(std, dtype=pixels.dtype).view(1, c, 1, 1)
    return (pixels - m) / s
