/// FixMatch's unlabelled loss (Sohn et al. 2020, "FixMatch: Simplifying semi-supervised learning with
/// consistency and confidence", Sec. 2.2, eq. 2-4): pseudo-labels from the weakly augmented view,
/// kept only where the model is confident, as cross-entropy targets for the strongly augmented view.
module Ssl.Core.Losses.FixMatch

open TorchSharp
open type TorchSharp.torch
open Ssl.Core.Shape

/// The unlabelled loss ℓ_u and what the step logs about it.
type PseudoLabelLoss =
    { /// ℓ_u, a scalar; gradients reach the strong view's logits only.
      Loss: Tensor
      /// 1(max q_b ≥ τ), (μB) bool.
      Mask: Tensor
      /// The share of the μB images whose max q_b ≥ τ: a scalar in [0, 1], no gradient.
      MaskRate: Tensor
      /// q̂_b = argmax q_b, (μB) int64, no gradient.
      PseudoLabels: Tensor }

/// The unlabelled loss of the FixMatch family with a weight per image: (1/μB) Σ_b w_b H(q̂_b,
/// p_m(y | A(u_b))). FixMatch's w_b is 1(max q_b ≥ τ); FlexMatch, FreeMatch and SoftMatch compute
/// theirs in AdaptiveThresholds.fs. `weights`: (μB), no gradient; `pseudoLabels`: q̂ (μB) int64;
/// `strongLogits`: (μB, C).
let weightedLoss (weights: Tensor) (pseudoLabels: Tensor) (strongLogits: Tensor) : Tensor =
    expect "strongLogits" [| Any; Any |] strongLogits
    expect "weights" [| Exactly strongLogits.shape[0] |] weights
    expect "pseudoLabels" [| Exactly strongLogits.shape[0] |] pseudoLabels
    use scope = NewDisposeScope()
    let perImage = nn.functional.cross_entropy(strongLogits, pseudoLabels, reduction = nn.Reduction.None)
    (perImage * weights.detach()).mean().MoveToOuterDisposeScope()

/// FixMatch eq. 4: ℓ_u = (1/μB) Σ_b 1(max q_b ≥ τ) H(q̂_b, p_m(y | A(u_b))), with q_b = p_m(y | α(u_b))
/// the softmax of the weak view's logits under stop-gradient (eq. 3) and q̂_b = argmax q_b a hard
/// pseudo-label. The mean runs over all μB images, the masked ones counting as 0, as the paper and
/// its code (google-research/fixmatch, fixmatch.py) do. `threshold`: τ ≥ 0 (the paper: 0.95; τ > 1
/// masks everything out: ℓ_u = 0 with a zero gradient). `weakLogits`, `strongLogits`: (μB, C), the
/// model's logits on the weak and strong augmentations of the same images, μB ≥ 1.
let pseudoLabelLoss (threshold: float) (weakLogits: Tensor) (strongLogits: Tensor) : PseudoLabelLoss =
    if not (threshold >= 0.0 && System.Double.IsFinite threshold) then
        invalidArg "threshold" $"threshold: expected a finite confidence τ >= 0, found {threshold}"
    expect "weakLogits" [| Any; Any |] weakLogits
    Checks.nonEmpty "weakLogits" weakLogits
    expect "strongLogits" [| Exactly weakLogits.shape[0]; Exactly weakLogits.shape[1] |] strongLogits
    use scope = NewDisposeScope()
    let struct (confidence, pseudoLabels) =
        use _ = no_grad()
        weakLogits.detach().softmax(1L).max(1L)
    let passing = confidence.ge(threshold.ToScalar())
    let mask = passing.to_type(strongLogits.dtype)
    let loss = weightedLoss mask pseudoLabels strongLogits
    { Loss = loss.MoveToOuterDisposeScope(); Mask = passing.MoveToOuterDisposeScope(); MaskRate = mask.mean().MoveToOuterDisposeScope()
      PseudoLabels = pseudoLabels.MoveToOuterDisposeScope() }
