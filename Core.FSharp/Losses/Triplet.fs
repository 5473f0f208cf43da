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

/// The triplet loss with semi-hard negatives (Schroff, Kalenichenko & Philbin 2015, FaceNet: the
/// hinge triplet loss of Sec. 3 with the semi-hard negatives of Sec. 3.2; the form of TensorFlow's `triplet_semihard_loss`, which the exemplar code of
/// Kolesnikov, Zhai & Beyer 2019, "Revisiting self-supervised visual representation learning",
/// uses with margin 0.5). d is the squared Euclidean distance max(‖a‖² + ‖b‖² - 2 a·b, 0). For
/// every anchor a and every positive p ≠ a (same label): the negative n is the closest one farther
/// than p (d(a, n) > d(a, p), "semi-hard"); if no negative is farther, the farthest negative. The
/// pair's loss is max(d(a, p) - d(a, n) + margin, 0); the result is the mean over all such pairs.
/// FaceNet (Sec. 3.2) picks semi-hard rather than the hardest negatives because the hardest ones
/// "can result in a collapsed model (i.e. f(x) = 0)". A pair whose anchor has no negative
/// contributes 0; with no positive pair at all the loss is 0. Cost O(N² log N): each anchor's
/// negatives are sorted once and searched for every positive.
/// `embeddings: (N, D)`; `labels: (N)` integers; `margin` ≥ 0; result: scalar ≥ 0, 0 for clusters
/// whose every positive is closer than every negative by more than the margin.
let semiHard (margin: float) (embeddings: Tensor) (labels: Tensor) : Tensor =
    expect "embeddings" [| Any; Any |] embeddings
    Checks.nonEmpty "embeddings" embeddings
    expect "labels" [| Exactly embeddings.shape[0] |] labels
    if torch.is_floating_point labels then
        invalidArg "labels" $"labels: expected integer labels, found {labels.dtype}"
    if not (margin >= 0.0) then invalidArg "margin" $"margin: expected a number >= 0, found {margin}"
    use scope = NewDisposeScope()
    let n = embeddings.shape[0]
    let squaredNorms = embeddings.square().sum(1L)
    let distances =
        (squaredNorms.unsqueeze(1L) + squaredNorms.unsqueeze(0L) - 2.0 * embeddings.mm(embeddings.t())).clamp_min(0.0)
    let sameLabel = labels.unsqueeze(1L).eq(labels.unsqueeze(0L))
    let negative = sameLabel.logical_not()
    let positivePair = sameLabel.logical_and(torch.eye(n, dtype = ScalarType.Bool, device = embeddings.device).logical_not())
    // Each anchor's negative distances in ascending order (+inf past its last negative); for every
    // (anchor, positive) pair, the index of the first one farther than the positive.
    let struct (sortedNegatives, _) = distances.masked_fill(negative.logical_not(), System.Double.PositiveInfinity).sort(1L)
    let negatives = negative.sum(1L, keepdim = true)
    let firstFarther = torch.searchsorted(sortedNegatives.detach(), distances.detach(), right = true)
    let semiHardNegative = sortedNegatives.gather(1L, firstFarther.clamp_max((n - 1L).ToScalar()))
    let farthestNegative = sortedNegatives.gather(1L, (negatives - 1L).clamp_min((0L).ToScalar()))
    let counted = positivePair.logical_and(negatives.gt((0L).ToScalar()))
    let chosen =
        torch.where(firstFarther.lt(negatives), semiHardNegative, farthestNegative.expand(n, n)).masked_fill(counted.logical_not(), 0.0)
    let pairLoss = (distances - chosen + margin).clamp_min(0.0).masked_fill(counted.logical_not(), 0.0)
    let pairs = positivePair.sum().to_type(embeddings.dtype).clamp_min(1.0)
    (pairLoss.sum() / pairs).MoveToOuterDisposeScope()

/// A triplet loss on L2-normalised embeddings. `BatchHard`: S4L's (google-research/s4l
/// semi_supervised/exemplar.py; batchHardSoftMargin). `SemiHard`: Kolesnikov, Zhai & Beyer 2019's
/// (google/revisiting-self-supervised self_supervision/exemplar.py, margin 0.5; semiHard).
type Form =
    | BatchHard
    | SemiHard

/// The triplet loss `form` names on `embeddings` (N, D) whose rows with equal `labels` (N) are
/// positives; `margin` is the semi-hard loss's (batch-hard has a soft margin).
let ofForm (form: Form) (margin: float) (embeddings: Tensor) (labels: Tensor) : Tensor =
    match form with
    | BatchHard -> batchHardSoftMargin embeddings labels
    | SemiHard -> semiHard margin embeddings labels

/// The fraction of rows whose nearest other row (Euclidean) has the same label: how often a copy
/// of an image finds another copy of it first (Exemplar's retrieval figure). Not a loss: no
/// gradient. `embeddings: (N, D)`, N ≥ 2; `labels: (N)` integers; result in [0, 1].
let nearestSameLabel (embeddings: Tensor) (labels: Tensor) : float =
    expect "embeddings" [| Any; Any |] embeddings
    expect "labels" [| Exactly embeddings.shape[0] |] labels
    if embeddings.shape[0] < 2L then invalidArg "embeddings" $"embeddings: expected at least 2 rows, found {embeddings.shape[0]}"
    use scope = NewDisposeScope()
    use _ = no_grad ()
    let self = eye(embeddings.shape[0], dtype = ScalarType.Bool, device = embeddings.device)
    let nearest = cdist(embeddings, embeddings).masked_fill(self, System.Double.PositiveInfinity).argmin(1L)
    System.Convert.ToDouble(labels.index_select(0L, nearest).eq(labels).to_type(ScalarType.Float32).mean().item<float32>())
