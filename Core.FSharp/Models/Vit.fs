/// The Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words", eq. 1-4) in
/// the form DINO trains (Caron et al. 2021; the authors' vision_transformer.py): non-overlapping
/// p × p patches linearly embedded, a class token, learned positional embeddings, pre-norm blocks
/// (x + MSA(LN(x)), then x + MLP(LN(x)) with GELU), a final LayerNorm; the output is the class
/// token. Sizes are fitted to 28–96 px inputs by the patch size.
namespace Ssl.Core.Models

open TorchSharp
open type TorchSharp.torch
// Last, so F#'s float, int64, sqrt, ... win over torch's dtype fields and tensor functions.
open Microsoft.FSharp.Core.Operators
open Ssl.Core.Shape

/// The reference's initialiser, timm's trunc_normal_(std) with absolute bounds (-2, 2). TorchSharp
/// 0.107's nn.init.trunc_normal_ is wrong (it fills a tensor with one value: standard deviation 0,
/// measured), so this draws normal_(0, std) and clamps to the bounds, the same distribution where
/// the bounds are 100 σ away (σ = 0.02: a draw beyond them has probability below 1e-2000).
module internal Initialise =
    let truncatedNormal (std: float) (t: Tensor) =
        use _ = no_grad ()
        nn.init.normal_(t, 0.0, std).clamp_(Scalar.op_Implicit -2.0, Scalar.op_Implicit 2.0) |> ignore

/// The patch embedding of ViT eq. 1: each p × p patch of each image, flattened channel-major
/// (c, row, column), times a (C·p², D) matrix plus a bias. This is the reference's stride-p
/// convolution written as unfold + linear, which computes the same function and does not go
/// through libtorch's float32 CPU convolution (docs/conv-backward-bug.md); the weight has the
/// reference's Conv2d default initialisation (Kaiming-uniform, a = √5, fan-in C·p²), which
/// nn.Linear also uses. images (N, C, H, W) with H and W multiples of p → tokens (N, (H/p)(W/p), D),
/// row-major over the patch grid.
type PatchEmbedding(inputChannels: int64, patchSize: int64, dim: int64) as this =
    inherit nn.Module<Tensor, Tensor>("PatchEmbedding")
    do Layers.checkPositive "patchSize" patchSize
    let projection = nn.Linear(inputChannels * patchSize * patchSize, dim)
    do this.RegisterComponents()

    member _.PatchSize = patchSize

    /// The (D, C·p²) projection weight and (D) bias.
    member _.Weight: Tensor = projection.weight
    member _.Bias: Tensor = projection.bias

    /// The patch grid (rows, columns) of `images`; an image side that is not a multiple of p is an
    /// error naming the shape (crop or resize the images to a multiple of the patch size).
    member _.Grid(images: Tensor) =
        expect "images" [| Any; Exactly inputChannels; Any; Any |] images
        let h, w = images.shape[2], images.shape[3]
        if h % patchSize <> 0L || w % patchSize <> 0L || h = 0L || w = 0L then
            invalidArg "images"
                $"images: expected height and width that are positive multiples of the patch size {patchSize}, found {show images.shape}"
        h / patchSize, w / patchSize

    override m.forward(images) =
        let rows, columns = m.Grid images
        use scope = NewDisposeScope()
        let n = images.shape[0]
        let patches =
            images.reshape(n, inputChannels, rows, patchSize, columns, patchSize)
                .permute(0L, 2L, 4L, 1L, 3L, 5L).reshape(n, rows * columns, inputChannels * patchSize * patchSize)
        projection.call(patches).MoveToOuterDisposeScope()

/// Multi-head self-attention (Vaswani et al. 2017, eq. 1; ViT eq. 5-8): q, k, v = x W_qkv (with
/// bias, as DINO's ViT-Tiny), per head softmax(q kᵀ / √d_h) v, the heads concatenated and projected.
/// tokens (N, T, D) → (N, T, D); D a multiple of `heads`.
type MultiHeadSelfAttention(dim: int64, heads: int64) as this =
    inherit nn.Module<Tensor, Tensor>("MultiHeadSelfAttention")
    do
        Layers.checkPositive "heads" heads
        if dim % heads <> 0L then invalidArg "heads" $"heads: expected a divisor of the width {dim}, found {heads}"
    let headDim = dim / heads
    let qkv = nn.Linear(dim, 3L * dim)
    let proj = nn.Linear(dim, dim)
    do this.RegisterComponents()

    /// The number of attention heads.
    member _.Heads = heads

    override _.forward(tokens) =
        expect "tokens" [| Any; Any; Exactly dim |] tokens
        use scope = NewDisposeScope()
        let n, t = tokens.shape[0], tokens.shape[1]
        let parts = qkv.call(tokens).reshape(n, t, 3L, heads, headDim).permute(2L, 0L, 3L, 1L, 4L)
        let q, k, v = parts[0], parts[1], parts[2]
        let attention = (q.matmul(k.transpose(-2L, -1L)) * (1.0 / sqrt (float headDim))).softmax(-1L)
        let mixed = attention.matmul(v).transpose(1L, 2L).reshape(n, t, dim)
        proj.call(mixed).MoveToOuterDisposeScope()

/// A pre-norm Transformer block (ViT eq. 2-3): x + MSA(LN(x)), then x + MLP(LN(x)), the MLP
/// fc → GELU → fc with `mlpDim` hidden units; LayerNorm ε = 1e-6 as DINO's. tokens (N, T, D) → (N, T, D).
type TransformerBlock(dim: int64, heads: int64, mlpDim: int64) as this =
    inherit nn.Module<Tensor, Tensor>("TransformerBlock")
    let norm1 = nn.LayerNorm(dim, eps = 1e-6)
    let attention = new MultiHeadSelfAttention(dim, heads)
    let norm2 = nn.LayerNorm(dim, eps = 1e-6)
    let mlp =
        Layers.sequential [ "fc1", nn.Linear(dim, mlpDim); "gelu", nn.GELU(); "fc2", nn.Linear(mlpDim, dim) ]
    do this.RegisterComponents()

    override _.forward(tokens) =
        use scope = NewDisposeScope()
        let x = tokens + attention.call (norm1.call tokens)
        (x + mlp.call (norm2.call x)).MoveToOuterDisposeScope()

/// A Vision Transformer encoder (see the namespace note): width `dim`, `depth` blocks of `heads`
/// heads and `mlpDim` MLP units, p × p patches. The positional table holds 1 + g² vectors for a
/// g × g patch grid (`positionGrid`); other grids (DINO's local crops, other image sizes) get the
/// patch part resized bicubically, as DINO's interpolate_pos_encoding, and at g × g it is used as
/// is. Initialisation as the reference: linear weights truncated normal (σ 0.02) with zero biases,
/// LayerNorms 1 and 0, class token and positional table truncated normal (σ 0.02), the patch
/// embedding as its convolution's default. Stochastic depth and dropout are not implemented (DINO's
/// ViT-Tiny defaults to none but drop_path 0.1 in main_dino.py). FeatureDim = dim: the final
/// LayerNorm of the class token. images (N, C, H, W), H and W multiples of p → (N, dim).
type VisionTransformer(inputChannels: int64, patchSize: int64, dim: int64, depth: int, heads: int64, mlpDim: int64, positionGrid: int64)
    as this =
    inherit Encoder("VisionTransformer")
    do
        Layers.checkPositive "inputChannels" inputChannels
        Layers.checkPositive "dim" dim
        Layers.checkPositive "depth" (int64 depth)
        Layers.checkPositive "mlpDim" mlpDim
        Layers.checkPositive "positionGrid" positionGrid
    let patchEmbedding = new PatchEmbedding(inputChannels, patchSize, dim)
    let classToken = nn.Parameter(zeros(1L, 1L, dim))
    let positions = nn.Parameter(zeros(1L, 1L + positionGrid * positionGrid, dim))
    let blocks = nn.ModuleList<nn.Module<Tensor, Tensor>>([| for _ in 1 .. depth -> new TransformerBlock(dim, heads, mlpDim) :> nn.Module<Tensor, Tensor> |])
    let norm = nn.LayerNorm(dim, eps = 1e-6)
    do
        this.RegisterComponents()
        use _ = no_grad ()
        Initialise.truncatedNormal 0.02 classToken
        Initialise.truncatedNormal 0.02 positions
        for struct (name, m) in this.named_modules () do
            match m with
            | :? Modules.Linear as linear when not (name.StartsWith "patchEmbedding") ->
                Initialise.truncatedNormal 0.02 linear.weight
                if not (isNull linear.bias) then nn.init.zeros_(linear.bias) |> ignore
            | :? Modules.LayerNorm as layerNorm ->
                nn.init.ones_(layerNorm.weight) |> ignore
                nn.init.zeros_(layerNorm.bias) |> ignore
            | _ -> ()

    /// ViT-Tiny (Touvron et al. 2021, DeiT; DINO's vit_tiny): width 192, 3 heads, MLP 768, of `depth`
    /// blocks (12 in the reference).
    static member Tiny(inputChannels: int64, patchSize: int64, depth: int, positionGrid: int64) =
        new VisionTransformer(inputChannels, patchSize, 192L, depth, 3L, 768L, positionGrid)

    override _.FeatureDim = dim
    member _.PatchSize = patchSize
    member _.Depth = depth
    member _.PatchEmbedding = patchEmbedding
    /// The class token (1, 1, D).
    member _.ClassToken: Tensor = classToken

    /// The positional table for a rows × columns patch grid: (1, 1 + rows·columns, D); the class
    /// token's vector as is, the patch vectors resized bicubically from g × g (align_corners false).
    member _.PositionsFor(rows: int64, columns: int64) : Tensor =
        if rows = positionGrid && columns = positionGrid then positions.alias ()
        else
            use scope = NewDisposeScope()
            let grid = positions.narrow(1L, 1L, positionGrid * positionGrid).reshape(1L, positionGrid, positionGrid, dim).permute(0L, 3L, 1L, 2L)
            let resized =
                nn.functional.interpolate(grid, size = [| rows; columns |], mode = InterpolationMode.Bicubic, align_corners = false)
            let patchPart = resized.permute(0L, 2L, 3L, 1L).reshape(1L, rows * columns, dim)
            cat([| positions.narrow(1L, 0L, 1L); patchPart |], 1L).MoveToOuterDisposeScope()

    /// The input sequence of the blocks (ViT eq. 1): [class token; patch embeddings] plus positions.
    /// images (N, C, H, W) → (N, 1 + (H/p)(W/p), D).
    member _.Tokens(images: Tensor) : Tensor =
        let rows, columns = patchEmbedding.Grid images
        use scope = NewDisposeScope()
        let patches = patchEmbedding.call images
        let classes = classToken.expand(images.shape[0], -1L, -1L)
        (cat([| classes; patches |], 1L) + this.PositionsFor(rows, columns)).MoveToOuterDisposeScope()

    /// The token mixer: the blocks and the final LayerNorm. tokens (N, T, D) → (N, T, D).
    member _.Mix(tokens: Tensor) : Tensor =
        expect "tokens" [| Any; Any; Exactly dim |] tokens
        use scope = NewDisposeScope()
        let mutable x = tokens
        for block in blocks do x <- block.call x
        (norm.call x).MoveToOuterDisposeScope()

    /// images (N, inputChannels, H, W) → the class token's output (N, dim).
    override m.forward(images) =
        use scope = NewDisposeScope()
        (m.Mix(m.Tokens images)).select(1L, 0L).MoveToOuterDisposeScope()

    /// The class token after each of the last `n` blocks, each through the final LayerNorm, oldest
    /// first, concatenated: DINO's linear evaluation of a ViT (Caron et al. 2021, Sec. 4.1 and App.
    /// D; eval_linear.py's get_intermediate_layers with n_last_blocks 4 for ViT-S). n = 1 is forward.
    /// images → (N, n·dim); n outside 1..depth is an error naming it.
    member m.ClassTokens(images: Tensor, n: int) : Tensor = m.ClassTokens(images, n, false)

    /// As ClassTokens(images, n), with `patchMean` the mean of the last block's patch tokens (after
    /// the final LayerNorm) appended: eval_linear.py's --avgpool_patchtokens (its ViT-B protocol, n 1;
    /// here any n). images → (N, (n + 1)·dim).
    member m.ClassTokens(images: Tensor, n: int, patchMean: bool) : Tensor =
        if n < 1 || n > depth then invalidArg "n" $"n: expected 1 to the depth {depth} of last blocks, found {n}"
        use scope = NewDisposeScope()
        let mutable x = m.Tokens images
        let tokens = ResizeArray<Tensor>()
        let mutable last = x
        for i in 0 .. depth - 1 do
            x <- blocks[i].call x
            if i >= depth - n then
                last <- norm.call x
                tokens.Add(last.select(1L, 0L))
        if patchMean then tokens.Add(last.narrow(1L, 1L, last.shape[1] - 1L).mean([| 1L |]))
        cat(tokens.ToArray(), 1L).MoveToOuterDisposeScope()

/// A ViT read as DINO's linear evaluation reads it: the class tokens of its last `blocks` blocks
/// (VisionTransformer.ClassTokens), with `patchMean` also the mean of the last block's patch tokens,
/// FeatureDim = (blocks [+ 1]) · dim; the probes' view, not trained through.
type ClassTokenFeatures(vit: VisionTransformer, blocks: int, patchMean: bool) as this =
    inherit Encoder("ClassTokenFeatures")
    do if blocks < 1 || blocks > vit.Depth then invalidArg "blocks" $"blocks: expected 1 to the ViT's depth {vit.Depth}, found {blocks}"
    do this.RegisterComponents()
    new(vit, blocks) = new ClassTokenFeatures(vit, blocks, false)
    override _.FeatureDim = int64 (if patchMean then blocks + 1 else blocks) * vit.FeatureDim
    override _.forward(images) = vit.ClassTokens(images, blocks, patchMean)
    member _.Encoder = vit
    /// The last blocks whose class tokens are read, and whether the patch-token mean follows them.
    member _.Blocks = blocks
    member _.PatchMean = patchMean

    interface IEncoderView with
        member _.Encoder = vit
