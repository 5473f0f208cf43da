// Experiments as code: a new experiment composed from registered parts and run on the smoke subset.
// RotNet's training step (Recipes.RotNet.rotationStep, the registered recipe's own) on a Wide-ResNet-28-2
// encoder instead of the recipe's SmallConvNet, with a kNN monitor on test features after every
// epoch through the engine's afterEpoch hook. Build first (`dotnet build Ssl.sln -c Release`), then:
//     dotnet fsi Experiments/examples/compose.fsx [out-dir]
// It prints one line per epoch and `compose-ok` at the end; the run folder (metrics.jsonl with the
// monitor's figures, checkpoints) goes to out-dir (default: a temp folder).
#r "../bin/Release/net10.0/TorchSharp.dll"
#r "../bin/Release/net10.0/Ssl.Core.dll"
#r "../bin/Release/net10.0/Ssl.Host.dll"
#r "../bin/Release/net10.0/ssl.dll"

open System.IO
open TorchSharp
open Ssl.Core.Models
open Ssl.Host.Engine
open Ssl.Host.Eval
open Ssl.Host.Runs
open Ssl.Host.Runtime
open Ssl.Experiments
open Ssl.Experiments.Recipe

let out =
    match fsi.CommandLineArgs |> Array.skip 1 with
    | [| dir |] -> dir
    | _ -> Path.Combine(Path.GetTempPath(), "ssl-compose", string (System.Guid.NewGuid()))

let env = DeviceSetup.Configure(DeviceRequest.Cpu, threads = 0, seed = 0L, deterministic = true)
let request = Request.Create("rotnet+wrn", Smoke, folder = out)

// The smoke subset (2,000 train / 1,000 test images), cut further to keep the script under a minute:
// WRN-28-2 costs about 30 times SmallConvNet-16 per image.
let smoke = Pipeline.loadData request
let data = { smoke with Train = smoke.Train.Subset(Array.init 384 int64); Test = smoke.Test.Subset(Array.init 500 int64) }

// The parts: the registry's RotNet step and config, Core's Wide-ResNet-28-2, a 4-way rotation head.
// A record update is `--set` in F# (`Configs.applyOverrides [ "Schedule.Epochs=2" ]` takes the text form).
let smokeConfig = Recipes.RotNet.config Smoke
let config = { smokeConfig with Schedule = { smokeConfig.Schedule with Epochs = 2; BatchSize = 64 }; Encoder = Backbone.WideResNet(28, 2L) }
torch.manual_seed(request.Seed) |> ignore
let encoder = Backbone.instantiate None data.Train.Channels config.Encoder
let head = new LinearHead(encoder.FeatureDim, 4L)
let step = Template.engineStep (Recipes.RotNet.rotationStep config data encoder head)

// The monitor: kNN accuracy of the encoder's test features after every epoch.
let folder = RunFolder(out)
let knnMonitor =
    EpochHook(fun epoch means ->
        use trainFeatures = Features.Extract(encoder, data.Train.Images, data.Mean, data.Std, env.Device)
        use testFeatures = Features.Extract(encoder, data.Test.Images, data.Mean, data.Std, env.Device)
        let knn = Knn.Accuracy(trainFeatures, data.Train.Labels, testFeatures, data.Test.Labels, data.Classes, k = 20)
        folder.AppendMetrics(readOnlyDict [ "epoch", box epoch; "monitor", box "knn"; "knn_acc", box knn ])
        printfn "epoch %d: loss %.4f, rotation acc %.3f, kNN (k=20) %.4f" (epoch + 1) means["loss"] means["rotation_acc"] knn)

let options =
    TrainerOptions(Epochs = config.Schedule.Epochs, BatchSize = config.Schedule.BatchSize, ExampleCount = data.Train.Count, Seed = request.Seed,
                   ConfigDigest = $"compose rotnet+wrn {(Configs.toJson config).ToJsonString()}", LogEvery = 2)
let summary = Trainer.Run(step, options, folder, env.Device, SilentProgress(), knnMonitor)
printfn "trained %d epochs, %d steps at %.0f img/s -> %s" summary.Epochs summary.Steps summary.ImagesPerSecond folder.Root
printfn "compose-ok"
