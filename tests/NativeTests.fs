module Ssl.Tests.NativeTests

open System
open System.Diagnostics
open System.IO
open Expecto
open TorchSharp
open Ssl.Build
open Ssl.Host.Native

let private torchSharpNative () =
    Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libLibTorchSharp.so")

let private runProcess (file: string) (args: string) =
    use p = new Process(StartInfo = ProcessStartInfo(file, args, RedirectStandardOutput = true, RedirectStandardError = true))
    p.Start() |> ignore
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEnd()
    p.WaitForExit()
    p.ExitCode, out.Result + err

[<Tests>]
let tests =
    testList "native" [
        test "a tensor op runs" {
            TorchRuntime.EnsureLoaded()
            use a = torch.tensor([| 1.0f; 2.0f; 3.0f; 4.0f |]).reshape(2, 2)
            use b = torch.mm(a, a)
            Expect.sequenceEqual (b.data<float32>().ToArray()) [| 7.0f; 10.0f; 15.0f; 22.0f |] "[[1,2],[3,4]]^2"
        }

        test "a backward pass runs" {
            TorchRuntime.EnsureLoaded()
            use w = torch.tensor([| 0.5; -1.0 |], requires_grad = true)
            use x = torch.tensor([| 2.0; 3.0 |])
            use loss = (w * x).sum().pow(TorchSharp.Scalar.op_Implicit 2.0)
            loss.backward()
            // d/dw (w.x)^2 = 2 (w.x) x = 2 * (-2) * [2, 3]
            Expect.sequenceEqual (w.grad.data<double>().ToArray()) [| -8.0; -12.0 |] "gradient of (w.x)^2"
        }

        test "loading libtorch pins glibc's malloc thresholds (a step's tensors are not re-mapped every step)" {
            TorchRuntime.EnsureLoaded()
            if OperatingSystem.IsLinux() && not Ssl.Host.Runtime.NativeMemory.UserSetThresholds then
                Expect.isTrue Ssl.Host.Runtime.NativeMemory.ThresholdsPinned "mallopt accepted both thresholds"
                Expect.isTrue (Ssl.Host.Runtime.NativeMemory.PinThresholds()) "a second call reports them pinned"
            else
                Expect.isFalse Ssl.Host.Runtime.NativeMemory.ThresholdsPinned "left to the user's settings or the platform"
        }

        test "loading libtorch turns NNPACK off: a batch-1 3x3 convolution (libtorch's native path) prints no warning and is right" {
            TorchRuntime.EnsureLoaded()
            if OperatingSystem.IsLinux() then
                Expect.equal TorchContext.NnpackEnabled (Nullable false) "at::globalContext().userEnabledNNPACK() after EnsureLoaded"
            torch.manual_seed 3L |> ignore
            use x = torch.randn(2L, 4L, 6L, 6L)
            use w = torch.randn(16L, 4L, 3L, 3L)
            use one = torch.nn.functional.conv2d(x.narrow(0L, 0L, 1L), w, padding = [| 1L; 1L |])
            use reference = torch.nn.functional.conv2d(x.narrow(0L, 0L, 1L).to_type(torch.float64), w.to_type(torch.float64), padding = [| 1L; 1L |])
            Expect.isTrue (one.to_type(torch.float64).allclose(reference, 1e-5, 1e-5)) "batch 1 against float64"
        }

        test "the built libLibTorchSharp.so loads here: its GLIBCXX_3.4.32 need is weak where the system lacks it" {
            let lib = torchSharpNative ()
            Expect.isTrue (File.Exists lib) $"expected {lib} in the test output"
            if not (ElfVersionPatch.SystemProvides ElfVersionPatch.TorchSharpGlibcxx) then
                Expect.isTrue (ElfVersionPatch.IsWeak(lib, ElfVersionPatch.TorchSharpGlibcxx)) "the build patched the output copy"
        }

        test "the ELF patch marks one version weak, then is idempotent" {
            let copy = Path.Combine(Fixtures.tempDir "elf", "lib.so")
            File.Copy(torchSharpNative (), copy)
            // GLIBCXX_3.4.11 is an ordinary (strong) requirement of the same library.
            let version = "GLIBCXX_3.4.11"
            Expect.isFalse (ElfVersionPatch.IsWeak(copy, version)) "strong before"
            Expect.equal (ElfVersionPatch.MakeVersionWeak(copy, version)) ElfPatchOutcome.Patched "first patch"
            Expect.isTrue (ElfVersionPatch.IsWeak(copy, version)) "weak after"
            Expect.equal (ElfVersionPatch.MakeVersionWeak(copy, version)) ElfPatchOutcome.AlreadyWeak "second patch changes nothing"
            Expect.equal (ElfVersionPatch.MakeVersionWeak(copy, "GLIBCXX_9.9")) ElfPatchOutcome.VersionNotRequired "absent version"
            Expect.equal (FileInfo(copy).Length) (FileInfo(torchSharpNative ()).Length) "same size: only flag bytes change"
        }

        test "the ELF patch refuses a file that is not ELF, naming it" {
            let path = Path.Combine(Fixtures.tempDir "elf", "not-elf.so")
            File.WriteAllText(path, String('x', 100))
            let e = Prop.throws<InvalidDataException> (fun () -> ElfVersionPatch.MakeVersionWeak(path, "X") |> ignore)
            Expect.stringContains e.Message path "names the file"
            Expect.stringContains e.Message "expected an ELF file" "says what was expected"
        }

        test "an F# script that references the built assemblies loads libtorch and runs autograd" {
            let script = Path.Combine(AppContext.BaseDirectory, "scripts", "torch-in-fsi.fsx")
            let code, output = runProcess "dotnet" $"fsi --quiet \"{script}\""
            Expect.equal code 0 $"dotnet fsi exit code; output:\n{output}"
            Expect.stringContains output "fsi-torch-ok 14" "the script's own check passed"
        }
    ]
