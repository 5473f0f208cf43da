/// Losses of the Siamese methods without negatives: SimSiam's symmetric negative cosine with a
/// stop-gradient (Chen & He 2021), BYOL's normalised mean squared error (Grill et al. 2020), the
/// collapse check SimSiam's Sec. 4.1 reads, and Barlow Twins' cross-correlation loss (Zbontar et
/// al. 2021). Predictions and targets are (N, D), not normalised (the losses normalise them); in
/// SimSiam and BYOL targets are detached here, the stop-gradient of both papers.
module Ssl.Core.Losses.Siamese

open TorchSharp
open type TorchSharp.torch
open type TorchSharp.torch.nn.functional
open Ssl.Core.Shape

let private pair (p: Tensor) (z: Tensor) =
    expect "p" [| Any; Any |] p
    expect "z" [| Exactly p.shape[0]; Exactly p.shape[1] |] z
    Checks.nonEmpty "p" p

/// D(p, z) = -mean over rows of (p / ‖p‖₂)·(stopgrad(z) / ‖z‖₂) (SimSiam eq. 1 with eq. 2's
/// stop-gradient; norms below 1e-12 are 1e-12). `p, z: (N, D)`; result: scalar in [-1, 1], -1 when
/// every p points along its z. No gradient reaches `z`.
let negativeCosine (p: Tensor) (z: Tensor) : Tensor =
    pair p z
    use scope = NewDisposeScope()
    let similarity = (normalize(p, 2.0, 1L) * normalize(z.detach(), 2.0, 1L)).sum(1L)
    (-similarity.mean()).MoveToOuterDisposeScope()

/// SimSiam's loss (Chen & He 2021, eq. 2 and Algorithm 1): ½ D(p1, z2) + ½ D(p2, z1), each view's
/// prediction against the other view's projection. `p1, p2, z1, z2: (N, D)`; result in [-1, 1].
let simSiam (p1: Tensor) (p2: Tensor) (z1: Tensor) (z2: Tensor) : Tensor =
    use scope = NewDisposeScope()
    ((negativeCosine p1 z2 + negativeCosine p2 z1) * 0.5).MoveToOuterDisposeScope()

/// BYOL's loss for one direction (Grill et al. 2020, eq. 2): mean over rows of
/// ‖p/‖p‖ − stopgrad(z)/‖z‖‖² = 2 − 2·cos(p, z). `p, z: (N, D)`; result: scalar in [0, 4].
let normalisedSquaredError (p: Tensor) (z: Tensor) : Tensor =
    pair p z
    use scope = NewDisposeScope()
    (normalize(p, 2.0, 1L) - normalize(z.detach(), 2.0, 1L)).square().sum(1L).mean().MoveToOuterDisposeScope()

/// SimSiam's collapse check (Sec. 4.1, Fig. 2 middle): the standard deviation over the batch of
/// the L2-normalised outputs, averaged over the D dimensions, without gradient. About 1/√D for
/// outputs spread over the sphere; 0 when every row is the same vector (collapse).
/// `z: (N, D)`, N ≥ 2; result in [0, 1].
let outputStd (z: Tensor) : float =
    expect "z" [| Any; Any |] z
    if z.shape[0] < 2L then invalidArg "z" $"z: expected at least 2 rows, found {z.shape[0]}"
    use scope = NewDisposeScope()
    use _ = no_grad ()
    normalize(z, 2.0, 1L).std(0L, true, false).mean().to_type(ScalarType.Float64).item<double>()

/// Each column of `z` (N, D) standardised over the batch: (z − mean) / √(var + 1e-5), the biased
/// variance — the batch norm without affine parameters that Barlow Twins' code applies (its
/// `self.bn`), so C below is the batch's cross-correlation.
let private standardised (z: Tensor) =
    let centred = z - z.mean([| 0L |], keepdim = true)
    centred / (centred.square().mean([| 0L |], keepdim = true) + 1e-5).sqrt()

/// Barlow Twins' cross-correlation matrix (Zbontar et al. 2021, eq. 2): C_ij = Σ_b z̄¹_bi z̄²_bj / N
/// of the two views' embeddings standardised per dimension over the batch. `z1, z2: (N, D)`, N ≥ 2;
/// result (D, D), entries in [-1, 1].
let crossCorrelation (z1: Tensor) (z2: Tensor) : Tensor =
    pair z1 z2
    if z1.shape[0] < 2L then invalidArg "z1" $"z1: expected at least 2 rows to standardise over, found {z1.shape[0]}"
    use scope = NewDisposeScope()
    ((standardised z1).t().matmul(standardised z2) / Operators.float z1.shape[0]).MoveToOuterDisposeScope()

/// Barlow Twins' loss (eq. 1) of a cross-correlation matrix `c` (D, D) already computed (a step that
/// also logs C computes it once): Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij².
let barlowTwinsOf (lambda: float) (c: Tensor) : Tensor =
    if not (lambda >= 0.0) then invalidArg "lambda" $"lambda: expected a value ≥ 0, found {lambda}"
    use scope = NewDisposeScope()
    let diagonal = c.diagonal()
    let onDiagonal = (1.0 - diagonal).square().sum()
    let offDiagonal = c.square().sum() - diagonal.square().sum()
    (onDiagonal + offDiagonal * lambda).MoveToOuterDisposeScope()

/// The health figures of a cross-correlation matrix `c` (D, D): the mean of its diagonal
/// (invariance, → 1) and the root mean square of its off-diagonal (redundancy, → 0). Read without
/// its graph; D = 1 has no off-diagonal (0).
let correlationFigures (c: Tensor) : float * float =
    use scope = NewDisposeScope()
    let cross = c.detach()
    let d = Operators.float cross.shape[0]
    let diagonal = cross.diagonal()
    let offDiagonal = (cross.square().sum() - diagonal.square().sum()) / (d * (d - 1.0) |> Operators.max 1.0)
    Operators.float (diagonal.mean().item<float32>()), Operators.float (offDiagonal.sqrt().item<float32>())

/// Barlow Twins' loss (Zbontar et al. 2021, eq. 1): L = Σ_i (1 − C_ii)² + λ Σ_i Σ_{j≠i} C_ij²,
/// driving the cross-correlation of the two views to the identity: invariance on the diagonal,
/// redundancy reduction off it. Gradients reach both views (no stop-gradient in this method).
/// `lambda` ≥ 0 (paper: 5e-3 at D = 8,192, batch 2,048); result ≥ 0, 0 at C = I.
let barlowTwins (lambda: float) (z1: Tensor) (z2: Tensor) : Tensor =
    use scope = NewDisposeScope()
    (barlowTwinsOf lambda (crossCorrelation z1 z2)).MoveToOuterDisposeScope()
