/// MAE: masked autoencoders (He, Chen, Xie, Li, Dollár & Girshick, CVPR 2022, "Masked Autoencoders Are Scalable Vision
/// Learners", Sec. 3; the authors' models_mae.py and main_pretrain.py). A random 75% of an image's patches is removed per
/// image; the ViT encoder sees the class token and the visible patches only, a light decoder fills the removed places with a
/// mask token and predicts every patch's pixels, and the loss is the MSE on the removed patches against per-patch
/// standardised pixels (norm_pix_loss; Core's Mae.loss, MaskedAutoencoder, MaeDecoder). The protocols read the encoder on whole
/// images; the fine-tuning protocol (`ssl eval --protocol finetune`) runs after training, its accuracy result.json's extra
/// `finetune_acc`. Differs from the paper: the encoder is the project's ViT-Tiny (learned positions and DINO's
/// initialisation, so every protocol and `ssl eval` read the same architecture; the decoder keeps the fixed sin-cos table);
/// the fine-tuning is the project's protocol (SGD, class token), not the paper's (AdamW, layer decay, mixup, pooled patches).
/// Measured runs: docs/experiments/mae.md.
module Ssl.Experiments.Recipes.Mae

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Experiments

/// main_pretrain.py and Sec. 4 / Table 1 defaults where not said otherwise.
type Config =
    { /// A ViT-Tiny (vit-tiny-<patch>[-<depth>]); the paper's are ViT-B/L/H on 16x16 patches of 224 px.
      Encoder: Backbone
      /// The fraction of patches removed (Sec. 4, Fig. 5: 75%).
      [<Range(0.0, 1.0)>] MaskRatio: float
      /// Decoder width, blocks and heads (the paper's 512, 8 and 16; Table 1a-b); its MLP is 4x its width.
      [<Range(4.0)>] DecoderDim: int64
      [<Range(1.0)>] DecoderDepth: int
      [<Range(1.0)>] DecoderHeads: int64
      /// Each patch's target standardised by its own mean and variance (Table 1c: the paper's default).
      NormPixLoss: bool
      /// RandomResizedCrop's area range (main_pretrain: (0.2, 1)), then a horizontal flip.
      CropScale: float * float
      /// AdamW with β (0.9, 0.95); LearningRate is the base rate per 256 images (lr = blr · BatchSize / 256), linear
      /// warm-up then cosine to 0; weight decay 0.05 off biases and norms.
      Schedule: TrainingSchedule
      /// Run the fine-tuning protocol after training on FineTuneLabels labels per class (0: all of them).
      FineTune: bool
      [<Range(0.0)>] FineTuneLabels: int
      /// The class token after the encoder's final norm, as main_linprobe.py reads it (without --global_pool).
      Probe: Probe }

/// `paper`: main_pretrain's schedule (800 epochs, 40 of warm-up, batch 4096, blr 1.5e-4) and the paper's decoder (8 blocks
/// of width 512, 16 heads) on ViT-Tiny with 12 blocks on 4 px patches (a 7x7 grid; the paper's 14x14), fine-tuned on all
/// labels. `quick` (15-20 minutes on 2 cores, by its cost against DINO's quick): DINO's quick encoder, 2 blocks on 7 px
/// patches (4x4, so 4 visible patches; patch 4 with 12 visible costs about 4x a step), a decoder of 2 blocks of width 128
/// and 4 heads (head width 32 as the paper's), 8 epochs at batch 256 with warm-up 5% of them (the paper's 40 of 800), blr
/// 1.5e-3: lr 1.5e-3, near the paper's absolute rate (2.4e-3 at batch 4096) rather than its rule's 1.5e-4 for 0.1% of its
/// steps; fine-tuned on 100 labels per class. `smoke`: one block on 7 px patches, a 1-block decoder of width 64, one epoch,
/// fine-tuned on all of the smoke subset's labels.
let config preset =
    let paper =
        { Encoder = VitTiny(4L, 12); MaskRatio = 0.75; DecoderDim = 512L; DecoderDepth = 8; DecoderHeads = 16L; NormPixLoss = true
          CropScale = (0.2, 1.0); FineTune = true; FineTuneLabels = 0; Probe = Probe.Output
          Schedule = { Epochs = 800; BatchSize = 4096; LearningRate = 1.5e-4; WeightDecay = 0.05; WarmupEpochs = 40.0 } }
    match preset with
    | Smoke ->
        { paper with Encoder = VitTiny(7L, 1); DecoderDim = 64L; DecoderDepth = 1; DecoderHeads = 2L
                     Schedule = { paper.Schedule with Epochs = 1; BatchSize = 64; LearningRate = 1.5e-3; WarmupEpochs = 0.2 } }
    | Quick ->
        { paper with Encoder = VitTiny(7L, 2); DecoderDim = 128L; DecoderDepth = 2; DecoderHeads = 4L; FineTuneLabels = 100
                     Schedule = { paper.Schedule with Epochs = 8; BatchSize = 256; LearningRate = 1.5e-3; WarmupEpochs = 0.4 } }
    | Paper -> paper

/// One step of Sec. 3: crop and flip, mask, encode the visible patches, decode every patch, the loss on the removed ones;
/// `pixel_mse` is that MSE in standardised-pixel units (the prediction's per-patch standardisation undone).
let private run (config: Config) (data: Data) (vit: VisionTransformer) (decoder: MaeDecoder) (step: StepContext) (batch: int64[]) =
    let x = unitPixels data batch step.Device
    let side, patch = x.shape[2], vit.PatchSize
    let images =
        Geometric.randomResizedCrop config.CropScale (3.0 / 4.0, 4.0 / 3.0) (side, side) step.Generator x
        |> Geometric.randomHorizontalFlip 0.5 step.Generator |> standardise data
    let kept, mask, restore = MaskedAutoencoder.randomMasking config.MaskRatio step.Generator x.shape[0] ((side / patch) * (side / patch)) step.Device
    let prediction = decoder.forward (MaskedAutoencoder.encodeVisible vit kept images, restore)
    let value = step.Optimize("main", Mae.loss config.NormPixLoss patch images prediction mask)
    let pixels = Mae.pixels config.NormPixLoss patch images (prediction.detach ())
    [ "loss", value; "pixel_mse", (Mae.maskedMse (Mae.patchify patch images) pixels mask).item<float32>() |> float ]

/// The encoder and decoder under one AdamW; after training, the fine-tuning protocol on a copy of the encoder.
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let vit = ctx.NewEncoder() :?> VisionTransformer
    let decoder =
        new MaeDecoder(vit.FeatureDim, config.DecoderDim, config.DecoderDepth, config.DecoderHeads, 4L * config.DecoderDim, vit.PatchSize,
                       ctx.Data.Train.Channels)
    let spec =
        OptimizerSpec(Kind = OptimizerKind.AdamW, LearningRate = config.Schedule.LearningRate * float config.Schedule.BatchSize / 256.0,
                      Beta1 = 0.9, Beta2 = 0.95, WeightDecay = config.Schedule.WeightDecay, WarmupEpochs = config.Schedule.WarmupEpochs)
    let def = stepOf [ "encoder" => vit; "decoder" => decoder ] [ optimizer "main" spec [ vit; decoder ] ] (run config ctx.Data vit decoder)
    let perClass = if config.FineTuneLabels > 0 then Some config.FineTuneLabels else None
    let fineTune () =
        if not config.FineTune then []
        else SupervisedTraining.fineTuneFigures ctx.Request.Preset vit ctx.NewEncoder ctx.Data perClass ctx.Seed ctx.Folder.Root ctx.Device
    { ctx.Train(vit, def) with Extra = fineTune }

let spec =
    { backboneSpec "mae" "He et al. 2022, Masked Autoencoders Are Scalable Vision Learners (MAE)" selfSupervised config
        (fun config -> config.Encoder) build with
        CheckData = fun config data ->
            requireSquare "mae" data
            match data.Probed with
            | Some probe when config.FineTune && int64 config.FineTuneLabels > fst (smallestClass probe) ->
                invalidArg "FineTuneLabels" $"FineTuneLabels: expected at most {fst (smallestClass probe)} (the smallest class of {probe.Name}), found {config.FineTuneLabels}"
            | _ -> ()
            match config.Encoder with
            | VitTiny(p, _) when data.Train.Height % p = 0L -> ()
            | VitTiny(p, _) ->
                invalidArg "--dataset" $"--dataset: mae on {config.Encoder} needs an image side that is a multiple of the patch size {p}, found {data.Train.Height} px"
            | other -> invalidArg "Encoder" $"Encoder: mae masks a ViT's patch tokens; expected vit-tiny-<patch>[-<depth>], found {other}" }
