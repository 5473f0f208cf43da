/// MoCo v3 (Chen, Xie & He, ICCV 2021, "An Empirical Study of Training Self-Supervised Vision Transformers", Sec. 3,
/// Algorithm 1; the authors' moco/builder.py, main_moco.py, vits.py). Queries q = pred(proj(f(x))); keys k from the momentum
/// encoder, the moving average of f and proj (m 0.99 → 1 on a cosine: adjust_moco_momentum, Core's Momentum.cosine); the loss
/// is InfoNCE against the other keys of the batch, no queue, symmetrised: ctr(q₁, k₂) + ctr(q₂, k₁) (Core's MocoV3.symmetric).
/// A ViT's patch projection stays at its random initialisation (Sec. 4.2, "random patch projection"; vits.py's
/// stop_grad_conv1). The protocols read f. Differences: Core's ViT has a learned positional table (vits.py: fixed 2-D
/// sin-cos) and its initialisation (vits.py: Xavier-uniform); no blur or solarisation at 28 px (as the BYOL recipe); the
/// momentum update follows the optimizer step (builder.py: before the keys; the same updates, one step apart). Logged:
/// loss, `instance_acc` (how often a query's own key is its most similar in the batch), momentum.
/// Measured runs: docs/experiments/moco-v3.md.
module Ssl.Experiments.Recipes.MocoV3

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Experiments

/// The paper's ViT settings (Sec. 5, "Implementation Details", and the authors' CONFIG.md): projector of 3 layers and predictor of 2, hidden
/// 4,096, output 256; AdamW at lr 1.5e-4 · batch / 256, weight decay 0.1 on every parameter, 40 warm-up epochs of 300 then
/// cosine; τ = 0.2; m 0.99 → 1; crops of 8-100% of the image. The ResNet settings (main_moco.py's defaults): Optimizer=Lars,
/// LearningRate=0.6, WeightDecay=1e-6, Temperature=1.0, ProjectorLayers=2, PredictorLastBatchNorm=false, WarmupEpochs=10.
type Config =
    { Encoder: Backbone
      [<Range(1.0)>] HiddenDim: int64
      [<Range(1.0)>] ProjectionDim: int64
      [<Range(1.0)>] ProjectorLayers: int
      /// A batch norm without affine parameters after the predictor's last layer (builder.py: MoCo_ViT yes, MoCo_ResNet no).
      PredictorLastBatchNorm: bool
      [<Range(0.0)>] Temperature: float
      /// m at the first step; it rises to 1 on a cosine.
      [<Range(0.0, 1.0)>] BaseMomentum: float
      /// Keep a ViT's patch projection at its random initialisation; other backbones have none.
      FreezePatchProjection: bool
      /// AdamW (ViT) or Lars (ResNet; momentum 0.9, no decay or scaling of 1-D parameters as the authors' LARS).
      Optimizer: OptimizerKind
      [<Range(0.0)>] LarsEta: float
      /// LearningRate per 256 images (lr = LearningRate · BatchSize / 256, main_moco.py); BatchSize at least 2 (batch norm).
      Schedule: TrainingSchedule
      Augmentation: Augmentation
      /// What the protocols read. On a backbone that is not a ViT, class tokens fall back to the output.
      Probe: Probe }

/// `paper`: the ViT settings on ViT-Tiny patch 4 (DINO's paper preset here) at batch 1,024 (CONFIG.md's one-node ViT-S run)
/// for 300 epochs. `quick`: ViT-Tiny with 2 blocks on 7 px patches as DINO's quick, hidden 1,024, batch 256, 5 epochs (the
/// 15-20 minute budget at the step rate measured in docs/experiments/moco-v3.md), warm-up a tenth, crops of 20-100% (an 8%
/// crop of 28 px is 8 x 8 pixels; the authors' ResNet runs use 20%), probes on the class tokens of both blocks and the
/// patch-token mean as DINO's quick. `smoke`: one block, hidden 256, one epoch of the smoke subset.
let config preset =
    let paper =
        { Encoder = VitTiny(4L, 12); HiddenDim = 4096L; ProjectionDim = 256L; ProjectorLayers = 3; PredictorLastBatchNorm = true
          Temperature = 0.2; BaseMomentum = 0.99; FreezePatchProjection = true; Optimizer = OptimizerKind.AdamW; LarsEta = 0.001
          Augmentation = { mocoAugmentation with CropScale = (0.08, 1.0); ColourJitter = (0.2, 0.1) }; Probe = Probe.Output
          Schedule = { Epochs = 300; BatchSize = 1024; LearningRate = 1.5e-4; WeightDecay = 0.1; WarmupEpochs = 40.0 } }
    match preset with
    | Smoke ->
        { paper with Encoder = VitTiny(7L, 1); HiddenDim = 256L
                     Schedule = { paper.Schedule with Epochs = 1; BatchSize = 128; WarmupEpochs = 0.2 } }
    | Quick ->
        { paper with Encoder = VitTiny(7L, 2); HiddenDim = 1024L; Augmentation = { paper.Augmentation with CropScale = (0.2, 1.0) }
                     Probe = Probe.ClassTokens(2L, true); Schedule = { paper.Schedule with Epochs = 5; BatchSize = 256; WarmupEpochs = 0.5 } }
    | Paper -> paper

/// One step (Algorithm 1): q = pred(proj(f(x))) and k = proj_m(f_m(x)) for both views; ctr(q₁, k₂) + ctr(q₂, k₁);
/// the optimizer on base encoder, projector and predictor; then the momentum encoder's update.
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let projected (encoder: Encoder) =
        Projectors.projected encoder (MocoV3Mlp.create config.ProjectorLayers encoder.FeatureDim config.HiddenDim config.ProjectionDim true)
    let encoder = ctx.NewEncoder()
    if config.FreezePatchProjection then
        match encoder with :? VisionTransformer as vit -> (for p in vit.PatchEmbedding.parameters () do p.requires_grad <- false) | _ -> ()
    let online = projected encoder
    let momentumEncoder = new MomentumCopy(online, projected (ctx.NewEncoder()))
    let predictor = MocoV3Mlp.create 2 config.ProjectionDim config.HiddenDim config.ProjectionDim config.PredictorLastBatchNorm
    let schedule = { config.Schedule with LearningRate = config.Schedule.LearningRate * float config.Schedule.BatchSize / 256.0 }
    let spec =
        match config.Optimizer with
        | OptimizerKind.Lars -> Optim.lars schedule config.LarsEta
        | _ -> OptimizerSpec(Kind = OptimizerKind.AdamW, LearningRate = schedule.LearningRate, WeightDecay = schedule.WeightDecay,
                             DecayNormAndBias = true, WarmupEpochs = schedule.WarmupEpochs)
    let modules = [ "online" => online; "predictor" => predictor; "momentum" => momentumEncoder ]
    let training =
        ctx.Train(encoder, stepOf modules [ optimizer "main" spec [ online; predictor ] ] (fun step batch ->
            let v1, v2 = twoViews config.Augmentation ctx.Data step batch
            // Every rank's queries and keys (moco-v3's concat_all_gather of the keys): the one-process loss over the global batch.
            let q1, q2 = step.Gather(predictor.forward (online.forward v1)), step.Gather(predictor.forward (online.forward v2))
            let k1, k2 = (use _ = torch.no_grad () in (step.Gather(momentumEncoder.forward v1), step.Gather(momentumEncoder.forward v2)))
            let value = step.Optimize("main", MocoV3.symmetric config.Temperature q1 q2 k1 k2)
            let accuracy = (MocoV3.instanceAccuracy q1 k2 + MocoV3.instanceAccuracy q2 k1) / 2.0
            let momentum = Momentum.cosine config.BaseMomentum step.GlobalStep step.TotalSteps
            momentumEncoder.Update momentum
            [ "loss", value; "instance_acc", accuracy; "momentum", momentum ]))
    match config.Probe, encoder with
    | Probe.ClassTokens _, e when not (e :? VisionTransformer) -> { training with Probe = Probe.Output }
    | _ -> training

let spec =
    { backboneSpec "moco-v3" "Chen, Xie & He 2021, An Empirical Study of Training Self-Supervised Vision Transformers (MoCo v3)"
        selfSupervised config (fun config -> config.Encoder) build with
        CheckData = fun config data ->
            requireBatchOf 2 config.Schedule
            if config.Optimizer <> OptimizerKind.AdamW && config.Optimizer <> OptimizerKind.Lars then
                invalidArg "Optimizer" $"Optimizer: expected AdamW or Lars, found {config.Optimizer}"
            match config.Encoder with
            | VitTiny(p, _) when data.Train.Height % p <> 0L || data.Train.Width % p <> 0L ->
                invalidArg "--dataset" $"--dataset: moco-v3 on {config.Encoder} needs image sides that are multiples of the patch size {p}, found {data.Train.Height}x{data.Train.Width}"
            | _ -> () }
