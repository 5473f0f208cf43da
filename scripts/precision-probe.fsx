// Whether bfloat16 pays on this CPU: the same matrix product and SmallConvNet-16-sized convolution
// (forward + backward) in float32 and bfloat16, through the libtorch the project links, alternating
// the two five times and printing medians. Run after a build, from the repository root:
//   dotnet fsi scripts/precision-probe.fsx [threads]
// docs/performance.md quotes its output.
#r "../Experiments/bin/Release/net10.0/TorchSharp.dll"
#r "../Experiments/bin/Release/net10.0/Ssl.Host.dll"
open TorchSharp
open type TorchSharp.torch

Ssl.Host.Native.TorchRuntime.EnsureLoaded()
let threads = if fsi.CommandLineArgs.Length > 1 then System.Int32.Parse fsi.CommandLineArgs[1] else System.Environment.ProcessorCount
torch.set_num_threads threads

/// Milliseconds per call of `f`, over `n` calls after two warm-up calls.
let timeMs (n: int) (f: unit -> unit) =
    f ()
    f ()
    let clock = System.Diagnostics.Stopwatch.StartNew()
    for _ in 1..n do f ()
    clock.Elapsed.TotalMilliseconds / System.Convert.ToDouble n

let channelsLast (t: Tensor) = t.permute(0L, 2L, 3L, 1L).contiguous().permute(0L, 3L, 1L, 2L)

let workloads: (string * (ScalarType -> unit -> unit)) list =
    [ "matmul 2048x1024 @ 1024x1024", (fun dtype ->
          let a = randn(2048L, 1024L).to_type dtype
          let b = randn(1024L, 1024L).to_type dtype
          fun () -> use scope = NewDisposeScope() in matmul(a, b) |> ignore)
      "conv 32->32 3x3 at 14x14, batch 256, channels-last, forward + backward", (fun dtype ->
          let x = (channelsLast (randn(256L, 32L, 14L, 14L))).to_type(dtype).requires_grad_(true)
          let w = randn(32L, 32L, 3L, 3L).to_type(dtype).requires_grad_(true)
          fun () ->
              use scope = NewDisposeScope()
              let y = nn.functional.conv2d(x, w, padding = [| 1L; 1L |])
              y.sum().backward()) ]

let median (xs: float list) = (List.sort xs)[xs.Length / 2]
printfn "threads %d, libtorch %s" threads (torch.__version__)
for name, make in workloads do
    let f32, b16 = make ScalarType.Float32, make ScalarType.BFloat16
    let pairs = [ for _ in 1..5 -> timeMs 5 f32, timeMs 5 b16 ]
    let a, b = median (List.map fst pairs), median (List.map snd pairs)
    printfn "%s: float32 %.2f ms, bfloat16 %.2f ms, bfloat16 speed-up %.2fx" name a b (a / b)
