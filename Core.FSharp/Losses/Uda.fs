/// Unsupervised data augmentation's pieces (Xie, Dai, Hovy, Luong & Le, NeurIPS 2020, "Unsupervised
/// data augmentation for consistency training", Sec. 3.1-3.2 and google-research/uda): the
/// consistency loss against sharpened, confidence-masked soft targets, and training-signal annealing
/// (TSA) of the supervised loss.
module Ssl.Core.Losses.Uda

open TorchSharp
open type TorchSharp.torch
open Ssl.Core.Shape

/// How TSA's threshold η_t grows over training (UDA Sec. 3.2, Fig. 2): α_t = t/T (linear),
/// exp((t/T − 1)·5) (exp), 1 − exp(−(t/T)·5) (log); None keeps every labelled example.
type TsaSchedule =
    | NoAnnealing
    | Linear
    | Exponential
    | Logarithmic

/// η_t = α_t·(1 − 1/K) + 1/K for K classes at `progress` t/T in [0, 1] (1 for NoAnnealing): a labelled
/// example whose predicted probability of its class exceeds η_t is left out of the supervised loss.
let tsaThreshold (schedule: TsaSchedule) (progress: float) (classes: int) : float =
    if not (progress >= 0.0 && progress <= 1.0) then invalidArg "progress" $"progress: expected a value in [0, 1], found {progress}"
    let alpha =
        match schedule with
        | NoAnnealing -> nan
        | Linear -> progress
        | Exponential -> System.Math.Exp((progress - 1.0) * 5.0)
        | Logarithmic -> 1.0 - System.Math.Exp(-progress * 5.0)
    if schedule = NoAnnealing then 1.0 else alpha * (1.0 - 1.0 / Operators.float classes) + 1.0 / Operators.float classes

/// The unlabelled targets (UDA Sec. 3.2, "confidence-based masking" and "sharpening predictions"):
/// softmax(weak logits / T), no gradient, and the mask 1(max softmax(weak logits) ≥ β) of the
/// unsharpened prediction. `temperature`: T > 0 (0.4); `threshold`: β (0.8). weakLogits: (N, C).
let targets (temperature: float) (threshold: float) (weakLogits: Tensor) : Tensor * Tensor =
    Checks.positive "temperature" temperature
    expect "weakLogits" [| Any; Any |] weakLogits
    use scope = NewDisposeScope()
    use _ = no_grad ()
    let logits = weakLogits.detach()
    let struct (confidence, _) = logits.softmax(1L).max(1L)
    (logits / temperature).softmax(1L).MoveToOuterDisposeScope(), confidence.ge(threshold.ToScalar()).to_type(logits.dtype).MoveToOuterDisposeScope()

/// The consistency loss: (1/N) Σ_b w_b · (−Σ_c target_bc log softmax(strong logits)_bc), the
/// cross-entropy form of UDA's KL (the target's entropy is a constant without gradient).
/// `weights`: (N); `soft`: (N, C) rows summing to 1; `strongLogits`: (N, C).
let consistencyLoss (weights: Tensor) (soft: Tensor) (strongLogits: Tensor) : Tensor =
    expect "strongLogits" [| Any; Any |] strongLogits
    expect "soft" [| Exactly strongLogits.shape[0]; Exactly strongLogits.shape[1] |] soft
    expect "weights" [| Exactly strongLogits.shape[0] |] weights
    Checks.nonEmpty "strongLogits" strongLogits
    use scope = NewDisposeScope()
    ((-(soft.detach() * strongLogits.log_softmax(1L)).sum(1L)) * weights.detach()).mean().MoveToOuterDisposeScope()
