/// The one property wrapper every test uses: shared FsCheck configuration (test count, a replayable
/// seed printed on failure) so properties stay comparable and fast on a 2-core machine.
module Ssl.Tests.Prop

open Expecto

let config = { FsCheckConfig.defaultConfig with maxTest = 100; endSize = 100 }

/// A property test with the shared configuration.
let inline prop name body = testPropertyWithConfig config name body

/// A property test with fewer cases, for properties that run tensor code.
let inline propSmall name body = testPropertyWithConfig { config with maxTest = 25 } name body

/// Runs `f`, expects it to throw 'E and returns the exception so its message can be checked.
let throws<'E when 'E :> exn> (f: unit -> unit) : 'E =
    let caught =
        try
            f ()
            None
        with
        | :? 'E as e -> Some e
        | e -> failtestf "expected %s, got %s: %s" typeof<'E>.Name (e.GetType().Name) e.Message
    match caught with
    | Some e -> e
    | None -> failtestf "expected %s, nothing was thrown" typeof<'E>.Name
