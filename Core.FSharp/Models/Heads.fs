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

/// The MLP projection head of SimCLR (Chen et al. 2020, Sec. 2.1 and App. B.9): Linear (no bias:
/// batch norm follows) → BatchNorm1d → ReLU → Linear (with bias). With `batchNorm = false`, MoCo v2's
/// head (Chen et al. 2020b; the authors' code: Linear → ReLU → Linear, both with bias). Batch norm
/// needs N ≥ 2 in training mode. Parameters with batch norm: inputDim·hiddenDim + 2·hiddenDim +
/// hiddenDim·outputDim + outputDim; without: inputDim·hiddenDim + hiddenDim + hiddenDim·outputDim + outputDim.
type MlpHead(inputDim: int64, hiddenDim: int64, outputDim: int64, batchNorm: bool) as this =
    inherit nn.Module<Tensor, Tensor>("MlpHead")
    do
        Layers.checkPositive "inputDim" inputDim
        Layers.checkPositive "hiddenDim" hiddenDim
        Layers.checkPositive "outputDim" outputDim
    let layers =
        Layers.sequential [
            "fc1", nn.Linear(inputDim, hiddenDim, hasBias = not batchNorm) :> nn.Module<Tensor, Tensor>
            if batchNorm then "bn", nn.BatchNorm1d(hiddenDim) :> nn.Module<Tensor, Tensor>
            "relu", nn.ReLU() :> nn.Module<Tensor, Tensor>
            "fc2", nn.Linear(hiddenDim, outputDim) :> nn.Module<Tensor, Tensor> ]
    do this.RegisterComponents()

    /// SimCLR's head, with batch norm.
    new(inputDim: int64, hiddenDim: int64, outputDim: int64) = new MlpHead(inputDim, hiddenDim, outputDim, true)

    /// features: (N, inputDim) → projections (N, outputDim).
    override _.forward(features) =
        expect "features" [| Any; Exactly inputDim |] features
        layers.call features

/// A transformation decoder of AET (Zhang et al. 2019) as EnAET builds it (Wang et al. 2019; the
/// authors' Wide_Resnet_AET_Model): the same `trunk` (a last stage of the encoder's own, see
/// IStagedEncoder) maps the intermediate maps of the original and of the transformed image to
/// (N, featureDim) each, one pass each as that code runs them, and a linear layer on the pair
/// regresses the transformation's `outputDim` parameters. x1, x2: (N, C', H', W') → (N, outputDim).
type PairRegressor(trunk: nn.Module<Tensor, Tensor>, featureDim: int64, outputDim: int64) as this =
    inherit nn.Module<Tensor, Tensor, Tensor>("PairRegressor")
    do
        Layers.checkPositive "featureDim" featureDim
        Layers.checkPositive "outputDim" outputDim
    let fc = nn.Linear(2L * featureDim, outputDim)
    do this.RegisterComponents()

    override _.forward(original, transformed) =
        use scope = torch.NewDisposeScope()
        let a = trunk.call original
        let b = trunk.call transformed
        expect "trunk(original)" [| Any; Exactly featureDim |] a
        (fc.call (torch.cat([| a; b |], 1L))).MoveToOuterDisposeScope()

/// The projectors of the Siamese methods, their layers named as the authors' code names them.
module Projectors =
    /// Barlow Twins' projector (the authors' main.py): linear → BN → ReLU, linear → BN → ReLU,
    /// linear, all `dim` wide, without biases. features (N, inputDim) → (N, dim); N ≥ 2 in training.
    let barlowTwins (inputDim: int64) (dim: int64) =
        let layer (i: int) (input: int64) =
            [ struct ($"fc{i}", nn.Linear(input, dim, hasBias = false) :> nn.Module<Tensor, Tensor>)
              struct ($"bn{i}", nn.BatchNorm1d(dim))
              struct ($"relu{i}", nn.ReLU()) ]
        nn.Sequential(layer 1 inputDim @ layer 2 dim @ [ struct ("fc3", nn.Linear(dim, dim, hasBias = false)) ])

    /// VICReg's expander (Bardes et al. 2022, Sec. 4.1; main_vicreg.py's Projector with --mlp D-D-D): linear → BN → ReLU
    /// twice, then a linear without bias, all `dim` wide; the first two linears keep their biases. (N, inputDim) → (N, dim);
    /// N ≥ 2 in training.
    let vicreg (inputDim: int64) (dim: int64) =
        let layer (i: int) (input: int64) =
            [ struct ($"fc{i}", nn.Linear(input, dim) :> nn.Module<Tensor, Tensor>)
              struct ($"bn{i}", nn.BatchNorm1d(dim))
              struct ($"relu{i}", nn.ReLU()) ]
        nn.Sequential(layer 1 inputDim @ layer 2 dim @ [ struct ("fc3", nn.Linear(dim, dim, hasBias = false)) ])

    /// NNCLR's projector (Dwibedi et al. 2021, Sec. 4.1: three layers as SimCLR v2's; solo-learn's nnclr.py): linear → BN →
    /// ReLU twice at `hiddenDim`, then linear → BN to `outputDim`. (N, inputDim) → (N, outputDim); N ≥ 2 in training.
    let nnclr (inputDim: int64) (hiddenDim: int64) (outputDim: int64) =
        let layer (i: int) (input: int64) =
            [ struct ($"fc{i}", nn.Linear(input, hiddenDim) :> nn.Module<Tensor, Tensor>)
              struct ($"bn{i}", nn.BatchNorm1d(hiddenDim))
              struct ($"relu{i}", nn.ReLU()) ]
        nn.Sequential(layer 1 inputDim @ layer 2 hiddenDim
                      @ [ struct ("fc3", nn.Linear(hiddenDim, outputDim) :> nn.Module<Tensor, Tensor>); struct ("bn3", nn.BatchNorm1d(outputDim)) ])

    /// SimSiam's CIFAR projector (Chen & He 2021, App. D): fc → BN → ReLU → fc → BN, the last batch
    /// norm without affine parameters (the authors' builder.py). (N, inputDim) → (N, dim); N ≥ 2.
    let simSiam (inputDim: int64) (dim: int64) =
        nn.Sequential(struct ("mlp", new MlpHead(inputDim, dim, dim, true) :> nn.Module<Tensor, Tensor>),
                      struct ("bn", nn.BatchNorm1d(dim, affine = false) :> nn.Module<Tensor, Tensor>))

    /// g(f(x)) as one module of two children, "encoder" and "projector", so that a momentum copy
    /// (BYOL's target network) holds both. images → projections.
    let projected (encoder: nn.Module<Tensor, Tensor>) (projector: nn.Module<Tensor, Tensor>) =
        nn.Sequential(struct ("encoder", encoder), struct ("projector", projector))
