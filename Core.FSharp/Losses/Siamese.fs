/// Losses of the Siamese methods without negatives: SimSiam's symmetric negative cosine with a
/// stop-gradient (Chen & He 2021) and BYOL's normalised mean squared error (Grill et al. 2020), and
/// the collapse check SimSiam's Sec. 4.1 reads. Predictions and targets are (N, D), not normalised
/// (the losses normalise them); targets are detached here, the stop-gradient of both papers.
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
