/// The masked autoencoder's model pieces (He et al. 2022, "Masked Autoencoders Are Scalable Vision
/// Learners", Sec. 3; the authors' models_mae.py): per-sample random masking of the patch tokens,
/// the ViT encoder run on the class token and the visible patches only, and the light decoder that
/// fills the removed places with a shared mask token and predicts every patch's pixels.
namespace Ssl.Core.Models

open TorchSharp
open type TorchSharp.torch
// Last, so F#'s float, int64, sqrt, ... win over torch's dtype fields and tensor functions.
open Microsoft.FSharp.Core.Operators
open Ssl.Core.Shape

module MaskedAutoencoder =
    /// models_mae.random_masking for `count` sequences of `length` patches: per-sample uniform noise
    /// (drawn with `generator` on its device, moved to `device`), argsort ascending, the first
    /// ⌊length·(1 − ratio)⌋ kept. Returns (kept (count, K) int64, the kept patches' indices in noise
    /// order; mask (count, length) float32, 1 where the patch is removed; restore (count, length)
    /// int64, the argsort of the shuffle, which puts [kept; removed] back in patch order). `ratio`
    /// in (0, 1), and it must keep and remove at least one patch.
    let randomMasking (ratio: float) (generator: Generator) (count: int64) (length: int64) (device: Device) =
        if not (ratio > 0.0 && ratio < 1.0) then invalidArg "ratio" $"ratio: expected a mask ratio in (0, 1), found {ratio}"
        if count < 1L then invalidArg "count" $"count: expected at least one sequence, found {count}"
        let keep = int64 (floor (float length * (1.0 - ratio)))
        if keep < 1L || keep >= length then
            invalidArg "length" $"length: expected a sequence of which ratio {ratio} keeps at least one patch and removes one, found {length} patches ({keep} kept)"
        use scope = NewDisposeScope()
        let noise =
            (Ssl.Core.Transforms.Draw.rows generator 0L count (fun n ->
                rand([| n; length |], dtype = ScalarType.Float64, device = generator.device, generator = generator))).``to``(device)
        let shuffle = noise.argsort(1L)
        let restore = shuffle.argsort(1L)
        let mask = ones([| count; length |], dtype = ScalarType.Float32, device = device)
        mask.narrow(1L, 0L, keep).zero_() |> ignore
        let mask = mask.gather(1L, restore)
        shuffle.narrow(1L, 0L, keep).contiguous().MoveToOuterDisposeScope(), mask.MoveToOuterDisposeScope(), restore.MoveToOuterDisposeScope()

    /// util/pos_embed.get_2d_sincos_pos_embed(dim, grid, cls_token=True), the decoder's fixed table:
    /// (1 + grid², dim) on `device` in `dtype`; row 0 (the class token) zeros; row 1 + i·grid + j the
    /// column j's sin-cos code in its first dim/2 entries and row i's in the rest, each
    /// [sin(x·ω_d); cos(x·ω_d)] with ω_d = 10000^(−d/(dim/4)), d < dim/4. `dim` a multiple of 4.
    let sinCosPositions (dim: int64) (grid: int64) (device: Device) (dtype: ScalarType) : Tensor =
        if dim < 4L || dim % 4L <> 0L then invalidArg "dim" $"dim: expected a positive multiple of 4, found {dim}"
        if grid < 1L then invalidArg "grid" $"grid: expected a positive grid side, found {grid}"
        use scope = NewDisposeScope()
        let quarter = dim / 4L
        let omega = (arange(quarter, dtype = ScalarType.Float64, device = device) * (-(log 10000.0) / float quarter)).exp()
        let code (positions: Tensor) : Tensor =
            let angles = positions.unsqueeze(1L) * omega.unsqueeze(0L)
            cat([| angles.sin(); angles.cos() |], 1L)
        let along = arange(grid, dtype = ScalarType.Float64, device = device)
        let columns, rows = along.repeat(grid), along.repeat_interleave(grid)
        let table = cat([| zeros(1L, dim, dtype = ScalarType.Float64, device = device); cat([| code columns; code rows |], 1L) |], 0L)
        table.unsqueeze(0L).to_type(dtype).MoveToOuterDisposeScope()

    /// models_mae.forward_encoder on `vit`'s own pieces: the patch embeddings plus their positions,
    /// the `kept` ones gathered, the class token plus its position prepended, then the blocks and the
    /// final norm (VisionTransformer.Mix). With every patch kept in order this is Mix(Tokens images).
    /// images (N, C, H, W); kept (N, K) patch indices → latent (N, 1 + K, D).
    let encodeVisible (vit: VisionTransformer) (kept: Tensor) (images: Tensor) : Tensor =
        let rows, columns = vit.PatchEmbedding.Grid images
        let n, dim = images.shape[0], vit.FeatureDim
        expect "kept" [| Exactly n; Any |] kept
        use scope = NewDisposeScope()
        let positions = vit.PositionsFor(rows, columns)
        let patches = vit.PatchEmbedding.call images + positions.narrow(1L, 1L, rows * columns)
        let visible = patches.gather(1L, kept.unsqueeze(-1L).expand(-1L, -1L, dim))
        let classes = (vit.ClassToken + positions.narrow(1L, 0L, 1L)).expand(n, -1L, -1L)
        vit.Mix(cat([| classes; visible |], 1L)).MoveToOuterDisposeScope()

/// models_mae's decoder (forward_decoder): decoder_embed (a linear map from the encoder's width to
/// `dim`), the removed places filled with one learned mask token and the sequence unshuffled by
/// `restore`, the fixed 2-D sin-cos positions (MaskedAutoencoder.sinCosPositions) added, `depth`
/// pre-norm Transformer blocks of `heads` heads and `mlpDim` MLP units, a LayerNorm (ε 1e-6) and
/// decoder_pred to p²·C pixels per patch; the class token's output dropped. Initialisation as
/// initialize_weights: Linear weights Xavier-uniform with zero biases, the mask token normal (σ 0.02).
/// latent (N, 1 + K, encoderDim) (the class token first); restore (N, L), L a square → (N, L, p²·C).
type MaeDecoder(encoderDim: int64, dim: int64, depth: int, heads: int64, mlpDim: int64, patchSize: int64, channels: int64) as this =
    inherit nn.Module<Tensor, Tensor, Tensor>("MaeDecoder")
    do
        for name, value in [ "encoderDim", encoderDim; "dim", dim; "depth", int64 depth; "mlpDim", mlpDim; "patchSize", patchSize
                             "channels", channels ] do
            Layers.checkPositive name value
    let embed = nn.Linear(encoderDim, dim)
    let maskToken = nn.Parameter(zeros(1L, 1L, dim))
    let blocks = nn.ModuleList<nn.Module<Tensor, Tensor>>([| for _ in 1 .. depth -> new TransformerBlock(dim, heads, mlpDim) :> nn.Module<Tensor, Tensor> |])
    let norm = nn.LayerNorm(dim, eps = 1e-6)
    let prediction = nn.Linear(dim, patchSize * patchSize * channels)
    do
        this.RegisterComponents()
        use _ = no_grad ()
        nn.init.normal_(maskToken, 0.0, 0.02) |> ignore
        for m in this.modules () do
            match m with
            | :? Modules.Linear as linear ->
                nn.init.xavier_uniform_(linear.weight) |> ignore
                nn.init.zeros_(linear.bias) |> ignore
            | _ -> ()

    /// The learned mask token (1, 1, dim).
    member _.MaskToken: Tensor = maskToken

    override _.forward(latent, restore) =
        expect "latent" [| Any; Any; Exactly encoderDim |] latent
        let n = latent.shape[0]
        expect "restore" [| Exactly n; Any |] restore
        let length, visible = restore.shape[1], latent.shape[1] - 1L
        let grid = int64 (round (sqrt (float length)))
        if grid * grid <> length then invalidArg "restore" $"restore: expected a square number of patches, found {show restore.shape}"
        if visible < 1L || visible > length then
            invalidArg "latent" $"latent: expected the class token and 1 to {length} visible patches, found {show latent.shape}"
        use scope = NewDisposeScope()
        let x = embed.call latent
        let filled = cat([| x.narrow(1L, 1L, visible); maskToken.expand(n, length - visible, dim) |], 1L)
        let unshuffled = filled.gather(1L, restore.unsqueeze(-1L).expand(-1L, -1L, dim))
        let mutable tokens = cat([| x.narrow(1L, 0L, 1L); unshuffled |], 1L) + MaskedAutoencoder.sinCosPositions dim grid x.device x.dtype
        for block in blocks do tokens <- block.call tokens
        prediction.call(norm.call tokens).narrow(1L, 1L, length).MoveToOuterDisposeScope()
