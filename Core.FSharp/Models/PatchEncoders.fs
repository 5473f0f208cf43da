/// Encoders for patch-based methods: a small conv net with layer normalisation for patches, and
/// the whole-image encoder that cuts an image into CPC's overlapping patch grid, encodes every
/// patch and mean-pools their features (Hénaff et al. 2019, "Data-efficient image recognition with
/// contrastive predictive coding": the representation of an image is its patch features
/// mean-pooled over the grid).
namespace Ssl.Core.Models

open TorchSharp
open type TorchSharp.torch
open Ssl.Core.Shape
open Ssl.Core.Transforms

/// A small conv net for patches with layer normalisation in place of batch normalisation:
/// conv3x3(C → w) → LN → ReLU → max-pool 2 → conv3x3(w → 2w) → LN → ReLU → conv3x3(2w → 4w) → LN
/// → ReLU → global average pool; padding 1, no biases (the norms' shifts take their place).
/// FeatureDim = 4w. Layer norm is GroupNorm with one group: each patch is normalised over its own
/// channels and positions, with a scale and shift per channel. CPC v2 (Hénaff et al. 2019, Sec. 3,
/// "layer normalization") replaced batch norm by layer norm because batch statistics let the
/// patches of one image, encoded in the same batch, share information, a path around the
/// context's restricted receptive field that the contrastive task can exploit.
/// Cost per p x p patch (multiply-adds): 9·(p²·C·w + (p/2)²·(2w² + 8w²)); p = 8, w = 16, C = 1:
/// 377,856. Keep w a multiple of 16 (see SafeConv). `inputChannels`: C; patches at least 2 x 2;
/// `layout`: what its convolutions read (channels-last unless given).
type LayerNormConvNet(inputChannels: int64, width: int64, ?layout: SafeConv.ConvLayout) as this =
    inherit Encoder("LayerNormConvNet")
    let layout = defaultArg layout SafeConv.ChannelsLast
    do Layers.checkPositive "inputChannels" inputChannels
    do Layers.checkPositive "width" width
    let convLnRelu (prefix: string) (inC: int64) (outC: int64) =
        [ $"{prefix}conv", Layers.conv3x3 layout inC outC 1L
          $"{prefix}ln", nn.GroupNorm(1L, outC)
          $"{prefix}relu", nn.ReLU() ]
    let features =
        Layers.sequential [
            yield! convLnRelu "stem_" inputChannels width
            "pool1", nn.MaxPool2d(2L)
            yield! convLnRelu "block2_" width (2L * width)
            yield! convLnRelu "block3_" (2L * width) (4L * width)
            "pool", nn.AdaptiveAvgPool2d(1L)
            "flatten", nn.Flatten() ]
    do
        this.RegisterComponents()
        // TorchSharp 0.107's GroupNorm leaves its affine parameters uninitialised (torch.empty):
        // set them as PyTorch does, scale 1 and shift 0.
        use _ = torch.no_grad()
        for m in this.modules() do
            match m with
            | :? Modules.GroupNorm as norm ->
                norm.weight.fill_(1.0.ToScalar()) |> ignore
                norm.bias.fill_(0.0.ToScalar()) |> ignore
            | _ -> ()

    member _.Width = width

    override _.FeatureDim = 4L * width

    /// patches: (N, inputChannels, p, p) → features (N, 4w).
    override _.forward(patches) =
        expect "patches" [| Any; Exactly inputChannels; Any; Any |] patches
        if patches.shape[2] < 2L || patches.shape[3] < 2L then
            invalidArg "patches" $"patches: expected sides of at least 2 pixels, found {show patches.shape}"
        features.call patches

/// A whole-image encoder made of a patch encoder: `Embed` cuts each image into the overlapping grid
/// of `Patches.patchGrid patchSize stride` and encodes every patch; `forward` mean-pools the patch
/// features over the grid (Hénaff et al. 2019: the image representation the linear classifier
/// reads). FeatureDim = the patch encoder's. The patch encoder is owned (disposed with this).
type PatchGridEncoder(patchEncoder: Encoder, patchSize: int64, stride: int64) as this =
    inherit Encoder("PatchGridEncoder")
    do Layers.checkPositive "patchSize" patchSize
    do Layers.checkPositive "stride" stride
    let patches = patchEncoder
    do this.RegisterComponents()

    member _.PatchSize = patchSize
    member _.Stride = stride

    /// The grid's rows (and columns) for a side of `side` pixels: (side - patchSize) / stride + 1.
    member _.GridSide(side: int64) =
        if side < patchSize then invalidArg "side" $"side: expected at least patchSize = {patchSize} pixels, found {side}"
        (side - patchSize) / stride + 1L

    /// Encodes already cut patches: (N, gh, gw, C, p, p) → embeddings (N, D, gh, gw), the layout
    /// ContextNetwork reads.
    member _.EncodeGrid(grid: Tensor) =
        expect "grid" [| Any; Any; Any; Any; Exactly patchSize; Exactly patchSize |] grid
        use scope = torch.NewDisposeScope()
        let n, gh, gw = grid.shape[0], grid.shape[1], grid.shape[2]
        let flat = grid.reshape(n * gh * gw, grid.shape[3], patchSize, patchSize)
        let z = patches.call flat
        z.view(n, gh, gw, -1L).permute(0L, 3L, 1L, 2L).contiguous().MoveToOuterDisposeScope()

    /// images: (N, C, H, W) → patch embeddings (N, D, gh, gw).
    member this.Embed(images: Tensor) =
        expect "images" [| Any; Any; Any; Any |] images
        use scope = torch.NewDisposeScope()
        this.EncodeGrid(Patches.patchGrid patchSize stride images).MoveToOuterDisposeScope()

    override _.FeatureDim = patches.FeatureDim

    /// images: (N, C, H, W), H, W ≥ patchSize → the patch features mean-pooled over the grid (N, D).
    override this.forward(images) =
        use scope = torch.NewDisposeScope()
        this.Embed(images).mean([| 2L; 3L |]).MoveToOuterDisposeScope()
