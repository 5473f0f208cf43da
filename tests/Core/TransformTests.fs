module Ssl.Tests.Core.TransformTests

open Expecto

[<Tests>]
let tests = testList "core.transforms" []
