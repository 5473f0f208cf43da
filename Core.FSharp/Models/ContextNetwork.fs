/// The autoregressive context network of CPC over a grid of patch embeddings, built from masked
/// (PixelCNN-style) convolutions.
namespace Ssl.Core.Models

open TorchSharp
open type TorchSharp.torch
open Ssl.Core.Shape

/// Which grid positions (u, v) the context at (i, j) may depend on.
type ContextMask =
    /// Only rows above: u < i (any column). CPC's context over rows u ≤ i (Hénaff et al. 2019) is
    /// this network's output one row further down.
    | RowsAbove = 0
    /// Raster order, as PixelCNN (van den Oord et al. 2016): u < i, or u = i and v < j.
    | RowsAboveAndLeft = 1

/// Kernel masks of masked convolutions.
module MaskedConvolution =
    /// The (k, k) mask (1 = tap kept) for `mask` in the first layer (`first` = true, which excludes
    /// the centre: PixelCNN's mask A) or in a later layer (which keeps the centre: mask B, and for
    /// RowsAbove the whole centre row, since a later layer's input at row i already depends on
    /// rows above i only). `kernelSize`: odd k ≥ 1. Result: float32 on the CPU.
    let kernelMask (mask: ContextMask) (first: bool) (kernelSize: int64) =
        if kernelSize < 1L || kernelSize % 2L = 0L then
            invalidArg "kernelSize" $"kernelSize: expected an odd number >= 1, found {kernelSize}"
        let centre = kernelSize / 2L
        let keeps (a: int64) (b: int64) =
            match mask, first with
            | ContextMask.RowsAbove, true -> a < centre
            | ContextMask.RowsAbove, false -> a <= centre
            | ContextMask.RowsAboveAndLeft, true -> a < centre || (a = centre && b < centre)
            | ContextMask.RowsAboveAndLeft, false -> a < centre || (a = centre && b <= centre)
            | _ -> invalidArg "mask" $"mask: expected RowsAbove or RowsAboveAndLeft, found {mask}"
        let k = Operators.int kernelSize
        let values = Array2D.init k k (fun a b -> if keeps (Operators.int64 a) (Operators.int64 b) then 1.0f else 0.0f)
        torch.tensor(values)

/// A 2-D convolution (stride 1, "same" zero padding) whose kernel taps outside `kernelMask mask
/// first kernelSize` are zeroed at every forward, so their weights get zero gradient.
/// x: (N, inputChannels, H, W) → (N, outputChannels, H, W).
type MaskedConv2d(inputChannels: int64, outputChannels: int64, kernelSize: int64, mask: ContextMask, first: bool, ?layout: SafeConv.ConvLayout) as this =
    inherit nn.Module<Tensor, Tensor>("MaskedConv2d")
    let layout = defaultArg layout SafeConv.ChannelsLast
    let conv = nn.Conv2d(inputChannels, outputChannels, kernelSize, padding = kernelSize / 2L)
    let kernelMask = (MaskedConvolution.kernelMask mask first kernelSize).DetachFromDisposeScope()
    do this.RegisterComponents()

    override _.forward(x) =
        use scope = torch.NewDisposeScope()
        let weight = conv.weight * kernelMask
        let padding = kernelSize / 2L
        (SafeConv.conv2d layout 1L padding x weight conv.bias).MoveToOuterDisposeScope()

    interface ICountsMultiplyAdds with
        member _.MultiplyAdds(_, output) = MultiplyAdds.convolution inputChannels kernelSize output

/// A residual block of the context network: x + conv1x1(ReLU(masked conv(ReLU(x)))).
type internal ContextBlock(channels: int64, kernelSize: int64, mask: ContextMask, layout: SafeConv.ConvLayout) as this =
    inherit nn.Module<Tensor, Tensor>("ContextBlock")
    let masked = new MaskedConv2d(channels, channels, kernelSize, mask, false, layout)
    let mix = SafeConv.layer layout channels channels 1L 1L 0L true
    do this.RegisterComponents()

    override _.forward(x) =
        use scope = torch.NewDisposeScope()
        (x + mix.call((masked.call(x.relu())).relu())).MoveToOuterDisposeScope()

/// The context network g_ar of CPC v2 (Hénaff et al. 2019: a PixelCNN-style stack of masked
/// convolutions over the grid of patch embeddings; van den Oord et al. 2016, Pixel Recurrent
/// Neural Networks, Sec. 3.4, for the masks): a first masked convolution (inputDim → contextDim, centre excluded), then `blocks`
/// residual blocks (masked k x k and 1x1 convolutions). The output at (i, j) depends only on the
/// positions `mask` allows; with k = 3 its receptive field grows by one row (and column) per layer.
/// embeddings: (N, inputDim, gh, gw) → contexts (N, contextDim, gh, gw). `layout`: what its
/// convolutions read (channels-last unless given).
type ContextNetwork(inputDim: int64, contextDim: int64, blocks: int, kernelSize: int64, mask: ContextMask, ?layout: SafeConv.ConvLayout) as this =
    inherit nn.Module<Tensor, Tensor>("ContextNetwork")
    let layout = defaultArg layout SafeConv.ChannelsLast
    do
        Layers.checkPositive "inputDim" inputDim
        Layers.checkPositive "contextDim" contextDim
        if blocks < 0 then invalidArg "blocks" $"blocks: expected a number >= 0, found {blocks}"
    let input = new MaskedConv2d(inputDim, contextDim, kernelSize, mask, true, layout)
    let layers =
        Layers.sequential [
            for b in 1 .. blocks -> $"block{b}", new ContextBlock(contextDim, kernelSize, mask, layout) :> nn.Module<Tensor, Tensor> ]
    do this.RegisterComponents()

    member _.Mask = mask

    override _.forward(embeddings) =
        expect "embeddings" [| Any; Exactly inputDim; Any; Any |] embeddings
        use scope = torch.NewDisposeScope()
        layers.call(input.call embeddings).MoveToOuterDisposeScope()
