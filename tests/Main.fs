module Ssl.Tests.Main

open Expecto

[<EntryPoint>]
let main argv =
    Ssl.Host.Native.TorchRuntime.EnsureLoaded()
    match argv with
    | [| "--checkpoint-writer"; dir |] ->
        // The child process of the kill -9 test (EngineTests): never returns.
        EngineTests.checkpointWriterLoop dir
        0
    | [| "--rank-case"; case; dir |] ->
        // One rank of a DistributedTests case, under mpirun.
        DistributedTests.rankCase case dir
        0
    | _ ->
        // Sequenced: torch's seed and thread count are process-wide, and tests set them.
        runTestsInAssemblyWithCLIArgs [ CLIArguments.Sequenced ] argv
