/// Shape checks shared by every loss, transform and data reader: a wrong shape is an error that
/// names the argument, the shape expected and the shape found.
module Ssl.Core.Shape

open System
open TorchSharp

/// A dimension in an expected shape: a fixed size, or any size (written `*`).
[<Struct>]
type Dim =
    | Exactly of int64
    | Any

let private render (dims: seq<string>) = "(" + String.Join(", ", dims) + ")"

/// Renders a concrete shape the way PyTorch prints it, e.g. `(256, 1, 28, 28)`.
let show (shape: int64[]) = shape |> Seq.map string |> render

let private showExpected (dims: Dim[]) =
    dims |> Seq.map (function Exactly n -> string n | Any -> "*") |> render

/// Raises ArgumentException unless `t` has `dims.Length` dimensions matching `dims`.
/// `what` names the argument, e.g. "q" or "images of train-images-idx3-ubyte.gz".
let expect (what: string) (dims: Dim[]) (t: torch.Tensor) =
    let shape = t.shape
    let fits =
        shape.Length = dims.Length
        && Array.forall2 (fun d n -> match d with Exactly e -> e = n | Any -> true) dims shape
    if not fits then
        invalidArg what $"{what}: expected shape {showExpected dims}, found {show shape}"

/// Raises ArgumentException unless `t` has exactly `rank` dimensions.
let expectRank (what: string) (rank: int) (t: torch.Tensor) = expect what (Array.create rank Any) t
