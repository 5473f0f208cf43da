module Ssl.Tests.Core.ModelTests

open Expecto

[<Tests>]
let tests = testList "core.models" []
