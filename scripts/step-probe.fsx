// The supervised quick step (SupervisedTraining.Step: Fashion-MNIST batch 256, random resized crop,
// flip, SmallConvNet-16 + linear head, cross-entropy, SGD with Nesterov) cut into its parts, each
// timed in place, in the order the step runs them: where the bench's "forward+other" goes. Each part's
// median over the steps, and its mean and 90th percentile (the bench divides by the total, a mean).
// `scripts/peer/step_probe.py` times the same parts of the PyTorch twin; alternate the two and join
// them with `step_probe.py --join`:
//   DOTNET_TieredCompilation=0 dotnet fsi scripts/step-probe.fsx [threads] [out.json] [nchw]
// (ssl runs with tiered compilation off; with it on, the JIT's background thread adds a tail of slow
// steps: docs/performance.md, "Step by step"). Channels-last unless `nchw`. Run after a build, from the repository root, with Fashion-MNIST
// installed (the build's demo or bench target installs it); docs/performance.md quotes the table.
#r "../Experiments/bin/Release/net10.0/TorchSharp.dll"
#r "../Experiments/bin/Release/net10.0/Ssl.Host.dll"
#r "../Experiments/bin/Release/net10.0/Ssl.Core.dll"
open System
open TorchSharp
open type TorchSharp.torch
open Ssl.Core.Transforms

Ssl.Host.Native.TorchRuntime.EnsureLoaded()
let args = fsi.CommandLineArgs
let threads = if args.Length > 1 then Int32.Parse args[1] else Environment.ProcessorCount
let out = if args.Length > 2 then Some args[2] else None
Ssl.Core.Models.SafeConv.ChannelsLast <- not (args.Length > 3 && args[3] = "nchw")
torch.set_num_threads threads

let train = Ssl.Host.Data.DataCatalog.Load("fashion-mnist", Ssl.Host.Data.Split.Train)
let mean, std = [| 0.2860 |], [| 0.3530 |]
torch.manual_seed 0L |> ignore
let encoder = new Ssl.Core.Models.SmallConvNet(1L, 16L)
let head = new Ssl.Core.Models.LinearHead(encoder.FeatureDim, 10L)
let parameters = Seq.append (encoder.parameters ()) (head.parameters ()) |> Array.ofSeq
let optimizer = torch.optim.SGD(parameters, 0.1, momentum = 0.9, nesterov = true, weight_decay = 5e-4)
encoder.train ()
head.train ()

let warmup, steps, batch = 5, 40, 256L
let generator = new Generator(0UL)
let order = torch.randperm(train.Count, generator = generator).data<Int64>().ToArray()
let times = Collections.Generic.Dictionary<string, ResizeArray<float>>()
let mutable measuring = false
// The encoder's forward split by layer, in place: a clock started by a pre-hook, read by a hook.
let layers =
    [ for name, m in encoder.named_modules () do
        match m with
        | :? nn.Module<Tensor, Tensor> as layer when Seq.isEmpty (m.children ()) ->
            let key = "  " + name.Replace("features.", "")
            let clock = Diagnostics.Stopwatch()
            layer.register_forward_pre_hook(fun _ x -> clock.Restart(); x) |> ignore
            layer.register_forward_hook(fun _ _ y -> (if measuring then times[key].Add clock.Elapsed.TotalMilliseconds); y) |> ignore
            yield key
        | _ -> () ]
let parts =
    [ "input"; "crop"; "flip"; "encoder forward"; yield! layers; "head + loss"; "backward"; "optimizer"; "accuracy"; "step" ]
for p in parts do times[p] <- ResizeArray()
for s in 0 .. warmup + steps - 1 do
    use scope = NewDisposeScope()
    let picked = Array.sub order (s * Convert.ToInt32 batch) (Convert.ToInt32 batch)
    measuring <- s >= warmup
    let clock = Diagnostics.Stopwatch.StartNew()
    let last = ref 0.0
    let lap name =
        let now = clock.Elapsed.TotalMilliseconds
        if measuring then times[name].Add(now - last.Value)
        last.Value <- now
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
    if measuring then times["step"].Add(clock.Elapsed.TotalMilliseconds)

let sorted (xs: ResizeArray<float>) = Seq.sort xs |> Array.ofSeq
let median xs = (sorted xs)[xs.Count / 2]
/// The mean and the 90th percentile: a tail of slow steps moves these and not the median.
let tail (xs: ResizeArray<float>) = Seq.average xs, (sorted xs)[xs.Count * 9 / 10]
let layout = if Ssl.Core.Models.SafeConv.ChannelsLast then "channels-last" else "nchw"
eprintfn "threads %d, libtorch %s, %s, median of %d steps" threads torch.__version__ layout steps
for p in parts do eprintfn "%-16s %7.2f ms  (mean %.2f, p90 %.2f)" p (median times[p]) (fst (tail times[p])) (snd (tail times[p]))
let rows =
    [ for p in parts ->
        let mean, p90 = tail times[p]
        sprintf "{\"part\": \"%s\", \"ms\": %.4f, \"mean_ms\": %.4f, \"p90_ms\": %.4f}" p (median times[p]) mean p90 ]
let document =
    sprintf "{\"side\": \"ours\", \"torch\": \"%s\", \"threads\": %d, \"layout\": \"%s\", \"parts\": [\n  %s\n]}\n"
        torch.__version__ threads layout (String.Join(",\n  ", rows))
match out with
| Some path -> IO.File.WriteAllText(path, document)
| None -> printf "%s" document
