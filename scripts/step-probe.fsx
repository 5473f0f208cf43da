// A quick step cut into its parts, each timed in place, in the order the step runs them: where the
// bench's "forward+other" and "backward" go. Each part's median over the steps, and its mean and
// 90th percentile (the bench divides by the total, a mean). Two steps:
// - supervised (SupervisedTraining.Step): Fashion-MNIST batch 256, random resized crop, flip,
//   SmallConvNet-16 + linear head, cross-entropy, SGD with Nesterov;
// - moco (MoCo.Step, the quick preset): batch 128, two MoCo views, SmallConvNet-40 + fc + L2 norm as
//   queries in 4 batch-norm groups, keys from the momentum copy in 4 shuffled groups, InfoNCE
//   against a queue of 4,096, the engine's Optimize (zero_grad, backward, gradient norm, SGD),
//   momentum update, instance accuracy, enqueue, and the step's tensors freed.
// The encoder's forward is split by layer (a pre-hook starts a clock, the layer's hook reads it;
// summed over the groups of a step). `scripts/peer/step_probe.py` times the same parts of the
// PyTorch twin; alternate the two and join them with `step_probe.py --join`:
//   DOTNET_TieredCompilation=0 dotnet fsi scripts/step-probe.fsx [threads] [out.json] [nchw] [moco]
// (ssl runs with tiered compilation off; with it on, the JIT's background thread adds a tail of slow
// steps: docs/performance.md, "Step by step"). Channels-last unless `nchw`. Run after a build, from the repository root, with Fashion-MNIST
// installed (the build's demo or bench target installs it); docs/performance.md quotes the tables.
#r "../Experiments/bin/Release/net10.0/TorchSharp.dll"
#r "../Experiments/bin/Release/net10.0/Ssl.Host.dll"
#r "../Experiments/bin/Release/net10.0/Ssl.Core.dll"
#r "../Experiments/bin/Release/net10.0/ssl.dll"
open System
open TorchSharp
open type TorchSharp.torch
open Ssl.Core.Transforms

Ssl.Host.Native.TorchRuntime.EnsureLoaded()
let args = fsi.CommandLineArgs
let threads = if args.Length > 1 then Int32.Parse args[1] else Environment.ProcessorCount
let out = if args.Length > 2 then Some args[2] else None
let flags = if args.Length > 3 then set args[3..] else Set.empty
Ssl.Core.Models.SafeConv.ChannelsLast <- not (flags.Contains "nchw")
let recipe = if flags.Contains "moco" then "moco" else "supervised"
torch.set_num_threads threads

let train = Ssl.Host.Data.DataCatalog.Load("fashion-mnist", Ssl.Host.Data.Split.Train)
let mean, std = [| 0.2860 |], [| 0.3530 |]
torch.manual_seed 0L |> ignore

/// Clocks of the parts: `lap name` adds the time since the previous lap to `name`; the layers'
/// hooks add to `layerTimes` for the step, moved into the parts at its end.
let times = Collections.Generic.Dictionary<string, ResizeArray<float>>()
let layerTimes = Collections.Generic.Dictionary<string, float>()
let mutable measuring = false
/// The layers of `encoder`: its leaf modules, with a SafeConv2d (padding included) as one layer.
let hookLayers (encoder: nn.Module) =
    let modules = encoder.named_modules () |> Array.ofSeq
    let safe = set [ for name, m in modules do if m :? Ssl.Core.Models.SafeConv.SafeConv2d then yield name ]
    let insideSafe (name: string) = safe |> Set.exists (fun s -> name.StartsWith(s + "."))
    [ for name, m in modules do
        match m with
        | :? nn.Module<Tensor, Tensor> as layer when (Seq.isEmpty (m.children ()) && not (insideSafe name)) || safe.Contains name ->
            let key = "  " + name.Replace("features.", "")
            let clock = Diagnostics.Stopwatch()
            layerTimes[key] <- 0.0
            layer.register_forward_pre_hook(fun _ x -> clock.Restart(); x) |> ignore
            layer.register_forward_hook(fun _ _ y -> layerTimes[key] <- layerTimes[key] + clock.Elapsed.TotalMilliseconds; y) |> ignore
            yield key
        | _ -> () ]

/// One step's body: (its parts in order, with "{layers}" where the encoder's forward is split;
/// the step as a function of the step index, the batch and `lap`).
let supervised () =
    let encoder = new Ssl.Core.Models.SmallConvNet(1L, 16L)
    let head = new Ssl.Core.Models.LinearHead(encoder.FeatureDim, 10L)
    let parameters = Seq.append (encoder.parameters ()) (head.parameters ()) |> Array.ofSeq
    let optimizer = torch.optim.SGD(parameters, 0.1, momentum = 0.9, nesterov = true, weight_decay = 5e-4)
    encoder.train ()
    head.train ()
    let generator = new Generator(0UL)
    let layers = hookLayers encoder
    let parts = [ "input"; "crop"; "flip"; "encoder forward"; yield! layers; "head + loss"; "backward"; "optimizer"; "accuracy" ]
    let step (_: int) (picked: int64[]) (lap: string -> unit) =
        use idx = torch.tensor(picked)
        let x = Ssl.Host.Eval.Features.ToInput(train.Batch picked, mean, std, CPU)
        let y = train.Labels.index_select(0L, idx)
        lap "input"
        let cropped = Geometric.randomResizedCrop (0.8, 1.0) (3.0 / 4.0, 4.0 / 3.0) (28L, 28L) generator x
        lap "crop"
        let augmented = Geometric.randomHorizontalFlip 0.5 generator cropped
        lap "flip"
        let features = encoder.forward augmented
        lap "encoder forward"
        let logits = head.forward features
        let loss = nn.functional.cross_entropy(logits, y)
        lap "head + loss"
        loss.backward ()
        lap "backward"
        optimizer.step () |> ignore
        optimizer.zero_grad ()
        lap "optimizer"
        logits.argmax(1L).eq(y).to_type(ScalarType.Float32).mean().item<float32>() |> ignore
        lap "accuracy"
    256L, parts, step

let moco () =
    let config = Ssl.Experiments.Recipes.MoCo.config Ssl.Experiments.Recipe.Quick
    let width = match config.Encoder with Ssl.Experiments.Backbone.SmallConvNet w -> w | other -> failwith $"moco quick: expected SmallConvNet, found {other}"
    let net () =
        let projection = new Ssl.Core.Models.LinearHead(4L * width, config.EmbeddingDim)
        new Ssl.Experiments.Recipes.MoCo.EmbeddingNet(new Ssl.Core.Models.SmallConvNet(1L, width), projection)
    let query = net ()
    let key = new Ssl.Core.Models.MomentumCopy(query, net ())
    let queue = new Ssl.Core.Models.KeyQueue(config.QueueSize, config.EmbeddingDim, new Generator(0UL))
    let spec =
        Ssl.Host.Engine.OptimizerSpec(Kind = Ssl.Host.Engine.OptimizerKind.Sgd, LearningRate = config.LearningRate, Momentum = 0.9,
                                      WeightDecay = config.WeightDecay, WarmupEpochs = config.WarmupEpochs)
    let optimizer = new Ssl.Host.Engine.TrainingOptimizer("main", spec, query.named_parameters () |> Seq.map (fun struct (n, p) -> struct (n, p)))
    let data: Ssl.Experiments.Pipeline.Data =
        { Train = train; Test = train; Mean = mean; Std = std; Classes = 10; Eval = None }
    let unit = Array.zeroCreate<float> 1, [| 1.0 |]
    query.train ()
    key.train ()
    let layers = hookLayers query.Encoder
    let parts =
        [ "schedule + generator"; "input"; "query view"; "key view"; "query forward"; yield! layers; "key forward"; "loss"
          "loss.item"; "zero_grad"; "backward"; "optimizer"; "momentum update"; "accuracy"; "enqueue"; "free" ]
    let step (s: int) (picked: int64[]) (lap: string -> unit) =
        optimizer.Schedule(Operators.float s / 468.0, Operators.float config.Epochs)
        torch.manual_seed (Operators.int64 s) |> ignore
        use generator = new Generator(uint64 (1_000_000 + s))
        lap "schedule + generator"
        let x = Ssl.Host.Eval.Features.ToInput(train.Batch picked, fst unit, snd unit, CPU)
        lap "input"
        let xq = Ssl.Experiments.Views.view config.Augmentation data generator x
        lap "query view"
        let xk = Ssl.Experiments.Views.view config.Augmentation data generator x
        lap "key view"
        let q = Ssl.Experiments.Views.perGroup config.Groups query.forward xq
        lap "query forward"
        let k = Ssl.Experiments.Recipes.MoCo.shuffledKeys config.ShuffleBn config.Groups generator key.Copy xk
        lap "key forward"
        let loss = Ssl.Core.Losses.Contrastive.infoNce config.Temperature q k queue.Keys
        lap "loss"
        let value = loss.item<float32> ()
        if not (Single.IsFinite value) then failwith $"loss: expected a finite number, found {value}"
        lap "loss.item"
        optimizer.ZeroGrad()
        lap "zero_grad"
        loss.backward ()
        lap "backward"
        optimizer.Step() |> ignore
        lap "optimizer"
        key.Update config.Momentum
        lap "momentum update"
        let positive = (q * k).sum(1L, keepdim = true)
        let negatives = q.detach().matmul(queue.Keys.t())
        positive.detach().gt(negatives.amax([| 1L |], keepdim = true)).to_type(ScalarType.Float32).mean().item<float32>() |> ignore
        lap "accuracy"
        queue.Enqueue k
        lap "enqueue"
    Operators.int64 config.BatchSize, parts, step

let batch, parts, step = if recipe = "moco" then moco () else supervised ()
let partsWithStep = parts @ [ "step" ]
for p in partsWithStep do times[p] <- ResizeArray()
let warmup, steps = 5, 40
/// Minor page faults of this process so far (/proc/self/stat's 10th field): memory the step touches
/// for the first time, or again after it was handed back.
let minorFaults () = Int64.Parse((IO.File.ReadAllText "/proc/self/stat").Split(' ')[9])
let faults = ResizeArray<float>()
let order = torch.randperm(train.Count, generator = new Generator(0UL)).data<Int64>().ToArray()
for s in 0 .. warmup + steps - 1 do
    let scope = NewDisposeScope()
    let picked = Array.sub order (s * Convert.ToInt32 batch) (Convert.ToInt32 batch)
    measuring <- s >= warmup
    for k in List.ofSeq layerTimes.Keys do layerTimes[k] <- 0.0
    let faults0 = minorFaults ()
    let clock = Diagnostics.Stopwatch.StartNew()
    let last = ref 0.0
    let lap name =
        let now = clock.Elapsed.TotalMilliseconds
        if measuring then times[name].Add(now - last.Value)
        last.Value <- now
    step s picked lap
    scope.Dispose()
    if times.ContainsKey "free" then lap "free"
    if measuring then
        times["step"].Add(clock.Elapsed.TotalMilliseconds)
        faults.Add(Operators.float (minorFaults () - faults0))
        for KeyValue(k, v) in layerTimes do times[k].Add v

let sorted (xs: ResizeArray<float>) = Seq.sort xs |> Array.ofSeq
let median xs = (sorted xs)[xs.Count / 2]
/// The mean and the 90th percentile: a tail of slow steps moves these and not the median.
let tail (xs: ResizeArray<float>) = Seq.average xs, (sorted xs)[xs.Count * 9 / 10]
let layout = if Ssl.Core.Models.SafeConv.ChannelsLast then "channels-last" else "nchw"
eprintfn "%s, threads %d, libtorch %s, %s, median of %d steps" recipe threads torch.__version__ layout steps
eprintfn "minor page faults per step: median %.0f, mean %.0f" (median faults) (Seq.average faults)
for p in partsWithStep do eprintfn "%-20s %7.2f ms  (mean %.2f, p90 %.2f)" p (median times[p]) (fst (tail times[p])) (snd (tail times[p]))
let rows =
    [ for p in partsWithStep ->
        let mean, p90 = tail times[p]
        sprintf "{\"part\": \"%s\", \"ms\": %.4f, \"mean_ms\": %.4f, \"p90_ms\": %.4f}" p (median times[p]) mean p90 ]
let document =
    sprintf "{\"side\": \"ours\", \"recipe\": \"%s\", \"torch\": \"%s\", \"threads\": %d, \"layout\": \"%s\", \"parts\": [\n  %s\n]}\n"
        recipe torch.__version__ threads layout (String.Join(",\n  ", rows))
match out with
| Some path -> IO.File.WriteAllText(path, document)
| None -> printf "%s" document
