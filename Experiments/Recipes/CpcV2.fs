/// CPC v2: data-efficient image recognition with contrastive predictive coding (Hénaff, Srinivas, De Fauw, Razavi,
/// Doersch, Eslami & van den Oord 2019). Each image is cut into an overlapping grid of patches (Core's
/// `Patches.patchGrid`); a patch encoder maps every patch to a mean-pooled vector z_{i,j}; a masked (PixelCNN-style)
/// context network over the grid gives contexts c_{i,j} that see only the rows above and including row i (Core's
/// `ContextNetwork` with `RowsAbove`: its output one row further down); a linear map per offset predicts the patch k
/// rows below, ẑ_{i+k,j} = W_k c_{i,j} (Sec. 2.1), and InfoNCE tells the true z_{i+k,j} from the other patches of the
/// batch, those of the same image at other positions and those of every other image (eq. 1: -log exp(ẑ·z_{i+k,j}) /
/// Σ_l exp(ẑ·z_l), dot products without temperature, the candidates l being every patch of the batch, the true one
/// included).
///
/// The v2 changes of Sec. 3 that apply at this scale: layer normalisation in the patch encoder (Core's
/// `LayerNormConvNet`; batch norm would let the patches of one image, encoded in one batch, share statistics, a path
/// around the context's receptive field); predictions in several directions, each with its own context network and
/// predictors (here the grid turned by quarter turns, so "k rows below" becomes k rows above, left and right);
/// patch-wise augmentation, each patch flipped and jittered independently (colour dropping does not apply to one grey
/// channel: brightness and contrast jitter per patch take its place). Model capacity (ResNet-161) does not.
///
/// The evaluated encoder is `PatchGridEncoder`: the patch encoder's features mean-pooled over the same grid of an
/// image (Sec. 4.1's linear classification reads the mean-pooled patch features); its random-initialised twin is the
/// random-init baseline. Measured runs: docs/experiments/cpc-v2.md.
module Ssl.Experiments.Recipes.CpcV2

open TorchSharp
open Ssl.Core.Models
open Ssl.Core.Transforms
open Ssl.Experiments

/// The paper's ImageNet setting: 64-px patches at stride 32 of 256-px images (a 7 x 7 grid, see `Patches.patchGrid`),
/// predictions up to 5 rows ahead in 4 directions. Scaled to 28 x 28 grey images: 8-px patches at stride 5 (a 5 x 5
/// grid that covers the image exactly, overlap 3 px, the paper's patch-to-image ratio 1/4 to 2/7), predictions 1-2
/// rows ahead (the 5-row horizon of a 7-row grid is 3 rows past its middle; 2 rows is the same share of a 5-row
/// grid), context network of 3 residual blocks so the last row used sees every row above. Adam (as the paper) at 1e-3
/// for the short schedules here; batch 32 images = 800 patches, each prediction against 800 candidates. Forward cost
/// per image: patch encoder 25 x 377,856 = 9.4 M multiply-adds; InfoNCE logits 4 directions x (20 + 15 predictions) x
/// 800 candidates x 64 = 7.2 M (they grow with the batch).
type Config =
    { /// LayerNormConvNet base width (features 4w); the paper's is ResNet-161.
      [<Range(1.0)>] Width: int64
      [<Range(1.0)>] PatchSize: int64
      [<Range(1.0)>] Stride: int64
      /// Predict the patches 1 .. MaxOffset rows ahead.
      [<Range(1.0)>] MaxOffset: int
      /// 1: top-down only; 2: and bottom-up; 4: and both horizontal directions.
      [<Range(1.0, 4.0)>] Directions: int
      [<Range(1.0)>] ContextDim: int64
      [<Range(1.0)>] ContextBlocks: int
      /// Adam, cosine decay.
      Schedule: TrainingSchedule
      /// Whole-image random resized crop before cutting the grid.
      CropScale: float * float
      /// Per-patch brightness and contrast jitter strength.
      [<Range(0.0)>] PatchJitter: float
      [<Range(0.0, 1.0)>] PatchFlipProbability: float }

/// `quick`: width 16 (64-d patch features) for 3 epochs (180,000 images, 4.5 M patches), 12 minutes in all on 2 cores
/// (every protocol encodes 25 patches per image). `paper`: the same geometry at width 32 for 200 epochs; `smoke`: one
/// epoch on the smoke subset.
let config preset =
    let quick =
        { Width = 16L; PatchSize = 8L; Stride = 5L; MaxOffset = 2; Directions = 4; ContextDim = 64L; ContextBlocks = 3
          CropScale = (0.6, 1.0); PatchJitter = 0.4; PatchFlipProbability = 0.5
          Schedule = { Epochs = 3; BatchSize = 32; LearningRate = 1e-3; WeightDecay = 0.0; WarmupEpochs = 0.0 } }
    match preset with
    | Smoke -> { quick with Schedule = { quick.Schedule with Epochs = 1 } }
    | Quick -> quick
    | Paper -> { quick with Width = 32L; ContextDim = 128L; Schedule = { quick.Schedule with Epochs = 200 } }

let private gridEncoder (config: Config) (channels: int64) (layout: SafeConv.ConvLayout) =
    new PatchGridEncoder(new LayerNormConvNet(channels, config.Width, layout), config.PatchSize, config.Stride)

/// CPC's InfoNCE (Hénaff et al. 2019, eq. 1): each prediction scores every candidate by a dot product, and
/// cross-entropy picks out its own target. `predictions: (P, D)`; `candidates: (M, D)`; `targets: (P)` int64 row of
/// each prediction's true patch in `candidates`. Result: scalar (mean over P), and the share of predictions whose
/// best candidate is the true one.
let cpcInfoNce (predictions: torch.Tensor) (candidates: torch.Tensor) (targets: torch.Tensor) =
    use scope = torch.NewDisposeScope()
    let logits = predictions.mm(candidates.t())
    let loss = torch.nn.functional.cross_entropy(logits, targets)
    let accuracy = logits.argmax(1L).eq(targets).to_type(torch.ScalarType.Float32).mean()
    loss.MoveToOuterDisposeScope(), accuracy.MoveToOuterDisposeScope()

/// One direction's context network and its predictors W_1 .. W_K (linear, no bias).
type DirectionalPredictor(dim: int64, contextDim: int64, blocks: int, maxOffset: int, layout: SafeConv.ConvLayout) as this =
    inherit torch.nn.Module("DirectionalPredictor")
    let context = new ContextNetwork(dim, contextDim, blocks, 3L, ContextMask.RowsAbove, layout)
    let predictors = torch.nn.ModuleList([| for _ in 1 .. maxOffset -> torch.nn.Linear(contextDim, dim, hasBias = false) |])
    do this.RegisterComponents()

    /// z: (N, D, G, G) embeddings, already turned so that "ahead" is "below" → summed loss over the offsets and the
    /// mean accuracy. The context covering rows ≤ i is the network's output at row i + 1, so offset k pairs output
    /// rows 1 .. G-k with target rows k .. G-1.
    member _.Loss(z: torch.Tensor) =
        use scope = torch.NewDisposeScope()
        let n, d, gh, gw = z.shape[0], z.shape[1], z.shape[2], z.shape[3]
        let contexts = context.forward z
        let candidates = z.permute(0L, 2L, 3L, 1L).reshape(n * gh * gw, d)
        let positions = torch.arange((n * gh * gw).ToScalar(), dtype = torch.ScalarType.Int64, device = z.device).view(n, gh, gw)
        let mutable total = torch.zeros([||], device = z.device)
        let mutable accuracy = torch.zeros([||], device = z.device)
        for k in 1 .. maxOffset do
            let rows = gh - int64 k
            let c = contexts.narrow(2L, 1L, rows).permute(0L, 2L, 3L, 1L).reshape(-1L, contexts.shape[1])
            let predictions = predictors[k - 1].call(c)
            let targets = positions.narrow(1L, int64 k, rows).reshape(-1L)
            let loss, acc = cpcInfoNce predictions candidates targets
            total <- total + loss
            accuracy <- accuracy + acc / float maxOffset
        total.MoveToOuterDisposeScope(), accuracy.MoveToOuterDisposeScope()

/// The context networks and predictors of every direction.
type Predictors(directions: int, dim: int64, contextDim: int64, blocks: int, maxOffset: int, layout: SafeConv.ConvLayout) as this =
    inherit torch.nn.Module("CpcPredictors")
    let heads = torch.nn.ModuleList([| for _ in 1 .. directions -> new DirectionalPredictor(dim, contextDim, blocks, maxOffset, layout) |])
    do this.RegisterComponents()

    /// z: (N, D, G, G) → mean over directions of the summed offset losses, and the mean accuracy.
    member _.Loss(z: torch.Tensor) =
        use scope = torch.NewDisposeScope()
        let parts = [| for d in 0 .. directions - 1 -> heads[d].Loss(Geometric.rotate d z) |]
        let loss = parts |> Array.map fst |> Array.reduce (+)
        let accuracy = parts |> Array.map snd |> Array.reduce (+)
        (loss / float directions).MoveToOuterDisposeScope(), (accuracy / float directions).MoveToOuterDisposeScope()

/// The patch encoder and the predictors; one step: crop, cut the grid, augment each patch, embed, predict, InfoNCE.
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let encoder = gridEncoder config ctx.Data.Train.Channels ctx.Layout
    let predictors = new Predictors(config.Directions, encoder.FeatureDim, config.ContextDim, config.ContextBlocks, config.MaxOffset, ctx.Layout)
    let optimizers = [ optimizer "main" (Optim.adam config.Schedule) [ encoder; predictors ] ]
    ctx.Train(encoder, stepOf [ "encoder" => encoder; "predictors" => predictors ] optimizers (fun step batch ->
        let x = unitPixels ctx.Data batch step.Device
        let h, w = x.shape[2], x.shape[3]
        let cropped = Geometric.randomResizedCrop config.CropScale (3.0 / 4.0, 4.0 / 3.0) (h, w) step.Generator x
        let grid = Patches.patchGrid config.PatchSize config.Stride cropped
        let n, gh, gw = grid.shape[0], grid.shape[1], grid.shape[2]
        let patches =
            grid.reshape(n * gh * gw, grid.shape[3], config.PatchSize, config.PatchSize)
            |> Geometric.randomHorizontalFlip config.PatchFlipProbability step.Generator
            |> Photometric.colorJitter config.PatchJitter config.PatchJitter 0.0 0.0 step.Generator
            |> standardise ctx.Data
        let z = encoder.EncodeGrid(patches.view(n, gh, gw, grid.shape[3], config.PatchSize, config.PatchSize))
        let loss, accuracy = predictors.Loss z
        [ "loss", step.Optimize("main", loss); "prediction_acc", float (accuracy.item<float32>()) ]))

let private checkData (config: Config) (data: Data) =
    requireSquare "CPC v2 (its patch grid turns by quarter turns)" data
    requireSide "CPC v2's patch grid" (config.PatchSize + int64 config.MaxOffset * config.Stride) data

let spec =
    { Ssl.Experiments.Template.spec "cpc-v2" "Hénaff et al. 2019, Data-Efficient Image Recognition with Contrastive Predictive Coding"
        selfSupervised config (fun config data layout -> gridEncoder config data.Train.Channels layout :> Encoder) (fun _ -> None)
        (fun config -> $"PatchGrid(LayerNormConvNet{config.Width}, patch={config.PatchSize}, stride={config.Stride})") build with
        CheckData = checkData }
