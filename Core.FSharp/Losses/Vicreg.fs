/// VICReg: variance-invariance-covariance regularisation (Bardes, Ponce & LeCun, ICLR 2022), its three
/// terms as the authors' main_vicreg.py computes them. Embeddings are (N, D), not normalised; the terms
/// read the batch's statistics, so N ≥ 2.
module Ssl.Core.Losses.Vicreg

open TorchSharp
open type TorchSharp.torch
open type TorchSharp.torch.nn.functional
open Ssl.Core.Shape

/// VICReg's three terms of two views' embeddings, each a scalar tensor with gradient:
/// - invariance s(Z, Z') (eq. 5): the mean over the N·D entries of (z − z')², main_vicreg's F.mse_loss;
/// - variance (eq. 1-2 with γ = 1): ½ [v(Z) + v(Z')], v(Z) = mean_j max(0, 1 − √(Var(z_j) + ε)), the
///   unbiased variance of each dimension j over the batch (main_vicreg halves each view's hinge);
/// - covariance (eq. 3-4): c(Z) + c(Z'), c(Z) = Σ_{i≠j} C(Z)²_ij / D, C(Z) the unbiased covariance
///   matrix of the centred embeddings.
/// `epsilon`: ε > 0 (paper 1e-4). `z1, z2: (N, D)` row i of each from image i, N ≥ 2.
let terms (epsilon: float) (z1: Tensor) (z2: Tensor) : Tensor * Tensor * Tensor =
    Checks.positive "epsilon" epsilon
    expect "z1" [| Any; Any |] z1
    let n, d = z1.shape[0], z1.shape[1]
    if n < 2L then invalidArg "z1" $"z1: expected at least 2 rows (the terms read batch statistics), found shape {show z1.shape}"
    expect "z2" [| Exactly n; Exactly d |] z2
    Checks.nonEmpty "z1" z1
    use scope = NewDisposeScope()
    let invariance = mse_loss(z1, z2)
    let centred (z: Tensor) = z - z.mean([| 0L |], keepdim = true)
    let hinge (z: Tensor) = relu(1.0 - (z.var(0L) + epsilon).sqrt()).mean()
    let offDiagonalSquares (z: Tensor) =
        let c = centred z
        let covariance = c.t().mm(c) / Operators.float (n - 1L)
        (covariance.square().sum() - covariance.diagonal().square().sum()) / Operators.float d
    let variance = (hinge z1 + hinge z2) / 2.0
    let covariance = offDiagonalSquares z1 + offDiagonalSquares z2
    invariance.MoveToOuterDisposeScope(), variance.MoveToOuterDisposeScope(), covariance.MoveToOuterDisposeScope()

/// ℓ = λ·invariance + μ·variance + ν·covariance (eq. 6; the paper's λ = μ = 25, ν = 1), of `terms`.
/// Weights ≥ 0; the terms are not disposed.
let weighted (invarianceWeight: float) (varianceWeight: float) (covarianceWeight: float) (invariance: Tensor, variance: Tensor, covariance: Tensor) =
    for name, w in [ "invarianceWeight", invarianceWeight; "varianceWeight", varianceWeight; "covarianceWeight", covarianceWeight ] do
        if not (w >= 0.0 && System.Double.IsFinite w) then invalidArg name $"{name}: expected a finite weight ≥ 0, found {w}"
    use scope = NewDisposeScope()
    (invariance * invarianceWeight + variance * varianceWeight + covariance * covarianceWeight).MoveToOuterDisposeScope()
