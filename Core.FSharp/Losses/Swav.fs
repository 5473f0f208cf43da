/// SwAV: swapping assignments between views (Caron, Misra, Mairal, Goyal, Bojanowski & Joulin, NeurIPS 2020, "Unsupervised
/// Learning of Visual Features by Contrasting Cluster Assignments", Sec. 3.1, eq. 1-3; the authors' main_swav.py). The
/// projections z of a batch's crops are scored against K prototypes (scores z·c_k, rows of (B, K)); the codes Q of a crop
/// are the equipartitioned soft assignment of its scores (Sinkhorn-Knopp), and each other crop's scores predict them.
/// Scores of V crops of B images are (V·B, K), crop-major (rows v·B .. v·B + B − 1 are crop v), the crops codes are
/// computed from first.
module Ssl.Core.Losses.Swav

open TorchSharp
open type TorchSharp.torch
open type TorchSharp.torch.nn.functional
// Last, so F#'s float wins over torch's dtype field.
open Microsoft.FSharp.Core.Operators
open Ssl.Core.Shape

/// The codes Q of eq. 3 by `iterations` Sinkhorn-Knopp steps at entropic regularisation ε = `epsilon` (main_swav.py's
/// distributed_sinkhorn on one process; the paper: ε = 0.05, 3 iterations): Q = exp(scores / ε)ᵀ (K, B) scaled to a total
/// of 1, then in turn every prototype's row scaled to 1/K and every sample's column to 1/B, finally Q · B, so each
/// sample's code sums to 1 and each prototype's total mass over the batch tends to B/K. The scores' maximum is subtracted
/// before exp (it cancels in the first scaling), so no entry overflows. scores: (B, K) → codes (B, K), without gradient,
/// on the scores' device and dtype. `iterations` ≥ 1.
let sinkhorn (epsilon: float) (iterations: int) (scores: Tensor) : Tensor =
    Checks.positive "epsilon" epsilon
    if iterations < 1 then invalidArg "iterations" $"iterations: expected at least 1 Sinkhorn-Knopp iteration, found {iterations}"
    expect "scores" [| Any; Any |] scores
    Checks.nonEmpty "scores" scores
    use scope = NewDisposeScope()
    use _ = no_grad ()
    let samples, prototypes = float scores.shape[0], float scores.shape[1]
    let s = scores.detach()
    let q = ((s - s.max()) / epsilon).exp_().t().contiguous()
    q.div_(q.sum()) |> ignore
    for _ in 1 .. iterations do
        q.div_(q.sum(1L, keepdim = true)).div_(Scalar.op_Implicit prototypes) |> ignore
        q.div_(q.sum(0L, keepdim = true)).div_(Scalar.op_Implicit samples) |> ignore
    (q * samples).t().contiguous().MoveToOuterDisposeScope()

/// The swapped prediction loss (eq. 1-2; main_swav.py's loop over crops_for_assign): for each crop i of the G crops that
/// have codes, the mean over every other crop v ≠ i of ℓ(z_v, q_i) = −Σ_k q_i,k log softmax(scores_v / τ)_k, averaged over
/// the batch, then the mean over the G crops. `temperature`: τ (the paper: 0.1); codes: (G, B, K), the codes of crops
/// 0 .. G − 1 (`sinkhorn`), detached here; scores: (V·B, K), V ≥ 2 crops crop-major, 1 ≤ G ≤ V. Returns a scalar.
let swappedPrediction (temperature: float) (codes: Tensor) (scores: Tensor) : Tensor =
    Checks.positive "temperature" temperature
    expect "codes" [| Any; Any; Any |] codes
    Checks.nonEmpty "codes" codes
    let assigned, n, k = codes.shape[0], codes.shape[1], codes.shape[2]
    expect "scores" [| Any; Exactly k |] scores
    let crops = scores.shape[0] / n
    if scores.shape[0] % n <> 0L || crops < 2L || crops < assigned then
        invalidArg "scores"
            $"scores: expected V·{n} rows (V >= 2 crops of the codes' {n} images, V >= the codes' {assigned} crops), found {show scores.shape}"
    use scope = NewDisposeScope()
    let targets = codes.detach().reshape(assigned, n * k)
    let logPredictions = log_softmax(scores / temperature, 1L).reshape(crops, n * k)
    // cross[i, v] = Σ_rows Σ_k q_i log p_v: every pair of (codes crop, predicting crop) at once.
    let cross = targets.matmul(logPredictions.t())
    let same = eye(assigned, crops, dtype = ScalarType.Bool, device = scores.device)
    (-(cross.masked_fill(same, Scalar.op_Implicit 0.0).sum()) / (float n * float (crops - 1L) * float assigned)).MoveToOuterDisposeScope()

/// How many prototypes are the argmax of at least one sample's code: a collapse check (1 when the scores are identical
/// and the codes uniform, up to min(B, K) when the samples spread over the prototypes). codes: (B, K).
let prototypesUsed (codes: Tensor) : int =
    expect "codes" [| Any; Any |] codes
    Checks.nonEmpty "codes" codes
    use scope = NewDisposeScope()
    use _ = no_grad ()
    let winners = codes.detach().argmax(1L)
    zeros(codes.shape[1], device = codes.device).index_fill_(0L, winners, Scalar.op_Implicit 1.0).sum().item<float32>() |> int
