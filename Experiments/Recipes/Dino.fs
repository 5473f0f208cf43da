/// DINO: self-distillation with no labels (Caron et al. 2021, "Emerging Properties in Self-Supervised
/// Vision Transformers", Algorithm 1). A student (encoder + DinoHead) matches, across multi-crop
/// views, the centred and sharpened outputs of a teacher that is its momentum copy (Core's
/// Dino.loss). The teacher, which the paper evaluates, is what the protocols read. Measured runs:
/// docs/experiments/dino.md.
module Ssl.Experiments.Recipes.Dino

open System.Collections.Generic
open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Host.Engine
open Ssl.Experiments.Recipe
open Ssl.Experiments.Backbone
open Ssl.Experiments.Configs
open Ssl.Experiments.Pipeline
open Ssl.Experiments.Template

/// main_dino.py's defaults (Sec. 3.1, App. D) where not said otherwise.
type Config =
    { Encoder: Backbone
      [<Range(1.0)>] HeadHidden: int64
      [<Range(1.0)>] HeadBottleneck: int64
      /// K (the paper: 65,536 for ImageNet).
      [<Range(1.0)>] Outputs: int64
      [<Range(0.0, 1.0)>] TeacherMomentum: float
      [<Range(0.0, 1.0)>] CenterMomentum: float
      [<Range(0.0)>] StudentTemperature: float
      [<Range(0.0)>] WarmupTeacherTemperature: float
      [<Range(0.0)>] TeacherTemperature: float
      [<Range(0.0)>] TeacherTemperatureWarmupEpochs: int
      [<Range(0.0)>] LocalCrops: int
      GlobalCropScale: float * float
      LocalCropScale: float * float
      /// Side of the local crops: the paper's 96/224 of the image side, a multiple of the patch size.
      [<Range(1.0)>] LocalCropSize: int64
      /// Brightness and contrast jitter strength (the paper's ColorJitter(0.4, 0.4, 0.2, 0.1), p 0.8).
      [<Range(0.0)>] Jitter: float
      /// Gaussian blur sigma range in pixels and its kernel (the paper's (0.1, 2) at 224 px).
      BlurSigma: float * float
      [<Range(1.0)>] BlurKernel: int64
      [<Range(1.0)>] Epochs: int
      /// Images an epoch walks: the first N of the training set, 0 for all (the probes use all).
      [<Range(0.0)>] PretrainImages: int64
      [<Range(2.0)>] BatchSize: int
      /// AdamW's rate per 256 images (lr = this · batch / 256), linear warm-up then cosine to MinLearningRate.
      [<Range(0.0)>] LearningRatePer256: float
      [<Range(0.0)>] MinLearningRate: float
      [<Range(0.0)>] WarmupEpochs: float
      /// Weight decay, cosine from WeightDecay to WeightDecayEnd over training.
      [<Range(0.0)>] WeightDecay: float
      [<Range(0.0)>] WeightDecayEnd: float
      [<Range(0.0)>] ClipGradNorm: float
      [<Range(0.0)>] FreezeLastLayerEpochs: int
      /// What the probes read: "class-tokens", the class tokens of the last ProbePool blocks
      /// concatenated (eval_linear.py's n_last_blocks: 4 for ViT-S, Sec. 4.1), "class-tokens-patch-mean"
      /// those and the mean of the last block's patch tokens (its --avgpool_patchtokens), "" the output.
      ProbeLayer: string
      [<Range(1.0)>] ProbePool: int64 }

/// `paper`: main_dino.py's defaults on ViT-Tiny patch 4 (the paper's ViT-S/16 sees a 14x14 grid of
/// 224 px; 28 px in 4 px patches gives 7x7) with the paper's τ_t 0.04 → 0.07 over 30 epochs, 8 local
/// crops of 12 px (96/224 of 28), batch 1024. `quick` (about an hour at one thread, twice the other
/// quick presets' budget): ViT-Tiny with 2 blocks on 7 px patches (4x4 tokens; patch 4 costs 3-5x
/// more), 2 local crops of 14 px, head hidden 1024, K 4,096, 10 epochs of all images in batches of 64
/// (9,370 steps; the shorter budgets tried are in docs/experiments/dino.md), warm-up a tenth of
/// training as the paper's 10 of 100 epochs, τ_t 0.04
/// throughout (main_dino's default teacher_temp; the 0.07 warm-up is for its long schedules), and the
/// last layer is not frozen (the reference freezes 1 of 100 epochs). The probes read the class tokens
/// of the last ProbePool blocks as eval_linear.py does (4 for ViT-S; quick: both of its 2 blocks,
/// smoke: its 1), and quick adds the mean of the last block's patch tokens (its
/// --avgpool_patchtokens); the random-init baseline is read the same way. Measured:
/// docs/experiments/dino.md.
let config preset =
    let paper =
        { Encoder = VitTiny(4L, 12); HeadHidden = 2048L; HeadBottleneck = 256L; Outputs = 65536L; TeacherMomentum = 0.996
          CenterMomentum = 0.9; StudentTemperature = 0.1; WarmupTeacherTemperature = 0.04; TeacherTemperature = 0.07
          TeacherTemperatureWarmupEpochs = 30; LocalCrops = 8; GlobalCropScale = (0.4, 1.0); LocalCropScale = (0.05, 0.4)
          LocalCropSize = 12L; Jitter = 0.4; BlurSigma = (0.1, 1.0); BlurKernel = 3L; Epochs = 100; PretrainImages = 0L; BatchSize = 1024
          LearningRatePer256 = 0.0005; MinLearningRate = 1e-6; WarmupEpochs = 10.0; WeightDecay = 0.04; WeightDecayEnd = 0.4
          ClipGradNorm = 3.0; FreezeLastLayerEpochs = 1; ProbeLayer = "class-tokens"; ProbePool = 4L }
    match preset with
    | Smoke ->
        { paper with Encoder = VitTiny(7L, 1); HeadHidden = 256L; Outputs = 512L; LocalCrops = 2; LocalCropSize = 14L
                     TeacherTemperatureWarmupEpochs = 1; Epochs = 1; PretrainImages = 640L; BatchSize = 64; WarmupEpochs = 0.2
                     ProbePool = 1L }
    | Quick ->
        { paper with Encoder = VitTiny(7L, 2); HeadHidden = 1024L; Outputs = 4096L; LocalCrops = 2; LocalCropSize = 14L
                     TeacherTemperature = 0.04; TeacherTemperatureWarmupEpochs = 1; Epochs = 10; PretrainImages = 0L; BatchSize = 64
                     WarmupEpochs = 1.0; FreezeLastLayerEpochs = 0; ProbeLayer = "class-tokens-patch-mean"; ProbePool = 2L }
    | Paper -> paper

/// The student or teacher network: images → encoder → head logits (N, K).
type DinoNet(encoder: Encoder, head: DinoHead) as this =
    inherit torch.nn.Module<torch.Tensor, torch.Tensor>("DinoNet")
    do this.RegisterComponents()
    member _.Encoder = encoder
    member _.Head = head
    override _.forward(images) = head.forward (encoder.forward images)

/// The multi-crop views of DataAugmentationDINO on [0, 1] pixels, each standardised: crop, flip,
/// jitter (p 0.8), then blur with probability `blur` and solarisation (PIL's, at 0.5) with `solarize`.
let private crop (c: Config) (data: Data) (g: torch.Generator) (scale: float * float) (size: int64) (blur: float) (solarize: float) (x: torch.Tensor) =
    use scope = torch.NewDisposeScope()
    let n = x.shape[0]
    let sometimes p (f: torch.Tensor -> torch.Tensor) (images: torch.Tensor) =
        if p <= 0.0 then images else torch.where((Draw.bernoulli g p n x.device).view(-1L, 1L, 1L, 1L), f images, images)
    let colour = if x.shape[1] = 3L then (0.2, 0.1) else (0.0, 0.0)
    let cropped = Geometric.randomResizedCrop scale (3.0 / 4.0, 4.0 / 3.0) (size, size) g x |> Geometric.randomHorizontalFlip 0.5 g
    let jittered = cropped |> sometimes 0.8 (Photometric.colorJitter c.Jitter c.Jitter (fst colour) (snd colour) g)
    let grey = if x.shape[1] = 3L then Photometric.randomGrayscale 0.2 g jittered else jittered
    let blurred = grey |> sometimes blur (Photometric.randomGaussianBlur c.BlurKernel c.BlurSigma g)
    let solarized = blurred |> sometimes solarize (fun i -> torch.where(i.ge(Scalar.op_Implicit 0.5), i.neg() + 1.0, i))
    (standardise data solarized).MoveToOuterDisposeScope()

/// One step of Algorithm 1: teacher on the 2 global crops, student on all, H(P_t, P_s) over pairs of
/// different crops; AdamW; EMA of the teacher at τ = Momentum.cosine; the center update (eq. 4).
type Step(student: DinoNet, teacher: MomentumCopy, center: torch.Tensor, data: Data, c: Config) =
    let lr = c.LearningRatePer256 * float c.BatchSize / 256.0
    let spec =
        OptimizerSpec(Kind = OptimizerKind.AdamW, LearningRate = lr, WeightDecay = 0.0, WarmupEpochs = c.WarmupEpochs,
                      FinalLrFraction = min 1.0 (c.MinLearningRate / lr), ClipGradNorm = System.Nullable c.ClipGradNorm)
    // The engine's weight decay is constant: DINO's cosine schedule is applied here, as AdamW's
    // decoupled decay p ← p − lr·λ_t·p on the tensors of rank > 1 (main_dino's regularised group).
    let decayed = [| for p in student.parameters () do if p.dim () > 1L then p |]
    interface ITrainingStep with
        member _.Modules = readOnlyDict [ "student", (student :> torch.nn.Module); "teacher", (teacher :> torch.nn.Module) ]
        member _.Optimizers = [| struct ("main", spec, student.named_parameters ()) |] :> IReadOnlyList<_>
        member _.State = readOnlyDict [ "center", center ]
        member _.Step(ctx, batch) =
            let x = unitPixels data batch ctx.Device
            let side = x.shape[2]
            let globals = torch.cat([| crop c data ctx.Generator c.GlobalCropScale side 1.0 0.0 x
                                       crop c data ctx.Generator c.GlobalCropScale side 0.1 0.2 x |], 0L)
            let locals = [| for _ in 1 .. c.LocalCrops -> crop c data ctx.Generator c.LocalCropScale c.LocalCropSize 0.5 0.0 x |]
            let teacherLogits = (use _ = torch.no_grad () in teacher.forward globals)
            student.Head.FreezeLastLayer <- ctx.Epoch < c.FreezeLastLayerEpochs
            let features = student.Encoder.forward globals :: (if locals.Length = 0 then [] else [ student.Encoder.forward (torch.cat(locals, 0L)) ])
            let studentLogits = student.Head.forward (torch.cat(List.toArray features, 0L))
            let temperature = Dino.teacherTemperature c.WarmupTeacherTemperature c.TeacherTemperature c.TeacherTemperatureWarmupEpochs ctx.Epoch
            let entropy = Dino.entropy (Dino.teacherProbabilities temperature center teacherLogits)
            let loss = Dino.loss c.StudentTemperature temperature (2 + c.LocalCrops) center teacherLogits studentLogits
            let value = ctx.Optimize("main", loss)
            let progress = float ctx.GlobalStep / float (max 1L ctx.TotalSteps)
            let weightDecay = c.WeightDecayEnd + (c.WeightDecay - c.WeightDecayEnd) * (1.0 + cos (System.Math.PI * progress)) / 2.0
            (use _ = torch.no_grad () in for p in decayed do p.mul_(Scalar.op_Implicit (1.0 - ctx.LearningRate "main" * weightDecay)) |> ignore)
            let momentum = Momentum.cosine c.TeacherMomentum ctx.GlobalStep ctx.TotalSteps
            teacher.Update momentum
            center.copy_(Dino.updatedCenter c.CenterMomentum center teacherLogits) |> ignore
            readOnlyDict [ "loss", value; "teacher_entropy", entropy; "center_norm", center.norm().item<float32>() |> float
                           "teacher_momentum", momentum; "teacher_temperature", temperature; "weight_decay", weightDecay ]

let build (ctx: Context<Config>) =
    let c = ctx.Config
    let net () =
        let encoder = ctx.NewEncoder()
        new DinoNet(encoder, new DinoHead(encoder.FeatureDim, c.HeadHidden, c.HeadBottleneck, c.Outputs))
    let student = net ()
    let teacher = new MomentumCopy(student, net ())
    let center = torch.zeros([| c.Outputs |], device = ctx.Device)
    let evaluated = (teacher.Copy :?> DinoNet).Encoder
    let examples = if c.PretrainImages > 0L then min c.PretrainImages ctx.Data.Train.Count else ctx.Data.Train.Count
    { training (Step(student, teacher, center, ctx.Data, c)) c.Epochs c.BatchSize evaluated ctx with
        Examples = examples; Probe = Ssl.Experiments.ConfigParts.Probe.OfLayer(c.ProbeLayer, c.ProbePool); Owned = [ student; teacher; center ] }

let spec =
    { backboneSpec "dino" "Caron et al. 2021, Emerging Properties in Self-Supervised Vision Transformers (DINO)" selfSupervised config
        (fun c -> c.Encoder) build with
        CheckData = fun c data ->
            requireSquare "dino" data
            match c.Encoder with
            | VitTiny(p, _) when data.Train.Height % p <> 0L || c.LocalCropSize % p <> 0L ->
                invalidArg "--dataset"
                    $"--dataset: dino on {c.Encoder} needs an image side and LocalCropSize that are multiples of the patch size {p}, found {data.Train.Height} px and LocalCropSize {c.LocalCropSize}"
            | _ -> () }
