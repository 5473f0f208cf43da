/// MAE (He et al. 2022; models_mae.py): patchify and its inverse, the norm_pix target, the masked
/// MSE, random masking, the decoder's sin-cos table, the encoder on visible patches and the decoder,
/// against loop oracles in float64, with invariances and bad-argument messages.
module Ssl.Tests.Core.MaeTests

open System
open Expecto
open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Tests

let private longs (t: torch.Tensor) : int64[] = t.detach().contiguous().to_type(torch.int64).data<int64>().ToArray()

let private rejects (argument: string) (fragment: string) (f: unit -> unit) =
    let e = Prop.throws<ArgumentException> f
    Expect.equal e.ParamName argument "names the argument"
    Expect.stringContains e.Message fragment "says what was expected or found"

/// Sizes (N, C, grid, p) from a seed: small, every combination of 1 or 3 channels.
let private sizes (seed: int) =
    let s = abs seed
    int64 (1 + s % 3), (if s % 2 = 0 then 1L else 3L), int64 (1 + (s / 3) % 3), int64 (1 + (s / 9) % 3)

/// The loop oracle of patchify: patch i·g + j, entry (r·p + s)·C + c is image[c, i·p + r, j·p + s].
let private patchifyOracle (n: int64) (c: int64) (g: int64) (p: int64) (xs: float[]) =
    let side = g * p
    [| for b in 0L .. n - 1L do
         for i in 0L .. g - 1L do
             for j in 0L .. g - 1L do
                 for r in 0L .. p - 1L do
                     for s in 0L .. p - 1L do
                         for ch in 0L .. c - 1L -> xs[int (((b * c + ch) * side + i * p + r) * side + j * p + s)] |]

/// The loop oracle of forward_loss: per patch mean of squares, then the mean over removed patches.
let private lossOracle (normPix: bool) (k: int) (targetRows: float[][]) (prediction: float[][]) (mask: float[]) =
    let target (row: float[]) =
        if not normPix then row
        else
            let mean = Array.average row
            let variance = (row |> Array.sumBy (fun x -> (x - mean) ** 2.0)) / float (k - 1)
            row |> Array.map (fun x -> (x - mean) / sqrt (variance + 1e-6))
    let perPatch = Array.init targetRows.Length (fun l -> Array.map2 (fun a b -> (a - b) ** 2.0) (target targetRows[l]) prediction[l] |> Array.average)
    Array.fold2 (fun s e m -> s + e * m) 0.0 perPatch mask / Array.sum mask

let private chunks (k: int) (xs: float[]) = Array.chunkBySize k xs

let patchTests =
    testList "patches and loss" [
        Prop.propSmall "patchify equals the loop oracle; unpatchify inverts it both ways" (fun (seed: int) ->
            let n, c, g, p = sizes seed
            use gen = generator seed
            use x = randn gen [| n; c; g * p; g * p |]
            use patches = Mae.patchify p x
            Expect.sequenceEqual patches.shape [| n; g * g; p * p * c |] "shape (N, L, p²·C)"
            Expect.sequenceEqual (values patches) (patchifyOracle n c g p (values x)) "entries"
            use back = Mae.unpatchify p c patches
            Check.close 0.0 0.0 "unpatchify (patchify x) = x" back x
            use y = randn gen [| n; g * g; p * p * c |]
            use again = Mae.patchify p (Mae.unpatchify p c y)
            Check.close 0.0 0.0 "patchify (unpatchify y) = y" again y)
        Prop.propSmall "the loss equals the loop oracle, with and without norm_pix" (fun (seed: int, normPix: bool) ->
            let n, c, g, p = sizes seed
            let p = max 2L p
            let k = int (p * p * c)
            use gen = generator seed
            use x = randn gen [| n; c; g * p; g * p |]
            use prediction = randn gen [| n; g * g; int64 k |]
            use mask = torch.rand([| n; g * g |], generator = gen).lt(0.5.ToScalar()).to_type(f64)
            mask.view(-1L)[0L] <- torch.tensor(1.0, dtype = f64)
            use loss = Mae.loss normPix p x prediction mask
            let targetRows = chunks k (patchifyOracle n c g p (values x))
            let expected = lossOracle normPix k targetRows (chunks k (values prediction)) (values mask)
            Expect.floatClose { absolute = 1e-10; relative = 1e-10 } (loss.item<float>()) expected "loss")
        Prop.propSmall "the loss reads only the masked patches: visible ones change neither it nor get a gradient" (fun (seed: int) ->
            let n, c, g, p = sizes seed
            let g, p = max 2L g, max 2L p
            use gen = generator seed
            use x = randn gen [| n; c; g * p; g * p |]
            use prediction = (randn gen [| n; g * g; p * p * c |]).requires_grad_(true)
            use mask = torch.ones([| n; g * g |], dtype = f64)
            mask[0L, 0L] <- torch.tensor(0.0, dtype = f64)
            use loss = Mae.loss true p x prediction mask
            use changed = prediction.detach().clone()
            changed[0L, 0L] <- torch.full([| p * p * c |], (100.0).ToScalar(), dtype = f64)
            use after = Mae.loss true p x changed mask
            Expect.equal (after.item<float>()) (loss.item<float>()) "a visible patch's prediction changes nothing"
            let grad = torch.autograd.grad([| loss |], [| prediction |])[0]
            use visibleGrad = grad[0L, 0L]
            Expect.equal (visibleGrad.abs().max().item<float>()) 0.0 "no gradient at the visible patch"
            use maskedGrad = grad[0L, 1L]
            Expect.isGreaterThan (maskedGrad.abs().max().item<float>()) 0.0 "a gradient at a masked patch"
            grad.Dispose())
        Prop.propSmall "the norm_pix target has zero mean and (unbiased) variance var/(var + 1e-6) per patch" (fun (seed: int) ->
            let n, c, g, p = sizes seed
            let p = max 2L p
            use gen = generator seed
            use x = (randn gen [| n; c; g * p; g * p |]) * 3.0 + 5.0
            use target = Mae.target true p x
            use raw = Mae.patchify p x
            use rawVar = raw.var(-1L, unbiased = true)
            Check.close 1e-12 0.0 "per-patch mean" (target.mean([| -1L |])) (torch.zeros(n, g * g, dtype = f64))
            Check.close 1e-12 1e-12 "per-patch variance" (target.var(-1L, unbiased = true)) (rawVar / (rawVar + 1e-6))
            use plain = Mae.target false p x
            Check.close 0.0 0.0 "without norm_pix the target is the patches" plain raw)
        test "pixels undoes the per-patch standardisation of a prediction equal to the target" {
            use gen = generator 3
            use x = randn gen [| 2L; 1L; 8L; 8L |]
            use target = Mae.target true 4L x
            use back = Mae.pixels true 4L x target
            Check.close 1e-12 1e-12 "pixels (target x) = patchify x" back (Mae.patchify 4L x)
        }
        test "the loss, target and pixels leave only their result alive" {
            use gen = generator 4
            use x = randn gen [| 2L; 3L; 8L; 8L |]
            use prediction = randn gen [| 2L; 4L; 48L |]
            use mask = torch.ones(2L, 4L)
            Check.leavesOnlyResult "loss" (fun () -> Mae.loss true 4L x prediction mask)
            Check.leavesOnlyResult "target" (fun () -> Mae.target true 4L x)
            Check.leavesOnlyResult "pixels" (fun () -> Mae.pixels true 4L x prediction)
            Check.leavesOnlyResult "unpatchify" (fun () -> Mae.unpatchify 4L 3L prediction)
        }
        test "bad arguments are errors naming them" {
            use x = torch.zeros(2L, 1L, 8L, 8L)
            rejects "images" "multiple of patchSize 3" (fun () -> (Mae.patchify 3L x).Dispose())
            rejects "images" "square" (fun () -> (Mae.patchify 2L (torch.zeros(1L, 1L, 8L, 4L))).Dispose())
            rejects "patchSize" "found 0" (fun () -> (Mae.patchify 0L x).Dispose())
            rejects "patchSize" "at least 2 values a patch" (fun () -> (Mae.target true 1L x).Dispose())
            rejects "patches" "square number" (fun () -> (Mae.unpatchify 2L 1L (torch.zeros(1L, 3L, 4L))).Dispose())
            rejects "patches" "(*, *, 12)" (fun () -> (Mae.unpatchify 2L 3L (torch.zeros(1L, 4L, 4L))).Dispose())
            use prediction = torch.zeros(2L, 4L, 16L)
            rejects "mask" "at least one masked patch" (fun () -> (Mae.loss true 4L x prediction (torch.zeros(2L, 4L))).Dispose())
            rejects "mask" "(2, 4)" (fun () -> (Mae.loss true 4L x prediction (torch.ones(2L, 5L))).Dispose())
            rejects "prediction" "(2, 4, 16)" (fun () -> (Mae.loss true 4L x (torch.zeros(2L, 4L, 9L)) (torch.ones(2L, 4L))).Dispose())
        }
    ]

let private disposeAll (a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) = a.Dispose(); b.Dispose(); c.Dispose()

let maskingTests =
    testList "random masking" [
        Prop.propSmall "keeps exactly ⌊L·(1 − ratio)⌋ patches per image; the mask is 1 exactly off the kept ones; restore inverts the shuffle" (fun (seed: int) ->
            let s = abs seed
            let count, length = int64 (1 + s % 4), int64 (4 + s % 60)
            let ratio = [| 0.75; 0.5; 0.25; 0.9 |][(s / 7) % 4]
            let keep = int64 (floor (float length * (1.0 - ratio)))
            if keep >= 1L && keep < length then
                use gen = generator seed
                let kept, mask, restore = MaskedAutoencoder.randomMasking ratio gen count length torch.CPU
                use kept = kept
                use mask = mask
                use restore = restore
                Expect.sequenceEqual kept.shape [| count; keep |] "kept (N, K)"
                Expect.sequenceEqual mask.shape [| count; length |] "mask (N, L)"
                let m, r, k = values mask, longs restore, longs kept
                for b in 0 .. int count - 1 do
                    let row = m[b * int length .. (b + 1) * int length - 1]
                    Expect.equal (Array.sum row) (float (length - keep)) "removed count"
                    let keptRow = k[b * int keep .. (b + 1) * int keep - 1]
                    Expect.equal (Set.ofArray keptRow |> Set.count) (int keep) "kept indices distinct"
                    for i in 0 .. int length - 1 do
                        Expect.equal row[i] (if Array.contains (int64 i) keptRow then 0.0 else 1.0) "mask is 0 exactly at the kept patches"
                    // ids_restore is the inverse of the shuffle whose first K entries are the kept patches.
                    let restoreRow = r[b * int length .. (b + 1) * int length - 1]
                    Expect.sequenceEqual (Array.sort restoreRow) [| 0L .. length - 1L |] "restore is a permutation"
                    let shuffle = Array.zeroCreate (int length)
                    restoreRow |> Array.iteri (fun i j -> shuffle[int j] <- int64 i)
                    Expect.sequenceEqual shuffle[.. int keep - 1] keptRow "the shuffle restore inverts starts with the kept patches"
                    let unshuffled = restoreRow |> Array.map (fun j -> shuffle[int j])
                    Expect.sequenceEqual unshuffled [| 0L .. length - 1L |] "gather(shuffle, restore) = 0 .. L - 1")
        test "the same generator seed gives the same masks; another seed others" {
            let draw seed =
                use gen = generator seed
                let kept, mask, restore = MaskedAutoencoder.randomMasking 0.75 gen 8L 49L torch.CPU
                let result = longs kept
                disposeAll (kept, mask, restore)
                result
            Expect.sequenceEqual (draw 5) (draw 5) "seeded"
            Expect.notEqual (draw 5) (draw 6) "another seed"
        }
        test "masking leaves only its three results alive; bad arguments are named" {
            use gen = generator 1
            Check.noLeak "randomMasking" (fun () -> disposeAll (MaskedAutoencoder.randomMasking 0.75 gen 2L 16L torch.CPU))
            rejects "ratio" "(0, 1)" (fun () -> disposeAll (MaskedAutoencoder.randomMasking 1.0 gen 2L 16L torch.CPU))
            rejects "ratio" "found 0" (fun () -> disposeAll (MaskedAutoencoder.randomMasking 0.0 gen 2L 16L torch.CPU))
            rejects "length" "3 patches (0 kept)" (fun () -> disposeAll (MaskedAutoencoder.randomMasking 0.75 gen 2L 3L torch.CPU))
            rejects "count" "found 0" (fun () -> disposeAll (MaskedAutoencoder.randomMasking 0.75 gen 0L 16L torch.CPU))
        }
    ]

let modelTests =
    testList "encoder and decoder" [
        test "the sin-cos table equals get_2d_sincos_pos_embed's formula (loop oracle)" {
            let dim, grid = 16L, 3L
            use table = MaskedAutoencoder.sinCosPositions dim grid torch.CPU f64
            Expect.sequenceEqual table.shape [| 1L; 1L + grid * grid; dim |] "(1, 1 + g², D)"
            let quarter = int dim / 4
            let code (x: float) =
                let omega d = 1.0 / (10000.0 ** (float d / float quarter))
                Array.append (Array.init quarter (fun d -> sin (x * omega d))) (Array.init quarter (fun d -> cos (x * omega d)))
            let expected =
                Array.append (Array.zeroCreate (int dim))
                    [| for i in 0 .. int grid - 1 do for j in 0 .. int grid - 1 do yield! Array.append (code (float j)) (code (float i)) |]
            Check.close 1e-12 1e-12 "table" table (torch.tensor(expected, dtype = f64).view(1L, 1L + grid * grid, dim))
            rejects "dim" "multiple of 4" (fun () -> (MaskedAutoencoder.sinCosPositions 6L 3L torch.CPU f64).Dispose())
        }
        test "the encoder on every patch in order is the ViT's own Mix(Tokens x); on a subset, Mix of [class; those tokens]" {
            use vit = VisionTransformer.Tiny(1L, 7L, 2, 4L)
            use gen = generator 2
            use x = torch.randn([| 3L; 1L; 28L; 28L |], generator = gen)
            use all = torch.arange(16L).unsqueeze(0L).expand(3L, -1L).contiguous()
            use full = MaskedAutoencoder.encodeVisible vit all x
            use reference = vit.Mix(vit.Tokens x)
            Check.close 0.0 0.0 "every patch kept in order" full reference
            use subset = torch.tensor([| 5L; 0L; 9L; 3L; 3L; 15L; 1L; 2L; 12L; 7L; 8L; 4L |]).view(3L, 4L)
            use part = MaskedAutoencoder.encodeVisible vit subset x
            use tokens = vit.Tokens x
            use picked = tokens.gather(1L, (torch.cat([| torch.zeros(3L, 1L, dtype = torch.int64); subset + 1L |], 1L)).unsqueeze(-1L).expand(-1L, -1L, 192L))
            use expected = vit.Mix picked
            Check.close 1e-6 1e-6 "a subset" part expected
            Check.leavesOnlyResult "encodeVisible" (fun () -> MaskedAutoencoder.encodeVisible vit subset x)
        }
        test "the decoder: (N, L, p²·C); the mask token fills the removed places in patch order; gradients reach it" {
            use decoder = (new MaeDecoder(8L, 16L, 1, 2L, 32L, 2L, 3L)).``to``(f64)
            use gen = generator 7
            use latent = randn gen [| 2L; 3L; 8L |]
            let kept, mask, restore = MaskedAutoencoder.randomMasking 0.5 gen 2L 4L torch.CPU
            use kept = kept
            use mask = mask
            use restore = restore
            use y = decoder.forward(latent, restore)
            Expect.sequenceEqual y.shape [| 2L; 4L; 12L |] "(N, L, p²·C)"
            // The decoder's sequence is a function of (class, patch tokens in patch order): the same
            // visible tokens given in another kept order, with its restore, decode the same.
            let k = longs kept
            let swapped = [| k[1]; k[0]; k[3]; k[2] |]
            use latent2 = torch.stack([| for b in 0L .. 1L -> torch.cat([| latent[b].narrow(0L, 0L, 1L); latent[b].narrow(0L, 2L, 1L); latent[b].narrow(0L, 1L, 1L) |], 0L) |], 0L)
            let restore2 =
                [| for b in 0 .. 1 do
                     let shuffled = Array.append swapped[2 * b .. 2 * b + 1] [| for i in 0L .. 3L do if not (Array.contains i k[2 * b .. 2 * b + 1]) then i |]
                     yield! [| for i in 0L .. 3L -> int64 (Array.findIndex ((=) i) shuffled) |] |]
            use y2 = decoder.forward(latent2, torch.tensor(restore2).view(2L, 4L))
            Check.close 1e-12 1e-12 "order of the visible tokens does not matter" y2 y
            use loss = y.square().sum()
            let grad = torch.autograd.grad([| loss |], [| decoder.MaskToken |])[0]
            Expect.isGreaterThan (grad.abs().sum().item<float>()) 0.0 "the mask token gets a gradient"
            grad.Dispose()
            rejects "restore" "square number" (fun () -> decoder.forward(latent, torch.zeros(2L, 3L, dtype = torch.int64)).Dispose())
            rejects "latent" "(*, *, 8)" (fun () -> decoder.forward(torch.zeros(2L, 3L, 5L, dtype = f64), restore).Dispose())
        }
    ]

[<Tests>]
let tests = testList "mae" [ patchTests; maskingTests; modelTests ]
