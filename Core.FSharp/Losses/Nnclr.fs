/// NNCLR: nearest-neighbour contrastive learning (Dwibedi, Aytar, Tompson, Sermanet & Zisserman, ICCV 2021). The positive of
/// a view is the nearest neighbour of its projection in a support set of past projections, not the projection itself.
module Ssl.Core.Losses.Nnclr

open TorchSharp
open type TorchSharp.torch
open Ssl.Core.Shape

/// NN(z, Q) of eq. 2: for each row of `z`, the row of the support set Q most similar by dot product (cosine for unit rows,
/// as solo-learn's find_nn; the paper's smallest Euclidean distance between unit vectors is the same row). No gradient.
/// `support: (K, D)` unit rows, K ≥ 1; `z: (N, D)` unit rows; result: the neighbours (N, D) and their indices (N) (int64).
let nearest (support: Tensor) (z: Tensor) : Tensor * Tensor =
    expect "support" [| Any; Any |] support
    Checks.nonEmpty "support" support
    expect "z" [| Any; Exactly support.shape[1] |] z
    use scope = NewDisposeScope()
    use _ = no_grad ()
    let index = z.detach().mm(support.t()).argmax(1L)
    support.index_select(0L, index).MoveToOuterDisposeScope(), index.MoveToOuterDisposeScope()

/// The symmetrised NNCLR loss (eq. 2, "we symmetrize the loss", Sec. 3.2; solo-learn's nnclr.py):
/// ½ InfoNCE(NN(z₁), p₂) + ½ InfoNCE(NN(z₂), p₁), each row's neighbour the anchor whose positive is the other view's
/// prediction of the same image and whose negatives are the other images' (Contrastive.infoNceAcross). Rows are
/// L2-normalised here. `temperature`: τ > 0 (paper 0.1). `neighbours1, neighbours2: (N, D)` NN(z₁, Q), NN(z₂, Q);
/// `p1, p2: (N, D)` the predictions of views 1 and 2; result: scalar ≥ 0, log N when all similarities are equal.
let loss (temperature: float) (neighbours1: Tensor) (neighbours2: Tensor) (p1: Tensor) (p2: Tensor) : Tensor =
    use scope = NewDisposeScope()
    let unit (t: Tensor) = Contrastive.normalize t
    let value =
        Contrastive.infoNceAcross temperature (unit (neighbours1.detach())) (unit p2) / 2.0
        + Contrastive.infoNceAcross temperature (unit (neighbours2.detach())) (unit p1) / 2.0
    value.MoveToOuterDisposeScope()
