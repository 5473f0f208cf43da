module Ssl.Experiments.Program

open System
open Argu
open Ssl.Host.Data
open Ssl.Host.Runtime
open Ssl.Experiments.Cli

/// Exit codes: 0 success, 1 a run failed (bad data, device unavailable), 2 a usage error.
let run (argv: string[]) =
    try
        let args = parser.ParseCommandLine(argv, raiseOnUsage = true)
        match args.GetSubCommand() with
        | Methods -> Commands.methods ()
        | Train a -> Commands.train a
        | Config a -> Commands.config a
        | Eval a -> Commands.eval a
        | Data a -> Commands.data a
        | Info a -> Commands.info a
        | Report a -> Commands.reportRuns a
        | Repro a -> Commands.repro a
        | Bench a -> Commands.bench a
        | Sweep a -> Commands.sweep a
        | Sweep_Task a -> Commands.sweepTask a
        | Version -> Commands.version ()
    with
    | :? ArguParseException as e when e.ErrorCode = ErrorCode.HelpText ->
        printfn "%s" e.Message
        0
    | :? ArguParseException as e ->
        eprintfn "%s" e.Message
        2
    | :? DataException as e ->
        eprintfn "error: %s" e.Message
        1
    | :? DeviceUnavailableException as e ->
        eprintfn "error: %s" e.Message
        1
    | :? Peer.PeerUnavailableException as e ->
        eprintfn "error: %s" e.Message
        1
    | :? Ssl.Host.Engine.NonFiniteLossException as e ->
        eprintfn "error: %s" e.Message
        1
    | :? ArgumentException as e ->
        let message = if isNull e.ParamName then e.Message else e.Message.Replace($" (Parameter '{e.ParamName}')", "")
        eprintfn "usage error: %s\n\n%s" message (parser.PrintUsage())
        2

[<EntryPoint>]
let main argv = run argv
