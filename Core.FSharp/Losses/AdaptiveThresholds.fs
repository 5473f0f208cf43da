/// The FixMatch family's adaptive pseudo-label weights, as USB (microsoft/Semi-supervised-learning,
/// semilearn/algorithms/<method>/utils.py) computes them: a weight per unlabelled image from the
/// weak view's class probabilities and a small running state. Every function is pure: it returns
/// the new state and leaves its inputs alone, so a recipe keeps the state in tensors it checkpoints.
/// The unlabelled loss these weights enter is `FixMatch.weightedLoss`.
namespace Ssl.Core.Losses

open TorchSharp
open type TorchSharp.torch
open Ssl.Core.Shape

/// FlexMatch (Zhang et al., NeurIPS 2021, "FlexMatch: Boosting semi-supervised learning with
/// curriculum pseudo labeling", Sec. 3.2-3.3): class-wise thresholds τ·M(β_c) from each class's
/// learning status β_c, the share of unlabelled images last predicted confidently as c, with the
/// convex warping M(x) = x / (2 − x) and the threshold warm-up (unused images count in the
/// normaliser). USB's FlexMatchThresholdingHook.masking: the mask reads the status from before the
/// batch; then the batch's confident predictions update the per-image selections, then the status.
module FlexMatch =
    /// No confident prediction yet: the per-image selection's initial value.
    let unselected = -1L

    /// The learning status β (C) from the per-image selections `selected` (U, int64: a class or
    /// -1), or `previous` unchanged where the largest count is all U images (USB's condition: at the
    /// start, when every image is unselected). `warmup`: the unselected count joins the maximum that
    /// normalises the counts (FlexMatch's threshold warm-up), else the largest class count alone.
    let learningStatus (warmup: bool) (previous: Tensor) (selected: Tensor) : Tensor =
        expect "previous" [| Any |] previous
        expect "selected" [| Any |] selected
        use scope = NewDisposeScope()
        let classes = previous.shape[0]
        let counts = (selected + 1L).bincount(null, minlength = classes + 1L).to_type(previous.dtype)
        let perClass = counts.narrow(0L, 1L, classes)
        let largest = if warmup then counts.max() else perClass.max()
        if counts.max().ToDouble() >= Operators.float selected.shape[0] || largest.ToDouble() = 0.0 then previous.clone().MoveToOuterDisposeScope()
        else (perClass / largest).MoveToOuterDisposeScope()

    /// Weights 1(max q ≥ τ·M(β_ĉ)) with ĉ = argmax q (FlexMatch eq. 6 with the convex M).
    /// `status`: β (C); `probs`: q (N, C) of the weak views, no gradient.
    let mask (threshold: float) (status: Tensor) (probs: Tensor) : Tensor =
        expect "probs" [| Any; Exactly status.shape[0] |] probs
        use scope = NewDisposeScope()
        let struct (confidence, predicted) = probs.max(1L)
        let beta = status.index_select(0L, predicted)
        confidence.ge(beta / (2.0 - beta) * threshold).to_type(probs.dtype).MoveToOuterDisposeScope()

    /// The selections after a batch: images whose max q ≥ τ (the fixed threshold) record their
    /// argmax at their pool position `poolIndices` (N, int64); the others keep theirs.
    let select (threshold: float) (selected: Tensor) (poolIndices: Tensor) (probs: Tensor) : Tensor =
        expect "poolIndices" [| Exactly probs.shape[0] |] poolIndices
        use scope = NewDisposeScope()
        let struct (confidence, predicted) = probs.max(1L)
        let passing = confidence.ge(threshold.ToScalar())
        let updated = selected.clone()
        updated.index_put_(predicted.masked_select(passing), poolIndices.masked_select(passing)) |> ignore
        updated.MoveToOuterDisposeScope()

    /// One batch in USB's order: the mask from `status` as it was before the batch, then the
    /// selections, then the status from them. Returns (mask (N), new status, new selections).
    let step (warmup: bool) (threshold: float) (status: Tensor) (selected: Tensor) (poolIndices: Tensor) (probs: Tensor) =
        let weights = mask threshold status probs
        let selectedNext = select threshold selected poolIndices probs
        weights, learningStatus warmup status selectedNext, selectedNext

/// FreeMatch (Wang et al., ICLR 2023, "FreeMatch: Self-adaptive thresholding for semi-supervised
/// learning"): the self-adaptive global threshold τ_t, an EMA of the mean confidence, scaled per
/// class by the EMA of the class probabilities p̃_t normalised by its maximum; and the
/// self-adaptive fairness loss. USB's FreeMatchThresholingHook.masking updates the state with the
/// batch first, then masks with the new state (use_quantile and clip_thresh off, USB's CIFAR configs).
module FreeMatch =
    /// τ_t (a scalar), p̃_t (C) and the EMA histogram of argmax predictions h̃_t (C).
    type State = { Threshold: Tensor; ClassProbabilities: Tensor; Histogram: Tensor }

    /// The initial state for C classes: 1/C everywhere, as USB.
    let initial (classes: int64) (dtype: ScalarType) : State =
        { Threshold = tensor(1.0 / Operators.float classes, dtype = dtype)
          ClassProbabilities = full([| classes |], (1.0 / Operators.float classes).ToScalar(), dtype = dtype)
          Histogram = full([| classes |], (1.0 / Operators.float classes).ToScalar(), dtype = dtype) }

    /// The state after a batch of weak-view probabilities `probs` (N, C): each part ← m·part + (1 − m)·
    /// the batch's mean max q, mean q, and argmax histogram (normalised). `momentum`: m in [0, 1].
    let update (momentum: float) (state: State) (probs: Tensor) : State =
        expect "probs" [| Any; Exactly state.ClassProbabilities.shape[0] |] probs
        Checks.nonEmpty "probs" probs
        use scope = NewDisposeScope()
        let struct (confidence, predicted) = probs.max(1L)
        let hist = predicted.bincount(null, minlength = probs.shape[1]).to_type(probs.dtype)
        let ema (old: Tensor) (batch: Tensor) = (old * momentum + batch * (1.0 - momentum)).MoveToOuterDisposeScope()
        { Threshold = ema state.Threshold (confidence.mean())
          ClassProbabilities = ema state.ClassProbabilities (probs.mean([| 0L |]))
          Histogram = ema state.Histogram (hist / hist.sum()) }

    /// Weights 1(max q ≥ τ_t · p̃_t(ĉ) / max_c p̃_t(c)) with ĉ = argmax q.
    let mask (state: State) (probs: Tensor) : Tensor =
        expect "probs" [| Any; Exactly state.ClassProbabilities.shape[0] |] probs
        use scope = NewDisposeScope()
        let struct (confidence, predicted) = probs.max(1L)
        let scale = state.ClassProbabilities / state.ClassProbabilities.max()
        confidence.ge(state.Threshold * scale.index_select(0L, predicted)).to_type(probs.dtype).MoveToOuterDisposeScope()

    /// One batch in USB's order: the state updated with the batch, then the mask from the new state.
    /// Returns (mask (N), new state).
    let step (momentum: float) (state: State) (probs: Tensor) =
        let next = update momentum state probs
        mask next probs, next

    /// The self-adaptive fairness loss L_f = −H(SumNorm(p̃_t / h̃_t), SumNorm(p̄ / h̄)) over the masked
    /// images' strong views: p̄ their mean softmax, h̄ the histogram of their argmax; a class absent
    /// from h̄ or h̃_t scales by 0 (USB's replace_inf_to_zero). Zero where no image passes.
    /// `mask`: (N) 0/1; `strongLogits`: (N, C), the gradient flows through p̄.
    let fairnessLoss (state: State) (mask: Tensor) (strongLogits: Tensor) : Tensor =
        expect "strongLogits" [| Exactly mask.shape[0]; Exactly state.ClassProbabilities.shape[0] |] strongLogits
        use scope = NewDisposeScope()
        let kept = mask.gt(0.0.ToScalar())
        if kept.sum().item<int64>() = 0L then zeros([||], dtype = strongLogits.dtype, device = strongLogits.device).MoveToOuterDisposeScope()
        else
            let logits = strongLogits.index_select(0L, kept.nonzero().squeeze(1L))
            let probs = logits.softmax(1L)
            let hist = probs.argmax(1L).bincount(null, minlength = logits.shape[1]).to_type(probs.dtype)
            let inverse (t: Tensor) = let r = t.reciprocal() in r.masked_fill(r.isinf(), 0.0.ToScalar()).detach()
            let sumNorm (t: Tensor) = t / t.sum(-1L, keepdim = true)
            let target = sumNorm (state.ClassProbabilities * inverse state.Histogram)
            let predicted = sumNorm (probs.mean([| 0L |]) * inverse (hist / hist.sum()))
            (target * (predicted + 1e-12).log()).sum().MoveToOuterDisposeScope()

/// SoftMatch (Chen et al., ICLR 2023, "SoftMatch: Addressing the quantity-quality trade-off in
/// semi-supervised learning"): a truncated Gaussian weight of each image's confidence, from the EMA
/// mean μ_t and variance σ²_t of the batch confidences, after uniform distribution alignment of the
/// weak-view probabilities. USB's order: the alignment updates its class-probability EMA then
/// aligns; the weighting updates μ_t, σ²_t with the aligned batch, then weighs with the new values.
module SoftMatch =
    /// p_model (C), the EMA of the mean weak-view probabilities (the first batch's mean at step 0),
    /// μ_t and σ²_t (scalars, initially 1/C and 1), and the steps seen (a scalar).
    type State = { ClassProbabilities: Tensor; Mean: Tensor; Variance: Tensor; Steps: Tensor }

    let initial (classes: int64) (dtype: ScalarType) : State =
        { ClassProbabilities = full([| classes |], (1.0 / Operators.float classes).ToScalar(), dtype = dtype)
          Mean = tensor(1.0 / Operators.float classes, dtype = dtype); Variance = tensor(1.0, dtype = dtype)
          Steps = tensor(0.0, dtype = dtype) }

    /// The state after a batch `probs` (N ≥ 2, C) and the batch aligned to the uniform target:
    /// q · (1/C + 1e-6) / (p_model + 1e-6), renormalised per row (USB's DistAlignEMAHook).
    let update (momentum: float) (state: State) (probs: Tensor) : State * Tensor =
        expect "probs" [| Any; Exactly state.ClassProbabilities.shape[0] |] probs
        if probs.shape[0] < 2L then invalidArg "probs" $"probs: expected at least 2 rows (an unbiased variance), found {probs.shape[0]}"
        use scope = NewDisposeScope()
        let classes = Operators.float probs.shape[1]
        let batchMean = probs.mean([| 0L |])
        let model =
            if state.Steps.ToDouble() = 0.0 then batchMean
            else state.ClassProbabilities * momentum + batchMean * (1.0 - momentum)
        let aligned = probs * (1.0 / classes + 1e-6) / (model + 1e-6)
        let aligned = aligned / aligned.sum(1L, keepdim = true)
        let struct (confidence, _) = aligned.max(1L)
        let next =
            { ClassProbabilities = model.MoveToOuterDisposeScope()
              Mean = (state.Mean * momentum + confidence.mean() * (1.0 - momentum)).MoveToOuterDisposeScope()
              Variance = (state.Variance * momentum + confidence.var() * (1.0 - momentum)).MoveToOuterDisposeScope()
              Steps = (state.Steps + 1.0).MoveToOuterDisposeScope() }
        next, aligned.MoveToOuterDisposeScope()

    /// Weights exp(−min(max q − μ_t, 0)² / (2σ²_t / n_σ²)) of the aligned probabilities (N, C):
    /// 1 at or above the mean confidence, a Gaussian tail below (SoftMatch's truncated Gaussian, n_σ = 2).
    let weights (sigmas: float) (state: State) (aligned: Tensor) : Tensor =
        expect "aligned" [| Any; Exactly state.ClassProbabilities.shape[0] |] aligned
        use scope = NewDisposeScope()
        let struct (confidence, _) = aligned.max(1L)
        let below = (confidence - state.Mean).clamp_max(0.0.ToScalar())
        (-(below * below) / (state.Variance * (2.0 / (sigmas * sigmas)))).exp().MoveToOuterDisposeScope()

    /// One batch in USB's order: alignment and μ_t, σ²_t updated with the batch, then the weights of
    /// the aligned batch from the new values. Returns (weights (N), new state).
    let step (momentum: float) (sigmas: float) (state: State) (probs: Tensor) =
        let next, aligned = update momentum state probs
        use aligned = aligned
        weights sigmas next aligned, next
