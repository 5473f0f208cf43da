/// Checks shared by every Core test: no tensor left alive, finite-difference gradients in float64,
/// closeness of tensors, and the device matrix tests run over.
module Ssl.Tests.Check

open System
open Expecto
open TorchSharp
open type TorchSharp.torch

/// Devices every tensor test runs on: the CPU, and CUDA where this machine has it.
let devices () =
    [ yield torch.CPU
      if torch.cuda.is_available () then yield torch.CUDA ]

let private liveTensors () = DisposeScopeManager.Statistics.ThreadTotalLiveCount

/// Runs `f` (which must dispose what it keeps) and fails if it leaves tensors alive:
/// the memory check of every loss and transform (DisposeScope statistics).
let noLeak (what: string) (f: unit -> unit) =
    let before = liveTensors ()
    f ()
    let after = liveTensors ()
    if after <> before then failtestf "%s: %d tensor(s) left alive after the call" what (after - before)

/// Like `noLeak`, for a function returning one tensor: only that result may survive the call.
let leavesOnlyResult (what: string) (f: unit -> Tensor) =
    let before = liveTensors ()
    let result = f ()
    let after = liveTensors ()
    result.Dispose()
    if after - before <> 1L then failtestf "%s: expected 1 tensor alive after the call (the result), found %d" what (after - before)

/// Element-wise |a - b| <= atol + rtol |b|, with a message naming both tensors' worst entry.
let close (atol: float) (rtol: float) (what: string) (actual: Tensor) (expected: Tensor) =
    use scope = NewDisposeScope()
    Expect.sequenceEqual actual.shape expected.shape $"{what}: shape"
    let a = actual.detach().cpu().to_type(ScalarType.Float64)
    let e = expected.detach().cpu().to_type(ScalarType.Float64)
    let err = (a - e).abs()
    let bound = e.abs() * rtol + atol
    if not (err.le(bound).all().item<bool>()) then
        let worst = (err - bound).argmax().item<int64>()
        failtestf "%s: entry %d is %g, expected %g (atol %g, rtol %g)" what worst
            ((a.flatten()[worst]).item<float>()) ((e.flatten()[worst]).item<float>()) atol rtol

/// Compares autograd's gradient of the scalar `f` at `x` with central finite differences, in
/// float64. `x` must be float64; it is not modified.
let gradcheck (what: string) (eps: float) (tolerance: float) (f: Tensor -> Tensor) (x: Tensor) =
    use scope = NewDisposeScope()
    Expect.equal x.dtype ScalarType.Float64 $"{what}: gradcheck needs float64 input"
    let input = x.detach().clone().requires_grad_(true)
    let y = f input
    Expect.equal (y.numel ()) 1L $"{what}: f must return a scalar"
    let analytic = (torch.autograd.grad([| y |], [| input |])[0]).flatten()
    let flat = x.detach().clone().flatten()
    let numeric = torch.zeros_like(flat)
    use _ = torch.no_grad()
    for i in 0L .. flat.numel () - 1L do
        let at (delta: float) =
            let probe = flat.clone()
            probe[i] <- probe[i] + delta
            (f (probe.reshape(x.shape))).item<float>()
        numeric[i] <- torch.tensor((at eps - at -eps) / (2.0 * eps), float64)
    close tolerance tolerance $"{what}: autograd vs finite differences" analytic numeric
