module Ssl.Tests.Main

open Expecto

[<EntryPoint>]
let main argv =
    Ssl.Host.Native.TorchRuntime.EnsureLoaded()
    // Sequenced: torch's seed and thread count are process-wide, and tests set them.
    runTestsInAssemblyWithCLIArgs [ CLIArguments.Sequenced ] argv
