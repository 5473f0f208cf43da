/// Colorful image colorization (Zhang, Isola & Efros, ECCV 2016) as a pretext task: from the
/// lightness L of a CIE Lab image the network predicts, per pixel, a distribution over the
/// quantised ab colour bins (Sec. 2.1); the loss is the multinomial cross-entropy against the
/// soft-encoded true colour (eq. 2: each pixel's ab spread over its 5 nearest bins with a Gaussian
/// of sigma 5), weighted per pixel by class rebalancing (eq. 3-4: w ∝ ((1 - λ)·p̃ + λ/Q)^-1 with
/// λ = 1/2, p̃ the empirical bin distribution smoothed by a Gaussian of sigma 5 in ab, normalised so
/// that E_p̃[w] = 1); colours are decoded by the annealed mean (eq. 5, T = 0.38).
///
/// Colour only (Traits.Colour): on grey data there is nothing to predict. CIFAR-10/100, STL-10 or
/// colour image folders.
/// The bins are Core's sRGB gamut at grid size 10: 261 bins, not the paper's 313 (see
/// Color.abGamut). The output convolution has 261 channels, not a multiple of 16: it is a SafeConv2d
/// (libtorch's float32 conv input gradient is wrong otherwise, docs/conv-backward-bug.md).
///
/// Network: SmallConvNet's layers on the L channel (two 2x max-pools, so predictions come at a
/// quarter of the resolution, as the paper's 56 x 56 output of a 224 x 224 input, Fig. 2), then a
/// 1 x 1 SafeConv to the 261 bin logits. Targets are the ab images average-pooled by 4; decoded ab
/// is upsampled bilinearly to full size for the PNG and the metric. The evaluated encoder is the
/// same trunk with a global average pool, fed the RGB image and converting it to L itself (so
/// every protocol sees the colour data set it was trained on, through the one L channel).
///
/// Per-pixel accuracy: the paper's "raw accuracy (AuC)" (Sec. 3.1, Table 1): the fraction of pixels
/// whose predicted ab lies within an L2 distance t of the truth, swept over t = 0..150 and the area
/// under that curve normalised to [0, 1]; reported beside the same figure for predicting grey
/// (ab = 0), the paper's "Gray" row. Written to colorization.json, metrics.jsonl and result.json.
/// No supervised-only figure (null in result.json). Measured runs: docs/experiments/colorization.md.
module Ssl.Experiments.Recipes.Colorization

open TorchSharp
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Host.Data
open Ssl.Host.Runs
open Ssl.Experiments

/// The paper's loss and decoding parameters (Sec. 2.1-2.2: 5 neighbours, sigma 5, λ = 0.5, smoothing
/// sigma 5, T = 0.38, grid size 10; Adam with β1 = 0.9, β2 = 0.99, learning rate 3e-5 and weight
/// decay 1e-3 on a VGG-style net trained for 450k iterations of batch 40). Here Adam at 1e-3 (our
/// net is small and trained from scratch in minutes) with cosine decay and no warm-up.
type Config =
    { /// SmallConvNet base width of the trunk (the paper's net is VGG-style).
      [<Range(1.0)>] Width: int64
      /// Side of the ab grid the bins are cut at (the paper's 10).
      [<Range(1.0)>] GridSize: float
      /// Soft encoding: the nearest bins each pixel's ab is spread over, with a Gaussian of Sigma.
      [<Range(1.0)>] Neighbours: int
      [<Range(0.0)>] Sigma: float
      /// Class rebalancing: the uniform share λ, and the smoothing Gaussian of p̃ in ab.
      [<Range(0.0, 1.0)>] Lambda: float
      [<Range(0.0)>] PriorSigma: float
      /// The annealed mean's temperature T (eq. 5).
      [<Range(0.0)>] Temperature: float
      /// Training images whose colours estimate the empirical prior p̃.
      [<Range(1.0)>] PriorImages: int
      /// Test images the per-pixel accuracy is measured on.
      [<Range(1.0)>] MetricImages: int
      Schedule: TrainingSchedule }

/// `paper`: width 32, 30 epochs (CIFAR-10 has 50,000 images); `quick`: width 16, 10 epochs;
/// `smoke`: one epoch of the smoke subset.
let config preset =
    let paper =
        { Width = 32L; GridSize = 10.0; Neighbours = 5; Sigma = 5.0; Lambda = 0.5; PriorSigma = 5.0; Temperature = 0.38
          PriorImages = 5000; MetricImages = 10000
          Schedule = { Epochs = 30; BatchSize = 64; LearningRate = 1e-3; WeightDecay = 1e-4; WarmupEpochs = 0.0 } }
    match preset with
    | Smoke -> { paper with Width = 16L; PriorImages = 500; MetricImages = 200; Schedule.Epochs = 1 }
    | Quick -> { paper with Width = 16L; MetricImages = 2000; Schedule.Epochs = 10 }
    | Paper -> paper

/// SmallConvNet's layers on the lightness channel. `Dense` maps L (N, 1, H, W), centred and
/// scaled, to features (N, 4w, H/4, W/4); `forward` takes standardised RGB (N, 3, H, W), as the
/// evaluation protocols pass it, undoes the standardisation with the buffers `input_mean` and
/// `input_std`, converts to L and pools `Dense` globally → (N, 4w).
type ColorizationNet(width: int64, mean: float[], std: float[], layout: SafeConv.ConvLayout) as this =
    inherit Encoder("ColorizationNet")
    let block (name: string) (input: int64) (output: int64) =
        [ struct ($"{name}conv", SafeConv.layer layout input output 3L 1L 1L false)
          struct ($"{name}bn", torch.nn.BatchNorm2d(output))
          struct ($"{name}relu", torch.nn.ReLU()) ]
    let trunk =
        torch.nn.Sequential(
            [| yield! block "stem_" 1L width
               struct ("pool1", torch.nn.MaxPool2d(2L))
               yield! block "block2a_" width (2L * width)
               yield! block "block2b_" (2L * width) (2L * width)
               struct ("pool2", torch.nn.MaxPool2d(2L))
               yield! block "block3a_" (2L * width) (4L * width)
               yield! block "block3b_" (4L * width) (4L * width) |])
    let input_mean = torch.tensor(mean, dtype = torch.ScalarType.Float32).view(1L, 3L, 1L, 1L).DetachFromDisposeScope()
    let input_std = torch.tensor(std, dtype = torch.ScalarType.Float32).view(1L, 3L, 1L, 1L).DetachFromDisposeScope()
    do this.RegisterComponents()

    override _.FeatureDim = 4L * width

    /// lightness: (N, 1, H, W), L in [0, 100] → (N, 4w, H/4, W/4).
    member _.Dense(lightness: torch.Tensor) =
        use scope = torch.NewDisposeScope()
        trunk.forward((lightness - 50.0) / 50.0).MoveToOuterDisposeScope()

    override this.forward(images) =
        Ssl.Core.Shape.expect "images" [| Ssl.Core.Shape.Any; Ssl.Core.Shape.Exactly 3L; Ssl.Core.Shape.Any; Ssl.Core.Shape.Any |] images
        use scope = torch.NewDisposeScope()
        let rgb = (images * input_std + input_mean).clamp(0.0.ToScalar(), 1.0.ToScalar())
        let lightness = (Color.rgbToLab rgb).narrow(1L, 0L, 1L)
        this.Dense(lightness).mean([| 2L; 3L |]).MoveToOuterDisposeScope()

/// The spec's encoder, holding the data's pixel statistics (to undo the standardisation before Lab).
let private newEncoder (config: Config) (data: Data) (layout: SafeConv.ConvLayout) : Encoder =
    if data.Train.Channels <> 3L then invalidArg "--dataset" $"--dataset: colorization expects 3-channel (colour) images, found {data.Train.Channels}"
    new ColorizationNet(config.Width, data.Mean, data.Std, layout)

/// Lab of [0, 1] RGB pixels, and their ab average-pooled to the prediction's quarter resolution.
let labAndTargets (pixels: torch.Tensor) =
    use scope = torch.NewDisposeScope()
    let lab = Color.rgbToLab pixels
    let abSmall = torch.nn.functional.avg_pool2d(lab.narrow(1L, 1L, 2L), 4L)
    lab.MoveToOuterDisposeScope(), abSmall.MoveToOuterDisposeScope()

/// Class-rebalancing weights (eq. 3-4): p from the nearest bin of every pixel of `pixels`
/// (N, 3, H, W) [0, 1] at the prediction resolution, smoothed by a Gaussian of `priorSigma` in ab
/// between bin centres, mixed with the uniform distribution by λ, inverted and normalised so that
/// Σ_q p̃_q w_q = 1. bins: (Q, 2) → weights (Q) float32 on `device`, and p̃ (Q).
let rebalancingWeights (config: Config) (bins: torch.Tensor) (pixels: torch.Tensor) (device: torch.Device) =
    use scope = torch.NewDisposeScope()
    let _, abSmall = labAndTargets pixels
    let centres = bins.``to``(device).to_type(torch.ScalarType.Float32)
    let flat = abSmall.permute(0L, 2L, 3L, 1L).reshape(-1L, 2L)
    let nearest = torch.cdist(flat, centres).argmin(1L)
    let q = centres.shape[0]
    let empirical = nearest.bincount(null, minlength = q).to_type(torch.ScalarType.Float32)
    let empirical = empirical / empirical.sum()
    let kernel = (torch.cdist(centres, centres).square() / (-2.0 * config.PriorSigma * config.PriorSigma)).exp()
    let smoothed = kernel.matmul(empirical)
    let smoothed = smoothed / smoothed.sum()
    let inverse = (smoothed * (1.0 - config.Lambda) + config.Lambda / float q).reciprocal()
    let weights = inverse / (smoothed * inverse).sum()
    weights.MoveToOuterDisposeScope(), smoothed.MoveToOuterDisposeScope()

/// ab at full resolution decoded from the logits (N, Q, h, w) by the annealed mean (eq. 5), then
/// upsampled bilinearly to (height, width) → (N, 2, height, width).
let decode (config: Config) (bins: torch.Tensor) (logits: torch.Tensor) (height: int64) (width: int64) =
    use scope = torch.NewDisposeScope()
    let ab = Color.annealedMean config.Temperature bins (logits.softmax(1L))
    torch.nn.functional.interpolate(ab, size = [| height; width |], mode = torch.InterpolationMode.Bilinear, align_corners = false)
        .MoveToOuterDisposeScope()

/// The paper's raw accuracy (AuC) of predicted against true ab, both (N, 2, H, W): the cumulative
/// fraction of pixels within L2 distance t, averaged over t = 0..150. Returns per-threshold counts
/// (152: distances rounded up to whole units, the last bin holding everything beyond 150).
let distanceCounts (predicted: torch.Tensor) (truth: torch.Tensor) =
    use scope = torch.NewDisposeScope()
    let distance = (predicted - truth).square().sum(1L).sqrt().flatten()
    distance.ceil().clamp(0.0.ToScalar(), 151.0.ToScalar()).to_type(torch.ScalarType.Int64).bincount(null, minlength = 152L)
        .MoveToOuterDisposeScope()

let aucOf (counts: torch.Tensor) =
    use scope = torch.NewDisposeScope()
    let cumulative = counts.to_type(torch.ScalarType.Float64).cumsum(0L) / counts.sum().to_type(torch.ScalarType.Float64)
    cumulative.narrow(0L, 0L, 151L).mean().item<float>()

/// Per-pixel AuC of the network and of grey on the first `MetricImages` test images, and a PNG of
/// grey inputs, predictions and truth (rows) for the first 10.
let colourReport (config: Config) (net: ColorizationNet) (head: SafeConv.SafeConv2d) (bins: torch.Tensor) (data: Data)
                 (folder: RunFolder) (device: torch.Device) =
    net.eval()
    head.eval()
    use noGrad = torch.no_grad()
    let count = min (int64 config.MetricImages) data.Test.Count
    use predictedCounts = torch.zeros(152L, dtype = torch.ScalarType.Int64)
    use greyCounts = torch.zeros(152L, dtype = torch.ScalarType.Int64)
    let mutable start = 0L
    while start < count do
        use scope = torch.NewDisposeScope()
        let length = min 256L (count - start)
        let pixels = Features.ToInput(data.Test.Rows(start, length), [| 0.0; 0.0; 0.0 |], [| 1.0; 1.0; 1.0 |], device)
        let lab, _ = labAndTargets pixels
        let truth = lab.narrow(1L, 1L, 2L)
        let logits = head.forward(net.Dense(lab.narrow(1L, 0L, 1L)))
        let predicted = decode config bins logits pixels.shape[2] pixels.shape[3]
        predictedCounts.add_((distanceCounts predicted truth).cpu()) |> ignore
        greyCounts.add_((distanceCounts (torch.zeros_like(truth)) truth).cpu()) |> ignore
        if start = 0L then
            let shown = min 10L length
            let lightness = lab.narrow(0L, 0L, shown).narrow(1L, 0L, 1L)
            let toBytes (rgb: torch.Tensor) =
                (rgb.clamp(0.0.ToScalar(), 1.0.ToScalar()) * 255.0).round().to_type(torch.ScalarType.Byte).cpu()
            let grey = toBytes (Color.labToRgb (torch.cat([| lightness; torch.zeros_like(lightness); torch.zeros_like(lightness) |], 1L)))
            let coloured = toBytes (Color.labToRgb (torch.cat([| lightness; predicted.narrow(0L, 0L, shown) |], 1L)))
            let real = toBytes (pixels.narrow(0L, 0L, shown))
            ImageGrid.SavePng(torch.cat([| grey; coloured; real |], 0L), System.IO.Path.Combine(folder.PlotsDir, "colorization.png"),
                              columns = int shown, scale = 3)
        start <- start + length
    net.train()
    head.train()
    aucOf predictedCounts, aucOf greyCounts, count

/// Adam (β = (0.9, 0.99), the paper's) on the rebalanced multinomial cross-entropy (eq. 2) of
/// flipped batches; after training, the per-pixel accuracy and the colour PNG.
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let bins = ctx.Own((Color.abGamut config.GridSize 64).to_type(torch.ScalarType.Float32).``to``(ctx.Device))
    let priorCount = min (int64 config.PriorImages) ctx.Data.Train.Count
    let weights, prior =
        use pixels = Features.ToInput(ctx.Data.Train.Rows(0L, priorCount), [| 0.0; 0.0; 0.0 |], [| 1.0; 1.0; 1.0 |], ctx.Device)
        rebalancingWeights config bins pixels ctx.Device
    let weights, prior = ctx.Own weights, ctx.Own prior
    let net = new ColorizationNet(config.Width, ctx.Data.Mean, ctx.Data.Std, ctx.Layout)
    let head = new SafeConv.SafeConv2d(net.FeatureDim, bins.shape[0], 1L, 1L, 0L, true, ctx.Layout)
    let schedule = config.Schedule
    let adam =
        OptimizerSpec(Kind = OptimizerKind.Adam, LearningRate = schedule.LearningRate, Beta1 = 0.9, Beta2 = 0.99,
                      WeightDecay = schedule.WeightDecay, WarmupEpochs = schedule.WarmupEpochs)
    let def =
        stepOf [ "encoder" => net; "head" => head ] [ optimizer "main" adam [ net; head ] ] (fun step batch ->
            let pixels = unitPixels ctx.Data batch step.Device |> Geometric.randomHorizontalFlip 0.5 step.Generator
            let lab, abSmall = labAndTargets pixels
            let target = Color.softEncode config.Neighbours config.Sigma bins abSmall
            let logits = head.forward(net.Dense(lab.narrow(1L, 0L, 1L)))
            let pixelWeights = weights.index_select(0L, target.argmax(1L).flatten()).view_as(target.select(1L, 0L))
            let crossEntropy = (target * torch.nn.functional.log_softmax(logits, 1L)).sum(1L).neg()
            let loss = (crossEntropy * pixelWeights).mean()
            [ "loss", step.Optimize("main", loss); "bin_acc", accuracy logits (target.argmax(1L)) ])
    // The per-pixel accuracy and the colour PNG, into metrics.jsonl, colorization.json and result.json.
    let report () =
        let auc, greyAuc, measured = colourReport config net head bins ctx.Data ctx.Folder ctx.Device
        let figures =
            dict [ "per_pixel_auc", box auc; "grey_per_pixel_auc", box greyAuc; "metric_images", box measured
                   "bins", box bins.shape[0]; "prior_max", box (prior.max().item<float32>()) ]
        ctx.Folder.AppendMetrics(readOnlyDict [ for kv in figures -> kv.Key, kv.Value ])
        RunFolder.WriteAtomically(System.IO.Path.Combine(ctx.Folder.Root, "colorization.json"),
                                  System.Text.Json.JsonSerializer.Serialize(figures, RunFolder.Json))
        [ for kv in figures -> kv.Key, System.Convert.ToDouble kv.Value ]
    { ctx.Train(net, def) with Extra = report }

let spec =
    Ssl.Experiments.Template.spec "colorization" "Zhang et al. 2016, Colorful Image Colorization"
        { selfSupervised with Colour = true; SupervisedOnly = NotReported } config newEncoder (fun _ -> None)
        (fun config -> $"ColorizationNet{config.Width}") build
