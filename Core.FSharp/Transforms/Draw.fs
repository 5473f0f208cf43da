/// Random parameters for the batched transforms: one value per image, drawn with an explicit
/// generator on the generator's own device and moved to the images' device, so a CPU generator
/// also drives transforms of CUDA images and a seed reproduces the same draws on every device.
module Ssl.Core.Transforms.Draw

open TorchSharp
open type TorchSharp.torch
// Last, so F#'s float, int64, log, exp, ... win over torch's dtype fields and tensor functions.
open Microsoft.FSharp.Core.Operators

/// `shape` values uniform in [low, high), float64 on `device`.
let uniform (generator: Generator) (low: float) (high: float) (shape: int64[]) (device: Device) : Tensor =
    use scope = NewDisposeScope()
    let unit = rand(shape, dtype = ScalarType.Float64, device = generator.device, generator = generator)
    (unit * (high - low) + low).``to``(device).MoveToOuterDisposeScope()

/// `shape` integers uniform in [low, high] (both included), int64 on `device`.
let integers (generator: Generator) (low: int64) (high: int64) (shape: int64[]) (device: Device) : Tensor =
    use scope = NewDisposeScope()
    let drawn = randint(low, high + 1L, shape, dtype = ScalarType.Int64, device = generator.device, generator = generator)
    drawn.``to``(device).MoveToOuterDisposeScope()

/// Integers uniform in [0, highs] (both included) with one upper bound per entry: `highs` is a
/// float64 tensor of non-negative whole numbers, any shape; the result is int64 of the same shape.
let integersUpTo (generator: Generator) (highs: Tensor) : Tensor =
    use scope = NewDisposeScope()
    let unit = rand(highs.shape, dtype = ScalarType.Float64, device = generator.device, generator = generator)
    let drawn = (unit.``to``(highs.device) * (highs + 1.0)).floor().minimum(highs)
    drawn.to_type(ScalarType.Int64).MoveToOuterDisposeScope()

/// `count` booleans, each true with probability `probability`, on `device`.
let bernoulli (generator: Generator) (probability: float) (count: int64) (device: Device) : Tensor =
    use scope = NewDisposeScope()
    let unit = rand([| count |], dtype = ScalarType.Float64, device = generator.device, generator = generator)
    unit.lt(probability.ToScalar()).``to``(device).MoveToOuterDisposeScope()
