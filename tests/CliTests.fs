module Ssl.Tests.CliTests

open Expecto
open TorchSharp
open Ssl.Experiments

[<Tests>]
let tests =
    testList "cli" [
        test "--help answers with exit code 0" { Expect.equal (Program.run [| "--help" |]) 0 "exit code" }
        test "methods answers" { Expect.equal (Program.run [| "methods" |]) 0 "exit code" }
        test "an unknown flag exits 2" { Expect.equal (Program.run [| "--no-such-flag" |]) 2 "exit code" }
        test "an unknown sub-command flag exits 2" { Expect.equal (Program.run [| "data"; "--bogus" |]) 2 "exit code" }
        test "an unknown split value exits 2" { Expect.equal (Program.run [| "data"; "--split"; "validation" |]) 2 "exit code" }
        test "an unknown data set exits 2" { Expect.equal (Program.run [| "data"; "--dataset"; "imagenet" |]) 2 "exit code" }
        test "cuda without CUDA exits 1 with a message" {
            if not (torch.cuda.is_available ()) then
                Expect.equal (Program.run [| "info"; "--device"; "cuda" |]) 1 "exit code"
        }
        test "info on cpu answers" { Expect.equal (Program.run [| "info"; "--device"; "cpu"; "--seed"; "1" |]) 0 "exit code" }
        test "every registered recipe is a contract name" {
            for r in Registry.recipes do Expect.contains Registry.contractNames r.Name "contract name"
        }
    ]
