"""Ssl's models in PyTorch, with the same shapes, layer order and initialisation order.

SafeConv2d pads exactly as Core.FSharp/Models/SafeConv.fs does (ours works around wrong float32
kernels of libtorch 2.10's oneDNN; the twin pads too, so both run the same convolutions and FLOPs):
zero filters up to a multiple of 16 outputs where the input's gradient will be computed, and above
16 inputs (where ours runs the convolution NCHW, or its kernel is 1x1) zero channels of the input
and the filters up to a multiple of 16, the extra outputs dropped. conv_layer is SafeConv.layer: a
plain Conv2d where no padding is needed.

The twin's configuration (configure(), peer.py's --layout and --convolutions) is what a PyTorch user
would try for speed: NCHW or channels-last (model and input in torch.channels_last, as solo-learn's
`channels_last` option does), and SafeConv's padding ("safe": the convolutions and FLOPs ours runs)
or plain nn.Conv2d ("plain") wherever PyTorch computes that convolution right in the layout: each
plain layer is first checked against float64 (plain_conv_right), and one that is not stays padded.
"""
import math
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

LAYOUTS = ("nchw", "channels-last")
CONVOLUTIONS = ("safe", "plain")
# The configuration every model built from here on takes (configure()).
_layout, _convolutions = "nchw", "safe"
# Layers built plain and layers kept padded because the plain convolution was wrong (for the report).
plain_layers, padded_layers = [], []
# Relative error above which a float32 convolution counts as wrong (the libtorch 2.10 bug is off by
# 0.77; right float32 results differ from float64 by about 1e-6).
PLAIN_TOLERANCE = 1e-3


def configure(layout: str, convolutions: str):
    """Sets the layout and the convolutions of the models built after it."""
    global _layout, _convolutions
    if layout not in LAYOUTS or convolutions not in CONVOLUTIONS:
        raise ValueError(f"configuration: expected a layout in {LAYOUTS} and convolutions in {CONVOLUTIONS}, found {layout}, {convolutions}")
    _layout, _convolutions = layout, convolutions
    plain_layers.clear()
    padded_layers.clear()


def memory_format():
    """The torch memory format of the configured layout."""
    return torch.channels_last if _layout == "channels-last" else torch.contiguous_format


def configuration() -> str:
    """The configured layout and convolutions, as bench.json names them."""
    return f"{_layout}, {_convolutions}"


_checked = {}


def plain_conv_right(inputs: int, outputs: int, kernel: int, stride: int, padding: int) -> bool:
    """Whether a float32 nn.Conv2d of these counts computes its forward, input gradient and weight
    gradient within PLAIN_TOLERANCE of float64, in the configured layout (4 images of 10x10; random
    numbers from a generator of its own, so the seeded initialisation draws are untouched)."""
    key = (inputs, outputs, kernel, stride, padding, _layout)
    if key not in _checked:
        generator = torch.Generator()
        generator.manual_seed(1234)
        x64 = torch.randn(4, inputs, 10, 10, generator=generator, dtype=torch.float64)
        w64 = torch.randn(outputs, inputs, kernel, kernel, generator=generator, dtype=torch.float64)
        side = (10 + 2 * padding - kernel) // stride + 1
        g64 = torch.randn(4, outputs, side, side, generator=generator, dtype=torch.float64)

        def run(dtype, fmt):
            x = x64.to(dtype).contiguous(memory_format=fmt).requires_grad_()
            w = w64.to(dtype).contiguous(memory_format=fmt).requires_grad_()
            y = F.conv2d(x, w, None, stride=stride, padding=padding)
            y.backward(g64.to(dtype).contiguous(memory_format=fmt))
            return [t.to(torch.float64) for t in (y, x.grad, w.grad)]

        with torch.enable_grad():
            got = run(torch.float32, memory_format())
            want = run(torch.float64, torch.contiguous_format)
        _checked[key] = all(float((a - b).abs().max()) <= PLAIN_TOLERANCE * max(float(b.abs().max()), 1e-12)
                            for a, b in zip(got, want))
    return _checked[key]


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
    """SafeConv.layer: SafeConv2d where the channel counts need padding, else nn.Conv2d; with plain
    convolutions configured, nn.Conv2d wherever plain_conv_right says it is right."""
    name = f"{inputs}->{outputs} {kernel}x{kernel}"
    if _convolutions == "plain":
        if plain_conv_right(inputs, outputs, kernel, stride, padding):
            plain_layers.append(name)
            return nn.Conv2d(inputs, outputs, kernel, stride=stride, padding=padding, bias=bias)
        padded_layers.append(name)
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
        self.memory_format = memory_format()
        self.to(memory_format=self.memory_format)

    def forward(self, images):
        return self.features(images.contiguous(memory_format=self.memory_format))


class LinearHead(nn.Module):
    """Heads.fs LinearHead: a linear layer with bias, (N, in) -> (N, out)."""

    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.linear = nn.Linear(inputs, outputs)

    def forward(self, features):
        return self.linear(features)


class MlpHead(nn.Module):
    """Heads.fs MlpHead: Linear (no bias when batch norm follows) -> BatchNorm1d -> ReLU -> Linear
    (with bias); without batch norm Linear -> ReLU -> Linear, both with bias. (N, in) -> (N, out)."""

    def __init__(self, inputs: int, hidden: int, outputs: int, batch_norm: bool = True):
        super().__init__()
        layers = OrderedDict(fc1=nn.Linear(inputs, hidden, bias=not batch_norm))
        if batch_norm:
            layers["bn"] = nn.BatchNorm1d(hidden)
        layers["relu"] = nn.ReLU()
        layers["fc2"] = nn.Linear(hidden, outputs)
        self.layers = nn.Sequential(layers)

    def forward(self, features):
        return self.layers(features)


def projected(encoder: nn.Module, projector: nn.Module) -> nn.Module:
    """Heads.fs Projectors.projected: projector(encoder(x)) as one module, the encoder's parameters first."""
    return nn.Sequential(OrderedDict(encoder=encoder, projector=projector))


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


# ---- Vit.fs and DinoHead.fs ---------------------------------------------------------------------
def truncated_normal_(tensor: torch.Tensor, std: float):
    """Initialise.truncatedNormal: normal_(0, std) clamped to (-2, 2)."""
    with torch.no_grad():
        tensor.normal_(0.0, std).clamp_(-2.0, 2.0)


class PatchEmbedding(nn.Module):
    """Vit.fs PatchEmbedding: p x p patches flattened channel-major, times a linear layer (the
    reference's stride-p convolution as unfold + linear). (N, C, H, W) -> (N, (H/p)(W/p), D)."""

    def __init__(self, channels: int, patch: int, dim: int):
        super().__init__()
        self.channels, self.patch = channels, patch
        self.projection = nn.Linear(channels * patch * patch, dim)

    def forward(self, images):
        n, c, h, w = images.shape
        p = self.patch
        rows, columns = h // p, w // p
        patches = images.reshape(n, c, rows, p, columns, p).permute(0, 2, 4, 1, 3, 5).reshape(n, rows * columns, c * p * p)
        return self.projection(patches)


class MultiHeadSelfAttention(nn.Module):
    """Vit.fs MultiHeadSelfAttention: qkv with bias, softmax(q k^T / sqrt(d_h)) v per head, projected."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens):
        n, t = tokens.shape[0], tokens.shape[1]
        parts = self.qkv(tokens).reshape(n, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = parts[0], parts[1], parts[2]
        attention = (q.matmul(k.transpose(-2, -1)) * (1.0 / math.sqrt(float(self.head_dim)))).softmax(-1)
        return self.proj(attention.matmul(v).transpose(1, 2).reshape(n, t, self.dim))


class TransformerBlock(nn.Module):
    """Vit.fs TransformerBlock: x + MSA(LN(x)), then x + MLP(LN(x)); LayerNorm eps 1e-6."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = MultiHeadSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(OrderedDict(fc1=nn.Linear(dim, mlp_dim), gelu=nn.GELU(), fc2=nn.Linear(mlp_dim, dim)))

    def forward(self, tokens):
        x = tokens + self.attention(self.norm1(tokens))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Vit.fs VisionTransformer (ViT-Tiny: width 192, 3 heads, MLP 768): class token, positions for
    a g x g grid (resized bicubically for other grids), pre-norm blocks, final LayerNorm; the output
    is the class token. Built and initialised in ours' order. (N, C, H, W) -> (N, D)."""

    def __init__(self, channels: int, patch: int, depth: int, position_grid: int, dim: int = 192, heads: int = 3, mlp_dim: int = 768):
        super().__init__()
        self.dim, self.grid = dim, position_grid
        self.patch_embedding = PatchEmbedding(channels, patch, dim)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.positions = nn.Parameter(torch.zeros(1, 1 + position_grid * position_grid, dim))
        self.blocks = nn.ModuleList([TransformerBlock(dim, heads, mlp_dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.feature_dim = dim
        truncated_normal_(self.class_token, 0.02)
        truncated_normal_(self.positions, 0.02)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.startswith("patch_embedding"):
                truncated_normal_(m.weight, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def positions_for(self, rows: int, columns: int):
        if rows == self.grid and columns == self.grid:
            return self.positions
        g, d = self.grid, self.dim
        grid = self.positions.narrow(1, 1, g * g).reshape(1, g, g, d).permute(0, 3, 1, 2)
        resized = F.interpolate(grid, size=(rows, columns), mode="bicubic", align_corners=False)
        return torch.cat([self.positions.narrow(1, 0, 1), resized.permute(0, 2, 3, 1).reshape(1, rows * columns, d)], 1)

    def forward(self, images):
        p = self.patch_embedding.patch
        rows, columns = images.shape[2] // p, images.shape[3] // p
        patches = self.patch_embedding(images)
        classes = self.class_token.expand(images.shape[0], -1, -1)
        x = torch.cat([classes, patches], 1) + self.positions_for(rows, columns)
        for block in self.blocks:
            x = block(x)
        return self.norm(x).select(1, 0)


class DinoHead(nn.Module):
    """DinoHead.fs: fc-GELU-fc-GELU-fc to the bottleneck (truncated normal 0.02, zero biases), L2
    normalisation, then a bias-free linear layer whose directions are normalised (norm_last_layer)."""

    def __init__(self, inputs: int, hidden: int, bottleneck: int, outputs: int):
        super().__init__()
        self.mlp = nn.Sequential(OrderedDict(fc1=nn.Linear(inputs, hidden), gelu1=nn.GELU(), fc2=nn.Linear(hidden, hidden),
                                             gelu2=nn.GELU(), fc3=nn.Linear(hidden, bottleneck)))
        self.last_layer = nn.Linear(bottleneck, outputs, bias=False)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                truncated_normal_(m.weight, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, features):
        bottleneck = F.normalize(self.mlp(features), p=2.0, dim=-1)
        return F.linear(bottleneck, F.normalize(self.last_layer.weight, p=2.0, dim=1))


class DinoNet(nn.Module):
    """Dino.fs DinoNet: head(encoder(images))."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, images):
        return self.head(self.encoder(images))
