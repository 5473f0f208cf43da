/// Batch normalisation's running statistics, managed across passes.
module Ssl.Core.Models.BatchNorms

open TorchSharp
open type TorchSharp.torch

/// Every batch-norm layer in `modules` and their sub-modules (each once).
let layers (modules: nn.Module list) : Modules.BatchNorm list =
    let seen = System.Collections.Generic.HashSet<Modules.BatchNorm>(HashIdentity.Reference)
    modules
    |> List.collect (fun m -> Seq.append [ m ] (m.modules ()) |> Seq.toList)
    |> List.choose (function :? Modules.BatchNorm as bn when seen.Add bn -> Some bn | _ -> None)

/// Runs `pass` with every batch-norm layer of `modules` normalising as its mode says (batch
/// statistics in training mode) but leaving its running mean, variance and batch counter as they
/// were: MixMatch's label-guessing pass, whose batch-norm updates the authors' code discards
/// (Berthelot et al. 2019, google-research/mixmatch: the update ops collected before the labelled
/// pass are skipped); VAT's extra passes (Miyato et al. 2018). Each layer's momentum is 0 during
/// `pass` (libtorch's update r ← (1 − 0)·r + 0·batch leaves r as it is), and its counter is set back
/// after it; momenta and counters are restored even when `pass` throws. The running statistics are
/// not copied back instead: autograd saves them with the training pass's graph, and writing them in
/// place would fail that graph's backward ("modified by an inplace operation").
let withoutRunningUpdates (modules: nn.Module list) (pass: unit -> 'a) : 'a =
    let saved =
        [ for bn in layers modules ->
              let count = if isNull bn.num_batches_tracked then None else Some(bn.num_batches_tracked.item<int64>())
              bn, bn.momentum, count ]
    try
        for bn, _, _ in saved do bn.momentum <- System.Nullable 0.0
        pass ()
    finally
        use _ = torch.no_grad()
        for bn, momentum, count in saved do
            bn.momentum <- momentum
            match count with
            | Some c ->
                use value = c.ToScalar()
                bn.num_batches_tracked.fill_(value) |> ignore
            | None -> ()
