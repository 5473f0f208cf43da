/// The `ssl` command line (Argu). Unknown commands, flags or values are usage errors: exit code 2.
module Ssl.Experiments.Cli

open Argu

type DataArgs =
    | [<AltCommandLine("-d")>] Dataset of name: string
    | Split of split: string
    | Data_Root of dir: string
    | Grid of png: string
    | Json of path: string
    | Threads of int

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Dataset _ -> "data set: fashion-mnist (default), mnist, cifar10, cifar100, stl10, or an image-folder path."
            | Split _ -> "train (default), test, or unlabelled (stl10 only)."
            | Data_Root _ -> "folder holding the data set's files (default: $SSL_DATA, then /usr/share/datasets)."
            | Grid _ -> "write a PNG grid of samples, one row per class, to this path."
            | Json _ -> "write the statistics as JSON to this path."
            | Threads _ -> "torch threads (default: all cores)."

type InfoArgs =
    | Device of string
    | Threads of int
    | Seed of int64
    | Deterministic

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Device _ -> "cpu (default), cuda or auto (CUDA where available, else CPU, and says so)."
            | Threads _ -> "torch threads (default: all cores)."
            | Seed _ -> "seed for torch and .NET randomness (default 0)."
            | Deterministic -> "fixed threads, seeded generators, no TF32: CPU runs repeat exactly."

type TrainArgs =
    | [<MainCommand; Unique>] Method of method: string
    | Preset of preset: string
    | [<AltCommandLine("-s")>] Set of assignment: string
    | Config of file: string
    | [<AltCommandLine("-d")>] Dataset of name: string
    | Data_Root of dir: string
    | Labels of perClass: int
    | Seed of int64
    | Device of string
    | Threads of int
    | Deterministic
    | Out of dir: string
    | Resume

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Method _ -> "recipe to train (see `ssl methods`); may be left out with --config of a run's config.json."
            | Preset _ -> "smoke (under a minute), quick (real numbers on 2 cores, default) or paper (the paper's schedule)."
            | Set _ -> "override a config field, Field=value (repeatable; Nested.Field=value; tuples a,b; see `ssl config <method>`)."
            | Config _ -> "start from this JSON config: a run's config.json (replays it) or a config object as `ssl config` prints."
            | Dataset _ -> "data set: fashion-mnist (default), mnist, cifar10, cifar100, stl10, or an image-folder path."
            | Data_Root _ -> "folder holding the data set's files (default: $SSL_DATA, then /usr/share/datasets)."
            | Labels _ -> "labels per class (few-label and semi-supervised runs), drawn with the seed."
            | Seed _ -> "seed for torch and .NET randomness, data order and label splits (default 0)."
            | Device _ -> "cpu (default), cuda or auto."
            | Threads _ -> "torch threads (default: all cores)."
            | Deterministic -> "fixed threads, seeded generators, no TF32: CPU runs repeat exactly."
            | Out _ -> "run folder (default runs/<method>-<preset>)."
            | Resume -> "continue from the run folder's last checkpoint."

type ConfigArgs =
    | [<MainCommand; ExactlyOnce>] Method of method: string
    | Preset of preset: string
    | [<AltCommandLine("-s")>] Set of assignment: string
    | Fields

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Method _ -> "recipe whose config to print (see `ssl methods`)."
            | Preset _ -> "smoke, quick (default) or paper."
            | Set _ -> "override a config field, Field=value (repeatable)."
            | Fields -> "list the settable fields and their types instead."

type EvalArgs =
    | [<MainCommand; ExactlyOnce>] Run_Dir of dir: string
    | Protocol of protocol: string
    | Labels of perClass: int
    | Device of string
    | Threads of int
    | Layer of name: string
    | Pool of size: int
    | Random_Init

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Layer _ -> "probe this inner layer of the encoder instead of its output (linear or knn; e.g. features.block2b_relu of SmallConvNet)."
            | Pool _ -> "with --layer: average-pool the layer's maps to size x size before flattening (default 2)."
            | Random_Init -> "evaluate the same architecture randomly initialised (seeded by the run's seed) instead of the trained weights: the baseline."
            | Run_Dir _ -> "a run folder written by `ssl train` (it holds config.json and export/encoder.dat)."
            | Protocol _ -> "linear (default), knn or finetune."
            | Labels _ -> "labels per class for the protocol's training (default: all), drawn with the run's seed."
            | Device _ -> "cpu (default), cuda or auto."
            | Threads _ -> "torch threads (default: all cores)."

type ReportArgs =
    | [<MainCommand; ExactlyOnce>] Runs_Dir of dir: string
    | Out of markdown: string
    | Figures of dir: string

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Runs_Dir _ -> "a folder of run folders (each with a result.json), e.g. runs/repro."
            | Out _ -> "the Markdown file to write (default RESULTS.md)."
            | Figures _ -> "folder for the report's PNG figures (default docs/results beside --out)."

type ReproArgs =
    | Only of methods: string
    | Runs_Dir of dir: string
    | Preset of preset: string
    | Out of markdown: string
    | Figures of dir: string
    | Colour_Dataset of dataset: string

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Colour_Dataset _ -> "colour data set (cifar10, cifar100, stl10 or an image-folder path) for the colour-only recipes; without it they are reported as not run."
            | Only _ -> "comma-separated recipes to run (default: every registered one)."
            | Runs_Dir _ -> "where the run folders go (default runs/repro)."
            | Preset _ -> "preset of every run (default quick)."
            | Out _ -> "the report to write (default RESULTS.md)."
            | Figures _ -> "folder for the report's figures (default docs/results beside --out)."

type BenchArgs =
    | Only of methods: string
    | Method of name: string
    | Preset of preset: string
    | Warmup of steps: int
    | Steps of steps: int
    | Threads of int
    | Out of dir: string
    | Readme of markdown: string
    | Colour_Dataset of dataset: string

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Colour_Dataset _ -> "colour data set for the colour-only recipes (default: generated colour images, throughput only)."
            | Only _ -> "comma-separated recipes to benchmark (default: every registered one)."
            | Method _ -> "benchmark this one recipe in this process (what each child process of `ssl bench` does)."
            | Preset _ -> "preset whose training step is timed (default quick)."
            | Warmup _ -> "untimed steps first (default 5)."
            | Steps _ -> "timed steps (default 30)."
            | Threads _ -> "torch threads (default: all cores)."
            | Out _ -> "folder for bench.json and one JSON per method (default runs/bench)."
            | Readme _ -> "also write the table between the bench markers of this Markdown file."

[<HelpFlags("--help", "-h")>]
type SslArgs =
    | [<SubCommand; CliPrefix(CliPrefix.None)>] Methods
    | [<CliPrefix(CliPrefix.None)>] Train of ParseResults<TrainArgs>
    | [<CliPrefix(CliPrefix.None)>] Config of ParseResults<ConfigArgs>
    | [<CliPrefix(CliPrefix.None)>] Eval of ParseResults<EvalArgs>
    | [<CliPrefix(CliPrefix.None)>] Data of ParseResults<DataArgs>
    | [<CliPrefix(CliPrefix.None)>] Info of ParseResults<InfoArgs>
    | [<CliPrefix(CliPrefix.None)>] Report of ParseResults<ReportArgs>
    | [<CliPrefix(CliPrefix.None)>] Repro of ParseResults<ReproArgs>
    | [<CliPrefix(CliPrefix.None)>] Bench of ParseResults<BenchArgs>
    | Version

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Methods -> "list the registered recipes and their presets."
            | Train _ -> "train a recipe, evaluate it beside its baselines, write the run folder."
            | Config _ -> "print a recipe's resolved config as JSON (what --config accepts back)."
            | Eval _ -> "evaluate a trained run's encoder again with one protocol (linear, knn, finetune)."
            | Data _ -> "read a data set, print its statistics, optionally save a PNG grid of samples."
            | Info _ -> "set up the device and print it with threads, seed and library versions."
            | Report _ -> "write RESULTS.md (tables, figures, machine, versions) from a folder of run folders."
            | Repro _ -> "train every registered recipe's preset with its baselines (skipping runs done for this commit), then report."
            | Bench _ -> "time each recipe's training step: img/s, encoder GFLOP/s against a measured matmul peak, peak RSS."
            | Version -> "print the versions of Ssl, TorchSharp and libtorch."

let parser = ArgumentParser.Create<SslArgs>(programName = "ssl")
