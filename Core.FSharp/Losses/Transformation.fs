/// Losses on transformed images: EnAET's consistency between the predictions on an image and on
/// its transformation, and AET's regression of the transformation's parameters.
module Ssl.Core.Losses.Transformation

open TorchSharp
open type TorchSharp.torch
open Ssl.Core.Shape

/// KL(p_original ‖ p_transformed) = Σ_c p_o,c (log p_o,c - log p_t,c), averaged over the N
/// images, with p = softmax(logits): EnAET's consistency term (Wang et al. 2019, Sec. 3, the KL
/// divergence between the predictions on x and on t(x), the original's distribution first, as the
/// target). Gradients flow into both arguments; detach `originalLogits` to treat the original's
/// prediction as a fixed target.
/// `originalLogits: (N, C)`; `transformedLogits: (N, C)`; result: scalar ≥ 0, 0 when the two
/// distributions are equal.
let klDivergence (originalLogits: Tensor) (transformedLogits: Tensor) : Tensor =
    expect "originalLogits" [| Any; Any |] originalLogits
    expect "transformedLogits" [| Exactly originalLogits.shape[0]; Exactly originalLogits.shape[1] |] transformedLogits
    Checks.nonEmpty "originalLogits" originalLogits
    use scope = NewDisposeScope()
    let logOriginal = originalLogits.log_softmax(1L)
    let logTransformed = transformedLogits.log_softmax(1L)
    (logOriginal.exp() * (logOriginal - logTransformed)).sum(1L).mean().MoveToOuterDisposeScope()

/// The transformation-regression loss of AET (Zhang et al. 2019, Sec. 3.2, ℓ(t, t̂) = ½‖M(t) -
/// M(t̂)‖², used by EnAET for each transformation family): the mean squared error between the
/// predicted and the true parameter vectors, averaged over all N·P entries as AET's code
/// (nn.MSELoss) does; it is the paper's ½‖·‖² per image times 2/P.
/// `predicted: (N, P)`; `actual: (N, P)`; result: scalar ≥ 0.
let parameterRegression (predicted: Tensor) (actual: Tensor) : Tensor =
    expect "predicted" [| Any; Any |] predicted
    expect "actual" [| Exactly predicted.shape[0]; Exactly predicted.shape[1] |] actual
    Checks.nonEmpty "predicted" predicted
    use scope = NewDisposeScope()
    (predicted - actual).square().mean().MoveToOuterDisposeScope()
