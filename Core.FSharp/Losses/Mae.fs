/// The masked autoencoder's reconstruction loss (He et al. 2022, "Masked Autoencoders Are Scalable
/// Vision Learners", Sec. 3 "Reconstruction target"; the authors' models_mae.py, patchify,
/// unpatchify and forward_loss). The decoder predicts the pixels of every patch; the loss is the
/// mean squared error per patch averaged over the masked (removed) patches only, against the
/// patch's pixels or, with norm_pix_loss, the pixels standardised by the patch's own mean and
/// variance. Patches are flattened row-major over the p × p pixels with the channel last, as the
/// authors' einsum 'nchpwq->nhwpqc'; patches are numbered row-major over the grid.
module Ssl.Core.Losses.Mae

open TorchSharp
open type TorchSharp.torch
// Last, so F#'s float, int64, sqrt, ... win over torch's dtype fields and tensor functions.
open Microsoft.FSharp.Core.Operators
open Ssl.Core.Shape

/// models_mae.patchify: images (N, C, H, W), H = W a multiple of `patchSize` p → patches (N, L, p²·C),
/// L = (H/p)², entry [n, i·(W/p) + j, (r·p + s)·C + c] = images[n, c, i·p + r, j·p + s].
let patchify (patchSize: int64) (images: Tensor) : Tensor =
    if patchSize < 1L then invalidArg "patchSize" $"patchSize: expected a positive patch side, found {patchSize}"
    expectRank "images" 4 images
    let n, c, h, w = images.shape[0], images.shape[1], images.shape[2], images.shape[3]
    if h <> w || h % patchSize <> 0L || h = 0L then
        invalidArg "images" $"images: expected square images whose side is a positive multiple of patchSize {patchSize}, found {show images.shape}"
    use scope = NewDisposeScope()
    let g = h / patchSize
    images.reshape(n, c, g, patchSize, g, patchSize).permute(0L, 2L, 4L, 3L, 5L, 1L)
        .reshape(n, g * g, patchSize * patchSize * c).MoveToOuterDisposeScope()

/// models_mae.unpatchify, the inverse of `patchify`: patches (N, L, p²·C), L a square g² → images
/// (N, C, g·p, g·p).
let unpatchify (patchSize: int64) (channels: int64) (patches: Tensor) : Tensor =
    if patchSize < 1L then invalidArg "patchSize" $"patchSize: expected a positive patch side, found {patchSize}"
    if channels < 1L then invalidArg "channels" $"channels: expected a positive channel count, found {channels}"
    expect "patches" [| Any; Any; Exactly (patchSize * patchSize * channels) |] patches
    let n, l = patches.shape[0], patches.shape[1]
    let g = int64 (round (sqrt (float l)))
    if g * g <> l || l = 0L then invalidArg "patches" $"patches: expected a square number of patches, found {show patches.shape}"
    use scope = NewDisposeScope()
    patches.reshape(n, g, g, patchSize, patchSize, channels).permute(0L, 5L, 1L, 3L, 2L, 4L)
        .reshape(n, channels, g * patchSize, g * patchSize).MoveToOuterDisposeScope()

/// The reconstruction target of forward_loss: patchify(images), and with `normPix` each patch
/// standardised, (x − mean) / √(var + 1e-6) with the unbiased variance (torch's var) over its p²·C
/// values (at least 2). images (N, C, H, W) → (N, L, p²·C).
let target (normPix: bool) (patchSize: int64) (images: Tensor) : Tensor =
    use scope = NewDisposeScope()
    let patches = patchify patchSize images
    if normPix && patches.shape[2] < 2L then
        invalidArg "patchSize" $"patchSize: norm_pix needs at least 2 values a patch (p²·C), found {patches.shape[2]} for p = {patchSize}, {images.shape[1]} channel(s)"
    if not normPix then patches.MoveToOuterDisposeScope()
    else
        let mean = patches.mean([| -1L |], keepdim = true)
        let variance = patches.var(-1L, unbiased = true, keepdim = true)
        ((patches - mean) / (variance + 1e-6).sqrt()).MoveToOuterDisposeScope()

/// The mean over the masked patches of each patch's mean squared error: Σ mask·mean_k (pred − target)²
/// / Σ mask. target and prediction (N, L, K); mask (N, L), 1 where the patch was removed and 0 where
/// the encoder saw it (any dtype; at least one 1).
let maskedMse (target: Tensor) (prediction: Tensor) (mask: Tensor) : Tensor =
    expectRank "target" 3 target
    Checks.nonEmpty "target" target
    expect "prediction" [| Exactly target.shape[0]; Exactly target.shape[1]; Exactly target.shape[2] |] prediction
    expect "mask" [| Exactly target.shape[0]; Exactly target.shape[1] |] mask
    use scope = NewDisposeScope()
    let weights = mask.to_type(prediction.dtype)
    let masked = weights.sum()
    if masked.to_type(ScalarType.Float64).item<float>() <= 0.0 then invalidArg "mask" $"mask: expected at least one masked patch (a 1), found none in {show mask.shape}"
    let perPatch = (prediction - target).square().mean([| -1L |])
    ((perPatch * weights).sum() / masked).MoveToOuterDisposeScope()

/// MAE's loss (forward_loss): maskedMse (target normPix patchSize images) prediction mask.
/// images (N, C, H, W); prediction (N, L, p²·C) in patchify's order; mask (N, L), 1 = removed.
let loss (normPix: bool) (patchSize: int64) (images: Tensor) (prediction: Tensor) (mask: Tensor) : Tensor =
    use scope = NewDisposeScope()
    (maskedMse (target normPix patchSize images) prediction mask).MoveToOuterDisposeScope()

/// The prediction in the images' pixel space: as is, or with `normPix` each patch's standardisation
/// undone with the true patch's mean and √(var + 1e-6) (how the authors' demo shows a
/// norm_pix_loss model's reconstructions). images (N, C, H, W); prediction (N, L, p²·C) → (N, L, p²·C).
let pixels (normPix: bool) (patchSize: int64) (images: Tensor) (prediction: Tensor) : Tensor =
    use scope = NewDisposeScope()
    let patches = patchify patchSize images
    expect "prediction" [| Exactly patches.shape[0]; Exactly patches.shape[1]; Exactly patches.shape[2] |] prediction
    if not normPix then prediction.alias().MoveToOuterDisposeScope()
    else
        let mean = patches.mean([| -1L |], keepdim = true)
        let std = (patches.var(-1L, unbiased = true, keepdim = true) + 1e-6).sqrt()
        (prediction * std + mean).MoveToOuterDisposeScope()
