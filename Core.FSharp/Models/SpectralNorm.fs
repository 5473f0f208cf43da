/// Spectral normalisation (Miyato et al. 2018): TorchSharp 0.107 has no nn.utils.spectral_norm, so
/// the linear and convolution layers here divide their weight by a power-iteration estimate of its
/// largest singular value at every forward.
namespace Ssl.Core.Models

open TorchSharp
open type TorchSharp.torch
open Ssl.Core.Shape

module SpectralNorm =
    /// `iterations` ≥ 1 power iterations (Miyato et al. 2018, Algorithm 1) on `weight` viewed as
    /// the matrix W (out, rest), starting from the left singular vector estimate u:
    /// v ← normalise(Wᵀu), u ← normalise(W v); then σ = uᵀ W v.
    /// u: (out); weight: (out, ...). Result: struct (σ: () differentiable in `weight` with u, v held
    /// constant, as in the paper; u: (out) and v: (rest) detached).
    let powerIteration (iterations: int) (u: Tensor) (weight: Tensor) =
        if iterations < 1 then invalidArg "iterations" $"iterations: expected a number >= 1, found {iterations}"
        expect "u" [| Exactly weight.shape[0] |] u
        use scope = torch.NewDisposeScope()
        let matrix = weight.flatten(1L)
        let struct (left, right) =
            use _ = torch.no_grad()
            let w = matrix.detach()
            let mutable left = u.detach()
            let mutable right = nn.functional.normalize(w.t().mv(left), dim = 0L)
            for i in 1 .. iterations do
                if i > 1 then right <- nn.functional.normalize(w.t().mv(left), dim = 0L)
                left <- nn.functional.normalize(w.mv(right), dim = 0L)
            struct (left.clone(), right.clone())
        let sigma = left.dot(matrix.mv(right))
        struct (sigma.MoveToOuterDisposeScope(), left.MoveToOuterDisposeScope(), right.MoveToOuterDisposeScope())

    /// The normalised weight W / σ. In training mode one power iteration refreshes the stored
    /// estimates `u` (out) and `v` (rest) in place first; in evaluation mode they are used as stored.
    let internal normalise (training: bool) (u: Tensor) (v: Tensor) (weight: Tensor) =
        use scope = torch.NewDisposeScope()
        let sigma =
            if training then
                let struct (sigma, left, right) = powerIteration 1 u weight
                use _ = torch.no_grad()
                u.copy_(left) |> ignore
                v.copy_(right) |> ignore
                sigma
            else
                u.dot(weight.flatten(1L).mv(v))
        (weight / sigma).MoveToOuterDisposeScope()

    /// A random unit vector of length n, outside any dispose scope (torch's global generator, like
    /// the layers' weight initialisation).
    let internal randomUnit (n: int64) =
        use scope = torch.NewDisposeScope()
        nn.functional.normalize(torch.randn(n), dim = 0L).DetachFromDisposeScope()

/// A linear layer with spectrally normalised weight (Miyato et al. 2018): x (N, inputSize) →
/// (N, outputSize) = x (W/σ)ᵀ + b. Parameters "layer.weight", "layer.bias"; buffers "u", "v".
type SpectralNormLinear(inputSize: int64, outputSize: int64) as this =
    inherit nn.Module<Tensor, Tensor>("SpectralNormLinear")
    let layer = nn.Linear(inputSize, outputSize)
    let u = SpectralNorm.randomUnit outputSize
    let v = SpectralNorm.randomUnit inputSize
    do this.RegisterComponents()

    /// The current estimate σ = uᵀ W v of the weight's largest singular value: a new () tensor.
    member _.Sigma =
        use scope = torch.NewDisposeScope()
        use _ = torch.no_grad()
        u.dot(layer.weight.mv(v)).MoveToOuterDisposeScope()

    override this.forward(x) =
        expect "x" [| Any; Exactly inputSize |] x
        use scope = torch.NewDisposeScope()
        let weight = SpectralNorm.normalise this.training u v layer.weight
        nn.functional.linear(x, weight, layer.bias).MoveToOuterDisposeScope()

    interface ICountsMultiplyAdds with
        member _.MultiplyAdds(_, output) = MultiplyAdds.convolution inputSize 1L output

/// A 2-D convolution (zero padding) with spectrally normalised weight, the kernel viewed as the
/// matrix (outputChannels, inputChannels·k·k) as in Miyato et al. 2018:
/// x (N, inputChannels, H, W) → (N, outputChannels, H', W'). Buffers "u", "v".
type SpectralNormConv2d(inputChannels: int64, outputChannels: int64, kernelSize: int64, stride: int64, padding: int64, ?layout: SafeConv.ConvLayout) as this =
    inherit nn.Module<Tensor, Tensor>("SpectralNormConv2d")
    let layout = defaultArg layout SafeConv.ChannelsLast
    let layer = nn.Conv2d(inputChannels, outputChannels, kernelSize, stride = stride, padding = padding)
    let u = SpectralNorm.randomUnit outputChannels
    let v = SpectralNorm.randomUnit (inputChannels * kernelSize * kernelSize)
    do this.RegisterComponents()

    /// The current estimate σ = uᵀ W v of the kernel matrix's largest singular value: a new () tensor.
    member _.Sigma =
        use scope = torch.NewDisposeScope()
        use _ = torch.no_grad()
        u.dot(layer.weight.flatten(1L).mv(v)).MoveToOuterDisposeScope()

    override this.forward(x) =
        expect "x" [| Any; Exactly inputChannels; Any; Any |] x
        use scope = torch.NewDisposeScope()
        let weight = SpectralNorm.normalise this.training u v layer.weight
        (SafeConv.conv2d layout stride padding x weight layer.bias).MoveToOuterDisposeScope()

    interface ICountsMultiplyAdds with
        member _.MultiplyAdds(_, output) = MultiplyAdds.convolution inputChannels kernelSize output
