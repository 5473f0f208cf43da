// Runs under `dotnet fsi` against the built assemblies beside this folder, the way an experiment
// script does: proves libtorch loads in a script host (see TorchRuntime) and autograd works.
#r "../TorchSharp.dll"
#r "../Ssl.Core.dll"
#r "../Ssl.Host.dll"

open TorchSharp

Ssl.Host.Native.TorchRuntime.EnsureLoaded()
let x = torch.tensor([| 1.0; 2.0; 3.0 |], requires_grad = true)
let y = (x * x).sum()
y.backward()
let grad = x.grad.data<double>().ToArray()
if grad <> [| 2.0; 4.0; 6.0 |] then failwithf "expected gradient [2, 4, 6], found %A" grad
printfn "fsi-torch-ok %s" (string (y.item<double>()))
