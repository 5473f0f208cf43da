/// The momentum (exponential moving average) copy of a network: MoCo's key encoder, and the
/// teacher of mean-teacher style methods.
namespace Ssl.Core.Models

open System.Collections.Generic
open TorchSharp
open type TorchSharp.torch

/// A momentum copy of `online` (He et al. 2019, MoCo, eq. 2): θk ← m·θk + (1 − m)·θq.
/// TorchSharp cannot deep-copy a module, so the caller passes `copy`, a freshly built module of the
/// same architecture; the constructor moves it to the device and dtype of `online`'s first parameter,
/// copies every parameter and buffer of `online` into it, and turns its gradients off. Only `copy`
/// is registered as a sub-module (named "copy"): `online` is the source, not a part, so the
/// parameters of this module are the copy's alone.
/// Buffer policy: `Update` copies buffers (batch-norm running statistics and counters) verbatim
/// from `online` instead of averaging them, so evaluating the copy uses the online network's
/// statistics. With m = 0 the copy equals `online`; with m = 1 its parameters stay frozen (its
/// buffers still follow `online`).
type MomentumCopy(online: nn.Module<Tensor, Tensor>, copy: nn.Module<Tensor, Tensor>) as this =
    inherit nn.Module<Tensor, Tensor>("MomentumCopy")
    /// (online, copy) tensor pairs matched by name, looked up on every call because moving a module
    /// to another device replaces its parameter and buffer objects.
    let pairsByName (kind: string) (source: seq<struct (string * Tensor)>) (target: seq<struct (string * Tensor)>) =
        let targets = Dictionary<string, Tensor>()
        for struct (name, t) in target do targets[name] <- t
        let sources = Seq.toArray source
        if sources.Length <> targets.Count then
            invalidArg "copy" $"copy: expected the architecture of online ({sources.Length} {kind}s), found {targets.Count} {kind}s"
        [| for struct (name, q) in sources ->
               match targets.TryGetValue name with
               | true, k -> struct (q, k)
               | _ -> invalidArg "copy" $"copy: expected a {kind} named {name} as in online, found none" |]
    let parameterPairs () =
        let named (m: nn.Module) = m.named_parameters () |> Seq.map (fun struct (n, p) -> struct (n, p :> Tensor))
        pairsByName "parameter" (named online) (named copy)
    let bufferPairs () = pairsByName "buffer" (online.named_buffers ()) (copy.named_buffers ())
    let copyBuffers () =
        use _ = torch.no_grad()
        for struct (q, k) in bufferPairs () do k.copy_(q) |> ignore
    do
        match online.parameters () |> Seq.tryHead with
        | Some p -> copy.``to``(p.device).``to``(p.dtype) |> ignore
        | None -> ()
        for struct (q, k) in Array.append (parameterPairs ()) (bufferPairs ()) do
            if q.shape <> k.shape then
                invalidArg "copy" $"copy: expected shape {Ssl.Core.Shape.show q.shape} as in online, found {Ssl.Core.Shape.show k.shape}"
        for struct (_, k) in parameterPairs () do k.requires_grad <- false
        this.register_module("copy", copy)
        this.Update(0.0)

    /// The copy itself (parameters without gradients), e.g. to evaluate it.
    member _.Copy = copy

    /// θk ← m·θk + (1 − m)·θq on every parameter, under no_grad; then buffers are copied from the
    /// online network (see the type's buffer policy). `momentum`: m in [0, 1] (MoCo: 0.999).
    member _.Update(momentum: float) =
        if not (momentum >= 0.0 && momentum <= 1.0) then
            invalidArg "momentum" $"momentum: expected a value in [0, 1], found {momentum}"
        use _ = torch.no_grad()
        for struct (q, k) in parameterPairs () do k.mul_(Scalar.op_Implicit momentum).add_(q, alpha = 1.0 - momentum) |> ignore
        copyBuffers ()

    /// Runs the copy: x → copy(x); no gradient reaches the copy's parameters.
    override _.forward(x) = copy.forward x

/// Schedules of a momentum copy's decay.
module Momentum =
    /// BYOL's target decay (Grill et al. 2020, Sec. 3.2; DINO's teacher, Caron et al. 2021, Sec. 3.1):
    /// τ = 1 − (1 − τ_base)·(cos(π k / K) + 1) / 2 at step k of K, from τ_base at k = 0 to 1 at k = K.
    /// `baseMomentum` in [0, 1]; `step` in [0, total] (clamped); `total` ≥ 1.
    let cosine (baseMomentum: float) (step: int64) (total: int64) : float =
        if not (baseMomentum >= 0.0 && baseMomentum <= 1.0) then
            invalidArg "baseMomentum" $"baseMomentum: expected a value in [0, 1], found {baseMomentum}"
        if total < 1L then invalidArg "total" $"total: expected at least 1 step, found {total}"
        let k = Operators.float (Operators.max 0L (Operators.min step total))
        1.0 - (1.0 - baseMomentum) * (System.Math.Cos(System.Math.PI * k / Operators.float total) + 1.0) / 2.0
