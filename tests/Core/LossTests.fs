module Ssl.Tests.Core.LossTests

open Expecto

[<Tests>]
let tests = testList "core.losss" []
