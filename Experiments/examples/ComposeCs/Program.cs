// Experiments as code, from C#: RotNet's registered training step on a Wide-ResNet-28-2 encoder
// instead of the recipe's SmallConvNet (two fields of its config changed, as `--set` would), with a kNN monitor after every epoch (the engine's
// afterEpoch hook), on a cut of the smoke subset. The same experiment as ../compose.fsx.
using System;
using System.Linq;
using Ssl.Core.Models;
using Ssl.Experiments;
using Ssl.Host.Engine;
using Ssl.Host.Eval;
using Ssl.Host.Runs;
using Ssl.Host.Runtime;
using TorchSharp;

var output = args.Length == 1 ? args[0] : System.IO.Path.Combine(System.IO.Path.GetTempPath(), "ssl-compose-cs", Guid.NewGuid().ToString("N"));
var env = DeviceSetup.Configure(DeviceRequest.Cpu, threads: 0, seed: 0L, deterministic: true);
var request = Recipe.Request.Create("rotnet+wrn", Recipe.Preset.Smoke, "fashion-mnist", 0L, output);  // the rest: ssl train's defaults

// The smoke subset cut to 384 training and 500 test images: WRN-28-2 costs ~30x SmallConvNet-16.
using var smoke = Pipeline.loadData(request);
var data = new Pipeline.Data(smoke.Train.Subset(Enumerable.Range(0, 384).Select(i => (long)i).ToArray()),
                             smoke.Test.Subset(Enumerable.Range(0, 500).Select(i => (long)i).ToArray()),
                             smoke.Mean, smoke.Std, smoke.Classes, eval: null);

// The parts: the registry's RotNet step and config, Core's Wide-ResNet-28-2, a 4-way rotation head.
// Configs.Edit.Set is `--set Field=value` on a typed config: the same checks, the same messages.
var config = Ssl.Experiments.Recipes.RotNet.config(Recipe.Preset.Smoke);
config = Configs.Edit.Set(config, "Schedule.Epochs", 2);
config = Configs.Edit.Set(config, "Schedule.BatchSize", 64);
config = Configs.Edit.Set(config, "Encoder", "wrn-28-2");
torch.manual_seed(request.Seed);
var encoder = Backbones.Create(config.Encoder, data.Train.Channels);
var head = new LinearHead(encoder.FeatureDim, 4L);
var step = Template.engineStep(Ssl.Experiments.Recipes.RotNet.rotationStep(config, data, encoder, head));

// The monitor: kNN accuracy of the encoder's test features after every epoch.
var folder = new RunFolder(output);
var knnMonitor = new EpochHook((epoch, means) =>
{
    using var train = Features.Extract(encoder, data.Train.Images, data.Mean, data.Std, env.Device);
    using var test = Features.Extract(encoder, data.Test.Images, data.Mean, data.Std, env.Device);
    var knn = Knn.Accuracy(train, data.Train.Labels, test, data.Test.Labels, data.Classes, k: 20);
    Console.WriteLine($"epoch {epoch + 1}: loss {means["loss"]:F4}, rotation acc {means["rotation_acc"]:F3}, kNN (k=20) {knn:F4}");
});
var options = new TrainerOptions { Epochs = config.Schedule.Epochs, BatchSize = config.Schedule.BatchSize, ExampleCount = data.Train.Count, Seed = request.Seed,
                                   ConfigDigest = $"compose-cs rotnet+wrn {Configs.toJson(config).ToJsonString()}", LogEvery = 2 };
var summary = Trainer.Run(step, options, folder, env.Device, new SilentProgress(), knnMonitor);
Console.WriteLine($"trained {summary.Epochs} epochs, {summary.Steps} steps at {summary.ImagesPerSecond:F0} img/s -> {folder.Root}");
Console.WriteLine("compose-cs-ok");
