// Which libtorch kernel paths pay for the supervised quick step on this CPU: SmallConvNet-16 + a
// linear head, batch 256 of 28x28 grey images, forward + cross-entropy + backward + SGD, timed with
// oneDNN (mkldnn) convolutions on and off, channels-last and NCHW, flush-denormal on and off,
// alternating the variants five times and printing medians. Run after a build, from the repository
// root:
//   dotnet fsi scripts/kernel-probe.fsx [threads] [default | denormals]
// With `denormals` only the oneDNN variants run, flush-denormal first. With `default` only the
// first variant runs: to compare environment variables read at load
// (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, OMP_WAIT_POLICY), alternate such processes.
// docs/performance.md quotes its output.
#r "../Experiments/bin/Release/net10.0/TorchSharp.dll"
#r "../Experiments/bin/Release/net10.0/Ssl.Host.dll"
#r "../Experiments/bin/Release/net10.0/Ssl.Core.dll"
open System
open System.Runtime.InteropServices
open TorchSharp
open type TorchSharp.torch

Ssl.Host.Native.TorchRuntime.EnsureLoaded()
let threads = if fsi.CommandLineArgs.Length > 1 then Int32.Parse fsi.CommandLineArgs[1] else Environment.ProcessorCount
torch.set_num_threads threads

/// at::globalContext() and two of its setters, called through their C++ symbols (TorchSharp 0.107
/// exposes neither): the Itanium ABI passes `this` first.
[<UnmanagedFunctionPointer(CallingConvention.Cdecl)>]
type GlobalContext = delegate of unit -> nativeint
[<UnmanagedFunctionPointer(CallingConvention.Cdecl)>]
type SetFlag = delegate of nativeint * [<MarshalAs(UnmanagedType.U1)>] flag: bool -> unit
let libtorch =
    let dir = IO.Path.Combine(IO.Path.GetDirectoryName(typeof<torch.Tensor>.Assembly.Location), "runtimes", "linux-x64", "native")
    NativeLibrary.Load(IO.Path.Combine(dir, "libtorch_cpu.so"))
let export<'d when 'd :> Delegate> name = Marshal.GetDelegateForFunctionPointer<'d>(NativeLibrary.GetExport(libtorch, name))
let context = (export<GlobalContext> "_ZN2at13globalContextEv").Invoke()
let setMkldnn (on: bool) = (export<SetFlag> "_ZN2at7Context20setUserEnabledMkldnnEb").Invoke(context, on)
let setFlushDenormal (on: bool) = (export<SetFlag> "_ZN2at7Context16setFlushDenormalEb").Invoke(context, on)

let median (xs: float list) = (List.sort xs)[xs.Length / 2]

torch.manual_seed 0L |> ignore
let encoder = new Ssl.Core.Models.SmallConvNet(1L, 16L)
let head = new Ssl.Core.Models.LinearHead(64L, 10L)
let parameters = Seq.append (encoder.parameters ()) (head.parameters ())
let sgd = optim.SGD(parameters, 0.01, momentum = 0.9, nesterov = true)
let x = randn(256L, 1L, 28L, 28L)
let y = randint(10L, [| 256L |])

/// Milliseconds per training step over `n` steps after two warm-up steps.
let stepMs (n: int) =
    let step () =
        use scope = NewDisposeScope()
        sgd.zero_grad()
        let loss = nn.functional.cross_entropy(head.forward(encoder.forward x), y)
        loss.backward()
        sgd.step() |> ignore
    step ()
    step ()
    let clock = Diagnostics.Stopwatch.StartNew()
    for _ in 1..n do step ()
    clock.Elapsed.TotalMilliseconds / Convert.ToDouble n

let variants =
    [ "oneDNN, channels-last", (fun () -> setMkldnn true; Ssl.Core.Models.SafeConv.ChannelsLast <- true; setFlushDenormal false)
      "oneDNN, NCHW", (fun () -> setMkldnn true; Ssl.Core.Models.SafeConv.ChannelsLast <- false; setFlushDenormal false)
      "no oneDNN, channels-last", (fun () -> setMkldnn false; Ssl.Core.Models.SafeConv.ChannelsLast <- true; setFlushDenormal false)
      "no oneDNN, NCHW", (fun () -> setMkldnn false; Ssl.Core.Models.SafeConv.ChannelsLast <- false; setFlushDenormal false)
      "oneDNN, channels-last, flush denormals", (fun () -> setMkldnn true; Ssl.Core.Models.SafeConv.ChannelsLast <- true; setFlushDenormal true)
      "oneDNN, NCHW, flush denormals", (fun () -> setMkldnn true; Ssl.Core.Models.SafeConv.ChannelsLast <- false; setFlushDenormal true) ]

let chosen =
    match List.ofArray fsi.CommandLineArgs with
    | _ :: _ :: "default" :: _ -> [ variants.Head ]
    | _ :: _ :: "denormals" :: _ -> [ variants[4]; variants[0]; variants[5]; variants[1] ]
    | _ -> variants
printfn "threads %d, libtorch %s, SmallConvNet-16 + head, batch 256, 28x28, SGD step" threads torch.__version__
let rounds = [ for _ in 1..5 -> [ for _, set in chosen -> set (); stepMs 10 ] ]
for i, (name, _) in List.indexed chosen do
    let ms = median [ for r in rounds -> r[i] ]
    printfn "%-40s %7.1f ms/step  %6.0f img/s" name ms (256.0 * 1000.0 / ms)
