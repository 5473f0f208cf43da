/// A method written in C# (Experiments/examples/MethodCs): its config, step and spec train and
/// evaluate through the run template at the smoke preset, and registered it is a recipe of the
/// command line. Configs read and write a C# record config as they do an F# one.
module Ssl.Tests.CSharpMethodTests

open System.IO
open System.Text.Json
open Expecto
open Ssl.Experiments
open MethodCs

[<Tests>]
let tests =
    testSequenced <| testList "csharp method" [
        test "a C# record config: JSON both ways, --set with its ranges, its fields" {
            let config = ContrastMethod.Config Recipe.Smoke
            let json = Configs.toJson config
            Expect.equal (json["Encoder"].GetValue<string>()) "smallconvnet-8" "a Backbone property"
            Expect.equal (Configs.ofJson<ContrastConfig> "test" json) config "read back"
            let changed = Configs.applyOverrides [ "Temperature=0.2"; "Encoder=smallconvnet-4" ] config
            Expect.equal (Configs.ofJson<ContrastConfig> "test" (Configs.toJson changed)) changed "a changed config read back"
            Expect.equal changed.Temperature 0.2 "--set a number"
            Expect.equal (string changed.Encoder) "smallconvnet-4" "--set a backbone"
            match Expect.throwsC (fun () -> Configs.applyOverrides [ "Temperature=0" ] config |> ignore) id with
            | :? System.ArgumentException as e -> Expect.stringContains e.Message "Temperature" "a value out of range names the field"
            | other -> failtestf "expected an ArgumentException, found %s" (other.GetType().Name)
            Expect.equal (Configs.fields typeof<ContrastConfig> |> List.map fst)
                [ "Encoder"; "Epochs"; "BatchSize"; "LearningRate"; "WeightDecay"; "Temperature"; "ProjectionDim"; "MaxShift"; "Noise" ] "fields in declaration order"
        }
        test "the C# example trains and evaluates its own method at the smoke preset; registered, the command line finds it" {
            let dir = Path.Combine(Fixtures.tempDir "method-cs", "run")
            Expect.equal (Example.Main [| dir |]) 0 "exit code"
            use doc = Fixtures.expectContractResult dir ContrastMethod.Name
            let supervisedOnly = doc.RootElement.GetProperty("baselines").GetProperty("supervised_only").GetProperty("test_acc").GetDouble()
            Expect.isTrue (supervisedOnly >= 0.0 && supervisedOnly <= 1.0) "supervised-only baseline"
            use config = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))
            Expect.equal (config.RootElement.GetProperty("config").GetProperty("Temperature").GetDouble()) 0.5 "config.json holds the C# config"
            for name in [ ContrastMethod.Name; ContrastMethod.Name + "-tau02" ] do
                Expect.isTrue (Registry.Contains name) $"{name} registered"
            Expect.equal (Program.run [| "config"; ContrastMethod.Name + "-tau02"; "--preset"; "smoke" |]) 0 "ssl config finds the variant"
            Expect.equal (Program.run [| "train"; ContrastMethod.Name; "--preset"; "smoke"; "--out"; dir |]) 1 "ssl train finds it (and refuses the finished run folder)"
            Expect.throwsT<System.ArgumentException> (fun () -> Registry.Register(ContrastMethod.Spec().Recipes)) "a name registered twice"
        }
    ]
