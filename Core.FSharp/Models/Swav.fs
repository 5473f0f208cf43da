/// SwAV's prototypes and queue (Caron et al., NeurIPS 2020, Sec. 3.1 and App. A; the authors' src/resnet50.py and
/// main_swav.py).
namespace Ssl.Core.Models

open TorchSharp
open type TorchSharp.torch
open Ssl.Core.Shape

/// K prototype vectors c_k of dimension D, trained with the network: a linear layer without bias, projections z (N, D)
/// → scores z·Cᵀ (N, K) (src/resnet50.py's `prototypes`, nn.Linear(D, K, bias=False), PyTorch's default initialisation).
/// `Normalise` puts every prototype on the unit sphere, as main_swav.py does under no_grad before each forward, so the
/// scores of unit projections are cosines; while `Frozen`, no gradient reaches the prototypes (main_swav.py sets their
/// gradient to None during the first freeze_prototypes_niters iterations).
type Prototypes(dim: int64, count: int64) as this =
    inherit nn.Module<Tensor, Tensor>("Prototypes")
    do
        Layers.checkPositive "dim" dim
        Layers.checkPositive "count" count
    let linear = nn.Linear(dim, count, hasBias = false)
    do this.RegisterComponents()

    /// No gradient reaches the prototypes while set.
    member val Frozen = false with get, set

    /// The prototypes C (K, D), one per row.
    member _.Weight: Tensor = linear.weight

    /// Scales every prototype to unit L2 norm, in place and without gradient.
    member _.Normalise() =
        use scope = NewDisposeScope()
        use _ = no_grad ()
        linear.weight.copy_(nn.functional.normalize(linear.weight, p = 2.0, dim = 1L)) |> ignore

    /// projections: (N, D) → scores (N, K).
    override p.forward(projections) =
        expect "projections" [| Any; Exactly dim |] projections
        use scope = NewDisposeScope()
        let weight = if p.Frozen then linear.weight.detach() else linear.weight :> Tensor
        nn.functional.linear(projections, weight).MoveToOuterDisposeScope()

/// main_swav.py's queue of past projections, for batches too small to spread over the prototypes (Sec. 3.1, "Working
/// with small batches"): for each of `crops` crops, the last `length` projections of dimension `dim`, newest first,
/// zeros until written. Buffer "embeddings" (crops, length, dim), float32 on the CPU until moved.
type AssignmentQueue(crops: int64, length: int64, dim: int64) as this =
    inherit nn.Module("AssignmentQueue")
    do
        Layers.checkPositive "crops" crops
        Layers.checkPositive "length" length
        Layers.checkPositive "dim" dim
    let embeddings = torch.zeros([| crops; length; dim |]).DetachFromDisposeScope()
    do this.RegisterComponents()

    let checkCrop (crop: int64) =
        if crop < 0L || crop >= crops then invalidArg "crop" $"crop: expected a crop in [0, {crops - 1L}], found {crop}"

    member _.Length = length

    /// Crop `crop`'s stored projections (length, dim), newest first; a view of the buffer (do not dispose).
    member _.Embeddings(crop: int64) =
        checkCrop crop
        embeddings.select(0L, crop)

    /// Whether every slot of `crop` has been written: main_swav.py's test that the oldest row is not all zero
    /// (projections are unit vectors, never zero).
    member _.IsFull(crop: int64) =
        checkCrop crop
        use scope = NewDisposeScope()
        embeddings.select(0L, crop).select(0L, length - 1L).ne(Scalar.op_Implicit 0.0).any().item<bool>()

    /// Shifts crop `crop`'s projections down by B rows, dropping the oldest, and writes `projections` (B, dim), detached,
    /// at the top (main_swav.py: queue[i, bs:] = queue[i, :-bs]; queue[i, :bs] = embedding); B ≥ length keeps the first
    /// `length` rows.
    member _.Push(crop: int64, projections: Tensor) =
        checkCrop crop
        expect "projections" [| Any; Exactly dim |] projections
        use scope = NewDisposeScope()
        use _ = no_grad ()
        let rows = embeddings.select(0L, crop)
        let b = System.Math.Min(projections.shape[0], length)
        if b < length then rows.narrow(0L, b, length - b).copy_(rows.narrow(0L, 0L, length - b).clone()) |> ignore
        rows.narrow(0L, 0L, b).copy_(projections.detach().narrow(0L, 0L, b)) |> ignore

    /// Crop `crop`'s scores to assign, in main_swav.py's order: once the queue is full, the scores of its projections by
    /// `score` (length, dim) → (length, K), above `scores` (B, K), else `scores` alone; then `projections` (B, dim) go in.
    /// Without gradient: (length + B, K) or (B, K).
    member q.Assigned(crop: int64, score: Tensor -> Tensor, scores: Tensor, projections: Tensor) =
        use scope = NewDisposeScope()
        use _ = no_grad ()
        let assigned = if q.IsFull crop then torch.cat([| score (q.Embeddings crop); scores.detach() |], 0L) else scores.detach()
        q.Push(crop, projections)
        assigned.MoveToOuterDisposeScope()
