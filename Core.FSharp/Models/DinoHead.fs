/// DINO's projection head (Caron et al. 2021, Sec. 3.1 and App. "Projection head"; the authors'
/// DINOHead in vision_transformer.py).
namespace Ssl.Core.Models

open TorchSharp
open type TorchSharp.torch
open Microsoft.FSharp.Core.Operators
open Ssl.Core.Shape

/// features (N, inputDim) → logits (N, outputs): a 3-layer MLP (fc → GELU → fc → GELU → fc, `hidden`
/// units, a `bottleneck`-d output), L2 normalisation, then a weight-normalised linear layer without
/// bias (Salimans & Kingma 2016: w_k = g_k v_k / ‖v_k‖) whose norms g are fixed to 1
/// (norm_last_layer = True, what the paper trains ViTs with): each of the `outputs` logits is the
/// cosine between the bottleneck vector and a learned direction v_k. MLP weights truncated normal
/// (σ 0.02, Initialise.truncatedNormal) with zero biases, v the Linear default, as the reference. `FreezeLastLayer` stops the
/// gradient to v (the reference cancels it during the first epoch, freeze_last_layer = 1).
type DinoHead(inputDim: int64, hidden: int64, bottleneck: int64, outputs: int64) as this =
    inherit nn.Module<Tensor, Tensor>("DinoHead")
    do
        for name, value in [ "inputDim", inputDim; "hidden", hidden; "bottleneck", bottleneck; "outputs", outputs ] do
            Layers.checkPositive name value
    let mlp =
        Layers.sequential [
            "fc1", nn.Linear(inputDim, hidden); "gelu1", nn.GELU()
            "fc2", nn.Linear(hidden, hidden); "gelu2", nn.GELU()
            "fc3", nn.Linear(hidden, bottleneck) ]
    let lastLayer = nn.Linear(bottleneck, outputs, hasBias = false)
    do
        this.RegisterComponents()
        use _ = no_grad ()
        for m in mlp.modules () do
            match m with
            | :? Modules.Linear as linear ->
                Initialise.truncatedNormal 0.02 linear.weight
                nn.init.zeros_(linear.bias) |> ignore
            | _ -> ()

    /// No gradient reaches the last layer's directions while set.
    member val FreezeLastLayer = false with get, set

    /// The last layer's directions v (outputs, bottleneck), unnormalised.
    member _.Directions: Tensor = lastLayer.weight

    /// The bottleneck output before the last layer, L2-normalised: (N, bottleneck).
    member _.Bottleneck(features: Tensor) : Tensor =
        expect "features" [| Any; Exactly inputDim |] features
        use scope = NewDisposeScope()
        nn.functional.normalize(mlp.call features, p = 2.0, dim = -1L).MoveToOuterDisposeScope()

    override h.forward(features) =
        use scope = NewDisposeScope()
        let directions = if h.FreezeLastLayer then lastLayer.weight.detach() else lastLayer.weight :> Tensor
        let unit = nn.functional.normalize(directions, p = 2.0, dim = 1L)
        nn.functional.linear(h.Bottleneck features, unit).MoveToOuterDisposeScope()
