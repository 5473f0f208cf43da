/// Contrastive losses: noise-contrastive estimation with a memory bank and InfoNCE in its
/// dictionary (MoCo) and in-batch (SimCLR NT-Xent) forms.
///
/// Similarities are dot products. The InfoNCE losses expect L2-normalised embeddings, so that a
/// dot product is a cosine similarity, and do not normalise themselves: as in MoCo (He et al.
/// 2020, Algorithm 1), normalisation belongs to the model's output, where the memory bank or the
/// queue stores the same normalised vectors. `normalize` does it.
module Ssl.Core.Losses.Contrastive

open TorchSharp
open type TorchSharp.torch
open type TorchSharp.torch.nn.functional
open Ssl.Core.Shape

/// Scales each row to unit Euclidean norm (rows of norm below 1e-12 are divided by 1e-12).
/// `x: (N, D)`; result: `(N, D)`.
let normalize (x: Tensor) : Tensor =
    expect "x" [| Any; Any |] x
    torch.nn.functional.normalize(x, 2.0, 1L)

/// Noise-contrastive estimation as used for instance discrimination with a memory bank (Wu et al.
/// 2018, eq. 5-7; Gutmann & Hyvärinen 2010): each anchor's positive and each of its k noise
/// samples is classified as data or noise with
/// h(i, v) = P(i|v) / (P(i|v) + k Pn(i)), P(i|v) = exp(v·f_i / τ) / Z, and the loss is
/// -mean over anchors of [log h(positive) + Σ over the k noise samples of log(1 - h(noise))].
/// k is the number of columns of `noise`. Computed in log space with softplus, so large
/// similarities over a small τ do not overflow.
/// `temperature`: τ > 0 (Wu et al. use 0.07). `normaliser`: Z > 0, a constant (see
/// `estimateNormaliser`). `noiseProbability`: Pn(i) in (0, 1], 1/n for a uniform draw from a
/// memory bank of n entries.
/// `positive: (N)`, the similarities v·f of each anchor with its own entry;
/// `noise: (N, k)`, the similarities with k entries drawn from Pn; result: scalar.
let nce (temperature: float) (normaliser: float) (noiseProbability: float) (positive: Tensor) (noise: Tensor) : Tensor =
    Checks.positive "temperature" temperature
    Checks.positive "normaliser" normaliser
    Checks.probability "noiseProbability" noiseProbability
    expect "positive" [| Any |] positive
    expect "noise" [| Exactly positive.shape[0]; Any |] noise
    Checks.nonEmpty "positive" positive
    Checks.nonEmpty "noise" noise
    use scope = NewDisposeScope()
    let logKNoise = Operators.log (Operators.float noise.shape[1] * noiseProbability)
    let logModel (s: Tensor) = s / temperature - Operators.log normaliser
    // log h = -softplus(log(k Pn) - log P);  log(1 - h) = -softplus(log P - log(k Pn))
    let logDataPositive = -softplus(logKNoise - logModel positive)
    let logNoiseNoise = -softplus(logModel noise - logKNoise)
    let loss = -(logDataPositive + logNoiseNoise.sum(1L)).mean()
    loss.MoveToOuterDisposeScope()

/// Estimates NCE's normalising constant as Wu et al. 2018 do (Sec. 3.2): Z ≈ n · mean of
/// exp(s / τ) over a sample of similarities s (they compute it once, on the first batch, and keep
/// it fixed). `bankSize`: n, the number of memory-bank entries. `temperature`: τ > 0.
/// `similarities`: any shape, at least one element. Result: Z as a number (no gradient).
let estimateNormaliser (bankSize: int64) (temperature: float) (similarities: Tensor) : float =
    if bankSize < 1L then invalidArg "bankSize" $"bankSize: expected at least 1, found {bankSize}"
    Checks.positive "temperature" temperature
    Checks.nonEmpty "similarities" similarities
    use scope = NewDisposeScope()
    use _ = no_grad ()
    let meanExp = (similarities.to_type(ScalarType.Float64) / temperature).exp().mean()
    Operators.float bankSize * meanExp.item<float>()

/// InfoNCE with a dictionary of negatives (van den Oord et al. 2018, eq. 4, in MoCo's form: He et
/// al. 2020, eq. 1): logits = [q·k₊, q·queue₁, …, q·queue_K] / τ, cross-entropy with the positive
/// at index 0, averaged over the N queries. Expects L2-normalised rows (see the module note).
/// `temperature`: τ > 0 (MoCo: 0.07). `q: (N, D)` queries; `kPos: (N, D)` the positive key of
/// each query; `queue: (K, D)` negative keys shared by all queries (K ≥ 0); result: scalar,
/// ≥ 0, log(K + 1) when all similarities are equal.
let infoNce (temperature: float) (q: Tensor) (kPos: Tensor) (queue: Tensor) : Tensor =
    Checks.positive "temperature" temperature
    expect "q" [| Any; Any |] q
    let n, d = q.shape[0], q.shape[1]
    expect "kPos" [| Exactly n; Exactly d |] kPos
    expect "queue" [| Any; Exactly d |] queue
    Checks.nonEmpty "q" q
    use scope = NewDisposeScope()
    let positive = (q * kPos).sum(1L, keepdim = true)
    let negatives = q.mm(queue.t())
    let logits = cat([| positive; negatives |], 1L) / temperature
    let target = zeros(n, dtype = ScalarType.Int64, device = q.device)
    let loss = cross_entropy(logits, target)
    loss.MoveToOuterDisposeScope()

/// InfoNCE over a batch of two views, in SimCLR's NT-Xent form (Chen et al. 2020, eq. 1; van den
/// Oord et al. 2018, eq. 4): the 2N embeddings are pooled; each one's positive is the other view
/// of its image and its negatives are the other 2N - 2 embeddings (both views of every other
/// image), so each row is a (2N - 1)-way classification; the loss averages all 2N rows.
/// Expects L2-normalised rows (see the module note).
/// `temperature`: τ > 0 (SimCLR: 0.5 for CIFAR-10). `view1: (N, D)`, `view2: (N, D)`, row i of
/// each from image i, N ≥ 2; result: scalar, ≥ 0, log(2N - 1) when all similarities are equal.
let infoNceInBatch (temperature: float) (view1: Tensor) (view2: Tensor) : Tensor =
    Checks.positive "temperature" temperature
    expect "view1" [| Any; Any |] view1
    let n, d = view1.shape[0], view1.shape[1]
    if n < 2L then invalidArg "view1" $"view1: expected at least 2 rows (negatives come from the other images), found shape {show view1.shape}"
    expect "view2" [| Exactly n; Exactly d |] view2
    use scope = NewDisposeScope()
    let z = cat([| view1; view2 |], 0L)
    let self = eye(2L * n, dtype = ScalarType.Bool, device = z.device)
    let logits = (z.mm(z.t()) / temperature).masked_fill(self, System.Double.NegativeInfinity)
    let index = arange(n, dtype = ScalarType.Int64, device = z.device)
    let target = cat([| index + n; index |], 0L)
    let loss = cross_entropy(logits, target)
    loss.MoveToOuterDisposeScope()

/// In-batch InfoNCE from one set of rows to another: row i of `anchors` must pick row i of `candidates` among all N
/// (logits = anchors · candidatesᵀ / τ, cross-entropy with targets 0..N−1, averaged over rows). MoCo v3's ctr (Chen, Xie &
/// He 2021, Algorithm 1, before its 2τ factor) and NNCLR's loss with the neighbours as anchors (Dwibedi et al. 2021, eq. 2;
/// solo-learn's nnclr_loss_func). Expects L2-normalised rows (see the module note).
/// `temperature`: τ > 0. `anchors: (N, D)`, `candidates: (N, D)`, N ≥ 1; result: scalar ≥ 0, log N when all similarities
/// are equal.
let infoNceAcross (temperature: float) (anchors: Tensor) (candidates: Tensor) : Tensor =
    Checks.positive "temperature" temperature
    expect "anchors" [| Any; Any |] anchors
    expect "candidates" [| Exactly anchors.shape[0]; Exactly anchors.shape[1] |] candidates
    Checks.nonEmpty "anchors" anchors
    use scope = NewDisposeScope()
    let target = arange(anchors.shape[0], dtype = ScalarType.Int64, device = anchors.device)
    cross_entropy(anchors.mm(candidates.t()) / temperature, target).MoveToOuterDisposeScope()
