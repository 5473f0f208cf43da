"""Ssl's models in PyTorch, with the same shapes, layer order and initialisation order.

SafeConv2d pads exactly as Core.FSharp/Models/SafeConv.fs does (ours works around wrong float32
kernels of libtorch 2.10's oneDNN; the twin pads too, so both run the same convolutions and FLOPs):
zero filters up to a multiple of 16 outputs where the input's gradient will be computed, and above
16 inputs (where ours runs the convolution NCHW, or its kernel is 1x1) zero channels of the input
and the filters up to a multiple of 16, the extra outputs dropped. conv_layer is SafeConv.layer: a
plain Conv2d where no padding is needed.
"""
import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

CHANNEL_BLOCK = 16
# SafeConv.ChannelsLast as ours reads it (SSL_MEMORY_FORMAT): whether ours runs its convolutions
# channels-last, where a kernel wider than 1x1 takes any input count unpadded. The twin itself runs
# NCHW (torch 1.13's kernels need no padding); it pads only to do the convolutions ours does.
OURS_CHANNELS_LAST = os.environ.get("SSL_MEMORY_FORMAT", "").strip().lower() != "nchw"


def output_padding(outputs: int) -> int:
    return (CHANNEL_BLOCK - outputs % CHANNEL_BLOCK) % CHANNEL_BLOCK


def input_padding(inputs: int) -> int:
    return 0 if inputs <= CHANNEL_BLOCK else (CHANNEL_BLOCK - inputs % CHANNEL_BLOCK) % CHANNEL_BLOCK


def _widen(tensor: torch.Tensor, dim: int, count: int) -> torch.Tensor:
    if count == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = count
    return torch.cat([tensor, torch.zeros(shape, dtype=tensor.dtype, device=tensor.device)], dim)


def safe_conv2d(stride: int, padding: int, x, weight, bias):
    """SafeConv.conv2d: x (N, C, H, W), weight (O, C, k, k), bias (O) or None -> (N, O, H', W')."""
    outputs = weight.shape[0]
    # SafeConv.needsInputGradient: the output padding only where backward-data will run.
    extra_out = output_padding(outputs) if torch.is_grad_enabled() and x.requires_grad else 0
    # SafeConv.readsAnyInputCount: ours pads the input channels of NCHW and 1x1 convolutions only.
    reads_any = OURS_CHANNELS_LAST and weight.shape[2] > 1 and weight.shape[3] > 1
    extra_in = 0 if reads_any else input_padding(weight.shape[1])
    if (extra_out == 0 and extra_in == 0) or x.dtype != torch.float32 or x.device.type != "cpu":
        return F.conv2d(x, weight, bias, stride=stride, padding=padding)
    padded_weight = _widen(_widen(weight, 1, extra_in), 0, extra_out)
    padded_bias = None if bias is None else _widen(bias, 0, extra_out)
    return F.conv2d(_widen(x, 1, extra_in), padded_weight, padded_bias, stride=stride, padding=padding).narrow(1, 0, outputs)


class SafeConv2d(nn.Module):
    """An nn.Conv2d (as `conv`) computed through safe_conv2d."""

    def __init__(self, inputs: int, outputs: int, kernel: int, stride: int, padding: int, bias: bool):
        super().__init__()
        self.conv = nn.Conv2d(inputs, outputs, kernel, stride=stride, padding=padding, bias=bias)
        self.stride, self.padding = stride, padding

    def forward(self, x):
        return safe_conv2d(self.stride, self.padding, x, self.conv.weight, self.conv.bias)


def conv_layer(inputs: int, outputs: int, kernel: int, stride: int, padding: int, bias: bool) -> nn.Module:
    """SafeConv.layer: SafeConv2d where the channel counts need padding, else nn.Conv2d."""
    if output_padding(outputs) > 0 or input_padding(inputs) > 0:
        return SafeConv2d(inputs, outputs, kernel, stride, padding, bias)
    return nn.Conv2d(inputs, outputs, kernel, stride=stride, padding=padding, bias=bias)


class SmallConvNet(nn.Module):
    """Encoders.fs SmallConvNet of base width w: conv-BN-ReLU at w, max-pool 2, two conv-BN-ReLU at
    2w, max-pool 2, two at 4w, global average pool; 3x3 convolutions, padding 1, no bias.
    images (N, C, H, W) -> (N, 4w)."""

    def __init__(self, inputs: int, width: int, bn_momentum: float = 0.1):
        super().__init__()
        layers = OrderedDict()

        def conv_bn_relu(prefix: str, cin: int, cout: int):
            layers[prefix + "conv"] = conv_layer(cin, cout, 3, 1, 1, False)
            layers[prefix + "bn"] = nn.BatchNorm2d(cout, momentum=bn_momentum)
            layers[prefix + "relu"] = nn.ReLU()

        conv_bn_relu("stem_", inputs, width)
        layers["pool1"] = nn.MaxPool2d(2)
        conv_bn_relu("block2a_", width, 2 * width)
        conv_bn_relu("block2b_", 2 * width, 2 * width)
        layers["pool2"] = nn.MaxPool2d(2)
        conv_bn_relu("block3a_", 2 * width, 4 * width)
        conv_bn_relu("block3b_", 4 * width, 4 * width)
        layers["pool"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        self.features = nn.Sequential(layers)
        self.feature_dim = 4 * width

    def forward(self, images):
        return self.features(images)


class LinearHead(nn.Module):
    """Heads.fs LinearHead: a linear layer with bias, (N, in) -> (N, out)."""

    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.linear = nn.Linear(inputs, outputs)

    def forward(self, features):
        return self.linear(features)


class EmbeddingNet(nn.Module):
    """MoCo.fs EmbeddingNet: normalize(projection(encoder(images))), (N, C, H, W) -> (N, D)."""

    def __init__(self, encoder: nn.Module, projection: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.projection = projection

    def forward(self, images):
        return F.normalize(self.projection(self.encoder(images)), 2.0, 1)


class MomentumCopy(nn.Module):
    """Momentum.fs MomentumCopy: copy <- m copy + (1 - m) online on every parameter, buffers copied."""

    def __init__(self, online: nn.Module, copy: nn.Module):
        super().__init__()
        self.online = [online]
        self.copy = copy
        for p in copy.parameters():
            p.requires_grad = False
        self.update(0.0)

    @torch.no_grad()
    def update(self, momentum: float):
        online = self.online[0]
        for q, k in zip(online.parameters(), self.copy.parameters()):
            k.mul_(momentum).add_(q, alpha=1.0 - momentum)
        for q, k in zip(online.buffers(), self.copy.buffers()):
            k.copy_(q)

    def forward(self, x):
        return self.copy(x)


class KeyQueue(nn.Module):
    """Memory.fs KeyQueue: K random unit keys of dimension D, first in first out."""

    def __init__(self, capacity: int, dim: int, generator: torch.Generator):
        super().__init__()
        self.capacity = capacity
        self.register_buffer("keys", F.normalize(torch.randn(capacity, dim, generator=generator), dim=1))
        self.register_buffer("pointer", torch.zeros(1, dtype=torch.int64))

    @torch.no_grad()
    def enqueue(self, new_keys: torch.Tensor):
        batch = new_keys.shape[0]
        kept = min(batch, self.capacity)
        start = int(self.pointer.item())
        slots = torch.arange(start + batch - kept, start + batch, dtype=torch.int64).remainder(self.capacity)
        rows = new_keys.detach().narrow(0, batch - kept, kept).to(self.keys.dtype)
        self.keys.index_copy_(0, slots, rows)
        self.pointer.fill_((start + batch) % self.capacity)


def forward_mflop_per_image(model: nn.Module, shape: tuple) -> float:
    """Forward MFLOPs per example as Host's FlopCounter counts them: 2 per multiply-add of every
    convolution and linear layer, SafeConv2d at its unpadded channels; on two zero images, eval mode."""
    total = [0.0]

    def conv_hook(m, inputs, output):
        total[0] += 2.0 * output.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def safe_hook(m, inputs, output):
        c = m.conv
        total[0] += 2.0 * output.numel() * c.in_channels * c.kernel_size[0] * c.kernel_size[1]

    def linear_hook(m, inputs, output):
        total[0] += 2.0 * output.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, SafeConv2d):
            handles.append(m.register_forward_hook(safe_hook))
        elif isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((2,) + tuple(shape)))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total[0] / 2 / 1e6
