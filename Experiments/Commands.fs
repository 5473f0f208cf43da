/// What each `ssl` command does, given its parsed arguments. Each returns the process exit code.
module Ssl.Experiments.Commands

open System
open System.Diagnostics
open System.IO
open System.Text.Json
open Argu
open Spectre.Console
open TorchSharp
open Ssl.Host.Data
open Ssl.Host.Native
open Ssl.Host.Runtime
open Ssl.Experiments.Cli

let private presetName = function Registry.Smoke -> "smoke" | Registry.Quick -> "quick" | Registry.Paper -> "paper"

let methods () =
    let table = Table().AddColumns("recipe", "paper", "presets")
    for name in Registry.contractNames do
        match Registry.tryFind name with
        | Some r -> table.AddRow(r.Name, Markup.Escape r.Paper, r.Presets |> List.map presetName |> String.concat ", ") |> ignore
        | None -> table.AddRow(name, "[grey]not implemented yet[/]", "-") |> ignore
    AnsiConsole.Write table
    AnsiConsole.MarkupLine $"{Registry.recipes.Length} of {Registry.contractNames.Length} recipes registered."
    0

let private parseSplit (text: string) =
    match text.ToLowerInvariant() with
    | "train" -> Split.Train
    | "test" -> Split.Test
    | "unlabelled" | "unlabeled" -> Split.Unlabelled
    | other -> invalidArg "--split" $"--split: expected train, test or unlabelled, found '{other}'"

/// Up to `perClass` images of every class, class by class (the first ones, for a stable picture).
let private samplesByClass (data: ImageDataset) perClass =
    let labels = data.Labels.data<int64>().ToArray()
    let picks =
        [| for c in 0L .. int64 data.ClassNames.Count - 1L do
               yield! labels |> Seq.indexed |> Seq.filter (fun (_, l) -> l = c) |> Seq.truncate perClass |> Seq.map (fst >> int64) |]
    if picks.Length = 0 then Array.init (min 100 (int data.Count)) int64 else picks

let data (args: ParseResults<DataArgs>) =
    let name = args.GetResult(DataArgs.Dataset, defaultValue = "fashion-mnist")
    let split = args.TryGetResult DataArgs.Split |> Option.map parseSplit |> Option.defaultValue Split.Train
    let env = DeviceSetup.Configure(DeviceRequest.Cpu, threads = args.GetResult(DataArgs.Threads, defaultValue = 0))
    let clock = Stopwatch.StartNew()
    use dataset = DataCatalog.Load(name, split, args.TryGetResult DataArgs.Data_Root |> Option.toObj)
    let loadSeconds = clock.Elapsed.TotalSeconds
    let struct (mean, std) = dataset.ChannelStatistics()
    let counts = dataset.ClassCounts()
    let fmt (xs: float[]) = xs |> Array.map (sprintf "%.4f") |> String.concat ", "

    let summary = Table().HideHeaders().AddColumns("", "")
    summary.AddRow("data set", $"{dataset.Name} ({split})") |> ignore
    summary.AddRow("images", $"{dataset.Count} x {dataset.Channels} x {dataset.Height} x {dataset.Width} (uint8)") |> ignore
    summary.AddRow("read in", $"%.3f{loadSeconds} s ({float dataset.Count / loadSeconds:N0} img/s, {env.Threads} threads)") |> ignore
    summary.AddRow("pixel mean", fmt mean) |> ignore
    summary.AddRow("pixel std", fmt std) |> ignore
    summary.AddRow("files", Markup.Escape(String.Join("\n", dataset.Sources))) |> ignore
    AnsiConsole.Write summary
    let classes = Table().AddColumns("class", "name", "images")
    counts |> Array.iteri (fun c n -> classes.AddRow(string c, Markup.Escape dataset.ClassNames[c], string n) |> ignore)
    if dataset.IsLabelled then AnsiConsole.Write classes

    match args.TryGetResult DataArgs.Grid with
    | Some png ->
        use picks = torch.tensor(samplesByClass dataset 10)
        use images = dataset.Images.index_select(0, picks)
        ImageGrid.SavePng(images, png, columns = 10, scale = (if dataset.Height <= 32L then 3 else 1))
        AnsiConsole.MarkupLine $"sample grid: [link]{Markup.Escape(Path.GetFullPath png)}[/]"
    | None -> ()

    match args.TryGetResult DataArgs.Json with
    | Some path ->
        let report =
            {| dataset = dataset.Name; split = string split; count = dataset.Count
               shape = [| dataset.Channels; dataset.Height; dataset.Width |]
               class_names = dataset.ClassNames; class_counts = counts
               pixel_mean = mean; pixel_std = std
               load_seconds = loadSeconds; threads = env.Threads; sources = dataset.Sources |}
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath path)) |> ignore
        File.WriteAllText(path, JsonSerializer.Serialize(report, JsonSerializerOptions(WriteIndented = true)))
    | None -> ()
    0

let info (args: ParseResults<InfoArgs>) =
    let env =
        DeviceSetup.Configure(
            DeviceSetup.Parse(args.GetResult(InfoArgs.Device, defaultValue = "cpu")),
            threads = args.GetResult(InfoArgs.Threads, defaultValue = 0),
            seed = args.GetResult(InfoArgs.Seed, defaultValue = 0L),
            deterministic = args.Contains InfoArgs.Deterministic)
    for note in env.Notes do AnsiConsole.MarkupLine $"[yellow]{Markup.Escape note}[/]"
    let struct (ts, lt) = TorchRuntime.Versions()
    let table = Table().HideHeaders().AddColumns("", "")
    table.AddRow("device", env.DeviceName) |> ignore
    table.AddRow("threads", string env.Threads) |> ignore
    table.AddRow("seed", string env.Seed) |> ignore
    table.AddRow("deterministic", string env.Deterministic) |> ignore
    table.AddRow("TorchSharp", ts) |> ignore
    table.AddRow("libtorch", lt) |> ignore
    table.AddRow("natives preloaded from", TorchRuntime.PreloadedFrom |> Option.ofObj |> Option.defaultValue "(found by the .NET host)") |> ignore
    AnsiConsole.Write table
    0

let version () =
    TorchRuntime.EnsureLoaded()
    let struct (ts, lt) = TorchRuntime.Versions()
    let ssl = typeof<Registry.Recipe>.Assembly.GetName().Version
    printfn "ssl %O, TorchSharp %s, libtorch %s" ssl ts lt
    0
