/// MoCo v1: Momentum Contrast for Unsupervised Visual Representation Learning (He, Fan, Wu, Xie & Girshick, CVPR 2020).
/// Contrastive learning as dictionary look-up (Sec. 3.1): a query q = f_q(x_q) must match its key k₊ = f_k(x_k), another
/// augmented view of the same image, among K negative keys, by InfoNCE (eq. 1, τ = 0.07). The dictionary is a queue of the keys
/// of preceding batches (Sec. 3.2, "Dictionary as a queue"), encoded by a momentum copy of the query encoder (eq. 2: θ_k ← m·θ_k
/// + (1 − m)·θ_q) so that it stays consistent while being large. Shuffling BN (Sec. 3.3): with batch norm, the query and key of
/// an image computed in the same batch share that batch's statistics, a signature the model can use to find k₊ among keys from
/// other batches — "cheating" the pretext task. MoCo runs each GPU's sub-batch through batch norm on its own and shuffles the
/// sample order across GPUs for the key encoder. One device emulates that here: the batch is split into `Groups` sub-batches that
/// each run through the encoder alone (their own batch statistics, as on `Groups` devices); for the keys the batch is permuted
/// first and the permutation undone after, so an image's key is normalised with other images than its query. At several ranks
/// each runs Groups / ranks of the groups and the keys' shuffle crosses ranks, as the paper's. `moco-no-shuffle` is
/// the same recipe with the shuffle off, on the same budget: the ablation the paper describes (Sec. 3.3 and its footnote on BN
/// cheating).
module Ssl.Experiments.Recipes.MoCo

open TorchSharp
open Ssl.Core.Losses
open Ssl.Core.Models
open Ssl.Experiments

/// The paper's ImageNet settings (Sec. 4 "Training"): SGD, weight decay 1e-4, momentum 0.9, batch 256 over 8 GPUs (32 images per
/// batch-norm group), learning rate 0.03; K = 65,536 keys, m = 0.999, τ = 0.07, a 128-d L2-normalised output of the encoder's fc
/// layer; 200 epochs with the learning rate divided by 10 at epochs 120 and 160 (cosine decay stands in for the steps).
type Config =
    { /// The paper's is ResNet-50 on ImageNet; `paper` takes ResNet-18 in its CIFAR form, as the
      /// CIFAR tables of MoCo's and SimCLR's reproductions do; quick and smoke SmallConvNet.
      Encoder: Backbone
      [<Range(1.0)>] EmbeddingDim: int64
      [<Range(1.0)>] QueueSize: int64
      [<Range(0.0, 1.0)>] Momentum: float
      [<Range(0.0)>] Temperature: float
      Schedule: TrainingSchedule
      /// Emulated devices: sub-batches of BatchSize / Groups images, each with its own BN statistics.
      [<Range(1.0)>] Groups: int
      /// Shuffle the sample order across the groups for the key encoder (Sec. 3.3).
      ShuffleBn: bool
      /// MoCo v2's projection (Chen et al. 2020b): fc → ReLU → fc, hidden as wide as the features, for v1's single fc.
      MlpHead: bool
      Augmentation: Augmentation }

/// `paper`: the paper's settings on ResNet-18, with K = 16,384 for 60,000 training images (65,536 is 5% of ImageNet). `quick` (15
/// minutes on 2 cores): SmallConvNet-40 for 6 epochs at batch 128 in 4 batch-norm groups, K = 4,096, m = 0.995 (the paper's 0.999
/// would leave the key encoder ~1,000 of our ~2,800 steps behind; its Table 4 shows 0.99-0.9999 all learn), lr 0.03 (MoCo's CIFAR
/// 0.06 for batch 256, scaled linearly). The trials behind it: docs/experiments/moco.md.
let config preset =
    let paper =
        { Encoder = ResNet18; EmbeddingDim = 128L; QueueSize = 16384L; Momentum = 0.999; Temperature = 0.07; Groups = 8
          ShuffleBn = true; MlpHead = false; Augmentation = mocoAugmentation
          Schedule = { Epochs = 200; BatchSize = 256; LearningRate = 0.03; WeightDecay = 1e-4; WarmupEpochs = 0.0 } }
    match preset with
    | Smoke ->
        { paper with Encoder = SmallConvNet 16L; QueueSize = 1024L; Momentum = 0.99; Groups = 4
                     Schedule = { paper.Schedule with Epochs = 1; BatchSize = 128 } }
    | Quick ->
        { paper with Encoder = SmallConvNet 40L; QueueSize = 4096L; Momentum = 0.995; Groups = 4
                     Schedule = { paper.Schedule with Epochs = 6; BatchSize = 128; WarmupEpochs = 0.5 } }
    | Paper -> paper

/// f(x) = normalize(fc(encoder(x))): the encoder with MoCo v1's linear 128-d output (Sec. 3.3, "the output of the fc is
/// normalized by its L2-norm"). images (N, C, H, W) → (N, EmbeddingDim).
type EmbeddingNet(encoder: Encoder, projection: torch.nn.Module<torch.Tensor, torch.Tensor>) as this =
    inherit torch.nn.Module<torch.Tensor, torch.Tensor>("EmbeddingNet")
    do this.RegisterComponents()
    member _.Encoder = encoder
    override _.forward(images) = Contrastive.normalize (projection.forward (encoder.forward images))

/// Keys of `x` from the key network run per group, after shuffling the batch across the groups when `shuffle`
/// (Views.shuffledPerGroup); rows come back in the order of `x`.
let shuffledKeys (world: Ssl.Host.Distributed.ICollectives) (shuffle: bool) (groups: int) (generator: torch.Generator)
                 (keyNet: torch.nn.Module<torch.Tensor, torch.Tensor>) (x: torch.Tensor) =
    use _ = torch.no_grad()
    if shuffle then shuffledPerGroup world groups 1 generator keyNet.forward x else perGroup world groups keyNet.forward x

/// The query network: the encoder with v1's fc (or v2's MLP) projection.
let private embeddingNet (encoder: unit -> Encoder) (config: Config) =
    let features = featureDim config.Encoder
    let projection: torch.nn.Module<torch.Tensor, torch.Tensor> =
        if config.MlpHead then new MlpHead(features, features, config.EmbeddingDim, false)
        else new LinearHead(features, config.EmbeddingDim)
    new EmbeddingNet(encoder (), projection)

/// One MoCo step (Algorithm 1): two views, q from the query network per group, k₊ from the momentum network per (shuffled) group,
/// InfoNCE against the queue, SGD on the query network, momentum update of the key network, enqueue the keys. The key and query
/// passes run side by side, the queries in two halves of whole groups whose loss terms sum to the batch mean
/// (StepContext.SideBySide).
let build (ctx: Context<Config>) =
    let config = ctx.Config
    let query = embeddingNet ctx.NewEncoder config
    let key = new MomentumCopy(query, embeddingNet ctx.NewEncoder config)
    let queue = new KeyQueue(config.QueueSize, config.EmbeddingDim, ctx.Own(new torch.Generator(uint64 ctx.Seed, ctx.Device)))
    let optimizers = [ optimizer "main" (Optim.sgd config.Schedule) [ query ] ]
    ctx.Train(query.Encoder, stepOf [ "query" => query; "key" => key; "queue" => queue ] optimizers (fun step batch ->
        let xq, xk = twoViews config.Augmentation ctx.Data step batch
        let halves = if rankGroups step.World config.Groups % 2 = 0 then 2L else 1L
        let struct (k, qs) =
            step.SideBySide("forward", (fun () -> shuffledKeys step.World config.ShuffleBn config.Groups step.Generator key.Copy xk),
                            (fun () -> xq.chunk(halves, 0L) |> Array.map (perGroup step.World (config.Groups / int halves) query.forward)))
        let n = float xq.shape[0]
        let parts =
            Array.map2 (fun (q: torch.Tensor) k -> Contrastive.infoNce config.Temperature q k queue.Keys * (float q.shape[0] / n))
                qs (k.chunk(halves, 0L))
        let value = step.Optimize("main", parts)
        let q = torch.cat(qs, 0L)
        key.Update config.Momentum
        // Instance accuracy: how often k₊ is the most similar key (the pretext task's top-1).
        let positive = (q * k).sum(1L, keepdim = true)
        let negatives = q.detach().matmul(queue.Keys.t())
        let accuracy = positive.detach().gt(negatives.amax([| 1L |], keepdim = true)).to_type(torch.ScalarType.Float32).mean().item<float32>()
        // Every rank's keys, so that the queues stay alike (moco/builder.py's concat_all_gather).
        queue.Enqueue(step.Gather k)
        [ "loss", value; "instance_acc", float accuracy ]))

/// MoCo v2 (Chen, Fan, Girshick & He 2020, "Improved Baselines with Momentum Contrastive Learning"): MoCo v1 with an MLP
/// projection head (fc → ReLU → fc, Sec. 2 "MLP head", hidden layer as wide as the encoder's features as the authors' 2048 for
/// ResNet-50's 2048) and τ = 0.2 (their Table 1 with the MLP); the cosine schedule is already v1's here. v2's Gaussian blur is
/// left out: at 28 px its 10%-of-the-side kernel is 3 px, and solo-learn's CIFAR configuration of MoCo v2 also turns blur off for
/// small images. Everything else is `moco`'s preset, so the two compare on one budget.
let v2 (config: Config) = { config with MlpHead = true; Temperature = 0.2 }

let spec =
    { backboneSpec "moco" "He et al. 2020, Momentum Contrast for Unsupervised Visual Representation Learning (MoCo v1)"
        selfSupervised config (fun config -> config.Encoder) build with
        CheckData = fun config _ ->
            if config.Schedule.BatchSize % config.Groups <> 0 then
                invalidArg "Schedule.BatchSize" $"Schedule.BatchSize: expected a multiple of Groups ({config.Groups}), found {config.Schedule.BatchSize}"
            rankGroups Ssl.Host.Distributed.World.Current config.Groups |> ignore
        Variants =
          [ "no-shuffle", "He et al. 2020, MoCo v1 without shuffling BN (the Sec. 3.3 ablation)", (fun config -> { config with ShuffleBn = false })
            "v2", "Chen et al. 2020, Improved Baselines with Momentum Contrastive Learning (MoCo v2)", v2 ] }
