/// The checks themselves must be able to fail.
module Ssl.Tests.CheckTests

open Expecto
open TorchSharp

let private fails (f: unit -> unit) =
    let failed = try f (); false with :? AssertException -> true
    Expect.isTrue failed "the check should have failed"

[<Tests>]
let tests =
    testList "checks" [
        test "gradcheck accepts a correct gradient" {
            use x = torch.tensor([| 0.3; -1.2; 2.0 |], dtype = torch.float64)
            Check.gradcheck "x^3" 1e-6 1e-6 (fun t -> t.pow(torch.tensor(3.0, dtype = torch.float64)).sum()) x
        }
        test "gradcheck rejects a wrong gradient (a detached factor)" {
            use x = torch.tensor([| 0.3; -1.2; 2.0 |], dtype = torch.float64)
            fails (fun () -> Check.gradcheck "x * detach(x)" 1e-6 1e-6 (fun t -> (t * t.detach()).sum()) x)
        }
        test "noLeak catches a tensor left alive" {
            let mutable kept = null
            fails (fun () -> Check.noLeak "leaky" (fun () -> kept <- torch.ones(3L)))
            kept.Dispose()
            Check.noLeak "clean" (fun () -> use t = torch.ones(3L) in ())
        }
        test "close reports the worst entry" {
            use a = torch.tensor([| 1.0; 2.0 |])
            use b = torch.tensor([| 1.0; 2.5 |])
            fails (fun () -> Check.close 1e-3 1e-3 "a vs b" a b)
            Check.close 1e-3 1e-3 "a vs a" a a
        }
    ]
