/// Heads put on top of encoder features: a linear classifier or probe, and the MLP projection head
/// of contrastive methods.
namespace Ssl.Core.Models

open TorchSharp
open type TorchSharp.torch
open Ssl.Core.Shape

/// A linear layer with bias: features (N, inputDim) → outputs (N, outputDim) (logits of a
/// classifier or linear probe, or a linear projection).
type LinearHead(inputDim: int64, outputDim: int64) as this =
    inherit nn.Module<Tensor, Tensor>("LinearHead")
    do
        Layers.checkPositive "inputDim" inputDim
        Layers.checkPositive "outputDim" outputDim
    let linear = nn.Linear(inputDim, outputDim)
    do this.RegisterComponents()

    /// features: (N, inputDim) → (N, outputDim).
    override _.forward(features) =
        expect "features" [| Any; Exactly inputDim |] features
        linear.call features

/// The MLP projection head of SimCLR (Chen et al. 2020, Sec. 2.1 and App. B.9) and MoCo v2 (Chen et
/// al. 2020b): Linear (no bias: batch norm follows) → BatchNorm1d → ReLU → Linear (with bias).
/// Batch norm needs N ≥ 2 in training mode. Parameters: inputDim·hiddenDim + 2·hiddenDim +
/// hiddenDim·outputDim + outputDim.
type MlpHead(inputDim: int64, hiddenDim: int64, outputDim: int64) as this =
    inherit nn.Module<Tensor, Tensor>("MlpHead")
    do
        Layers.checkPositive "inputDim" inputDim
        Layers.checkPositive "hiddenDim" hiddenDim
        Layers.checkPositive "outputDim" outputDim
    let layers =
        Layers.sequential [
            "fc1", nn.Linear(inputDim, hiddenDim, hasBias = false) :> nn.Module<Tensor, Tensor>
            "bn", nn.BatchNorm1d(hiddenDim)
            "relu", nn.ReLU()
            "fc2", nn.Linear(hiddenDim, outputDim) ]
    do this.RegisterComponents()

    /// features: (N, inputDim) → projections (N, outputDim).
    override _.forward(features) =
        expect "features" [| Any; Exactly inputDim |] features
        layers.call features
