/// MoCo v3's contrastive loss (Chen, Xie & He, ICCV 2021, "An Empirical Study of Training Self-Supervised
/// Vision Transformers", Sec. 3 and Algorithm 1; the authors' moco/builder.py, MoCo.contrastive_loss): InfoNCE
/// whose negatives are the other keys of the same batch, not a queue. Queries and keys are (N, D), not
/// normalised: the loss normalises them, as builder.py does. Keys come from the momentum encoder under
/// no_grad in the authors' code; here they are also detached, so no gradient reaches them whatever the caller did.
module Ssl.Core.Losses.MocoV3

open TorchSharp
open type TorchSharp.torch
open type TorchSharp.torch.nn.functional
open Ssl.Core.Shape

let private pair (q: Tensor) (k: Tensor) =
    expect "q" [| Any; Any |] q
    expect "k" [| Exactly q.shape[0]; Exactly q.shape[1] |] k
    Checks.nonEmpty "q" q

/// The logits q̄ k̄ᵀ / τ of L2-normalised rows (norms below 1e-12 are 1e-12), k̄ detached: (N, N), the
/// positives on the diagonal.
let private logits (temperature: float) (q: Tensor) (k: Tensor) =
    normalize(q, 2.0, 1L).matmul(normalize(k.detach(), 2.0, 1L).t()) / temperature

/// ctr(q, k) of Algorithm 1: 2τ · mean over i of −log(exp(q̄ᵢ·k̄ᵢ / τ) / Σⱼ exp(q̄ᵢ·k̄ⱼ / τ)), the in-batch InfoNCE of the
/// normalised rows (Contrastive.infoNceAcross) times 2τ (builder.py: "* (2 * self.T)", which keeps the gradient's scale as
/// τ changes). `temperature`: τ > 0 (the paper: 0.2 for ViT, 1.0 for ResNet). `q: (N, D)` queries; `k: (N, D)` the keys,
/// row i the positive of query i and the other rows its negatives. Result: a scalar ≥ 0, 2τ·log N when all similarities
/// are equal. No gradient reaches `k`.
let contrastive (temperature: float) (q: Tensor) (k: Tensor) : Tensor =
    Checks.positive "temperature" temperature
    pair q k
    use scope = NewDisposeScope()
    let unit (t: Tensor) = normalize(t, 2.0, 1L)
    (Contrastive.infoNceAcross temperature (unit q) (unit (k.detach())) * (2.0 * temperature)).MoveToOuterDisposeScope()

/// The symmetrised loss of Algorithm 1: ctr(q₁, k₂) + ctr(q₂, k₁), each view's query against the
/// other view's keys. `q1, q2, k1, k2: (N, D)`; result: a scalar ≥ 0, 4τ·log N when all similarities are equal.
let symmetric (temperature: float) (q1: Tensor) (q2: Tensor) (k1: Tensor) (k2: Tensor) : Tensor =
    use scope = NewDisposeScope()
    (contrastive temperature q1 k2 + contrastive temperature q2 k1).MoveToOuterDisposeScope()

/// The pretext task's top-1, without gradient: the fraction of queries whose own key is the most
/// similar of the batch's keys (ties count as misses). `q, k: (N, D)`; result in [0, 1].
let instanceAccuracy (q: Tensor) (k: Tensor) : float =
    pair q k
    use scope = NewDisposeScope()
    use _ = no_grad ()
    let similarities = logits 1.0 q k
    let positive = similarities.diagonal()
    let others = similarities.masked_fill(eye(q.shape[0], dtype = ScalarType.Bool, device = q.device), System.Double.NegativeInfinity)
    positive.gt(others.amax([| 1L |])).to_type(ScalarType.Float64).mean().item<double>()
