/// DINO: self-distillation with no labels (Caron et al. 2021, "Emerging Properties in Self-Supervised
/// Vision Transformers", Algorithm 1). A student (encoder + DinoHead) matches, across multi-crop
/// views, the centred and sharpened outputs of a teacher that is its momentum copy (Core's
/// Dino.loss). The teacher, which the paper evaluates, is what the protocols read. Measured runs:
/// docs/experiments/dino.md.
module Ssl.Experiments.Recipes.Dino

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Experiments

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
      /// BatchSize at least 2; LearningRate: AdamW's rate per 256 images (lr = LearningRate · BatchSize / 256),
      /// linear warm-up then cosine to MinLearningRate; WeightDecay: the start of its cosine to WeightDecayEnd.
      Schedule: TrainingSchedule
      /// Images an epoch walks: the first N of the training set, 0 for all (the probes use all).
      [<Range(0.0)>] PretrainImages: int64
      [<Range(0.0)>] MinLearningRate: float
      [<Range(0.0)>] WeightDecayEnd: float
      [<Range(0.0)>] ClipGradNorm: float
      [<Range(0.0)>] FreezeLastLayerEpochs: int
      /// The class tokens of the last blocks concatenated (eval_linear.py's n_last_blocks: 4 for ViT-S,
      /// Sec. 4.1), with the mean of the last block's patch tokens where patchMean (its --avgpool_patchtokens).
      Probe: Probe }

/// `paper`: main_dino.py's defaults on ViT-Tiny patch 4 (the paper's ViT-S/16 sees a 14x14 grid of
/// 224 px; 28 px in 4 px patches gives 7x7) with the paper's τ_t 0.04 → 0.07 over 30 epochs, 8 local
/// crops of 12 px (96/224 of 28), batch 1024. `quick` (about an hour at one thread, twice the other
/// quick presets' budget): ViT-Tiny with 2 blocks on 7 px patches (4x4 tokens; patch 4 costs 3-5x
/// more), 2 local crops of 14 px, head hidden 1024, K 4,096, 10 epochs of all images in batches of 64
/// (9,370 steps), warm-up a tenth of training as the paper's 10 of 100 epochs, τ_t 0.04 throughout
/// (main_dino's default teacher_temp; the 0.07 warm-up is for its long schedules), and the last layer
/// is not frozen (the reference freezes 1 of 100 epochs). The probes read the class tokens of the
/// last blocks as eval_linear.py does (4 for ViT-S; quick: both of its 2 blocks, smoke: its 1), and
/// quick adds the mean of the last block's patch tokens; the random-init baseline is read the same
/// way. Measured, with the shorter budgets tried: docs/experiments/dino.md.
let config preset =
    let paper =
        { Encoder = VitTiny(4L, 12); HeadHidden = 2048L; HeadBottleneck = 256L; Outputs = 65536L; TeacherMomentum = 0.996
          CenterMomentum = 0.9; StudentTemperature = 0.1; WarmupTeacherTemperature = 0.04; TeacherTemperature = 0.07
          TeacherTemperatureWarmupEpochs = 30; LocalCrops = 8; GlobalCropScale = (0.4, 1.0); LocalCropScale = (0.05, 0.4)
          LocalCropSize = 12L; Jitter = 0.4; BlurSigma = (0.1, 1.0); BlurKernel = 3L; PretrainImages = 0L; MinLearningRate = 1e-6
          WeightDecayEnd = 0.4; ClipGradNorm = 3.0; FreezeLastLayerEpochs = 1; Probe = Probe.ClassTokens(4L, false)
          Schedule = { Epochs = 100; BatchSize = 1024; LearningRate = 0.0005; WeightDecay = 0.04; WarmupEpochs = 10.0 } }
    match preset with
    | Smoke ->
        { paper with Encoder = VitTiny(7L, 1); HeadHidden = 256L; Outputs = 512L; LocalCrops = 2; LocalCropSize = 14L
                     TeacherTemperatureWarmupEpochs = 1; PretrainImages = 640L; Probe = Probe.ClassTokens(1L, false)
                     Schedule = { paper.Schedule with Epochs = 1; BatchSize = 64; WarmupEpochs = 0.2 } }
    | Quick ->
        { paper with Encoder = VitTiny(7L, 2); HeadHidden = 1024L; Outputs = 4096L; LocalCrops = 2; LocalCropSize = 14L
                     TeacherTemperature = 0.04; TeacherTemperatureWarmupEpochs = 1; PretrainImages = 0L; FreezeLastLayerEpochs = 0
                     Probe = Probe.ClassTokens(2L, true); Schedule = { paper.Schedule with Epochs = 10; BatchSize = 64; WarmupEpochs = 1.0 } }
    | Paper -> paper

/// The student or teacher network: images → encoder → head logits (N, K).
type DinoNet(encoder: Encoder, head: DinoHead) as this =
    inherit torch.nn.Module<torch.Tensor, torch.Tensor>("DinoNet")
    do this.RegisterComponents()
    member _.Encoder = encoder
    member _.Head = head
    override _.forward(images) = head.forward (encoder.forward images)

/// The multi-crop views of DataAugmentationDINO on [0, 1] pixels, each standardised: crop, flip, jitter (p 0.8; saturation
/// and hue 0.2, 0.1 on colour images), grayscale 0.2 (Views.multiCropPixels), then blur with probability `blur` and
/// solarisation (PIL's, at 0.5) with `solarize`.
let private crop (config: Config) (data: Data) (g: torch.Generator) (scale: float * float) (size: int64) (blur: float) (solarize: float)
                 (x: torch.Tensor) =
    use scope = torch.NewDisposeScope()
    let augmentation = { CropScale = scale; Jitter = config.Jitter; ColourJitter = (0.2, 0.1); GrayscaleProbability = 0.2; FlipProbability = 0.5 }
    multiCropPixels augmentation 0.8 scale size g x
    |> sometimes g blur (Photometric.randomGaussianBlur config.BlurKernel config.BlurSigma g)
    |> sometimes g solarize (fun i -> torch.where(i.ge(Scalar.op_Implicit 0.5), i.neg() + 1.0, i))
    |> standardise data
    |> fun views -> views.MoveToOuterDisposeScope()

/// One step of Algorithm 1: teacher on the 2 global crops, student on all, H(P_t, P_s) over pairs of
/// different crops; AdamW; DINO's cosine weight decay on `decayed`; EMA of the teacher at
/// τ = Momentum.cosine; the center update (eq. 4).
let private run (config: Config) (data: Data) (student: DinoNet) (teacher: MomentumCopy) (center: torch.Tensor) (decayed: Modules.Parameter[])
                (step: StepContext) (batch: int64[]) =
    let x = unitPixels data batch step.Device
    let side = x.shape[2]
    let globals = torch.cat([| crop config data step.Generator config.GlobalCropScale side 1.0 0.0 x
                               crop config data step.Generator config.GlobalCropScale side 0.1 0.2 x |], 0L)
    let locals = [| for _ in 1 .. config.LocalCrops -> crop config data step.Generator config.LocalCropScale config.LocalCropSize 0.5 0.0 x |]
    let teacherLogits = (use _ = torch.no_grad () in teacher.forward globals)
    student.Head.FreezeLastLayer <- step.Epoch < config.FreezeLastLayerEpochs
    let features = student.Encoder.forward globals :: (if locals.Length = 0 then [] else [ student.Encoder.forward (torch.cat(locals, 0L)) ])
    let studentLogits = student.Head.forward (torch.cat(List.toArray features, 0L))
    let temperature =
        Dino.teacherTemperature config.WarmupTeacherTemperature config.TeacherTemperature config.TeacherTemperatureWarmupEpochs step.Epoch
    let entropy = Dino.entropy (Dino.teacherProbabilities temperature center teacherLogits)
    let loss = Dino.loss config.StudentTemperature temperature (2 + config.LocalCrops) center teacherLogits studentLogits
    let value = step.Optimize("main", loss)
    let progress = float step.GlobalStep / float (max 1L step.TotalSteps)
    let start, stop = config.Schedule.WeightDecay, config.WeightDecayEnd
    let weightDecay = stop + (start - stop) * (1.0 + cos (System.Math.PI * progress)) / 2.0
    (use _ = torch.no_grad () in for p in decayed do p.mul_(Scalar.op_Implicit (1.0 - step.LearningRate "main" * weightDecay)) |> ignore)
    let momentum = Momentum.cosine config.TeacherMomentum step.GlobalStep step.TotalSteps
    teacher.Update momentum
    // The center is the mean over the global batch (main_dino.py's all_reduce), alike on every rank.
    center.copy_(Dino.updatedCenter config.CenterMomentum center (step.Gather teacherLogits)) |> ignore
    [ "loss", value; "teacher_entropy", entropy; "center_norm", center.norm().item<float32>() |> float
      "teacher_momentum", momentum; "teacher_temperature", temperature; "weight_decay", weightDecay ]

/// Student, its momentum teacher and the center; an epoch walks the first PretrainImages images.
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let net () =
        let encoder = ctx.NewEncoder()
        new DinoNet(encoder, new DinoHead(encoder.FeatureDim, config.HeadHidden, config.HeadBottleneck, config.Outputs))
    let student = net ()
    let teacher = new MomentumCopy(student, net ())
    let center = ctx.Own(torch.zeros([| config.Outputs |], device = ctx.Device))
    let lr = config.Schedule.LearningRate * float config.Schedule.BatchSize / 256.0
    let spec =
        OptimizerSpec(Kind = OptimizerKind.AdamW, LearningRate = lr, WeightDecay = 0.0, WarmupEpochs = config.Schedule.WarmupEpochs,
                      FinalLrFraction = min 1.0 (config.MinLearningRate / lr), ClipGradNorm = System.Nullable config.ClipGradNorm)
    // The engine's weight decay is constant: DINO's cosine schedule is applied in the step, as AdamW's
    // decoupled decay p ← p − lr·λ_t·p on the tensors of rank > 1 (main_dino's regularised group).
    let decayed = [| for p in student.parameters () do if p.dim () > 1L then p |]
    let def =
        stepOf [ "student" => student; "teacher" => teacher ] [ optimizer "main" spec [ student ] ]
            (run config ctx.Data student teacher center decayed)
    let examples = if config.PretrainImages > 0L then min config.PretrainImages ctx.Data.Train.Count else ctx.Data.Train.Count
    { ctx.Train((teacher.Copy :?> DinoNet).Encoder, { def with State = fun () -> [ "center", center ] }) with Examples = examples }

let spec =
    { backboneSpec "dino" "Caron et al. 2021, Emerging Properties in Self-Supervised Vision Transformers (DINO)" selfSupervised config
        (fun config -> config.Encoder) build with
        CheckData = fun config data ->
            requireSquare "dino" data
            requireBatchOf 2 config.Schedule
            match config.Encoder with
            | VitTiny(p, _) when data.Train.Height % p <> 0L || config.LocalCropSize % p <> 0L ->
                invalidArg "--dataset"
                    ($"--dataset: dino on {config.Encoder} needs an image side and LocalCropSize that are multiples of the patch size {p}, "
                     + $"found {data.Train.Height} px and LocalCropSize {config.LocalCropSize}")
            | _ -> () }
