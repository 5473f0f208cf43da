/// EnAET: a self-trained framework for semi-supervised and supervised learning with ensemble
/// transformations (Wang, Kihara, Luo & Qi 2019). MixMatch's loss plus, on the unlabelled images,
/// (1) auto-encoding transformations (AET, Zhang et al. 2019): for each of five transformation
/// families (projective, affine, similarity, Euclidean; CCBS: colour, contrast, brightness,
/// sharpness) a decoder regresses the transformation's parameters from the encoder's features of
/// the original and of the transformed image, and (2) a consistency term KL(q ‖ p(y | t(x))) between
/// MixMatch's sharpened guess q and the prediction on each transformed copy (Sec. 3, as the authors'
/// AET_MultiT/train_AETall_fast.py computes it):
///   L = L_X + λ_U L_U + Σ_k λ_k ℓ_k + γ · mean_k KL(q ‖ p(y | t_k(x))).
/// Each decoder branches off before the encoder's last stage, as the authors' Wide_Resnet_AET_Model:
/// a last stage of its own (IStagedEncoder.NewLastStage) reads the map there for both images and a
/// linear layer on the pooled pair regresses the parameters. Differences from the paper: one Adam
/// optimiser for all networks (the paper trains the decoders with SGD at 0.1); the targets are the
/// warp matrices' entries (AET's parameterisation); the transformations are drawn for a sub-batch
/// (`TransformBatch`); no extra cutout view ("mix_mode 1"); no colour factor on 1-channel images.
/// Measured runs: docs/experiments/enaet.md.
module Ssl.Experiments.Recipes.EnAET

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Experiments

type private Tensor = torch.Tensor

/// The authors' settings (their CIFAR-10 command line and defaults): MixMatch as its paper but
/// batch 128 and λ_U ramped over 50 of 1,024 epochs; AET weights 1.0, 0.75, 0.5, 0.2, 0.05 (in
/// family order), each ramped up linearly over the first tenth of training; KL weight γ = 1.
type Config =
    { /// MixMatch's settings (its Encoder is EnAET's, which needs stages: IStagedEncoder; its Schedule is EnAET's).
      MixMatch: MixMatch.Config
      /// Unlabelled images per step that get the five transformations (paper: the whole batch).
      [<Range(1.0)>] TransformBatch: int
      [<Range(0.0)>] ProjectiveWeight: float
      [<Range(0.0)>] AffineWeight: float
      [<Range(0.0)>] SimilarityWeight: float
      [<Range(0.0)>] EuclideanWeight: float
      [<Range(0.0)>] CcbsWeight: float
      [<Range(1.0)>] AetRampUpSteps: int64
      [<Range(0.0)>] KlWeight: float
      /// Rotations in ±180°, translations up to 0.2 of the side, scale in [0.8, 1.2], shear in ±30°.
      [<Range(0.0, 180.0)>] RotationDegrees: float
      [<Range(0.0, 1.0)>] Translate: float
      ScaleRange: float * float
      [<Range(0.0, 90.0)>] ShearDegrees: float
      /// Projective corners moved by up to this share of the side (the paper's 4 px of 32).
      [<Range(0.0, 1.0)>] ProjectiveShift: float
      /// CCBS factors, uniform in [low, high].
      EnhanceRange: float * float }

/// `paper`: 2^20 steps on WRN-28-2 (see MixMatch.config). `quick`: MixMatch's quick preset
/// (SmallConvNet-16, distribution alignment) for 5 epochs of the pool instead of its 9 (an EnAET step
/// costs about twice a MixMatch step), λ_U and the AET weights ramped over the first 1,500 steps,
/// the transformations on 16 of the 64 unlabelled images per step. `smoke`: one epoch of the subset.
let config preset =
    let mixMatch = MixMatch.config Paper
    let paper =
        { MixMatch = { mixMatch with RampUpSteps = 51200L; Schedule = { mixMatch.Schedule with BatchSize = 128; Epochs = 2280 } }
          TransformBatch = 128; ProjectiveWeight = 1.0; AffineWeight = 0.75; SimilarityWeight = 0.5; EuclideanWeight = 0.2
          CcbsWeight = 0.05; AetRampUpSteps = 104858L; KlWeight = 1.0; RotationDegrees = 180.0; Translate = 0.2
          ScaleRange = (0.8, 1.2); ShearDegrees = 30.0; ProjectiveShift = 0.125; EnhanceRange = (0.2, 1.8) }
    match preset with
    | Smoke -> { paper with MixMatch = MixMatch.config Smoke; TransformBatch = 16; AetRampUpSteps = 10L }
    | Quick ->
        let quick = MixMatch.config Quick
        let mixMatch =
            { quick with RampUpSteps = 1500L; ConsistencyWeight = 75.0; DistributionAlignment = true
                         Schedule = { quick.Schedule with Epochs = 5 } }
        { paper with MixMatch = mixMatch; TransformBatch = 16; AetRampUpSteps = mixMatch.RampUpSteps }
    | Paper -> paper

/// CCBS (Wang et al. 2019, Sec. 3.2; PIL's ImageEnhance in the authors' code): colour (saturation,
/// 3-channel images only), contrast, brightness and sharpness in that order, each with its own
/// factor uniform in [low, high] per image. images: (N, 1 or 3, H, W) in [0, 1] → transformed
/// (N, C, H, W) and factors (N, 3 or 4) float64, in the order applied.
let ccbs (low: float, high: float) (generator: torch.Generator) (images: Tensor) : Tensor * Tensor =
    use scope = torch.NewDisposeScope()
    let count = images.shape[0]
    let adjustments =
        [ if images.shape[1] = 3L then Photometric.adjustSaturation
          Photometric.adjustContrast
          Photometric.adjustBrightness
          Photometric.adjustSharpness ]
    let factors = adjustments |> List.map (fun _ -> Draw.uniform generator low high [| count |] images.device)
    let transformed = List.fold2 (fun x adjust f -> adjust f x) images adjustments factors
    transformed.MoveToOuterDisposeScope(), torch.stack(List.toArray factors, 1L).MoveToOuterDisposeScope()

/// The five transformation families: name, loss weight, parameter count for C channels, and the
/// draw (images in [0, 1] → transformed images and parameters).
let families (config: Config) (channels: int64) =
    let scale = config.ScaleRange
    [ "projective", config.ProjectiveWeight, 8L, Geometric.randomProjective scale config.ProjectiveShift
      "affine", config.AffineWeight, 6L, Geometric.randomAffine config.RotationDegrees config.Translate scale config.ShearDegrees
      "similarity", config.SimilarityWeight, 6L, Geometric.randomSimilarity config.RotationDegrees config.Translate scale
      "euclidean", config.EuclideanWeight, 6L, Geometric.randomEuclidean config.RotationDegrees config.Translate
      "ccbs", config.CcbsWeight, (if channels = 3L then 4L else 3L), ccbs config.EnhanceRange ]

/// One EnAET step: MixMatch's terms, the five AET regressions and the KL consistency, one update,
/// then the EMA. `decoders`: one per family, reading the maps `tap` catches inside the encoder.
let private run (config: Config) (families: _ list) (p: Parts) (tap: LayerTap) decoders (ema: EmaClassifier) aligned (step: StepContext) batches =
    let data = p.Data
    let x, targets, unlabelled, firstAugmentation = MixMatch.inputs config.MixMatch data step batches
    let encoder, head = p.Encoder, p.Classifier
    let classify images = head.forward(encoder.forward images)
    let t = MixMatch.terms config.MixMatch step.Generator step.GlobalStep [ encoder; head ] aligned classify x targets unlabelled
    let count = min (int64 config.TransformBatch) firstAugmentation.shape[0]
    let originals = firstAugmentation.narrow(0L, 0L, count)
    let drawn = families |> List.map (fun (_, _, _, draw) -> draw step.Generator originals)
    let images = torch.cat(Array.ofList (originals :: List.map fst drawn), 0L) |> standardise data
    // The transformed images' pass trains the encoder but leaves the batch-norm running
    // statistics, as the guessing pass does (MixMatch.terms): those the EMA classifier is
    // evaluated with come from the classification pass alone, not from warped images.
    let features = BatchNorms.withoutRunningUpdates [ encoder :> torch.nn.Module ] (fun () -> encoder.forward images)
    // The decoders read the encoder's map before its last stage (IStagedEncoder), as the
    // authors' code does: the regressions train the layers up to there and the decoders'
    // own last stages; the encoder's last stage learns from the classification and KL terms.
    let maps = tap.Take()
    let logits = head.forward features
    let block i (t: Tensor) = t.narrow(0L, int64 i * count, count)
    let original = block 0 maps
    let ramp = min 1.0 (float step.GlobalStep / float config.AetRampUpSteps)
    let regressions =
        List.mapi2 (fun i (decoder: PairRegressor) (_, parameters: Tensor) ->
            let predicted = decoder.forward(original, block (i + 1) maps)
            Transformation.parameterRegression predicted (parameters.to_type(torch.ScalarType.Float32)))
            decoders drawn
    let guessLogits = t.Guesses.narrow(0L, 0L, count).clamp_min((1e-12).ToScalar()).log()
    let kl = (List.init families.Length (fun i -> Transformation.klDivergence guessLogits (block (i + 1) logits)) |> List.reduce (+))
             / float families.Length
    let aet = List.map2 (fun (_, weight, _, _) (loss: Tensor) -> loss * (weight * ramp)) families regressions |> List.reduce (+)
    let value = step.Optimize("main", t.Loss + aet + kl * config.KlWeight)
    ema.Update config.MixMatch.EmaMomentum
    MixMatch.figures data batches t value
        ([ "kl", float (kl.item<float32>()); "weight_aet", ramp ]
         @ List.map2 (fun (name, _, _, _) (l: Tensor) -> $"aet_{name}", float (l.item<float32>())) families regressions)

/// The classifier, the decoders, the tap on the encoder's branch layer, the EMA copy and the step,
/// created in the order the seeded run always has; test accuracy and the protocols read the EMA copy.
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let p = parts ctx
    let staged =
        match box p.Encoder with
        | :? IStagedEncoder as s -> s
        | _ -> invalidOp $"enaet: the decoders branch off inside the encoder, which {p.Encoder.GetType().Name} does not offer (IStagedEncoder)"
    let families = families config ctx.Data.Train.Channels
    let decoders = families |> List.map (fun (_, _, count, _) -> new PairRegressor(staged.NewLastStage(), p.Encoder.FeatureDim, count))
    let tap = ctx.Own(new LayerTap(p.Encoder, staged.BranchLayer))
    let ema = new EmaClassifier(p.Encoder, p.Classifier, ctx.NewEncoder, int64 ctx.Data.Classes)
    let aligned = MixMatch.alignment config.MixMatch ctx.Data p.Split.Labelled ctx.Device
    let classifier = [ "encoder" => p.Encoder; "head" => p.Classifier ]
    let decoderModules = List.map2 (fun (name, _, _, _) d -> $"decoder_{name}" => d) families decoders
    let optimizers = [ optimizer "main" (MixMatch.optimizerSpec config.MixMatch.Schedule) (List.map snd (classifier @ decoderModules)) ]
    let def = stepOf (classifier @ decoderModules @ ema.Modules) optimizers (run config families p tap decoders ema aligned)
    { ctx.TrainSemi(p, config.MixMatch.Schedule.BatchSize, { def with State = MixMatch.alignmentState aligned }) with
        Evaluated = ema.Encoder; Classifier = Some(ema.Encoder, ema.Head) }

let spec =
    Ssl.Experiments.Template.spec "enaet"
        "Wang et al. 2019, EnAET: A Self-Trained Framework for Semi-Supervised and Supervised Learning with Ensemble Transformations"
        semiSupervised config (fun config data layout -> MixMatch.encoder config.MixMatch data.Train.Channels layout) (fun config -> Some config.MixMatch.Encoder)
        (fun config -> name config.MixMatch.Encoder) build
