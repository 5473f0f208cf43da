/// Instance discrimination with NCE: unsupervised feature learning via non-parametric instance discrimination (Wu,
/// Xiong, Yu & Lin, CVPR 2018). Every training image is its own class. The encoder's features go through a linear
/// layer to a 128-d embedding, L2-normalised (Sec. 3.1); a memory bank holds one such vector per training image; the
/// non-parametric softmax over all n images, P(i|v) = exp(v·f_i/τ) / Z_i (eq. 4-5), is approximated by
/// noise-contrastive estimation: the image's own memory entry is told from m entries drawn uniformly (P_n = 1/n) by
/// the binary classifier h(i, v) = P(i|v) / (P(i|v) + m·P_n(i)) (eq. 6), loss J_NCE (eq. 7; `Contrastive.nce`). Z ≈
/// n/m · Σ exp(v·f/τ) (eq. 8; `Contrastive.estimateNormaliser`) is estimated once, at the first step, and kept, as in
/// the released code (lemniscate.pytorch, NCEAverage). After each step the batch's memory entries move towards the
/// new embeddings, v ← normalise(0.5·v + 0.5·f) (`MemoryBank.Update`). The proximal term of Sec. 3.3, λ·‖f_i − v_i‖²,
/// is ProximalWeight.
///
/// One departure, for memory: the m noise entries are drawn once per batch and shared by its anchors (each anchor
/// still sees m uniform draws, so its loss has the paper's expectation). Per-anchor draws would gather B·m·128 floats
/// a step (537 MB at B = 256, m = 4096). The evaluated encoder is the backbone (its pooled features), as the paper's
/// linear classifiers read conv features (Sec. 4.1), not the 128-d embedding. Measured runs: docs/experiments/nce.md.
module Ssl.Experiments.Recipes.Nce

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Experiments

/// The paper's ImageNet settings (Sec. 4 and the released code): 128-d embedding, m = 4096, τ = 0.07, memory momentum
/// 0.5, SGD (momentum 0.9) at 0.03 for batch 256, 200 epochs, weight decay 5e-4; the released code's augmentation
/// (crop scale 0.2-1, jitter 0.4, flip; grey images: brightness and contrast only, as saturation, hue and grayscale
/// do nothing to one channel).
type Config =
    { /// The paper's are ResNet-18/50 on ImageNet; `paper` takes ResNet-18 (CIFAR form), as the
      /// peers' CIFAR tables do; quick and smoke SmallConvNet.
      Encoder: Backbone
      [<Range(1.0)>] EmbeddingDim: int64
      [<Range(1.0)>] NoiseSamples: int64
      [<Range(0.0)>] Temperature: float
      [<Range(0.0, 1.0)>] MemoryMomentum: float
      /// Z ← μ·Z + (1 − μ)·(this step's estimate, eq. 8) after the first step; 0 keeps the first step's Z, as the
      /// paper and its released code do.
      [<Range(0.0, 1.0)>] NormaliserMomentum: float
      /// With NormaliserMomentum > 0: Z follows the moving average up to this step and stays fixed after it, as the
      /// paper's Z stays fixed (0: it follows the moving average throughout).
      [<Range(0.0)>] NormaliserFreezeStep: int64
      /// λ of the proximal regularisation (Sec. 3.3); 0 leaves it out.
      [<Range(0.0)>] ProximalWeight: float
      /// A batch norm without parameters on the embedding before the L2 normalisation (not in the paper): it removes
      /// the component every embedding shares; off in every preset.
      EmbeddingBatchNorm: bool
      /// SGD with momentum 0.9, cosine decay.
      Schedule: TrainingSchedule
      CropScale: float * float
      [<Range(0.0)>] Jitter: float
      [<Range(0.0, 1.0)>] FlipProbability: float }

/// `quick`: SmallConvNet-16 for 30 epochs (each memory entry refreshed 30 times, not 200), with three departures for
/// this budget (trials: docs/experiments/nce.md): Z as a moving average of eq. 8 (μ = 0.99, as K. He advises for NCE
/// in HobbitLong/CMC issue 23) over the first epoch (234 steps), fixed after it; the proximal term at the paper's λ =
/// 50; learning rate 0.003. `paper`: ResNet-18, 200 epochs, the released code's settings. `smoke`: one epoch with m =
/// 512.
let config preset =
    let paper =
        { Encoder = ResNet18; EmbeddingDim = 128L; NoiseSamples = 4096L; Temperature = 0.07; MemoryMomentum = 0.5
          NormaliserMomentum = 0.0; NormaliserFreezeStep = 0L; ProximalWeight = 0.0; EmbeddingBatchNorm = false
          CropScale = (0.2, 1.0); Jitter = 0.4; FlipProbability = 0.5
          Schedule = { Epochs = 200; BatchSize = 256; LearningRate = 0.03; WeightDecay = 5e-4; WarmupEpochs = 0.0 } }
    match preset with
    | Smoke -> { paper with Encoder = SmallConvNet 16L; NoiseSamples = 512L; Schedule = { paper.Schedule with Epochs = 1; BatchSize = 128 } }
    | Quick ->
        { paper with
            Encoder = SmallConvNet 16L; NormaliserMomentum = 0.99; NormaliserFreezeStep = 234L; ProximalWeight = 50.0
            Schedule = { paper.Schedule with Epochs = 30; LearningRate = 0.003 } }
    | Paper -> paper

/// Z for this step: the estimate (eq. 8) at the first step (`previous` ≤ 0); after it the moving average μ·previous +
/// (1 − μ)·estimate while NormaliserMomentum μ > 0 and the step is before NormaliserFreezeStep (when that is set);
/// else `previous`. `estimate` runs only when needed.
let nextNormaliser (config: Config) (step: int64) (previous: float) (estimate: unit -> float) =
    let m = config.NormaliserMomentum
    if previous <= 0.0 then estimate ()
    elif m > 0.0 && (config.NormaliserFreezeStep <= 0L || step < config.NormaliserFreezeStep) then
        m * previous + (1.0 - m) * estimate ()
    else previous

/// The map from the encoder's features to the embedding: linear (Sec. 3.1), then, when `EmbeddingBatchNorm`, a batch
/// norm without learnt scale or shift.
let embeddingHead (features: int64) (config: Config) : torch.nn.Module<torch.Tensor, torch.Tensor> =
    let linear = new LinearHead(features, config.EmbeddingDim)
    if config.EmbeddingBatchNorm then
        torch.nn.Sequential(linear, torch.nn.BatchNorm1d(config.EmbeddingDim, affine = false))
    else linear

/// One step: embed an augmented view of each image, NCE against the memory bank, update the bank. `normaliser`: Z as
/// a (1) float64 tensor, ≤ 0 until the first step estimates it (kept in the checkpoint, so a resumed run keeps its
/// Z).
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let encoder = ctx.NewEncoder()
    let head = embeddingHead encoder.FeatureDim config
    let bank = new MemoryBank(ctx.Data.Train.Count, config.EmbeddingDim, ctx.Own(new torch.Generator(uint64 ctx.Seed, ctx.Device)))
    let normaliser = ctx.Own(torch.tensor([| -1.0 |], dtype = torch.ScalarType.Float64))
    let noiseProbability = 1.0 / float bank.Size
    let optimizers = [ optimizer "main" (Optim.sgd config.Schedule) [ encoder; head ] ]
    let def =
        stepOf [ "encoder" => encoder; "head" => head; "memory" => bank ] optimizers (fun step (batch: int64[]) ->
            use idx = torch.tensor(batch)
            let x = unitPixels ctx.Data batch step.Device
            let h, w = x.shape[2], x.shape[3]
            let view =
                x
                |> Geometric.randomResizedCrop config.CropScale (3.0 / 4.0, 4.0 / 3.0) (h, w) step.Generator
                |> Photometric.colorJitter config.Jitter config.Jitter 0.0 0.0 step.Generator
                |> Geometric.randomHorizontalFlip config.FlipProbability step.Generator
                |> standardise ctx.Data
            let f = Contrastive.normalize (head.forward (encoder.forward view))
            let own = idx.``to``(step.Device)
            let entries = bank.Rows own
            let noise = bank.Rows(bank.SampleNoise(1L, config.NoiseSamples, step.Generator).view(-1L))
            let positive = (f * entries).sum(1L)
            let negatives = f.mm(noise.t())
            // Z and the bank from every rank's rows, so that both stay alike on every rank.
            let estimate () = Contrastive.estimateNormaliser bank.Size config.Temperature (step.Gather(negatives.detach()))
            let z = nextNormaliser config step.GlobalStep (normaliser.item<float>()) estimate
            normaliser.fill_(z.ToScalar()) |> ignore
            let nce = Contrastive.nce config.Temperature z noiseProbability positive negatives
            let loss = if config.ProximalWeight > 0.0 then nce + config.ProximalWeight * (f - entries).square().sum(1L).mean() else nce
            let value = step.Optimize("main", loss)
            use everyRank = torch.tensor(step.GatherIndices batch, device = step.Device)
            bank.Update(config.MemoryMomentum, everyRank, step.Gather(f.detach()))
            [ "loss", value; "positive_sim", float (positive.detach().mean().item<float32>())
              "noise_sim", float (negatives.detach().mean().item<float32>()); "log_z", log z ])
    ctx.Train(encoder, { def with State = fun () -> [ "normaliser", normaliser ] })

let spec =
    backboneSpec "nce" "Wu et al. 2018, Unsupervised Feature Learning via Non-Parametric Instance Discrimination"
        selfSupervised config (fun config -> config.Encoder) build
