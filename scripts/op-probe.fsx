// A quick step's network taken apart: each layer alone at the shape it sees in the step, its
// forward and its backward timed separately (the input's gradient where the step needs it, the
// parameters' gradients zeroed in place as the optimizer does). Two networks: the supervised step's
// (SmallConvNet-16 + linear head + cross-entropy, batch 256 of 28x28 grey images) and, with `moco`,
// MoCo quick's (SmallConvNet-40 through SafeConv.layer as the encoder builds it + its fc, one
// batch-norm group of 32 images; the count is the query's 4 groups). `scripts/peer/op_probe.py`
// times the same layers in the PyTorch twin; alternate the two and join them with `op_probe.py --join`:
//   DOTNET_TieredCompilation=0 dotnet fsi scripts/op-probe.fsx [threads] [out.json] [nchw] [moco]
// Channels-last unless `nchw` (the layout the step runs: SafeConv's input hook). Run after a build,
// from the repository root; docs/performance.md quotes the joined tables.
#r "../Experiments/bin/Release/net10.0/TorchSharp.dll"
#r "../Experiments/bin/Release/net10.0/Ssl.Host.dll"
#r "../Experiments/bin/Release/net10.0/Ssl.Core.dll"
open System
open TorchSharp
open type TorchSharp.torch

Ssl.Host.Native.TorchRuntime.EnsureLoaded()
let args = fsi.CommandLineArgs
let threads = if args.Length > 1 then Int32.Parse args[1] else Environment.ProcessorCount
let out = if args.Length > 2 then Some args[2] else None
let flags = if args.Length > 3 then set args[3..] else Set.empty
let channelsLast = not (flags.Contains "nchw")
Ssl.Core.Models.SafeConv.ChannelsLast <- channelsLast
torch.set_num_threads threads
torch.manual_seed 0L |> ignore

let layout (x: Tensor) = if channelsLast && x.dim() = 4L then Ssl.Core.Models.SafeConv.channelsLast x else x
let median (xs: float list) = (List.sort xs)[xs.Length / 2]

/// One layer of the step: its name, how many times the step runs it at this shape, the input shape,
/// whether the step needs the input's gradient, and the layer as a function with its parameters.
type Op = { Name: string; Count: int; Shape: int64[]; InputGrad: bool; Forward: Tensor -> Tensor; Parameters: Tensor list }

let moduleOp name count shape inputGrad (m: nn.Module<Tensor, Tensor>) =
    { Name = name; Count = count; Shape = shape; InputGrad = inputGrad; Forward = m.forward; Parameters = [ for p in m.parameters () -> p :> Tensor ] }
let conv cin cout = nn.Conv2d(cin, cout, 3L, padding = 1L, bias = false)
let labels = randint(10L, [| 256L |])
let supervisedOps =
    [ moduleOp "conv 1->16 @28" 1 [| 256L; 1L; 28L; 28L |] false (conv 1L 16L)
      moduleOp "batch norm 16 @28" 1 [| 256L; 16L; 28L; 28L |] true (nn.BatchNorm2d(16L))
      moduleOp "relu 16 @28" 1 [| 256L; 16L; 28L; 28L |] true (nn.ReLU())
      moduleOp "max-pool 16 @28" 1 [| 256L; 16L; 28L; 28L |] true (nn.MaxPool2d(2L))
      moduleOp "conv 16->32 @14" 1 [| 256L; 16L; 14L; 14L |] true (conv 16L 32L)
      moduleOp "conv 32->32 @14" 1 [| 256L; 32L; 14L; 14L |] true (conv 32L 32L)
      moduleOp "batch norm 32 @14" 2 [| 256L; 32L; 14L; 14L |] true (nn.BatchNorm2d(32L))
      moduleOp "relu 32 @14" 2 [| 256L; 32L; 14L; 14L |] true (nn.ReLU())
      moduleOp "max-pool 32 @14" 1 [| 256L; 32L; 14L; 14L |] true (nn.MaxPool2d(2L))
      moduleOp "conv 32->64 @7" 1 [| 256L; 32L; 7L; 7L |] true (conv 32L 64L)
      moduleOp "conv 64->64 @7" 1 [| 256L; 64L; 7L; 7L |] true (conv 64L 64L)
      moduleOp "batch norm 64 @7" 2 [| 256L; 64L; 7L; 7L |] true (nn.BatchNorm2d(64L))
      moduleOp "relu 64 @7" 2 [| 256L; 64L; 7L; 7L |] true (nn.ReLU())
      moduleOp "avg-pool + flatten 64 @7" 1 [| 256L; 64L; 7L; 7L |] true
          (nn.Sequential(nn.AdaptiveAvgPool2d(1L), nn.Flatten()))
      moduleOp "linear 64->10" 1 [| 256L; 64L |] true (nn.Linear(64L, 10L))
      { Name = "cross-entropy"; Count = 1; Shape = [| 256L; 10L |]; InputGrad = true
        Forward = (fun x -> nn.functional.cross_entropy(x, labels)); Parameters = [] } ]

/// MoCo quick's encoder and fc for one batch-norm group (32 images), its convolutions made by
/// SafeConv.layer as Layers.convBnRelu makes them.
let mocoOps =
    let safe cin cout = Ssl.Core.Models.SafeConv.layer cin cout 3L 1L 1L false
    let b = 32L
    [ moduleOp "conv 1->40 @28" 4 [| b; 1L; 28L; 28L |] false (safe 1L 40L)
      moduleOp "batch norm 40 @28" 4 [| b; 40L; 28L; 28L |] true (nn.BatchNorm2d(40L))
      moduleOp "relu 40 @28" 4 [| b; 40L; 28L; 28L |] true (nn.ReLU())
      moduleOp "max-pool 40 @28" 4 [| b; 40L; 28L; 28L |] true (nn.MaxPool2d(2L))
      moduleOp "conv 40->80 @14" 4 [| b; 40L; 14L; 14L |] true (safe 40L 80L)
      moduleOp "conv 80->80 @14" 4 [| b; 80L; 14L; 14L |] true (safe 80L 80L)
      moduleOp "batch norm 80 @14" 8 [| b; 80L; 14L; 14L |] true (nn.BatchNorm2d(80L))
      moduleOp "relu 80 @14" 8 [| b; 80L; 14L; 14L |] true (nn.ReLU())
      moduleOp "max-pool 80 @14" 4 [| b; 80L; 14L; 14L |] true (nn.MaxPool2d(2L))
      moduleOp "conv 80->160 @7" 4 [| b; 80L; 7L; 7L |] true (safe 80L 160L)
      moduleOp "conv 160->160 @7" 4 [| b; 160L; 7L; 7L |] true (safe 160L 160L)
      moduleOp "batch norm 160 @7" 8 [| b; 160L; 7L; 7L |] true (nn.BatchNorm2d(160L))
      moduleOp "relu 160 @7" 8 [| b; 160L; 7L; 7L |] true (nn.ReLU())
      moduleOp "avg-pool + flatten 160 @7" 4 [| b; 160L; 7L; 7L |] true
          (nn.Sequential(nn.AdaptiveAvgPool2d(1L), nn.Flatten()))
      moduleOp "linear 160->128" 4 [| b; 160L |] true (nn.Linear(160L, 128L)) ]
let ops = if flags.Contains "moco" then mocoOps else supervisedOps

/// Milliseconds per forward and per backward of `op`, the means over `n` runs after three warm-ups.
let time (op: Op) (n: int) =
    let input = layout (randn(op.Shape))
    let mutable forward, backward = 0.0, 0.0
    for i in 1..n + 3 do
        use scope = NewDisposeScope()
        for p in op.Parameters do (if not (isNull p.grad) then p.grad.zero_() |> ignore)
        let x = if op.InputGrad then input.detach().requires_grad_(true) else input
        let clock = Diagnostics.Stopwatch.StartNew()
        let y = op.Forward x
        let f = clock.Elapsed.TotalMilliseconds
        let g = if y.dim() = 0L then ones_like(y) else layout (ones_like(y))
        clock.Restart()
        y.backward([| g |])
        let b = clock.Elapsed.TotalMilliseconds
        if i > 3 then
            forward <- forward + f
            backward <- backward + b
    forward / Convert.ToDouble n, backward / Convert.ToDouble n

eprintfn "threads %d, libtorch %s, %s" threads torch.__version__ (if channelsLast then "channels-last" else "NCHW")
let rounds = [ for _ in 1..5 -> [ for op in ops -> time op 20 ] ]
let results =
    [ for i, op in List.indexed ops ->
        let f = median [ for r in rounds -> fst r[i] ]
        let b = median [ for r in rounds -> snd r[i] ]
        eprintfn "%-28s x%d  forward %7.3f ms  backward %7.3f ms" op.Name op.Count f b
        sprintf "{\"op\": \"%s\", \"count\": %d, \"forward_ms\": %.4f, \"backward_ms\": %.4f}" op.Name op.Count f b ]
let document =
    sprintf "{\"side\": \"ours\", \"network\": \"%s\", \"torch\": \"%s\", \"threads\": %d, \"layout\": \"%s\", \"ops\": [\n  %s\n]}\n"
        (if flags.Contains "moco" then "moco" else "supervised") torch.__version__ threads
        (if channelsLast then "channels-last" else "nchw") (String.Join(",\n  ", results))
match out with
| Some path -> IO.File.WriteAllText(path, document)
| None -> printf "%s" document
