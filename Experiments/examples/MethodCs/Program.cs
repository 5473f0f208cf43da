// The example's entry point: `MethodCs [out-dir]` trains and evaluates contrast-cs at the smoke
// preset through the run template (config.json, checkpoints, result.json with its baselines);
// `MethodCs ssl <command> ...` is the `ssl` command line with contrast-cs registered beside the
// built-in recipes (`MethodCs ssl train contrast-cs --preset quick`, `MethodCs ssl config contrast-cs`).
using System;
using System.IO;
using Ssl.Experiments;
using Ssl.Host.Runtime;
using static Ssl.Experiments.Program;
using Preset = Ssl.Experiments.Recipe.Preset;
using Request = Ssl.Experiments.Recipe.Request;

namespace MethodCs;

public static class Example
{
    /// <summary>Registers contrast-cs (and its variant) for the command line, once per process.</summary>
    public static void Register()
    {
        if (!Registry.Contains(ContrastMethod.Name)) Registry.Register(ContrastMethod.Spec().Recipes);
    }

    public static int Main(string[] args)
    {
        Register();
        if (args.Length > 0 && args[0] == "ssl") return CommandLine.Run(args[1..]);
        var output = args.Length == 1 ? args[0] : Path.Combine(Path.GetTempPath(), "ssl-method-cs", Guid.NewGuid().ToString("N"));
        var env = DeviceSetup.Configure(DeviceRequest.Cpu, threads: 0, seed: 0L, deterministic: true);
        var request = Request.Create(ContrastMethod.Name, Preset.Smoke, folder: output);  // the rest: ssl train's defaults
        var result = ContrastMethod.Spec().Train(request, env);
        Console.WriteLine($"{result.Method}: linear probe {result.Eval.LinearProbeAcc:F4}, kNN {result.Eval.KnnAcc:F4}; "
                          + $"random init {result.Baselines.RandomInit.LinearProbeAcc:F4}, raw pixels {result.Baselines.RawPixels.LinearProbeAcc:F4} -> {output}");
        Console.WriteLine("method-cs-ok");
        return 0;
    }
}
