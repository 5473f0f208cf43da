/// Random parameters for the batched transforms: one value per image, drawn with an explicit
/// generator on the generator's own device and moved to the images' device, so a CPU generator
/// also drives transforms of CUDA images and a seed reproduces the same draws on every device.
/// Every function here draws per image (its first dimension is the batch's): on a `RowShard`
/// generator that is one rank's share of the draws for the global batch (`rows`).
module Ssl.Core.Transforms.Draw

open TorchSharp
open type TorchSharp.torch
// Last, so F#'s float, int64, log, exp, ... win over torch's dtype fields and tensor functions.
open Microsoft.FSharp.Core.Operators

/// A training step's generator at rank `rank` of `ranks` processes that each hold one consecutive
/// block of a global batch: seeded as one process's generator, so a draw made alike on every rank
/// (a permutation, a shared noise set) is that process's; a per-image draw through `rows` is the
/// rank's rows of that process's draw for the global batch. So ranks see the augmentations one
/// process at the global batch sees (docs/distributed.md, "Draws").
type RowShard(seed: uint64, device: Device, rank: int, ranks: int) =
    inherit Generator(seed, device)
    do if ranks < 1 || rank < 0 || rank >= ranks then invalidArg "rank" $"rank: expected 0 .. {ranks - 1} of {ranks} ranks, found {rank}"
    member _.Rank = rank
    member _.Ranks = ranks

/// `draw count`, a draw whose dimension `dim` runs over this process's `count` images. With a
/// `RowShard` of several ranks it draws for all ranks' images (count × ranks, the stream one process
/// consumes) and keeps the rank's block; with any other generator it is `draw count` itself.
let rows (generator: Generator) (dim: int64) (count: int64) (draw: int64 -> Tensor) : Tensor =
    match generator with
    | :? RowShard as shard when shard.Ranks > 1 ->
        use scope = NewDisposeScope()
        let all = draw (count * int64 shard.Ranks)
        all.narrow(dim, int64 shard.Rank * count, count).contiguous().MoveToOuterDisposeScope()
    | _ -> draw count

/// `shape` with its first dimension set to `count`.
let private withRows (shape: int64[]) (count: int64) = Array.append [| count |] shape[1..]

/// `shape` values uniform in [low, high), float64 on `device`.
let uniform (generator: Generator) (low: float) (high: float) (shape: int64[]) (device: Device) : Tensor =
    use scope = NewDisposeScope()
    let unit = rows generator 0L shape[0] (fun n -> rand(withRows shape n, dtype = ScalarType.Float64, device = generator.device, generator = generator))
    (unit * (high - low) + low).``to``(device).MoveToOuterDisposeScope()

/// `shape` integers uniform in [low, high] (both included), int64 on `device`.
let integers (generator: Generator) (low: int64) (high: int64) (shape: int64[]) (device: Device) : Tensor =
    use scope = NewDisposeScope()
    let drawn = rows generator 0L shape[0] (fun n -> randint(low, high + 1L, withRows shape n, dtype = ScalarType.Int64, device = generator.device, generator = generator))
    drawn.``to``(device).MoveToOuterDisposeScope()

/// Integers uniform in [0, highs] (both included) with one upper bound per entry: `highs` is a
/// float64 tensor of non-negative whole numbers, any shape; the result is int64 of the same shape.
let integersUpTo (generator: Generator) (highs: Tensor) : Tensor =
    use scope = NewDisposeScope()
    let unit = rows generator 0L highs.shape[0] (fun n -> rand(withRows highs.shape n, dtype = ScalarType.Float64, device = generator.device, generator = generator))
    let drawn = (unit.``to``(highs.device) * (highs + 1.0)).floor().minimum(highs)
    drawn.to_type(ScalarType.Int64).MoveToOuterDisposeScope()

/// `count` booleans, each true with probability `probability`, on `device`.
let bernoulli (generator: Generator) (probability: float) (count: int64) (device: Device) : Tensor =
    use scope = NewDisposeScope()
    let unit = rows generator 0L count (fun n -> rand([| n |], dtype = ScalarType.Float64, device = generator.device, generator = generator))
    unit.lt(probability.ToScalar()).``to``(device).MoveToOuterDisposeScope()

/// `shape` standard normal values in `dtype` on `device`, drawn on the generator's device.
let normal (generator: Generator) (shape: int64[]) (dtype: ScalarType) (device: Device) : Tensor =
    use scope = NewDisposeScope()
    let drawn = rows generator 0L shape[0] (fun n -> randn(withRows shape n, dtype = dtype, device = generator.device, generator = generator))
    drawn.``to``(device).MoveToOuterDisposeScope()

/// A random order of this process's `count` images, int64 on `device`: `randperm` with a plain
/// generator; with a `RowShard`, the order of the rank's share of uniform keys drawn for the global
/// batch, so ranks shuffle their own rows independently.
let permutation (generator: Generator) (count: int64) (device: Device) : Tensor =
    match generator with
    | :? RowShard as shard when shard.Ranks > 1 ->
        use scope = NewDisposeScope()
        (uniform generator 0.0 1.0 [| count |] device).argsort().MoveToOuterDisposeScope()
    | _ -> randperm(count, device = device, generator = generator)
