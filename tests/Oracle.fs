/// What the loss and model tests' float64 loop oracles share: seeded float64 inputs, .NET copies of tensors, and the
/// scalar helpers the oracles are written with.
[<AutoOpen>]
module Ssl.Tests.Oracle

open Expecto
open TorchSharp

let f64 = torch.float64

/// A generator seeded from an FsCheck seed, so a failing case replays from its seed.
let generator (seed: int) = new torch.Generator(uint64 (abs (int64 seed)))

let randn (g: torch.Generator) (shape: int64[]) = torch.randn(shape, dtype = f64, generator = g)

/// The entries of `t` in row-major order, as float64.
let values (t: torch.Tensor) : float[] =
    if t.numel () = 0L then [||] else t.detach().contiguous().to_type(f64).data<float>().ToArray()

/// The rows of a matrix `t` (N, D), as float64.
let rows (t: torch.Tensor) : float[][] =
    let flat = values t
    let columns = int t.shape[1]
    Array.init (int t.shape[0]) (fun i -> flat[i * columns .. (i + 1) * columns - 1])

let scalar (t: torch.Tensor) = t.to_type(f64).item<float>()
let dot (a: float[]) (b: float[]) = Array.fold2 (fun acc x y -> acc + x * y) 0.0 a b
let logSumExp (xs: float[]) = let m = Array.max xs in m + log (xs |> Array.sumBy (fun x -> exp (x - m)))

/// Fails unless |actual − expected| ≤ tolerance · (1 + |expected|), naming `what` and both values.
let near (tolerance: float) (what: string) (actual: float) (expected: float) =
    if abs (actual - expected) > tolerance * (1.0 + abs expected) then
        failtestf "%s: got %.12g, expected %.12g" what actual expected
