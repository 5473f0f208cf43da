/// A float32 convolution whose input gradient is right on every CPU we run on.
///
/// libtorch 2.10's CPU backward-data of float32 conv2d (the gradient with respect to the input, and
/// so everything upstream of the layer) is wrong, sometimes NaN, on this project's AVX-512 machines
/// (AMD EPYC) when the output channel count is not a multiple of 16; forward and weight gradients
/// are right, and float64 is right. Measured against float64 over 1-128 input and 1-64 output
/// channels, 3x3 and 5x5 kernels, 1 and 2 threads: every count not a multiple of 16 failed somewhere
/// (relative errors 0.03-0.6 or NaN), every multiple of 16 was exact to 1e-6. Padding the filters
/// with zeros up to the next multiple of 16 and dropping the extra outputs gives the same forward
/// result and a correct input gradient. See docs/conv-backward-bug.md.
module Ssl.Core.Models.SafeConv

open TorchSharp
open type TorchSharp.torch

/// Output channels are padded to a multiple of this.
[<Literal>]
let ChannelBlock = 16L

/// conv2d(x, weight, bias) with zero filters appended up to a multiple of `ChannelBlock` output
/// channels (float32 on the CPU only; elsewhere a plain conv2d), the extra outputs dropped.
/// x: (N, C, H, W); weight: (O, C, k, k); bias: (O) or null → (N, O, H', W').
let conv2d (stride: int64) (padding: int64) (x: Tensor) (weight: Tensor) (bias: Tensor) : Tensor =
    let outputs = weight.shape[0]
    let extra = (ChannelBlock - outputs % ChannelBlock) % ChannelBlock
    if extra = 0L || x.dtype <> ScalarType.Float32 || x.device.``type`` <> DeviceType.CPU then
        nn.functional.conv2d(x, weight, bias, strides = [| stride; stride |], padding = [| padding; padding |])
    else
        use scope = NewDisposeScope()
        let shape = Array.append [| extra |] weight.shape[1..]
        let paddedWeight = cat([| weight; zeros(shape, dtype = weight.dtype, device = weight.device) |], 0L)
        let paddedBias =
            if isNull bias then null
            else cat([| bias; zeros([| extra |], dtype = bias.dtype, device = bias.device) |], 0L)
        nn.functional.conv2d(x, paddedWeight, paddedBias, strides = [| stride; stride |], padding = [| padding; padding |])
            .narrow(1L, 0L, outputs).MoveToOuterDisposeScope()

/// nn.Conv2d's parameters (same names: `weight`, `bias`) computed through `SafeConv.conv2d`.
/// x: (N, inputChannels, H, W) → (N, outputChannels, H', W').
type SafeConv2d(inputChannels: int64, outputChannels: int64, kernelSize: int64, stride: int64, padding: int64, bias: bool) as this =
    inherit nn.Module<Tensor, Tensor>("SafeConv2d")
    let conv = nn.Conv2d(inputChannels, outputChannels, kernelSize, stride = stride, padding = padding, bias = bias)
    do this.RegisterComponents()

    override _.forward(x) = conv2d stride padding x conv.weight conv.bias

    interface ICountsMultiplyAdds with
        member _.MultiplyAdds(_, output) = MultiplyAdds.convolution inputChannels kernelSize output
