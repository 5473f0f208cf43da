/// Image encoders for 28–96 px inputs: each maps images (N, C, H, W) to globally average-pooled
/// features (N, FeatureDim).
namespace Ssl.Core.Models

open TorchSharp
open type TorchSharp.torch
open Ssl.Core.Shape

/// Layer builders shared by the models of this namespace.
module internal Layers =
    /// A Sequential whose children carry the given names (so state dicts read naturally).
    let sequential (layers: (string * nn.Module<Tensor, Tensor>) list) =
        nn.Sequential(layers |> List.map (fun (name, m) -> struct (name, m)) |> Array.ofList)

    /// A 3x3 convolution with zero padding 1 and no bias (a batch norm follows it); SafeConv where
    /// the channel counts need it.
    let conv3x3 (layout: SafeConv.ConvLayout) (inputChannels: int64) (outputChannels: int64) (stride: int64) =
        SafeConv.layer layout inputChannels outputChannels 3L stride 1L false

    /// conv3x3 → BatchNorm (running-statistics momentum `bnMomentum`, PyTorch's convention) → ReLU,
    /// as named layers.
    let convBnRelu (layout: SafeConv.ConvLayout) (prefix: string) (bnMomentum: float) (inputChannels: int64) (outputChannels: int64) =
        [ $"{prefix}conv", conv3x3 layout inputChannels outputChannels 1L
          $"{prefix}bn", nn.BatchNorm2d(outputChannels, momentum = bnMomentum)
          $"{prefix}relu", nn.ReLU() ]

    let checkPositive (name: string) (value: int64) =
        if value < 1L then invalidArg name $"{name}: expected a positive number, found {value}"

    let checkMomentum (name: string) (value: float) =
        if not (value > 0.0 && value <= 1.0) then invalidArg name $"{name}: expected a value in (0, 1], found {value}"

    /// The sub-module of `model` named `layer` (a path as `named_modules` gives it); an unknown name
    /// is an error that lists the model's layer names.
    let findLayer (model: nn.Module) (layer: string) : nn.Module<Tensor, Tensor> =
        let named = model.named_modules () |> Seq.toArray
        match named |> Array.tryFind (fun struct (name, _) -> name = layer) with
        | Some(struct (_, (:? nn.Module<Tensor, Tensor> as m))) -> m
        | _ ->
            let names = named |> Array.map (fun struct (name, _) -> name) |> String.concat ", "
            invalidArg "layer" $"layer: expected one of the encoder's layers ({names}), found '{layer}'"

/// An image encoder: `forward` maps images (N, C, H, W) to features (N, FeatureDim), pooled
/// globally over space, so any input size the architecture's strides allow works (28–96 px here).
[<AbstractClass>]
type Encoder(name: string) =
    inherit nn.Module<Tensor, Tensor>(name)
    /// Length of the feature vector `forward` returns.
    abstract FeatureDim: int64

/// An encoder whose last stage can be built afresh, for heads that branch off inside it: EnAET's
/// transformation decoders read the encoder's map before its last stage and run a last stage of
/// their own (Wang et al. 2019; the authors' Wide_Resnet_AET_Model is a third WRN block group on
/// the classifier's second-group output), so the encoder's own last stage stays free to become
/// invariant to what the decoders must see.
type IStagedEncoder =
    /// The sub-module (a path as `named_modules` gives it) whose output the last stage reads.
    abstract BranchLayer: string
    /// A new, freshly initialised last stage with the encoder's shapes: the branch layer's output
    /// (N, C', H', W') → (N, FeatureDim), pooled as the encoder pools.
    abstract NewLastStage: unit -> nn.Module<Tensor, Tensor>

/// A small VGG-style conv net of base width w: conv-BN-ReLU at w channels, max-pool 2, two
/// conv-BN-ReLU at 2w, max-pool 2, two conv-BN-ReLU at 4w, global average pool; all convolutions
/// 3x3, padding 1. FeatureDim = 4w. Cost per 28x28 image (2 FLOPs per multiply-add, convolutions
/// only): 2·9·(784·C·w + 196·(2w² + 4w²) + 49·(8w² + 16w²)) = 14,112·C·w + 42,336·w² FLOPs:
/// w = 32 (default): 43,803,648 for 1 channel, 44,706,816 for 3; w = 16: 11,063,808 for 1 channel.
/// Batch norm, ReLU and pooling add under 0.3 MFLOP. A 96x96 image costs (96/28)² ≈ 11.8 times as
/// much. A w that is not a multiple of 16 makes its convolutions SafeConv2d (see SafeConv), which pads
/// the channels to multiples of 16 and costs accordingly. `inputChannels`: C of the (N, C, H, W) input;
/// H, W at least 4. `bnMomentum`: the batch norms' running-statistics momentum in (0, 1] (PyTorch's
/// convention, default 0.1; TensorFlow's decay d is 1 − d here). `layout`: what its convolutions
/// read (SafeConv.ConvLayout, channels-last unless given).
type SmallConvNet(inputChannels: int64, width: int64, bnMomentum: float, ?layout: SafeConv.ConvLayout) as this =
    inherit Encoder("SmallConvNet")
    let layout = defaultArg layout SafeConv.ChannelsLast
    do Layers.checkPositive "inputChannels" inputChannels
    do Layers.checkPositive "width" width
    do Layers.checkMomentum "bnMomentum" bnMomentum
    // The last stage: max-pool, the two 4w blocks, global average pool (also IStagedEncoder's copy).
    let lastStage () : (string * nn.Module<Tensor, Tensor>) list =
        [ "pool2", nn.MaxPool2d(2L)
          yield! Layers.convBnRelu layout "block3a_" bnMomentum (2L * width) (4L * width)
          yield! Layers.convBnRelu layout "block3b_" bnMomentum (4L * width) (4L * width)
          "pool", nn.AdaptiveAvgPool2d(1L)
          "flatten", nn.Flatten() ]
    let features =
        Layers.sequential [
            yield! Layers.convBnRelu layout "stem_" bnMomentum inputChannels width
            "pool1", nn.MaxPool2d(2L)
            yield! Layers.convBnRelu layout "block2a_" bnMomentum width (2L * width)
            yield! Layers.convBnRelu layout "block2b_" bnMomentum (2L * width) (2L * width)
            yield! lastStage () ]
    do this.RegisterComponents()

    /// Batch-norm momentum 0.1 (PyTorch's default).
    new(inputChannels: int64, width: int64) = new SmallConvNet(inputChannels, width, 0.1)

    /// The default width, 32.
    new(inputChannels: int64) = new SmallConvNet(inputChannels, 32L)

    /// Base channel count w.
    member _.Width = width

    override _.FeatureDim = 4L * width

    /// images: (N, inputChannels, H, W) → features (N, 4w).
    override _.forward(images) =
        expect "images" [| Any; Exactly inputChannels; Any; Any |] images
        features.call images

    /// The last stage reads block 2's output, (N, 2w, H/2, W/2).
    interface IStagedEncoder with
        member _.BranchLayer = "features.block2b_relu"
        member _.NewLastStage() = Layers.sequential (lastStage ())

/// The basic residual block of He et al. 2016 (two 3x3 conv-BN, identity or 1x1 conv-BN shortcut).
type BasicBlock(inputChannels: int64, outputChannels: int64, stride: int64, layout: SafeConv.ConvLayout) as this =
    inherit nn.Module<Tensor, Tensor>("BasicBlock")
    let residual =
        Layers.sequential [
            "conv1", Layers.conv3x3 layout inputChannels outputChannels stride
            "bn1", nn.BatchNorm2d(outputChannels)
            "relu1", nn.ReLU()
            "conv2", Layers.conv3x3 layout outputChannels outputChannels 1L
            "bn2", nn.BatchNorm2d(outputChannels) ]
    let shortcut =
        if stride <> 1L || inputChannels <> outputChannels then
            Layers.sequential [
                "conv", SafeConv.layer layout inputChannels outputChannels 1L stride 0L false
                "bn", nn.BatchNorm2d(outputChannels) ]
        else
            nn.Sequential()
    do this.RegisterComponents()

    override _.forward(x) =
        use scope = torch.NewDisposeScope()
        (residual.call x + shortcut.call x).relu_().MoveToOuterDisposeScope()

/// ResNet-18 (He et al. 2016, Table 1) in its CIFAR form, as SimCLR adapts it to 32 px inputs (Chen
/// et al. 2020, App. B.9): a 3x3 stem convolution with stride 1 and no max-pool, then stages of 64,
/// 128, 256, 512 channels with
/// [2, 2, 2, 2] basic blocks (stride 2 at the start of stages 2–4), global average pool, no fc.
/// 11,168,832 parameters for 3 input channels (11,167,680 for 1). FeatureDim = 512.
/// `inputChannels`: C of the (N, C, H, W) input; `layout`: what its convolutions read (channels-last unless given).
/// `imagenetStem`: the ImageNet stem of He et al. 2016 and torchvision instead (a 7x7 stride-2
/// convolution, padding 3, then a 3x3 stride-2 max-pool, padding 1: features at 1/32 of the input
/// side), so that torchvision's weights load whole (TorchvisionName); 11,176,512 parameters for 3
/// input channels.
type ResNet18(inputChannels: int64, ?layout: SafeConv.ConvLayout, ?imagenetStem: bool) as this =
    inherit Encoder("ResNet18")
    let layout = defaultArg layout SafeConv.ChannelsLast
    let imagenetStem = defaultArg imagenetStem false
    do Layers.checkPositive "inputChannels" inputChannels
    let stage (inC: int64) (outC: int64) (stride: int64) =
        Layers.sequential [
            "block1", new BasicBlock(inC, outC, stride, layout) :> nn.Module<Tensor, Tensor>
            "block2", new BasicBlock(outC, outC, 1L, layout) ]
    // The last stage: stage 4, global average pool (also IStagedEncoder's copy).
    let lastStage () : (string * nn.Module<Tensor, Tensor>) list =
        [ "stage4", stage 256L 512L 2L
          "pool", nn.AdaptiveAvgPool2d(1L)
          "flatten", nn.Flatten() ]
    let features =
        Layers.sequential (
            [ if imagenetStem then ("stem_conv", SafeConv.layer layout inputChannels 64L 7L 2L 3L false)
              else ("stem_conv", Layers.conv3x3 layout inputChannels 64L 1L)
              "stem_bn", nn.BatchNorm2d(64L) :> nn.Module<Tensor, Tensor>
              "stem_relu", nn.ReLU()
              if imagenetStem then ("stem_pool", nn.MaxPool2d(3L, 2L, 1L) :> nn.Module<Tensor, Tensor>)
              "stage1", stage 64L 64L 1L
              "stage2", stage 64L 128L 2L
              "stage3", stage 128L 256L 2L ]
            @ lastStage ())
    do this.RegisterComponents()

    override _.FeatureDim = 512L

    /// Our name of the tensor torchvision's `resnet18` calls `name` (conv1, bn1, layerS.B.convK,
    /// layerS.B.bnK, layerS.B.downsample.0/1), or `name` itself where it has none (`fc.*`, the classifier).
    static member TorchvisionName(name: string) : string =
        let parts = name.Split('.')
        let rest (from: int) = String.concat "." parts[from..]
        match parts with
        | [| "conv1"; _ |] -> "features.stem_conv." + rest 1
        | [| "bn1"; _ |] -> "features.stem_bn." + rest 1
        | _ when parts.Length >= 4 && parts[0].StartsWith "layer" ->
            match System.Int32.TryParse(parts[0].Substring 5), System.Int32.TryParse parts[1] with
            | (true, stage), (true, block) ->
                let blockPath = $"features.stage{stage}.block{block + 1}"
                match parts[2], parts[3] with
                | ("conv1" | "bn1" | "conv2" | "bn2") as layer, _ -> $"{blockPath}.residual.{layer}.{rest 3}"
                | "downsample", "0" -> $"{blockPath}.shortcut.conv.{rest 4}"
                | "downsample", "1" -> $"{blockPath}.shortcut.bn.{rest 4}"
                | _ -> name
            | _ -> name
        | _ -> name

    /// images: (N, inputChannels, H, W) → features (N, 512).
    override _.forward(images) =
        expect "images" [| Any; Exactly inputChannels; Any; Any |] images
        features.call images

    /// The last stage reads stage 3's output, (N, 256, H/4, W/4).
    interface IStagedEncoder with
        member _.BranchLayer = "features.stage3"
        member _.NewLastStage() = Layers.sequential (lastStage ())

/// The pre-activation block of the MixMatch Wide-ResNet (Berthelot et al. 2019, official code):
/// BN → leaky ReLU → conv3x3(stride) → BN → leaky ReLU → conv3x3, added to the shortcut. The
/// shortcut is the block input, or the activated input when `activateBeforeResidual`; a 1x1 conv
/// when the shape changes.
type PreActivationBlock(inputChannels: int64, outputChannels: int64, stride: int64,
                                 activateBeforeResidual: bool, bnMomentum: float, slope: float, layout: SafeConv.ConvLayout) as this =
    inherit nn.Module<Tensor, Tensor>("PreActivationBlock")
    let bn1 = nn.BatchNorm2d(inputChannels, momentum = bnMomentum)
    let residual =
        Layers.sequential [
            "conv1", Layers.conv3x3 layout inputChannels outputChannels stride
            "bn2", nn.BatchNorm2d(outputChannels, momentum = bnMomentum)
            "relu2", nn.LeakyReLU(slope)
            "conv2", Layers.conv3x3 layout outputChannels outputChannels 1L ]
    let projection =
        if stride <> 1L || inputChannels <> outputChannels then
            SafeConv.layer layout inputChannels outputChannels 1L stride 0L false
        else
            nn.Identity()
    do this.RegisterComponents()

    override _.forward(x) =
        use scope = torch.NewDisposeScope()
        let activated = nn.functional.leaky_relu(bn1.call x, slope)
        let shortcut = projection.call (if activateBeforeResidual then activated else x)
        (residual.call activated + shortcut).MoveToOuterDisposeScope()

    /// Whether the shortcut reads the activated input (else the block input).
    member _.ActivateBeforeResidual = activateBeforeResidual
    /// The leaky ReLU's negative slope.
    member _.Slope = slope

/// Wide-ResNet-depth-k (Zagoruyko & Komodakis 2016) in the variant MixMatch uses (Berthelot et al.
/// 2019, official TensorFlow code): pre-activation blocks, a 3x3 stem of 16 channels, three stages
/// of 16k, 32k, 64k channels with (depth − 4) / 6 blocks each (stride 2 at stages 2 and 3), the
/// first block of stage 1 activating before the residual split, final BN → leaky ReLU → global
/// average pool. Batch norm momentum 0.001 (PyTorch convention; TensorFlow's decay 0.999), leaky
/// ReLU slope 0.1, convolutions without bias, He-normal (fan-out) initialisation as in that code.
/// WRN-28-2 with a 10-class linear head has 1,467,610 parameters (the "1.5M" of the MixMatch
/// paper); without the head 1,466,320. FeatureDim = 64k.
/// `inputChannels`: C of the (N, C, H, W) input; `depth` = 6n + 4; `widenFactor` = k; `bnMomentum`
/// in (0, 1] (0.001 unless given); `layout`: what its convolutions read (channels-last unless given).
type WideResNet(inputChannels: int64, depth: int, widenFactor: int64, bnMomentum: float, ?layout: SafeConv.ConvLayout) as this =
    inherit Encoder("WideResNet")
    let layout = defaultArg layout SafeConv.ChannelsLast
    do
        Layers.checkPositive "inputChannels" inputChannels
        Layers.checkPositive "widenFactor" widenFactor
        if depth < 10 || (depth - 4) % 6 <> 0 then
            invalidArg "depth" $"depth: expected 6n + 4 with n >= 1 (e.g. 28), found {depth}"
        Layers.checkMomentum "bnMomentum" bnMomentum
    let slope = 0.1
    let blocksPerStage = (depth - 4) / 6
    let widths = [| 16L; 16L * widenFactor; 32L * widenFactor; 64L * widenFactor |]
    let stage (index: int) =
        Layers.sequential [
            for b in 0 .. blocksPerStage - 1 ->
                let inC = if b = 0 then widths[index] else widths[index + 1]
                let stride = if b = 0 && index > 0 then 2L else 1L
                $"block{b + 1}",
                new PreActivationBlock(inC, widths[index + 1], stride, (b = 0 && index = 0), bnMomentum, slope, layout)
                :> nn.Module<Tensor, Tensor> ]
    // The last stage: stage 3, the final BN → leaky ReLU, global average pool (also IStagedEncoder's copy).
    let lastStage () : (string * nn.Module<Tensor, Tensor>) list =
        [ "stage3", stage 2
          "final_bn", nn.BatchNorm2d(widths[3], momentum = bnMomentum)
          "final_relu", nn.LeakyReLU(slope)
          "pool", nn.AdaptiveAvgPool2d(1L)
          "flatten", nn.Flatten() ]
    let features =
        Layers.sequential [
            "stem_conv", Layers.conv3x3 layout inputChannels widths[0] 1L
            "stage1", stage 0
            "stage2", stage 1
            yield! lastStage () ]
    // He-normal (fan-out) convolutions, as the MixMatch code initialises them.
    let initialise (m: nn.Module) =
        use _ = torch.no_grad()
        for m in m.modules() do
            match m with
            | :? Modules.Conv2d as conv ->
                nn.init.kaiming_normal_(conv.weight, mode = nn.init.FanInOut.FanOut,
                                        nonlinearity = nn.init.NonlinearityType.ReLU) |> ignore
            | :? SafeConv.SafeConv2d as conv ->
                nn.init.kaiming_normal_(conv.Weight, mode = nn.init.FanInOut.FanOut,
                                        nonlinearity = nn.init.NonlinearityType.ReLU) |> ignore
            | _ -> ()
    do
        this.RegisterComponents()
        initialise this

    /// Batch-norm momentum 0.001, as the MixMatch code.
    new(inputChannels: int64, depth: int, widenFactor: int64) = new WideResNet(inputChannels, depth, widenFactor, 0.001)

    /// WRN-28-2, the MixMatch encoder.
    static member Wrn28x2(inputChannels: int64) = new WideResNet(inputChannels, 28, 2L)

    override _.FeatureDim = widths[3]

    /// The last stage reads stage 2's output, (N, 32k, H/2, W/2).
    interface IStagedEncoder with
        member _.BranchLayer = "features.stage2"
        member _.NewLastStage() =
            let stage = Layers.sequential (lastStage ())
            initialise stage
            stage

    /// images: (N, inputChannels, H, W) → features (N, 64k).
    override _.forward(images) =
        expect "images" [| Any; Exactly inputChannels; Any; Any |] images
        features.call images

/// Catches the output of one inner module of `model` (a path as `named_modules` gives it) on every
/// forward pass: with its autograd history, for a head that branches off inside an encoder and
/// trains it, or detached (`detach`), for probing a frozen encoder (LayerFeatures). Sequential
/// disposes its intermediate outputs, so the hook keeps its own handle (an alias of the same
/// tensor, or the detached one). Dispose to remove the hook.
type LayerTap(model: nn.Module, layer: string, detach: bool) =
    let target = Layers.findLayer model layer
    let mutable caught: Tensor = null
    let hook =
        target.register_forward_hook(fun _ _ output ->
            if not (isNull caught) then caught.Dispose()
            caught <- (if detach then output.detach() else output.alias())
            output)

    /// A tap that keeps the autograd history.
    new(model: nn.Module, layer: string) = new LayerTap(model, layer, false)

    /// The layer's output from the latest forward pass (the caller owns it); a second Take without a
    /// forward pass in between is an error.
    member _.Take() : Tensor =
        if isNull caught then invalidOp $"LayerTap: layer '{layer}' has not run since the last Take"
        let output = caught
        caught <- null
        output

    interface System.IDisposable with
        member _.Dispose() =
            hook.remove ()
            if not (isNull caught) then caught.Dispose()
            caught <- null

/// A representation read from another encoder (an inner layer, a ViT's class tokens): what a run
/// exports is that encoder, whole.
type IEncoderView =
    abstract Encoder: Encoder

/// The features of one inner layer of `encoder`, for asking where a pretext task's best features
/// sit: Gidaris et al. 2018 (RotNet, Table 1) and Noroozi & Favaro 2016 probe each conv block, and
/// VISSL's benchmarks fit linear classifiers on several layers at once. `encoder` runs whole; the
/// output (N, C, H, W) of its sub-module named `layer` (a path as `named_modules` gives it, e.g.
/// "features.block2b_relu" of SmallConvNet) is caught by a forward hook, average-pooled to
/// `pool` x `pool` and flattened: FeatureDim = C·pool². `inputShape` = (C, H, W) of one input
/// image, used once (in eval mode, without gradients) to find C. The features are detached: this
/// is for probing frozen encoders. An unknown `layer` is an error that lists the encoder's layer
/// names.
type LayerFeatures(encoder: Encoder, layer: string, pool: int64, inputShape: int64[]) as this =
    inherit Encoder("LayerFeatures")
    do Layers.checkPositive "pool" pool
    let tap = new LayerTap(encoder, layer, true)
    let channels =
        let wasTraining = encoder.training
        encoder.eval ()
        try
            use _ = torch.no_grad ()
            use probe = torch.zeros(Array.append [| 1L |] inputShape)
            use _ = encoder.call probe
            use caught = tap.Take()
            caught.shape[1]
        finally encoder.train wasTraining
    do this.RegisterComponents()

    override _.FeatureDim = channels * pool * pool

    /// images: (N, C, H, W) → the layer's output pooled to pool x pool, (N, C'·pool²).
    override _.forward(images) =
        use _ = encoder.call images
        use output = tap.Take()
        use pooled = nn.functional.adaptive_avg_pool2d(output, [| pool; pool |])
        pooled.flatten(1L)

    /// The encoder whose layer this reads (what a run exports).
    member _.Encoder = encoder
    /// The sub-module whose output is read, and the pooled size.
    member _.Layer = layer
    member _.Pool = pool

    interface IEncoderView with
        member _.Encoder = encoder

    /// Removes the forward hook from the encoder.
    member _.RemoveHook() = (tap :> System.IDisposable).Dispose()
