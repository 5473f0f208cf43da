/// Mechanisms of recipes that their smoke runs cannot show: MoCo's shuffled batch norm, the
/// exemplar recipes' choice of triplet loss.
module Ssl.Tests.RecipeTests

open Expecto
open TorchSharp
open Ssl.Experiments.Recipes

let private one = Ssl.Host.Distributed.SingleProcess.Instance :> Ssl.Host.Distributed.ICollectives

let private batchNormNet () =
    torch.manual_seed(3L) |> ignore
    let net = torch.nn.Sequential(torch.nn.Linear(5L, 4L), torch.nn.BatchNorm1d(4L))
    net.train()
    net

[<Tests>]
let tests =
    testList "recipes" [
        test "NCE: Z is the first step's estimate, then the moving average until the freeze step, then fixed" {
            let config = { Nce.config Ssl.Experiments.Recipe.Quick with NormaliserMomentum = 0.9; NormaliserFreezeStep = 10L }
            let mutable calls = 0
            let estimate value () = calls <- calls + 1; value
            Expect.equal (Nce.nextNormaliser config 0L 0.0 (estimate 5.0)) 5.0 "first step: the estimate"
            Expect.floatClose Accuracy.high (Nce.nextNormaliser config 9L 5.0 (estimate 15.0)) 6.0 "before the freeze: 0.9·5 + 0.1·15"
            let before = calls
            Expect.equal (Nce.nextNormaliser config 10L 6.0 (estimate 100.0)) 6.0 "from the freeze step on: unchanged"
            Expect.equal calls before "no estimate is computed once Z is fixed"
            let tracking = { config with NormaliserFreezeStep = 0L }
            Expect.floatClose Accuracy.high (Nce.nextNormaliser tracking 1000L 5.0 (estimate 15.0)) 6.0 "freeze step 0: tracks throughout"
            let paper = Nce.config Ssl.Experiments.Recipe.Paper
            Expect.equal (Nce.nextNormaliser paper 1L 5.0 (estimate 15.0)) 5.0 "the paper's Z: fixed after the first step"
        }
        test "MoCo: shuffled keys come back in the order of the batch (row i is image i's key)" {
            use linear = torch.nn.Linear(5L, 3L)
            use x = torch.randn(16L, 5L)
            use g = new torch.Generator(7UL)
            use _ = torch.no_grad ()
            use expected = linear.forward x
            use keys = MoCo.shuffledKeys one true 4 g linear x
            Check.close 1e-6 1e-6 "keys" keys expected
        }
        test "MoCo: without the shuffle each key group holds the query group's images, so batch statistics match; with it they do not" {
            use net = batchNormNet ()
            use x = torch.randn(32L, 5L)
            use _ = torch.no_grad ()
            use queries = Ssl.Experiments.Views.perGroup one 4 net.forward x
            use g = new torch.Generator(11UL)
            use plain = MoCo.shuffledKeys one false 4 g net x
            use shuffled = MoCo.shuffledKeys one true 4 g net x
            Check.close 1e-6 1e-6 "no-shuffle keys = per-group queries" plain queries
            let gap = (shuffled - queries).abs().max().item<float32>()
            Expect.isGreaterThan gap 1e-3f "shuffled keys are normalised with other images' statistics"
        }
        test "MoCo: perGroup normalises each group with its own statistics (each group has zero mean after BN)" {
            use net = batchNormNet ()
            use x = torch.randn(24L, 5L) * 3.0 + 2.0
            use _ = torch.no_grad ()
            use y = Ssl.Experiments.Views.perGroup one 3 net.forward x
            for group in y.chunk(3L, 0L) do
                let meanAbs = group.mean([| 0L |]).abs().max().item<float32>()
                Expect.isLessThan meanAbs 1e-4f "per-group mean of the BN output"
        }
        test "batch-norm groups at several ranks: each rank runs Groups / ranks, and Groups must be a multiple of the ranks" {
            let ranks n =
                { new Ssl.Host.Distributed.ICollectives with
                    member _.Rank = 0
                    member _.Size = n
                    member _.Backend = "test"
                    member _.AllReduceSum _ = ()
                    member _.AllGather t = t.clone()
                    member _.Broadcast(_, _) = ()
                    member _.Barrier() = ()
                    member _.Dispose() = () }
            Expect.equal (Ssl.Experiments.Views.rankGroups (ranks 2) 4) 2 "4 groups over 2 ranks"
            Expect.equal (Ssl.Experiments.Views.rankGroups (ranks 4) 4) 1 "4 groups over 4 ranks"
            let e = Expect.throwsC (fun () -> Ssl.Experiments.Views.rankGroups (ranks 2) 3 |> ignore) id
            Expect.stringContains e.Message "Groups: expected a multiple of the 2 ranks" "names the field, the expectation and the value"
            Expect.stringContains e.Message "found 3" "names the value"
        }
        test "InfoNCE: shuffled batch-norm groups keep the rows in order and pass gradients back to every row" {
            use linear = torch.nn.Linear(5L, 3L)
            use x = torch.randn(16L, 5L, requires_grad = true)
            use g = new torch.Generator(5UL)
            use y = Ssl.Experiments.Views.shuffledPerGroup one 4 1 g linear.forward x
            use expected = linear.forward x
            Check.close 1e-6 1e-6 "rows" (y.detach()) (expected.detach())
            y.sum().backward()
            let rowsWithGradient = x.grad.abs().sum(1L).gt(0.0f.ToScalar()).sum().item<int64>()
            Expect.equal rowsWithGradient 16L "every row receives a gradient"
        }
        test "MoCo v2 is MoCo v1's preset with the MLP head and tau 0.2, nothing else" {
            for preset in [ Ssl.Experiments.Recipe.Smoke; Ssl.Experiments.Recipe.Quick; Ssl.Experiments.Recipe.Paper ] do
                let v1 = MoCo.config preset
                Expect.equal (MoCo.v2 v1) { v1 with MlpHead = true; Temperature = 0.2 } $"{preset}"
                Expect.isFalse v1.MlpHead "v1 projects with one fc"
            let registered = (Ssl.Experiments.Registry.tryFind "moco-v2").Value
            Expect.equal ((registered.Resolve Ssl.Experiments.Recipe.Quick None []).ToJsonString())
                ((Ssl.Experiments.Configs.toJson (MoCo.v2 (MoCo.config Ssl.Experiments.Recipe.Quick))).ToJsonString()) "moco-v2 registered as that variant"
        }
        test "MoCo: a batch that does not split into the groups is refused with a message" {
            use net = batchNormNet ()
            use x = torch.randn(10L, 5L)
            use g = new torch.Generator(1UL)
            Expect.throws (fun () -> MoCo.shuffledKeys one true 4 g net x |> ignore) "10 images in 4 groups"
        }
        test "Triplet.ofForm computes the loss its form names; --set refuses an unknown form, listing the forms" {
            torch.manual_seed(5L) |> ignore
            use embeddings = torch.nn.functional.normalize(torch.randn(12L, 6L), dim = 1L)
            use sources = torch.arange(4L, dtype = torch.ScalarType.Int64).repeat(3L)
            use semi = Ssl.Core.Losses.Triplet.ofForm Ssl.Core.Losses.Triplet.SemiHard 0.5 embeddings sources
            use semiCore = Ssl.Core.Losses.Triplet.semiHard 0.5 embeddings sources
            use hard = Ssl.Core.Losses.Triplet.ofForm Ssl.Core.Losses.Triplet.BatchHard 0.5 embeddings sources
            use hardCore = Ssl.Core.Losses.Triplet.batchHardSoftMargin embeddings sources
            Check.close 0.0 0.0 "semi-hard" semi semiCore
            Check.close 0.0 0.0 "batch-hard" hard hardCore
            Expect.isGreaterThan (abs (semi.item<float32>() - hard.item<float32>())) 1e-4f "the two forms differ on this batch"
            let error = Expect.throwsC (fun () -> Ssl.Experiments.Configs.applyOverrides [ "Triplet=hardest" ] (Exemplar.config Ssl.Experiments.Recipe.Quick) |> ignore) id
            Expect.stringContains error.Message "'hardest'" "names the unknown form"
            Expect.stringContains error.Message "BatchHard|SemiHard" "and the forms"
        }
        test "S4L-Exemplar: quick uses the semi-hard loss (batch-hard collapsed there), paper keeps S4L's batch-hard" {
            Expect.equal (S4LExemplar.config Ssl.Experiments.Recipe.Quick).Triplet Ssl.Core.Losses.Triplet.SemiHard "quick"
            Expect.equal (S4LExemplar.config Ssl.Experiments.Recipe.Paper).Triplet Ssl.Core.Losses.Triplet.BatchHard "paper"
        }
        test "MixMatch: only the mixed training pass moves batch-norm statistics, not the guessing pass; momentum 0.001" {
            let config = MixMatch.config Ssl.Experiments.Recipe.Quick
            Expect.equal config.BatchNormMomentum 0.001 "the authors' decay 0.999"
            torch.manual_seed(5L) |> ignore
            use encoder = Ssl.Experiments.Backbone.instantiate Ssl.Core.Models.SafeConv.ChannelsLast (Some config.BatchNormMomentum) 1L (Ssl.Experiments.Backbone.SmallConvNet 16L)
            use head = new Ssl.Core.Models.LinearHead(encoder.FeatureDim, 10L)
            encoder.train ()
            let bns = Ssl.Core.Models.BatchNorms.layers [ encoder :> torch.nn.Module ]
            Expect.equal (bns |> List.map (fun bn -> bn.momentum.Value) |> List.distinct) [ 0.001 ] "every batch norm"
            let counts () = bns |> List.map (fun bn -> bn.num_batches_tracked.item<int64>())
            let before = counts ()
            let mutable passes = 0
            let classify (x: torch.Tensor) = passes <- passes + 1; head.forward(encoder.forward x)
            use g = new torch.Generator(9UL)
            use labelled = torch.randn(4L, 1L, 28L, 28L)
            use targets = torch.eye(10L).narrow(0L, 0L, 4L)
            let unlabelled = [ torch.randn(4L, 1L, 28L, 28L); torch.randn(4L, 1L, 28L, 28L) ]
            let t = MixMatch.terms config g 0L [ encoder :> torch.nn.Module; head ] None classify labelled targets unlabelled
            Expect.equal passes 2 "one guessing pass, one mixed pass"
            Expect.equal (counts ()) (before |> List.map ((+) 1L)) "each batch norm counted one pass: the mixed one"
            Expect.sequenceEqual t.Guesses.shape [| 4L; 10L |] "guesses"
            let shares = MixMatch.guessShares t.Guesses
            Expect.equal (List.map fst shares) [ for k in 0 .. 9 -> $"guess_share_{k}" ] "one share per class"
            Expect.floatClose Accuracy.medium (List.sumBy snd shares) 1.0 "shares sum to 1"
            for u in unlabelled do u.Dispose()
        }
    ]
