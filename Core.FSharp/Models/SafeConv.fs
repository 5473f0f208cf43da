/// A float32 convolution whose forward and input gradient are right on every CPU we run on.
///
/// libtorch 2.10's CPU float32 conv2d (oneDNN's jit:avx512_core kernels) is wrong, sometimes NaN, on
/// this project's AVX-512 machines (AMD EPYC) for two families of channel counts, measured against
/// float64 (docs/conv-backward-bug.md):
/// - backward-data (the gradient with respect to the input, and so everything upstream of the layer)
///   when the output channel count is not a multiple of 16 (any count: 1-20, 24 all failed);
/// - the forward pass of an NCHW input when the input channel count is above 16 and not a multiple
///   of 16 (17-31 and 33-47 all failed, relative errors 0.15-0.45 or NaN; 1-16, 32, 48 were right).
///   oneDNN then reorders the input into a channel-blocked layout padded to 16 ("ap" in
///   ONEDNN_VERBOSE), and the result changes from call to call: an uninitialised read. A
///   channels-last input is read as it is (nhwc), and its 3x3 and 5x5 convolutions were right for
///   17-47 (its 1x1 ones were not).
/// Weight gradients were right in every case measured, and float64 is right. Padding the filters
/// with zeros up to the next multiple of 16 outputs (dropping the extra outputs) where the input's
/// gradient is needed, and the input (NCHW, or a 1x1 kernel) and the filters with zero channels up
/// to the next multiple of 16 inputs, computes the same function with right values and gradients.
module Ssl.Core.Models.SafeConv

open TorchSharp
open type TorchSharp.torch

/// Channel counts are padded to a multiple of this.
[<Literal>]
let ChannelBlock = 16L

/// The memory layout a convolution made here reads its input in on the CPU: channels-last (NHWC
/// strides), where oneDNN runs it, and the batch norms, ReLUs and max-pools after it, in NHWC (the
/// supervised SmallConvNet-16 step ran 1.37x faster than in NCHW: docs/performance.md, "Step by
/// step"), or NCHW. A matter of strides: shapes, parameters and checkpoints stay (N, C, H, W). Each
/// layer holds the layout it was built with; a run builds its models with its --memory-format
/// (RuntimeOptions, docs/runtime.md).
type ConvLayout =
    | ChannelsLast
    | Nchw

/// Whether x (N, C, H, W) is dense in channels-last order, C densest (libtorch's
/// is_contiguous(ChannelsLast)): dimensions of size 1 may have any stride.
let private denseChannelsLast (shape: int64[]) (strides: int64[]) =
    let mutable expected, dense = 1L, true
    for d in [ 1; 3; 2; 0 ] do
        if shape[d] <> 1L && strides[d] <> expected then dense <- false
        expected <- expected * shape[d]
    dense

/// Whether libtorch reads strides as channels-last (is_channels_last_strides_2d_s4 in
/// c10/core/MemoryFormat.h, what suggest_memory_format and so a convolution go by): strides
/// non-decreasing in the order C, W, H, N, each at least the span of the ones before; ties go to NCHW.
let private stridesSayChannelsLast (shape: int64[]) (strides: int64[]) =
    let mutable least, ordered = 0L, strides[1] <> 0L
    for d in [ 1; 3; 2; 0 ] do
        if shape[d] = 0L || strides[d] < least || (d = 0 && least = strides[1]) then ordered <- false
        least <- strides[d] * (if shape[d] > 1L then shape[d] else 1L)
    ordered

/// Whether a convolution on x (N, C, H, W) runs channels-last, and reads x's memory as it is: x is
/// dense in that order and its strides say so. The second matters where sizes of 1 make both orders
/// dense: a 1-channel image batch with NCHW strides (784, 784, 28, 1) counts as NCHW, and then its
/// convolution's output and every batch norm, ReLU and max-pool after it run NCHW (they did in the
/// supervised step's first stage, ~2x slower: docs/performance.md, "Step by step").
let isChannelsLast (x: Tensor) =
    x.dim() = 4L && (let shape, strides = x.shape, x.stride() in denseChannelsLast shape strides && stridesSayChannelsLast shape strides)

/// x (N, C, H, W) with channels-last strides (C densest): x itself when it already is, else a copy.
/// TorchSharp 0.107 has no memory_format argument: the copy goes into an empty tensor made with
/// the canonical channels-last strides (C·H·W, 1, W·C, C), which libtorch reads as channels-last
/// whatever the sizes (permute, contiguous, permute back keeps NCHW strides when C = 1).
let channelsLast (x: Tensor) =
    if isChannelsLast x then x
    else
        let shape = x.shape
        let strides = [| shape[1] * shape[2] * shape[3]; 1L; shape[3] * shape[1]; shape[1] |]
        empty_strided(shape, strides, dtype = x.dtype, device = x.device).copy_(x)

/// Whether a convolution of `layout` runs channels-last on x: the layout is ChannelsLast and x is a
/// 4-D CPU tensor (`convolutionInput` then gives it that layout).
let runsChannelsLast (layout: ConvLayout) (x: Tensor) = layout = ChannelsLast && x.dim() = 4L && x.device_type = DeviceType.CPU

/// The input a convolution of `layout` reads: a channels-last copy of x where it `runsChannelsLast`
/// and x is not channels-last already, else x itself.
let convolutionInput (layout: ConvLayout) (x: Tensor) = if runsChannelsLast layout x then channelsLast x else x

/// Zero output channels to append so libtorch's backward-data is right: up to a multiple of 16.
let outputPadding (outputs: int64) = (ChannelBlock - outputs % ChannelBlock) % ChannelBlock

/// Zero input channels to append so libtorch's forward is right: none up to 16 inputs, else up to a
/// multiple of 16.
let inputPadding (inputs: int64) =
    if inputs <= ChannelBlock then 0L else (ChannelBlock - inputs % ChannelBlock) % ChannelBlock

/// Whether a convolution from `inputs` to `outputs` channels needs SafeConv on a float32 CPU.
let needsPadding (inputs: int64) (outputs: int64) = outputPadding outputs > 0L || inputPadding inputs > 0L

/// Whether a convolution's backward will compute the gradient of its input x (backward-data, the
/// kernel that needs the output padding): gradients are on and x requires one. The forward and the
/// weight gradient are right without it, so a first layer reading images, or any layer under
/// no_grad (a momentum encoder's keys), runs unpadded outputs.
let needsInputGradient (x: Tensor) = torch.is_grad_enabled () && x.requires_grad

/// Whether x's channels need no padding for `weight` (O, C, kh, kw): the convolution runs
/// channels-last with a kernel wider than 1x1. oneDNN then reads the source as it is (nhwc), and
/// its forward and gradients were right for every input count from 17 to 47 (3x3 and 5x5, strides
/// 1 and 2); an NCHW source is reordered into 16-channel blocks whose padding is read uninitialised,
/// and 1x1 channels-last convolutions were wrong too (docs/conv-backward-bug.md).
let readsAnyInputCount (layout: ConvLayout) (x: Tensor) (weight: Tensor) =
    runsChannelsLast layout x && weight.shape[2] > 1L && weight.shape[3] > 1L

/// A 1x1 convolution without padding on x (N, C, H, W) as a matrix product over the channels of
/// every `stride`-th pixel: y[n, :, i, j] = W · x[n, :, s·i, s·j] + b, with channels-last strides out.
/// libtorch 2.10's channels-last 1x1 float32 kernels were wrong on this project's machines for
/// shapes no rule predicts (80 and 512 outputs among them), where sgemm is right
/// (docs/conv-backward-bug.md, "1x1 convolutions"). weight: (O, C, 1, 1); bias: (O) or null.
let pointwise (stride: int64) (x: Tensor) (weight: Tensor) (bias: Tensor) : Tensor =
    use scope = NewDisposeScope()
    let sampled = if stride = 1L then x else x.slice(2L, 0L, x.shape[2], stride).slice(3L, 0L, x.shape[3], stride)
    let product = sampled.permute(0L, 2L, 3L, 1L).matmul(weight.flatten(1L).t())
    let withBias = if isNull bias then product else product + bias
    withBias.permute(0L, 3L, 1L, 2L).MoveToOuterDisposeScope()

/// conv2d(x, weight, bias) with zero filters appended up to a multiple of `ChannelBlock` output
/// channels (when x's gradient will be computed: `needsInputGradient`) and, above `ChannelBlock`
/// inputs (unless `readsAnyInputCount`), zero channels appended to x and the filters up to a
/// multiple of `ChannelBlock` inputs (float32 on the CPU only; elsewhere, or when no padding is
/// needed, a plain conv2d); the extra outputs dropped; x read in `layout` (convolutionInput). A 1x1
/// convolution without padding that runs channels-last is `pointwise` instead.
/// x: (N, C, H, W); weight: (O, C, k, k); bias: (O) or null → (N, O, H', W').
let conv2d (layout: ConvLayout) (stride: int64) (padding: int64) (x: Tensor) (weight: Tensor) (bias: Tensor) : Tensor =
    let outputs = weight.shape[0]
    if weight.shape[2] = 1L && weight.shape[3] = 1L && padding = 0L && x.dtype = ScalarType.Float32 && runsChannelsLast layout x then
        pointwise stride x weight bias
    else
        let extraOut = if needsInputGradient x then outputPadding outputs else 0L
        let extraIn = if readsAnyInputCount layout x weight then 0L else inputPadding weight.shape[1]
        if (extraOut = 0L && extraIn = 0L) || x.dtype <> ScalarType.Float32 || x.device.``type`` <> DeviceType.CPU then
            use scope = NewDisposeScope()
            nn.functional.conv2d(convolutionInput layout x, weight, bias, strides = [| stride; stride |], padding = [| padding; padding |])
                .MoveToOuterDisposeScope()
        else
            use scope = NewDisposeScope()
            let zerosLike (tensor: Tensor) (dim: int) (count: int64) =
                let shape = Array.copy tensor.shape
                shape[dim] <- count
                zeros(shape, dtype = tensor.dtype, device = tensor.device)
            let widen (tensor: Tensor) (dim: int) (count: int64) =
                if count = 0L then tensor else cat([| tensor; zerosLike tensor dim count |], Operators.int64 dim)
            let paddedWeight = widen (widen weight 1 extraIn) 0 extraOut
            let paddedBias = if isNull bias then null else widen bias 0 extraOut
            let output =
                nn.functional.conv2d(widen (convolutionInput layout x) 1 extraIn, paddedWeight, paddedBias, strides = [| stride; stride |], padding = [| padding; padding |])
            if extraOut = 0L then output.MoveToOuterDisposeScope()
            else
                let narrowed = output.narrow(1L, 0L, outputs)
                // The narrowed map is strided; a dense channels-last copy keeps the layers after it on their fast paths.
                (convolutionInput layout narrowed).MoveToOuterDisposeScope()

/// A convolution computed through `SafeConv.conv2d` in `layout` (ChannelsLast unless given), with
/// nn.Conv2d's parameters, names (`weight`, `bias`) and initialisation, so checkpoints and exports
/// read the same whether a layer needs the workaround or not.
/// x: (N, inputChannels, H, W) → (N, outputChannels, H', W').
type SafeConv2d(inputChannels: int64, outputChannels: int64, kernelSize: int64, stride: int64, padding: int64, hasBias: bool, ?layout: ConvLayout) as this =
    inherit nn.Module<Tensor, Tensor>("SafeConv2d")
    let layout = defaultArg layout ChannelsLast
    do
        // nn.Conv2d's initialisation (the same draws); its parameters then registered here.
        use conv = nn.Conv2d(inputChannels, outputChannels, kernelSize, stride = stride, padding = padding, bias = hasBias)
        let own (t: Tensor) =
            use detached = t.detach()
            nn.Parameter(detached.clone().DetachFromDisposeScope())
        this.register_parameter("weight", own conv.weight)
        if hasBias then this.register_parameter("bias", own conv.bias)

    member _.Layout = layout
    /// The stride and the zero padding on each side, in both spatial dimensions.
    member _.Stride = stride
    member _.Padding = padding
    /// (outputChannels, inputChannels, k, k), as nn.Conv2d's; read from the module's parameters, so
    /// `to` and `load` keep it current.
    member this.Weight : Tensor = this.get_parameter "weight"
    /// (outputChannels), or null without a bias.
    member this.Bias : Tensor = if hasBias then this.get_parameter "bias" else null

    override this.forward(x) = conv2d layout stride padding x this.Weight this.Bias

    interface ICountsMultiplyAdds with
        member _.MultiplyAdds(_, output) = MultiplyAdds.convolution inputChannels kernelSize output

/// A convolution layer for any channel counts reading its input in `layout`: nn.Conv2d where
/// libtorch's float32 CPU kernels are right for them (`needsPadding` false, and not a channels-last
/// 1x1 convolution, which `pointwise` computes), else SafeConv2d; both
/// with parameters `weight` and `bias`. Every convolution of Core's models is made here, or is a
/// SafeConv2d built directly where its counts always need it (BigBiGAN's generator output,
/// colorization's 261-bin head).
let layer (layout: ConvLayout) (inputChannels: int64) (outputChannels: int64) (kernelSize: int64) (stride: int64) (padding: int64) (bias: bool)
    : nn.Module<Tensor, Tensor> =
    if needsPadding inputChannels outputChannels || (kernelSize = 1L && padding = 0L && layout = ChannelsLast) then
        new SafeConv2d(inputChannels, outputChannels, kernelSize, stride, padding, bias, layout)
    else
        let conv = nn.Conv2d(inputChannels, outputChannels, kernelSize, stride = stride, padding = padding, bias = bias)
        // nn.Conv2d is sealed: its input's layout is set by a pre-hook (`call` runs it, as Sequential does).
        if layout = ChannelsLast then conv.register_forward_pre_hook(fun _ x -> convolutionInput layout x) |> ignore
        conv
