/// MixMatch's pieces (Berthelot et al. 2019): MixUp, sharpening, label guessing, the supervised
/// soft-target cross-entropy, the L2 consistency loss and the ramp-up of its weight.
module Ssl.Core.Losses.MixMatch

open TorchSharp
open type TorchSharp.torch
open Ssl.Core.Shape

/// Draws `count` independent samples of Beta(α, α) as X / (X + Y) with X, Y ~ Gamma(α, 1),
/// drawn with `generator` (which must live on `device`). `alpha`: α > 0 (MixMatch: 0.75).
/// Result: `(count)`, float64, on `device`, entries in [0, 1].
let sampleBeta (alpha: float) (generator: Generator) (device: Device) (count: int64) : Tensor =
    Checks.positive "alpha" alpha
    if count < 0L then invalidArg "count" $"count: expected a number ≥ 0, found {count}"
    use scope = NewDisposeScope()
    let concentration = ones(2L, count, dtype = ScalarType.Float64, device = device) * alpha
    let gammas = _standard_gamma(concentration, generator)
    let beta = gammas[0] / (gammas[0] + gammas[1])
    beta.MoveToOuterDisposeScope()

/// MixMatch's λ' = max(λ, 1 - λ) (Berthelot et al. 2019, eq. 9), which keeps each mixed example
/// closer to its own (first) input. `lambdas`: any shape, entries in [0, 1]; result: same shape,
/// entries in [0.5, 1].
let mixMatchLambda (lambdas: Tensor) : Tensor =
    use scope = NewDisposeScope()
    maximum(lambdas, 1.0 - lambdas).MoveToOuterDisposeScope()

/// MixUp with the mixing weights and the partner of each example given (Zhang et al. 2018;
/// Berthelot et al. 2019, eq. 10-11): row i becomes λ_i x_i + (1 - λ_i) x_{π(i)}, and the same
/// for its target. Pure: `mixUp` and `mixMatchMixUp` draw λ and π and call this.
/// `lambdas: (N)` in [0, 1] (any floating dtype); `permutation: (N)` int64, the partner index π(i)
/// of each row; `inputs: (N, …)`; `targets: (N, C)` class distributions (one-hot or soft);
/// result: (mixed inputs `(N, …)`, mixed targets `(N, C)`), in the inputs' and targets' dtypes.
let mixUpWith (lambdas: Tensor) (permutation: Tensor) (inputs: Tensor) (targets: Tensor) : Tensor * Tensor =
    if inputs.dim () < 1L then invalidArg "inputs" $"inputs: expected shape (N, …), found {show inputs.shape}"
    let n = inputs.shape[0]
    expect "lambdas" [| Exactly n |] lambdas
    expect "permutation" [| Exactly n |] permutation
    expect "targets" [| Exactly n; Any |] targets
    if permutation.dtype <> ScalarType.Int64 then
        invalidArg "permutation" $"permutation: expected int64 indices, found {permutation.dtype}"
    use scope = NewDisposeScope()
    let mix (t: Tensor) =
        let weight = lambdas.to_type(t.dtype).reshape(Array.append [| n |] (Array.create (Operators.int (t.dim ()) - 1) 1L))
        weight * t + (1.0 - weight) * t.index_select(0L, permutation)
    let mixedInputs = mix inputs
    let mixedTargets = mix targets
    mixedInputs.MoveToOuterDisposeScope(), mixedTargets.MoveToOuterDisposeScope()

/// MixUp as Zhang et al. 2018 define it: one λ ~ Beta(α, α) for the batch, each row mixed with
/// the row a random permutation assigns it. Draws with `generator`, which must live on the
/// inputs' device. `alpha`: α > 0. `inputs: (N, …)`, `targets: (N, C)`; result: as `mixUpWith`.
let mixUp (alpha: float) (generator: Generator) (inputs: Tensor) (targets: Tensor) : Tensor * Tensor =
    if inputs.dim () < 1L then invalidArg "inputs" $"inputs: expected shape (N, …), found {show inputs.shape}"
    let n = inputs.shape[0]
    use scope = NewDisposeScope()
    let lambdas = (sampleBeta alpha generator inputs.device 1L).expand(n)
    let permutation = Ssl.Core.Transforms.Draw.permutation generator n inputs.device
    let mixedInputs, mixedTargets = mixUpWith lambdas permutation inputs targets
    mixedInputs.MoveToOuterDisposeScope(), mixedTargets.MoveToOuterDisposeScope()

/// MixMatch's MixUp (Berthelot et al. 2019, eq. 8-11): for each row its own λ ~ Beta(α, α) (as
/// the authors' code draws it), taken as λ' = max(λ, 1 - λ), and a partner from a random
/// permutation of the batch (MixMatch mixes the concatenated labelled and unlabelled batch W
/// with a shuffle of itself). Draws with `generator`, which must live on the inputs' device.
/// `alpha`: α > 0 (paper: 0.75). `inputs: (N, …)`, `targets: (N, C)`; result: as `mixUpWith`.
let mixMatchMixUp (alpha: float) (generator: Generator) (inputs: Tensor) (targets: Tensor) : Tensor * Tensor =
    if inputs.dim () < 1L then invalidArg "inputs" $"inputs: expected shape (N, …), found {show inputs.shape}"
    let n = inputs.shape[0]
    use scope = NewDisposeScope()
    let lambdas = mixMatchLambda (Ssl.Core.Transforms.Draw.rows generator 0L n (sampleBeta alpha generator inputs.device))
    let permutation = Ssl.Core.Transforms.Draw.permutation generator n inputs.device
    let mixedInputs, mixedTargets = mixUpWith lambdas permutation inputs targets
    mixedInputs.MoveToOuterDisposeScope(), mixedTargets.MoveToOuterDisposeScope()

/// Sharpening (Berthelot et al. 2019, eq. 7): p_i^(1/T) / Σ_j p_j^(1/T), computed as
/// softmax(log p / T) so that small T neither underflows nor divides by zero. T = 1 is the
/// identity; T → 0 tends to the one-hot argmax; the argmax is kept.
/// `temperature`: T > 0 (paper: 0.5). `probabilities: (N, C)` rows summing to 1; result: `(N, C)`.
let sharpen (temperature: float) (probabilities: Tensor) : Tensor =
    Checks.positive "temperature" temperature
    expect "probabilities" [| Any; Any |] probabilities
    use scope = NewDisposeScope()
    (probabilities.log() / temperature).softmax(1L).MoveToOuterDisposeScope()

/// The mean over K augmentations of softmax(logits): `logits: (K, N, C)`, non-empty; result (N, C).
let private meanPrediction (logits: Tensor) =
    expect "logits" [| Any; Any; Any |] logits
    Checks.nonEmpty "logits" logits
    logits.softmax(2L).mean([| 0L |])

/// MixMatch's label guess (Berthelot et al. 2019, eq. 6-7): the mean over K augmentations of the
/// predicted class distributions softmax(logits), then sharpened. Detached: the guess is a
/// target, and the paper's code stops its gradient.
/// `temperature`: T > 0 (paper: 0.5). `logits: (K, N, C)` the model's logits on K augmentations
/// of the same N unlabelled images; result: `(N, C)`, rows summing to 1, no gradient.
let guessLabels (temperature: float) (logits: Tensor) : Tensor =
    Checks.positive "temperature" temperature
    use scope = NewDisposeScope()
    use _ = no_grad ()
    (sharpen temperature (meanPrediction logits)).detach().MoveToOuterDisposeScope()

/// Distribution alignment (Berthelot et al. 2020, ReMixMatch, Sec. 3.2): q̃ = Normalize(q · p(y) / p̃(y)),
/// the predicted class distributions q scaled by the ratio of the labelled data's class marginal
/// p(y) to the running mean p̃(y) of the model's predictions on unlabelled data, each row then
/// renormalised; a class the model over-predicts is turned down, one it has stopped predicting is
/// turned up. `probabilities: (N, C)` rows summing to 1; `target: (C)` p(y) and `running: (C)`
/// p̃(y), both positive; result `(N, C)`, rows summing to 1, no gradient.
let alignDistribution (target: Tensor) (running: Tensor) (probabilities: Tensor) : Tensor =
    expect "probabilities" [| Any; Any |] probabilities
    expect "target" [| Exactly probabilities.shape[1] |] target
    expect "running" [| Exactly probabilities.shape[1] |] running
    use scope = NewDisposeScope()
    use _ = no_grad ()
    let scaled = probabilities * (target / running.clamp_min((1e-12).ToScalar())).unsqueeze(0L)
    (scaled / scaled.sum(1L, keepdim = true)).detach().MoveToOuterDisposeScope()

/// MixMatch's label guess with distribution alignment before sharpening (ReMixMatch's order: align
/// the prediction, then sharpen): sharpen(alignDistribution(mean_k softmax(logits_k))). Updates
/// `running` in place first, p̃ ← m·p̃ + (1 − m)·mean over the batch of the (unaligned) predictions
/// (ReMixMatch keeps the mean over the last 128 batches; an exponential moving average with
/// m = 1 − 1/128 has that window's time constant). `momentum`: m in [0, 1]; `target`, `running`: (C);
/// `logits: (K, N, C)`; result `(N, C)`, no gradient.
let guessLabelsAligned (temperature: float) (momentum: float) (target: Tensor) (running: Tensor) (logits: Tensor) : Tensor =
    Checks.positive "temperature" temperature
    if not (momentum >= 0.0 && momentum <= 1.0) then
        invalidArg "momentum" $"momentum: expected a value in [0, 1], found {momentum}"
    use scope = NewDisposeScope()
    use _ = no_grad ()
    let averaged = meanPrediction logits
    running.mul_(momentum.ToScalar()).add_(averaged.mean([| 0L |]).to_type(running.dtype), alpha = (1.0 - momentum).ToScalar()) |> ignore
    (sharpen temperature (alignDistribution target running averaged)).detach().MoveToOuterDisposeScope()

/// Cross-entropy against soft targets (Berthelot et al. 2019, eq. 3, the supervised loss L_X on
/// mixed labelled examples): mean over rows of -Σ_c target_c log softmax(logits)_c.
/// `logits: (N, C)`; `targets: (N, C)` class distributions; result: scalar ≥ 0.
let softCrossEntropy (logits: Tensor) (targets: Tensor) : Tensor =
    expect "logits" [| Any; Any |] logits
    expect "targets" [| Exactly logits.shape[0]; Exactly logits.shape[1] |] targets
    Checks.nonEmpty "logits" logits
    use scope = NewDisposeScope()
    (-(targets * logits.log_softmax(1L)).sum(1L)).mean().MoveToOuterDisposeScope()

/// MixMatch's consistency loss (Berthelot et al. 2019, eq. 4, L_U): the squared L2 distance
/// between softmax(logits) and the guessed distribution, divided by the number of classes L as in
/// the paper (and its code, a mean over all N·C entries): Σ_rows ‖target - p‖² / (N C).
/// `logits: (N, C)`; `targets: (N, C)`; result: scalar in [0, 2/C].
let consistencyL2 (logits: Tensor) (targets: Tensor) : Tensor =
    expect "logits" [| Any; Any |] logits
    expect "targets" [| Exactly logits.shape[0]; Exactly logits.shape[1] |] targets
    Checks.nonEmpty "logits" logits
    use scope = NewDisposeScope()
    (logits.softmax(1L) - targets).square().mean().MoveToOuterDisposeScope()

/// The consistency weight at a training step: `maxWeight` · clamp(step / rampSteps, 0, 1), a
/// linear ramp-up (Berthelot et al. 2019, Sec. 4: λ_U ramps up linearly over the first 16,000
/// steps). `rampSteps`: > 0; `maxWeight`: λ_U (paper: 100 for CIFAR-10); `step`: ≥ 0.
let linearRampUp (rampSteps: int64) (maxWeight: float) (step: int64) : float =
    if rampSteps < 1L then invalidArg "rampSteps" $"rampSteps: expected at least 1, found {rampSteps}"
    if step < 0L then invalidArg "step" $"step: expected a number ≥ 0, found {step}"
    maxWeight * Operators.min 1.0 (Operators.float step / Operators.float rampSteps)
