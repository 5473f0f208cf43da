/// Entropy minimisation on unlabelled predictions.
module Ssl.Core.Losses.Entropy

open TorchSharp
open type TorchSharp.torch
open Ssl.Core.Shape

/// Mean Shannon entropy (in nats) of the class distributions softmax(logits), the regulariser of
/// entropy minimisation (Grandvalet & Bengio 2005, Sec. 2: the empirical conditional entropy
/// H_emp of the model's posteriors on unlabelled data). Minimise it, weighted, beside the
/// supervised loss.
/// Computed from log_softmax, so one-hot-like logits give 0 rather than NaN.
/// `logits: (N, C)`, N ≥ 1; result: scalar in [0, log C]: 0 for one-hot predictions, log C for
/// uniform ones.
let entropy (logits: Tensor) : Tensor =
    expect "logits" [| Any; Any |] logits
    Checks.nonEmpty "logits" logits
    use scope = NewDisposeScope()
    let logP = logits.log_softmax(1L)
    let perRow = -(logP.exp() * logP).sum(1L)
    perRow.mean().MoveToOuterDisposeScope()
