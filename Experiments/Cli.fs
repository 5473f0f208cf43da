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
    | [<MainCommand; ExactlyOnce>] Method of method: string
    | Preset of preset: string
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
            | Method _ -> "recipe to train (see `ssl methods`)."
            | Preset _ -> "smoke (under a minute), quick (real numbers on 2 cores, default) or paper (the paper's schedule)."
            | Dataset _ -> "data set: fashion-mnist (default), mnist, cifar10, cifar100, stl10, or an image-folder path."
            | Data_Root _ -> "folder holding the data set's files (default: $SSL_DATA, then /usr/share/datasets)."
            | Labels _ -> "labels per class (few-label and semi-supervised runs), drawn with the seed."
            | Seed _ -> "seed for torch and .NET randomness, data order and label splits (default 0)."
            | Device _ -> "cpu (default), cuda or auto."
            | Threads _ -> "torch threads (default: all cores)."
            | Deterministic -> "fixed threads, seeded generators, no TF32: CPU runs repeat exactly."
            | Out _ -> "run folder (default runs/<method>-<preset>)."
            | Resume -> "continue from the run folder's last checkpoint."

type EvalArgs =
    | [<MainCommand; ExactlyOnce>] Run_Dir of dir: string
    | Protocol of protocol: string
    | Labels of perClass: int
    | Device of string
    | Threads of int

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Run_Dir _ -> "a run folder written by `ssl train` (it holds config.json and export/encoder.dat)."
            | Protocol _ -> "linear (default), knn or finetune."
            | Labels _ -> "labels per class for the protocol's training (default: all), drawn with the run's seed."
            | Device _ -> "cpu (default), cuda or auto."
            | Threads _ -> "torch threads (default: all cores)."

[<HelpFlags("--help", "-h")>]
type SslArgs =
    | [<SubCommand; CliPrefix(CliPrefix.None)>] Methods
    | [<CliPrefix(CliPrefix.None)>] Train of ParseResults<TrainArgs>
    | [<CliPrefix(CliPrefix.None)>] Eval of ParseResults<EvalArgs>
    | [<CliPrefix(CliPrefix.None)>] Data of ParseResults<DataArgs>
    | [<CliPrefix(CliPrefix.None)>] Info of ParseResults<InfoArgs>
    | Version

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Methods -> "list the registered recipes and their presets."
            | Train _ -> "train a recipe, evaluate it beside its baselines, write the run folder."
            | Eval _ -> "evaluate a trained run's encoder again with one protocol (linear, knn, finetune)."
            | Data _ -> "read a data set, print its statistics, optionally save a PNG grid of samples."
            | Info _ -> "set up the device and print it with threads, seed and library versions."
            | Version -> "print the versions of Ssl, TorchSharp and libtorch."

let parser = ArgumentParser.Create<SslArgs>(programName = "ssl")
