/// Long-lived stores of embeddings: MoCo's queue of keys and the instance-discrimination memory
/// bank. Both are modules holding buffers, so they follow `.to(device)` and are saved in state dicts.
namespace Ssl.Core.Models

open TorchSharp
open type TorchSharp.torch
open Ssl.Core.Shape

/// Random unit vectors (rows, dim) on the generator's device, outside any dispose scope.
module internal RandomUnit =
    let rows (rows: int64) (dim: int64) (generator: torch.Generator) =
        use scope = torch.NewDisposeScope()
        let draws = torch.randn([| rows; dim |], device = generator.device, generator = generator)
        nn.functional.normalize(draws, dim = 1L).DetachFromDisposeScope()

/// A fixed-capacity FIFO queue of keys (He et al. 2019, MoCo, Sec. 3.2 and Algorithm 1): capacity
/// K rows of dimension D, initialised with random unit vectors drawn from `generator` (on its
/// device). Buffers: "keys" (K, D) and "pointer" (1) (int64), as in MoCo's code.
type KeyQueue(capacity: int64, dim: int64, generator: torch.Generator) as this =
    inherit nn.Module("KeyQueue")
    do
        Layers.checkPositive "capacity" capacity
        Layers.checkPositive "dim" dim
    let keys = RandomUnit.rows capacity dim generator
    let pointer = torch.zeros(1L, dtype = ScalarType.Int64, device = generator.device).DetachFromDisposeScope()
    do this.RegisterComponents()

    member _.Capacity = capacity
    member _.Dim = dim

    /// The stored keys (K, D) in slot order; owned by the queue (do not dispose). The oldest key is
    /// at slot `Pointer`, the newest just before it (cyclically).
    member _.Keys = keys

    /// The slot the next enqueued key goes to: the slot of the oldest key.
    member _.Pointer = pointer.item<int64>()

    /// Appends `newKeys` (B, D) (detached) after the newest key, replacing the oldest ones and
    /// wrapping around the end; when B > K only the last K rows are kept. Any B works.
    member _.Enqueue(newKeys: Tensor) =
        expect "keys" [| Any; Exactly dim |] newKeys
        use scope = torch.NewDisposeScope()
        use _ = torch.no_grad()
        let batch = newKeys.shape[0]
        let kept = System.Math.Min(batch, capacity)
        let start = pointer.item<int64>()
        let slots = torch.arange(start + batch - kept, start + batch, dtype = ScalarType.Int64, device = keys.device).remainder(Scalar.op_Implicit capacity)
        let rows = newKeys.detach().narrow(0L, batch - kept, kept).``to``(keys.dtype)
        keys.index_copy_(0L, slots, rows) |> ignore
        pointer.fill_(Scalar.op_Implicit((start + batch) % capacity)) |> ignore

/// The memory bank of non-parametric instance discrimination (Wu et al. 2018, Sec. 3.1–3.2): one
/// unit vector per training image, (n, D), initialised with random unit vectors drawn from
/// `generator` (on its device). Buffer: "memory" (n, D).
type MemoryBank(size: int64, dim: int64, generator: torch.Generator) as this =
    inherit nn.Module("MemoryBank")
    do
        Layers.checkPositive "size" size
        Layers.checkPositive "dim" dim
    let memory = RandomUnit.rows size dim generator
    do this.RegisterComponents()

    let checkIndices (indices: Tensor) =
        if indices.dtype <> ScalarType.Int64 then
            invalidArg "indices" $"indices: expected int64, found {indices.dtype}"
        if indices.numel () > 0L then
            use scope = torch.NewDisposeScope()
            let low, high = indices.min().item<int64>(), indices.max().item<int64>()
            if low < 0L || high >= size then
                invalidArg "indices" $"indices: expected values in [0, {size - 1L}], found [{low}, {high}]"

    member _.Size = size
    member _.Dim = dim

    /// The stored vectors (n, D); owned by the bank (do not dispose).
    member _.Memory = memory

    /// The rows at `indices` (any shape S, int64) → (S..., D), detached.
    member _.Rows(indices: Tensor) =
        checkIndices indices
        use scope = torch.NewDisposeScope()
        let shape = Array.append indices.shape [| dim |]
        memory.index_select(0L, indices.flatten()).reshape(shape).MoveToOuterDisposeScope()

    /// v_i ← normalise(m·v_i + (1 − m)·f_i) for each index i (Wu et al. 2018: the momentum update of
    /// their released code, m = 0.5 there). `momentum`: m in [0, 1]; `indices`: (B) distinct int64;
    /// `features`: (B, D), detached.
    member _.Update(momentum: float, indices: Tensor, features: Tensor) =
        if not (momentum >= 0.0 && momentum <= 1.0) then
            invalidArg "momentum" $"momentum: expected a value in [0, 1], found {momentum}"
        expectRank "indices" 1 indices
        expect "features" [| Exactly indices.shape[0]; Exactly dim |] features
        checkIndices indices
        use scope = torch.NewDisposeScope()
        use _ = torch.no_grad()
        let struct (unique, _, _) = indices.unique()
        let distinct = unique.numel ()
        if distinct <> indices.numel () then
            invalidArg "indices" $"indices: expected distinct values, found {indices.numel () - distinct} repeated"
        let mixed = memory.index_select(0L, indices) * momentum + features.detach().``to``(memory.dtype) * (1.0 - momentum)
        memory.index_copy_(0L, indices, nn.functional.normalize(mixed, dim = 1L)) |> ignore

    /// k noise indices per example drawn uniformly from [0, n) (the uniform noise distribution
    /// P_n = 1/n of Wu et al. 2018, Sec. 3.2) → (batchSize, k) int64 on the bank's device.
    /// `generator` must be on that device.
    member _.SampleNoise(batchSize: int64, k: int64, generator: torch.Generator) =
        Layers.checkPositive "batchSize" batchSize
        Layers.checkPositive "k" k
        torch.randint(0L, size, [| batchSize; k |], device = memory.device, generator = generator)
