namespace Ssl.Core.Models

open TorchSharp

/// A module that computes its convolution or matrix product through a functional call (SafeConv2d,
/// the spectrally normalised and the masked convolutions), so a forward hook on its inner nn.Conv2d
/// or nn.Linear never runs. It reports the multiply-adds of one forward itself, from that forward's
/// input and output, for FLOP counters (Host's FlopCounter hooks the module and asks it).
type ICountsMultiplyAdds =
    /// Multiply-adds of the forward that read `input` and returned `output`.
    abstract MultiplyAdds: input: torch.Tensor * output: torch.Tensor -> float

/// Multiply-adds of the common layer shapes.
module MultiplyAdds =
    /// A k x k convolution (or a linear map, k = 1) with `inputChannels` inputs per output element:
    /// every element of `output` costs inputChannels · k² multiply-adds. Padded or masked taps count,
    /// since they are computed.
    let convolution (inputChannels: int64) (kernelSize: int64) (output: torch.Tensor) =
        float (output.numel ()) * float inputChannels * float (kernelSize * kernelSize)
