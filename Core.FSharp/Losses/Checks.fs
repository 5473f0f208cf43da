/// Hyper-parameter checks shared by the losses: a bad value is an ArgumentException naming the
/// parameter, what was expected and what was found.
module internal Ssl.Core.Losses.Checks

open TorchSharp

/// Raises unless `value` is finite and > 0.
let positive (name: string) (value: float) =
    if not (value > 0.0 && System.Double.IsFinite value) then
        invalidArg name $"{name}: expected a finite number > 0, found {value}"

/// Raises unless `value` is in the open interval (0, 1].
let probability (name: string) (value: float) =
    if not (value > 0.0 && value <= 1.0) then
        invalidArg name $"{name}: expected a probability in (0, 1], found {value}"

/// Raises unless `t` has at least one element (a mean over nothing is NaN, not a loss).
let nonEmpty (name: string) (t: torch.Tensor) =
    if t.numel () = 0L then
        invalidArg name $"{name}: expected at least one element, found shape {Ssl.Core.Shape.show t.shape}"
