/// The encoder architectures a recipe's config can name (`--set Encoder=...`): Core's SmallConvNet
/// of a base width, ResNet-18 in its CIFAR form (a 3x3 stride-1 stem, no max-pool: for images of up
/// to 64 px) or with the ImageNet stem (7x7 stride 2 and max-pool, torchvision's: its weights load
/// whole with --init), Wide-ResNet-28-k and ViT-Tiny (width 192, 3 heads; Core's VisionTransformer) of patch
/// size p and depth d (12 unless given). Written and read as text: smallconvnet-16, resnet18,
/// resnet18-imagenet, wrn-28-2, vit-tiny-4 (patch 4, 12 blocks), vit-tiny-7-4 (patch 7, 4 blocks).
[<AutoOpen>]
module Ssl.Experiments.Backbone

open System
open Ssl.Core.Models

type Backbone =
    | SmallConvNet of width: int64
    | ResNet18
    | ResNet18ImageNet
    | WideResNet of depth: int * widen: int64
    | VitTiny of patch: int64 * depth: int

    override b.ToString() =
        match b with
        | SmallConvNet w -> $"smallconvnet-{w}"
        | ResNet18 -> "resnet18"
        | ResNet18ImageNet -> "resnet18-imagenet"
        | WideResNet(d, k) -> $"wrn-{d}-{k}"
        | VitTiny(p, 12) -> $"vit-tiny-{p}"
        | VitTiny(p, d) -> $"vit-tiny-{p}-{d}"

    /// The text forms, for messages.
    static member Forms = "smallconvnet-<width>|resnet18|resnet18-imagenet|wrn-<depth>-<k>|vit-tiny-<patch>[-<depth>]"

    static member TryParse(text: string) : Backbone option =
        let parts = text.Trim().ToLowerInvariant().Split('-')
        let number (s: string) = match Int64.TryParse s with | true, v when v > 0L -> Some v | _ -> None
        match parts with
        | [| "smallconvnet"; w |] -> number w |> Option.map SmallConvNet
        | [| "resnet18" |] -> Some ResNet18
        | [| "resnet18"; "imagenet" |] -> Some ResNet18ImageNet
        | [| "wrn"; d; k |] ->
            match number d, number k with
            | Some d, Some k when (d - 4L) % 6L = 0L -> Some(WideResNet(int d, k))
            | _ -> None
        | [| "vit"; "tiny"; p |] -> number p |> Option.map (fun p -> VitTiny(p, 12))
        | [| "vit"; "tiny"; p; d |] ->
            match number p, number d with
            | Some p, Some d when d <= 1000L -> Some(VitTiny(p, int d))
            | _ -> None
        | _ -> None

/// The image side the ViT's positional table is sized for: 28 px (Fashion-MNIST, the default data
/// set), a (28 / p)² patch grid; other sizes resize the table (VisionTransformer.PositionsFor).
let vitPositionImageSide = 28L

/// A new encoder of `backbone` for `channels` input channels. `bnMomentum`: the running-statistics
/// momentum of its batch norms (PyTorch's convention) where the recipe sets one, else each
/// architecture's default (SmallConvNet 0.1, Wide-ResNet 0.001 as MixMatch's code; ResNet-18 always
/// 0.1; the ViT has LayerNorms, no batch norm). `layout`: what its convolutions read (the run's
/// --memory-format, RuntimeOptions.ConvLayout).
let instantiate (layout: SafeConv.ConvLayout) (bnMomentum: float option) (channels: int64) (backbone: Backbone) : Encoder =
    match backbone, bnMomentum with
    | SmallConvNet w, Some m -> new Ssl.Core.Models.SmallConvNet(channels, w, m, layout) :> Encoder
    | SmallConvNet w, None -> new Ssl.Core.Models.SmallConvNet(channels, w, 0.1, layout) :> Encoder
    | ResNet18, _ -> new Ssl.Core.Models.ResNet18(channels, layout) :> Encoder
    | ResNet18ImageNet, _ -> new Ssl.Core.Models.ResNet18(channels, layout, imagenetStem = true) :> Encoder
    | WideResNet(d, k), Some m -> new Ssl.Core.Models.WideResNet(channels, d, k, m, layout) :> Encoder
    | WideResNet(d, k), None -> new Ssl.Core.Models.WideResNet(channels, d, k, 0.001, layout) :> Encoder
    | VitTiny(p, d), _ -> VisionTransformer.Tiny(channels, p, d, max 1L (vitPositionImageSide / p)) :> Encoder

/// The name of the architecture in baseline cache keys and reports (SmallConvNet16, ResNet18,
/// ResNet18-ImageNet, WRN-28-2,
/// ViT-Tiny-p4, ViT-Tiny-p7-d4).
let name (backbone: Backbone) =
    match backbone with
    | SmallConvNet w -> $"SmallConvNet{w}"
    | ResNet18 -> "ResNet18"
    | ResNet18ImageNet -> "ResNet18-ImageNet"
    | WideResNet(d, k) -> $"WRN-{d}-{k}"
    | VitTiny(p, 12) -> $"ViT-Tiny-p{p}"
    | VitTiny(p, d) -> $"ViT-Tiny-p{p}-d{d}"

/// The feature dimension an encoder of `backbone` outputs (4w, 512, 64k, 192), known before building it.
let featureDim (backbone: Backbone) =
    match backbone with
    | SmallConvNet w -> 4L * w
    | ResNet18 | ResNet18ImageNet -> 512L
    | WideResNet(_, k) -> 64L * k
    | VitTiny _ -> 192L
