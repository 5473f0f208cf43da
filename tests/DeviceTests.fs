module Ssl.Tests.DeviceTests

open System
open Expecto
open TorchSharp
open Ssl.Host.Runtime

[<Tests>]
let tests =
    testList "device" [
        test "--device parses cpu, cuda and auto, any case" {
            Expect.equal (DeviceSetup.Parse "CPU") DeviceRequest.Cpu "cpu"
            Expect.equal (DeviceSetup.Parse "cuda") DeviceRequest.Cuda "cuda"
            Expect.equal (DeviceSetup.Parse " auto ") DeviceRequest.Auto "auto"
        }

        test "an unknown device names the choices" {
            let e = Prop.throws<ArgumentException> (fun () -> DeviceSetup.Parse "tpu" |> ignore)
            Expect.stringContains e.Message "expected one of cpu, cuda, auto; found 'tpu'" "message"
        }

        test "cpu is set up with the asked thread count" {
            let env = DeviceSetup.Configure(DeviceRequest.Cpu, threads = 1, seed = 3L)
            Expect.equal env.Device.``type`` DeviceType.CPU "cpu"
            Expect.equal (torch.get_num_threads ()) 1 "threads"
            DeviceSetup.Configure(DeviceRequest.Cpu) |> ignore
            Expect.equal (torch.get_num_threads ()) Environment.ProcessorCount "0 = all cores"
        }

        test "cuda asked for without CUDA is a clear error; auto falls back and says so" {
            if not (torch.cuda.is_available ()) then
                let e = Prop.throws<DeviceUnavailableException> (fun () -> DeviceSetup.Configure(DeviceRequest.Cuda) |> ignore)
                printfn "    message: %s" e.Message
                Expect.stringContains e.Message "expected a CUDA device, found none" "message"
                let env = DeviceSetup.Configure(DeviceRequest.Auto)
                Expect.equal env.Device.``type`` DeviceType.CPU "fell back to cpu"
                Expect.contains env.Notes "--device auto: CUDA not available, using CPU." "says so"
        }

        test "one seed seeds torch and .NET randomness" {
            let draw () =
                let env = DeviceSetup.Configure(DeviceRequest.Cpu, seed = 42L, deterministic = true)
                use t = torch.rand(5L)
                t.data<float32>().ToArray(), Array.init 5 (fun _ -> env.Random.Next())
            let t1, r1 = draw ()
            let t2, r2 = draw ()
            Expect.sequenceEqual t1 t2 "torch draws repeat"
            Expect.sequenceEqual r1 r2 ".NET draws repeat"
            DeviceSetup.Configure(DeviceRequest.Cpu, seed = 43L) |> ignore
            use t3 = torch.rand(5L)
            Expect.notEqual (t3.data<float32>().ToArray()) t1 "another seed, other draws"
        }

        test "negative thread counts are refused" {
            Prop.throws<ArgumentException> (fun () -> DeviceSetup.Configure(DeviceRequest.Cpu, threads = -1) |> ignore) |> ignore
        }
    ]
