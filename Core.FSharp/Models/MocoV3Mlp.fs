/// The projection and prediction MLPs of MoCo v3 (Chen, Xie & He, ICCV 2021, Sec. 5, "Implementation Details";
/// the authors' moco/builder.py, MoCo._build_mlp), which follow SimCLR's: every layer a linear map
/// without bias, batch norm and ReLU after each hidden layer, and optionally a batch norm without affine
/// parameters after the last (builder.py: "for simplicity, we further removed gamma in BN").
module Ssl.Core.Models.MocoV3Mlp

open TorchSharp
open type TorchSharp.torch

/// An MLP of `layers` linear layers: fc1 → bn1 → relu1 → … → fc`layers`, then bn`layers` (affine = false)
/// when `lastBatchNorm`; hidden layers `hiddenDim` wide. The paper's projector has 3 layers on a ViT and
/// 2 on a ResNet (last batch norm on both), its predictor 2 (last batch norm on a ViT, none on a ResNet),
/// hiddenDim 4,096 and outputDim 256. features (N, inputDim) → (N, outputDim); N ≥ 2 in training (batch
/// norm). Parameters: the linear weights (no biases) and 2·hiddenDim per hidden batch norm.
let create (layers: int) (inputDim: int64) (hiddenDim: int64) (outputDim: int64) (lastBatchNorm: bool) =
    if layers < 1 then invalidArg "layers" $"layers: expected at least 1 linear layer, found {layers}"
    Layers.checkPositive "inputDim" inputDim
    Layers.checkPositive "hiddenDim" hiddenDim
    Layers.checkPositive "outputDim" outputDim
    Layers.sequential [
        for l in 1 .. layers do
            let input = if l = 1 then inputDim else hiddenDim
            if l < layers then
                $"fc{l}", nn.Linear(input, hiddenDim, hasBias = false) :> nn.Module<Tensor, Tensor>
                $"bn{l}", nn.BatchNorm1d(hiddenDim)
                $"relu{l}", nn.ReLU()
            else
                $"fc{l}", nn.Linear(input, outputDim, hasBias = false)
                if lastBatchNorm then $"bn{l}", nn.BatchNorm1d(outputDim, affine = false) ]
