/// BigBiGAN: large scale adversarial representation learning (Donahue & Simonyan, NeurIPS 2019).
/// A generator G(z), an encoder E(x) and a joint discriminator D(x, z) with the unary scores
/// s_x = θ_xᵀF(x), s_z = θ_zᵀH(z) and the joint score s_xz = θ_xzᵀJ(F(x), H(z)) (Sec. 2). D tells
/// real pairs (x ~ data, ẑ ~ E(x)) from fake pairs (G(z), z ~ N(0, I)); E and G together try to
/// make the two joint distributions match, so E learns to invert G. The losses are eq. 3-5
/// (Core.Losses.Adversarial.bigBiGan): D minimises the sum of the three hinge losses, E and G the
/// three raw scores with the label's sign; D and E+G are updated alternately, each by its own Adam.
///
/// Our choices, at 28x28 grey on a 2-core CPU:
/// - Networks: Core's small DCGAN-style G and conv E and D (Models/BigBiGan.fs) instead of BigGAN
///   and RevNet; spectral normalisation on every layer of D (as BigGAN's D), none on E or G.
/// - E is the paper's non-deterministic encoder: it predicts μ and σ and the real pair's latent is
///   ẑ = μ + σ·ε (reparameterised); reconstructions use μ: G(μ(x)).
/// - Evaluated: E's average-pooled trunk (2·width features, the paper's "avepool" features, Table 2);
///   `extra.mu_linear_probe_acc` adds the linear probe on μ.
/// - Pixels: G's tanh output in [-1, 1] is mapped to [0, 1] and standardised like real images, so D
///   and E see both on the scale the protocols evaluate E on.
/// - Logged per step: d_loss, eg_loss; d_acc (D's accuracy on s_xz over the 2N pairs, before D's
///   update), d_acc_x (the same on s_x); the means of s_x, s_z, s_xz over real and fake pairs.
/// - Written: plots/samples.png (G of 100 fixed prior draws; also plots/samples-epoch-<e>.png) and
///   plots/reconstructions.png (rows of test inputs, each followed by G(μ(x))). A classifier trained
///   by the supervised recipe (the "judge", cached in runs/.cache, seed 0) labels x and G(μ(x)):
///   `extra.reconstruction_class_agreement` is the fraction of equal labels (chance in `extra.chance`).
/// Measured runs: docs/experiments/bigbigan.md.
module Ssl.Experiments.Recipes.BigBiGan

open System.IO
open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Host.Data
open Ssl.Experiments

/// Paper (Sec. 3, App.): batch 2048, 120-d latent, about 500K steps on ImageNet.
type Config =
    { /// Base width w of G, E and D; a multiple of 32 so every (transposed) convolution has a
      /// multiple of 16 output (input) channels (SafeConv).
      [<Range(32.0)>] Width: int64
      /// Dimension of z (and of μ, σ).
      [<Range(1.0)>] LatentDim: int64
      /// Epochs and batch; no weight decay or warm-up. Its LearningRate stays 0: D and E+G each have
      /// their own Adam, at DiscriminatorLearningRate and EncoderGeneratorLearningRate.
      Schedule: TrainingSchedule
      /// BigGAN's Adam (Brock et al. 2019, App. C), which BigBiGAN keeps: rate 2e-4, β1 = 0,
      /// β2 = 0.999, constant; one D step per E+G step at equal rates (stable here, see d_acc).
      [<Range(0.0)>] DiscriminatorLearningRate: float
      [<Range(0.0)>] EncoderGeneratorLearningRate: float
      [<Range(0.0, 1.0)>] Beta1: float
      [<Range(0.0, 1.0)>] Beta2: float
      /// Epochs of the supervised judge that labels x and G(μ(x)).
      [<Range(1.0)>] JudgeEpochs: int }

/// `quick`: width 32, 64-d latent, batch 128, 4 epochs, to fit 20 minutes on 2 idle cores;
/// `paper`: the paper's batch, latent size and rates on wider nets for 100 epochs; `smoke`: one epoch.
let config preset =
    let paper =
        { Width = 64L; LatentDim = 120L; DiscriminatorLearningRate = 2e-4; EncoderGeneratorLearningRate = 2e-4; Beta1 = 0.0
          Beta2 = 0.999; JudgeEpochs = 15; Schedule = { Epochs = 100; BatchSize = 2048; LearningRate = 0.0; WeightDecay = 0.0; WarmupEpochs = 0.0 } }
    match preset with
    | Smoke -> { paper with Width = 32L; LatentDim = 32L; JudgeEpochs = 1; Schedule = { paper.Schedule with Epochs = 1; BatchSize = 64 } }
    | Quick -> { paper with Width = 32L; LatentDim = 64L; JudgeEpochs = 2; Schedule = { paper.Schedule with Epochs = 4; BatchSize = 128 } }
    | Paper -> paper

/// E's average-pooled trunk as the evaluated encoder: images (N, C, H, W) → (N, 2·width).
type PooledEncoder(encoder: BigBiGanEncoder) as this =
    inherit Encoder("BigBiGanPooled")
    let trunk = encoder
    do this.RegisterComponents()
    override _.FeatureDim = trunk.PooledDim
    override _.forward(images) = trunk.Pooled images

/// Maps G's tanh output (N, C, H, W) in [-1, 1] to the standardised input scale of real images.
type private Standardiser(mean: float[], std: float[], device: torch.Device) =
    let channels = int64 mean.Length
    let m = torch.tensor(mean, torch.float32, device).view(1L, channels, 1L, 1L)
    let s = torch.tensor(std, torch.float32, device).view(1L, channels, 1L, 1L)
    member _.FromTanh(images: torch.Tensor) =
        use scope = torch.NewDisposeScope()
        ((images + 1.0) * 0.5 - m).div(s).MoveToOuterDisposeScope()
    /// Standardised images → uint8 pixels for a PNG.
    member _.ToPixels(images: torch.Tensor) =
        use scope = torch.NewDisposeScope()
        (images * s + m).clamp(0.0.ToScalar(), 1.0.ToScalar()).mul(255.0.ToScalar()).round().to_type(torch.ScalarType.Byte).cpu()
            .MoveToOuterDisposeScope()
    interface System.IDisposable with
        member _.Dispose() =
            m.Dispose()
            s.Dispose()

let private asLossScores (s: BiGanScores) : Adversarial.BigBiGanScores = { X = s.Sx; Z = s.Sz; XZ = s.Sxz }

let private setTrainable (m: torch.nn.Module) (trainable: bool) =
    for p in m.parameters () do p.requires_grad <- trainable

/// BigGAN's Adam at `rate`: the config's β, constant, the schedule's weight decay and warm-up (none).
let private adam (config: Config) (rate: float) =
    OptimizerSpec(Kind = OptimizerKind.Adam, LearningRate = rate, Beta1 = config.Beta1, Beta2 = config.Beta2, Cosine = false,
                  WeightDecay = config.Schedule.WeightDecay, WarmupEpochs = config.Schedule.WarmupEpochs)

/// One alternating step: D on the hinge losses of eq. 3-5, then E and G on the raw scores of the
/// updated D. Generated images and encoder samples are computed once and reused by both updates.
let private run (gan: BigBiGan) (data: Data) (standardiser: Standardiser) (step: StepContext) (batch: int64[]) =
    let x = Features.ToInput(data.Train.Batch(batch), data.Mean, data.Std, step.Device)
    let z = gan.SamplePrior(x.shape[0], step.Generator)
    let zHat = gan.Encoder.Sample(x, step.Generator)
    let xHat = standardiser.FromTanh(gan.Generator.forward z)
    let real = gan.Discriminator.Scores(x, zHat.detach())
    let fake = gan.Discriminator.Scores(xHat.detach(), z)
    let dLoss = step.Optimize("discriminator", (Adversarial.bigBiGan (asLossScores real) (asLossScores fake)).Discriminator)
    let figures =
        use _ = torch.no_grad()
        let correct (realScore: torch.Tensor) (fakeScore: torch.Tensor) =
            torch.cat([| realScore.gt(0.0.ToScalar()); fakeScore.lt(0.0.ToScalar()) |], 0L).to_type(torch.ScalarType.Float32).mean()
        torch.stack([| correct real.Sxz fake.Sxz; correct real.Sx fake.Sx
                       real.Sx.mean(); real.Sz.mean(); real.Sxz.mean(); fake.Sx.mean(); fake.Sz.mean(); fake.Sxz.mean() |])
            .cpu().data<float32>().ToArray()
    // E and G against the updated D; D's parameters take no gradient in this pass.
    setTrainable gan.Discriminator false
    let egLoss =
        try
            let real = gan.Discriminator.Scores(x, zHat)
            let fake = gan.Discriminator.Scores(xHat, z)
            step.Optimize("encoder_generator", (Adversarial.bigBiGan (asLossScores real) (asLossScores fake)).EncoderGenerator)
        finally
            setTrainable gan.Discriminator true
    [ "d_loss", dLoss; "eg_loss", egLoss; "d_acc", float figures[0]; "d_acc_x", float figures[1]
      "real_s_x", float figures[2]; "real_s_z", float figures[3]; "real_s_xz", float figures[4]
      "fake_s_x", float figures[5]; "fake_s_z", float figures[6]; "fake_s_xz", float figures[7] ]

/// G(z) for `z` (eval mode, no gradients) as uint8 pixels.
let private samples (gan: BigBiGan) (standardiser: Standardiser) (z: torch.Tensor) =
    use _ = torch.no_grad()
    use scope = torch.NewDisposeScope()
    gan.Generator.eval()
    standardiser.ToPixels(standardiser.FromTanh(gan.Generator.forward z)).MoveToOuterDisposeScope()

/// G(μ(x)) for standardised `x` (eval mode, no gradients), standardised.
let private reconstruct (gan: BigBiGan) (standardiser: Standardiser) (x: torch.Tensor) =
    use _ = torch.no_grad()
    use scope = torch.NewDisposeScope()
    gan.Generator.eval()
    gan.Encoder.eval()
    standardiser.FromTanh(gan.Generator.forward(gan.Encoder.forward x)).MoveToOuterDisposeScope()

/// `rows` rows of 10 test inputs, each followed by the row of their reconstructions.
let private saveReconstructions (gan: BigBiGan) (standardiser: Standardiser) (data: Data) (device: torch.Device) (path: string) =
    use scope = torch.NewDisposeScope()
    let rows = 5L
    let n = min (rows * 10L) data.Test.Count
    let x = Features.ToInput(data.Test.Rows(0L, n), data.Mean, data.Std, device)
    let pixels (t: torch.Tensor) = standardiser.ToPixels(t).view(n / 10L, 1L, 10L, t.shape[1], t.shape[2], t.shape[3])
    let grid = torch.cat([| pixels x; pixels (reconstruct gan standardiser x) |], 1L).reshape(-1L, x.shape[1], x.shape[2], x.shape[3])
    ImageGrid.SavePng(grid, path, columns = 10)

/// The judge: encoder + linear head trained by the supervised recipe on every training label
/// (seed 0, JudgeEpochs), its weights cached in runs/.cache so every seed's run uses the same one.
let private judge (ctx: Context<Config>) =
    let request, data, judgeEpochs, device = ctx.Request, ctx.Data, ctx.Config.JudgeEpochs, ctx.Device
    let preset = SupervisedTraining.config request.Preset
    let supervised = { preset with Schedule = { preset.Schedule with Epochs = judgeEpochs } }
    let cacheDir = Path.Combine(Path.GetDirectoryName(Path.GetFullPath request.Out), ".cache",
                                $"bigbigan-judge-{data.Name}-{Preset.name request.Preset}-{judgeEpochs}ep")
    let encoderPath, headPath = Path.Combine(cacheDir, "encoder.bin"), Path.Combine(cacheDir, "head.bin")
    if File.Exists encoderPath && File.Exists headPath then
        let encoder = instantiate ctx.Layout None data.Train.Channels supervised.Encoder
        let head = new LinearHead(encoder.FeatureDim, int64 data.Classes)
        encoder.load(encoderPath) |> ignore
        head.load(headPath) |> ignore
        encoder.``to``(device) |> ignore
        head.``to``(device) |> ignore
        encoder, head
    else
        let all = Array.init (int data.Train.Count) int64
        torch.manual_seed(0L) |> ignore
        let encoder = instantiate ctx.Layout None data.Train.Channels supervised.Encoder
        let folder = Ssl.Host.Runs.RunFolder(Path.Combine(ctx.Folder.Root, "judge"))
        let head, _ = SupervisedTraining.trainWith encoder supervised data all 0L false folder device (Ssl.Host.Engine.SilentProgress())
        Directory.CreateDirectory cacheDir |> ignore
        for (m: torch.nn.Module, path) in [ encoder :> torch.nn.Module, encoderPath; head, headPath ] do
            m.save(path + ".tmp") |> ignore
            File.Move(path + ".tmp", path, true)
        encoder, head

/// Reconstruction class agreement on every test image: the judge's label of G(μ(x)) against its
/// label of x (and against the true label), with the judge's own test accuracy.
let private reconstructionFigures (gan: BigBiGan) (standardiser: Standardiser) (judgeEncoder: Encoder) (head: LinearHead)
                                  (data: Data) (device: torch.Device) =
    judgeEncoder.eval()
    head.eval()
    use _ = torch.no_grad()
    let mutable agree, reconstructedRight, originalRight = 0L, 0L, 0L
    let batch = 500L
    for start in 0L .. batch .. data.Test.Count - 1L do
        use scope = torch.NewDisposeScope()
        let length = min batch (data.Test.Count - start)
        let x = Features.ToInput(data.Test.Rows(start, length), data.Mean, data.Std, device)
        let label (images: torch.Tensor) = head.forward(judgeEncoder.forward images).argmax(1L).cpu()
        let original = label x
        let reconstructed = label (reconstruct gan standardiser x)
        let truth = data.Test.Labels.narrow(0L, start, length)
        agree <- agree + original.eq(reconstructed).sum().item<int64>()
        reconstructedRight <- reconstructedRight + reconstructed.eq(truth).sum().item<int64>()
        originalRight <- originalRight + original.eq(truth).sum().item<int64>()
    let fraction k = float k / float data.Test.Count
    fraction agree, fraction reconstructedRight, fraction originalRight

/// The linear probe on μ (E's mean), beside the pooled trunk's.
let private muProbe (gan: BigBiGan) (ctx: Context<Config>) =
    let muTrain, muTest = extract gan.Encoder ctx.Data ctx.Device
    use muTrain = muTrain
    use muTest = muTest
    let budget = evalBudget ctx.Request.Preset
    Ssl.Host.Eval.LinearProbe.Evaluate(muTrain, ctx.Data.Train.Labels, muTest, ctx.Data.Test.Labels, ctx.Data.Classes, ctx.Seed,
                                       budget.ProbeIterations).TestAccuracy

/// G, E and D on the unlabelled training images, D and E+G each by its own Adam; after training the
/// sample and reconstruction grids and the judge's figures; the protocols read E's pooled trunk.
let build (ctx: Context<Config>) =
    let config, data = ctx.Config, ctx.Data
    let gan = ctx.Own(new BigBiGan(data.Train.Channels, data.Train.Height, config.LatentDim, config.Width, ctx.Layout))
    let standardiser = ctx.Own(new Standardiser(data.Mean, data.Std, ctx.Device))
    let fixedPrior =
        use g = new torch.Generator(uint64 (Seeds.Derive(ctx.Seed, 77L)), ctx.Device)
        ctx.Own(gan.SamplePrior(100L, g))
    let saveSamples (name: string) =
        use pixels = samples gan standardiser fixedPrior
        ImageGrid.SavePng(pixels, Path.Combine(ctx.Folder.PlotsDir, name), columns = 10)
    let extra () =
        saveSamples "samples.png"
        saveReconstructions gan standardiser data ctx.Device (Path.Combine(ctx.Folder.PlotsDir, "reconstructions.png"))
        let judgeEncoder, judgeHead = judge ctx
        use judgeEncoder = judgeEncoder
        use judgeHead = judgeHead
        let agreement, reconstructionAcc, judgeAcc = reconstructionFigures gan standardiser judgeEncoder judgeHead data ctx.Device
        [ "reconstruction_class_agreement", agreement; "reconstruction_label_acc", reconstructionAcc
          "judge_test_acc", judgeAcc; "chance", 1.0 / float data.Classes; "mu_linear_probe_acc", muProbe gan ctx ]
    let optimizers =
        [ optimizer "discriminator" (adam config config.DiscriminatorLearningRate) [ gan.Discriminator ]
          optimizer "encoder_generator" (adam config config.EncoderGeneratorLearningRate) [ gan.Encoder; gan.Generator ] ]
    let def =
        stepOf [ "generator" => gan.Generator; "encoder" => gan.Encoder; "discriminator" => gan.Discriminator ] optimizers
            (run gan data standardiser)
    // The pooled wrapper shares E's modules, which the step disposes.
    { ctx.Train(new PooledEncoder(gan.Encoder), def) with
        AfterEpoch = EpochHook(fun epoch _ -> saveSamples $"samples-epoch-{epoch + 1}.png")
        Extra = extra }

let spec =
    { Template.spec "bigbigan" "Donahue & Simonyan 2019, Large Scale Adversarial Representation Learning"
        { selfSupervised with SupervisedOnly = NotReported } config
        (fun config data layout -> new PooledEncoder(new BigBiGanEncoder(data.Train.Channels, config.LatentDim, config.Width, layout)) :> Encoder)
        (fun _ -> None) (fun config -> $"BigBiGanPooled{config.Width}-{config.LatentDim}") build with
        CheckData = fun config data ->
            if config.Width % 32L <> 0L then
                invalidArg "Width" $"Width: expected a multiple of 32 (SafeConv channel rule), found {config.Width}"
            if config.Schedule.LearningRate <> 0.0 then
                invalidArg "Schedule.LearningRate"
                    ("Schedule.LearningRate: expected 0 (BigBiGAN's rates are DiscriminatorLearningRate and EncoderGeneratorLearningRate), "
                     + $"found {config.Schedule.LearningRate}")
            if data.Train.Height <> data.Train.Width || (data.Train.Height <> 28L && data.Train.Height <> 32L) then
                invalidArg "--dataset" $"--dataset: BigBiGAN's networks take 28x28 or 32x32 images, found {data.Train.Height}x{data.Train.Width}" }
