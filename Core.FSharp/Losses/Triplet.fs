/// Metric-learning losses on embeddings.
module Ssl.Core.Losses.Triplet

open TorchSharp
open type TorchSharp.torch
open type TorchSharp.torch.nn.functional
open Ssl.Core.Shape

/// The batch-hard triplet loss with a soft margin (Hermans et al. 2017, eq. 5 with the softplus
/// of Sec. 2.3 in place of the hinge; the loss S4L-Exemplar uses, Zhai et al. 2019): for each
/// anchor a, softplus(max over positives p of d(a, p) - min over negatives n of d(a, n)),
/// averaged over the N anchors. Positives share the anchor's label, the anchor itself included
/// (so an anchor with no other positive uses d(a, a) ≈ 0); negatives have another label; an
/// anchor with no negative contributes 0. d is the Euclidean distance
/// sqrt(max(‖a‖² + ‖b‖² - 2 a·b, 0) + 1e-12): the 1e-12 keeps the gradient of the square root
/// finite at zero distance (it adds at most 1e-6 to a distance).
/// `embeddings: (N, D)`; `labels: (N)` integers, the source image of each embedding; result:
/// scalar > 0, log(1 + e^(-m)) for well-separated clusters whose hardest gap is m.
let batchHardSoftMargin (embeddings: Tensor) (labels: Tensor) : Tensor =
    expect "embeddings" [| Any; Any |] embeddings
    Checks.nonEmpty "embeddings" embeddings
    expect "labels" [| Exactly embeddings.shape[0] |] labels
    if torch.is_floating_point labels then
        invalidArg "labels" $"labels: expected integer labels, found {labels.dtype}"
    use scope = NewDisposeScope()
    let squaredNorms = embeddings.square().sum(1L)
    let squaredDistances =
        (squaredNorms.unsqueeze(1L) + squaredNorms.unsqueeze(0L) - 2.0 * embeddings.mm(embeddings.t())).clamp_min(0.0)
    let distances = (squaredDistances + 1e-12).sqrt()
    let sameLabel = labels.unsqueeze(1L).eq(labels.unsqueeze(0L))
    let hardestPositive = distances.masked_fill(sameLabel.logical_not(), System.Double.NegativeInfinity).amax([| 1L |])
    let hardestNegative = distances.masked_fill(sameLabel, System.Double.PositiveInfinity).amin([| 1L |])
    softplus(hardestPositive - hardestNegative).mean().MoveToOuterDisposeScope()
