module Ssl.Experiments.Program

open System
open System.IO
open Argu
open Ssl.Host.Data
open Ssl.Host.Runtime
open Ssl.Experiments.Cli

/// The syntax of the sub-command `argv` names (its flags in one block), or the top level's usage when it names none.
let private usageOf (argv: string[]) =
    let sub (name: string) =
        match name with
        | "train" -> Some((parser.GetSubCommandParser <@ Train @>).PrintCommandLineSyntax())
        | "config" -> Some((parser.GetSubCommandParser <@ Config @>).PrintCommandLineSyntax())
        | "eval" -> Some((parser.GetSubCommandParser <@ Eval @>).PrintCommandLineSyntax())
        | "embed" -> Some((parser.GetSubCommandParser <@ Embed @>).PrintCommandLineSyntax())
        | "neighbours" -> Some((parser.GetSubCommandParser <@ Neighbours @>).PrintCommandLineSyntax())
        | "export" -> Some((parser.GetSubCommandParser <@ Export @>).PrintCommandLineSyntax())
        | "data" -> Some((parser.GetSubCommandParser <@ Data @>).PrintCommandLineSyntax())
        | "info" -> Some((parser.GetSubCommandParser <@ Info @>).PrintCommandLineSyntax())
        | "report" -> Some((parser.GetSubCommandParser <@ Report @>).PrintCommandLineSyntax())
        | "repro" -> Some((parser.GetSubCommandParser <@ Repro @>).PrintCommandLineSyntax())
        | "bench" -> Some((parser.GetSubCommandParser <@ Bench @>).PrintCommandLineSyntax())
        | "sweep" -> Some((parser.GetSubCommandParser <@ Sweep @>).PrintCommandLineSyntax())
        | "sweep-task" -> Some((parser.GetSubCommandParser <@ Sweep_Task @>).PrintCommandLineSyntax())
        | _ -> None
    match argv |> Array.tryHead |> Option.bind sub with
    | Some syntax -> $"usage: {syntax}\n(`ssl {argv[0]} --help` explains each flag)"
    | None -> parser.PrintUsage()

/// An exception no rule below names: one line on the terminal, the whole trace in a file for a bug report.
let private unexpected (e: exn) =
    let trace = Path.Combine(Path.GetTempPath(), $"ssl-error-{Environment.ProcessId}.txt")
    let kept =
        try
            File.WriteAllText(trace, e.ToString())
            $" (full trace in {trace})"
        with _ -> ""
    eprintfn "error: %s: %s%s" (e.GetType().Name) (TrainedRun.firstLine e.Message) kept
    1

/// Exit codes: 0 success, 1 a run failed (bad data, a file or folder, the device, a fault), 2 a
/// usage error. Every failure ends in one line naming the thing, what was expected and what was
/// found (docs/reliability.md); no exception reaches the terminal.
let run (argv: string[]) =
    try
        let args = parser.ParseCommandLine(argv, raiseOnUsage = true)
        if args.Contains Version then Commands.version ()
        else
        match args.TryGetSubCommand() with
        | Some Methods -> Commands.methods ()
        | Some(Train a) -> Commands.train a
        | Some(Config a) -> Commands.config a
        | Some(Eval a) -> Commands.eval a
        | Some(Embed a) -> Embed.embed a
        | Some(Neighbours a) -> Embed.neighbours a
        | Some(Export a) -> Export.export a
        | Some(Data a) -> Commands.data a
        | Some(Info a) -> Commands.info a
        | Some(Report a) -> Commands.reportRuns a
        | Some(Repro a) -> Commands.repro a
        | Some(Bench a) -> Commands.bench a
        | Some(Sweep a) -> Commands.sweep a
        | Some(Sweep_Task a) -> Commands.sweepTask a
        | Some Version -> Commands.version ()
        | None ->
            eprintfn "usage error: expected a command (train, eval, methods, ...; `ssl --help` lists them), found none\n\n%s" (parser.PrintUsage())
            2
    with
    | :? ArguParseException as e when e.ErrorCode = ErrorCode.HelpText ->
        printfn "%s" e.Message
        0
    | :? ArguParseException as e ->
        eprintfn "%s" e.Message
        2
    | :? ArgumentException as e ->
        let message = if isNull e.ParamName then e.Message else e.Message.Replace($" (Parameter '{e.ParamName}')", "")
        eprintfn "usage error: %s\n\n%s" (TrainedRun.firstLine message) (usageOf argv)
        2
    | :? DataException
    | :? Ssl.Host.Runs.RunFolderException
    | :? DeviceUnavailableException
    | :? Peer.PeerUnavailableException
    | :? Ssl.Host.Engine.NonFiniteLossException
    | :? Ssl.Host.Distributed.RanksException
    | :? NotSupportedException
    | :? InvalidDataException as e ->
        eprintfn "error: %s" (TrainedRun.firstLine e.Message)
        1
    | :? UnauthorizedAccessException
    | :? IOException as e ->
        eprintfn "error: %s" (TrainedRun.firstLine e.Message)
        1
    | :? Text.Json.JsonException as e ->
        eprintfn "error: expected JSON, found text that does not parse as it (%s)" (TrainedRun.firstLine e.Message)
        1
    | :? OutOfMemoryException as e ->
        eprintfn "error: out of memory (%s); lower the batch size, --image-size or --data-memory-mb" (TrainedRun.firstLine e.Message)
        1
    | e -> unexpected e

/// The command line as a method, for a program of its own that registers recipes first
/// (`Registry.Register`): `CommandLine.Run(args)` is `ssl args`, its exit code returned.
[<AbstractClass; Sealed>]
type CommandLine =
    static member Run(args: string[]) : int = run args

/// The process's exit: a run on several processes leaves its MPI world (MPI_Finalize) after success,
/// and ends every rank (MPI_Abort) after a failure, so that no rank waits on a lost one.
let private leave (code: int) =
    if code = 0 then Ssl.Host.Distributed.World.Leave() else Ssl.Host.Distributed.World.Abort code
    code

[<EntryPoint>]
let main argv = run argv |> leave
