module Ssl.Tests.SamplingTests

open System
open Expecto
open FsCheck
open Ssl.Host.Data
open Ssl.Tests.Prop

let samplerTests =
    testList "batch sampler" [
        prop "an epoch without dropLast visits every example once" (fun (PositiveInt n) (PositiveInt b) (seed: int64) (NonNegativeInt epoch) ->
            let n, b = n % 500 + 1, b % 64 + 1
            let sampler = BatchSampler(int64 n, b, seed, dropLast = false)
            let seen = sampler.Batches(epoch) |> Seq.concat |> Seq.sort |> Seq.toArray
            seen = Array.init n int64 && Seq.length (sampler.Batches epoch) = int sampler.BatchesPerEpoch)

        prop "dropLast gives only full batches" (fun (PositiveInt n) (PositiveInt b) (seed: int64) ->
            let b = b % 32 + 1
            let n = n % 500 + b
            let batches = BatchSampler(int64 n, b, seed).Batches(0) |> Seq.toArray
            batches.Length = n / b && batches |> Array.forall (fun x -> x.Length = b))

        prop "the same seed and epoch give the same order; another epoch another" (fun (seed: int64) (NonNegativeInt epoch) ->
            let a, b = BatchSampler(1000L, 10, seed), BatchSampler(1000L, 10, seed)
            a.Order(epoch) = b.Order(epoch) && a.Order(epoch) <> a.Order(epoch + 1))

        test "the order is fixed across processes (a pinned value)" {
            // SplitMix64 + System.Random(seed) are both stable: a resumed run must see this order.
            Expect.sequenceEqual (BatchSampler(8L, 4, 0L).Order(0)) (BatchSampler(8L, 4, 0L).Order(0)) "repeatable"
            Expect.equal (Seeds.Derive(0L, 0L)) (Seeds.Derive(0L, 0L)) "derive is pure"
            // Recorded from this implementation: a change here silently changes every run's data order.
            Expect.equal (Seeds.Derive(1L, 2L)) 2066896222 "pinned value"
        }

        test "bad sizes are refused with the value found" {
            let e = Prop.throws<ArgumentException> (fun () -> BatchSampler(10L, 20, 0L) |> ignore)
            Expect.stringContains e.Message "expected at most 10" "batch larger than data"
        }
    ]

let splitterTests =
    testList "label splitter" [
        prop "N per class, disjoint from the pool, together everything" (fun (seed: int64) (PositiveInt perClass) ->
            let perClass = perClass % 5 + 1
            let labels = Array.init 200 (fun i -> int64 (i * 7 % 4))
            let split = LabelSplitter.Draw(labels, perClass, seed, 4)
            let counts = split.Labelled |> Array.countBy (fun i -> labels[int i]) |> Array.sort
            counts = Array.init 4 (fun c -> int64 c, perClass)
            && Set.intersect (set split.Labelled) (set split.Unlabelled) |> Set.isEmpty
            && Array.append split.Labelled split.Unlabelled |> Array.sort = Array.init 200 int64
            && split.Seed = seed && split.PerClass = perClass)

        prop "the same seed draws the same split" (fun (seed: int64) ->
            let labels = Array.init 100 (fun i -> int64 (i % 10))
            LabelSplitter.Draw(labels, 3, seed, 10).Labelled = LabelSplitter.Draw(labels, 3, seed, 10).Labelled)

        test "different seeds draw different splits" {
            let labels = Array.init 1000 (fun i -> int64 (i % 10))
            Expect.notEqual (LabelSplitter.Draw(labels, 10, 0L, 10).Labelled) (LabelSplitter.Draw(labels, 10, 1L, 10).Labelled) "seeds"
        }

        test "unlabelled examples (-1) always go to the pool" {
            let labels = [| 0L; 1L; -1L; 0L; 1L; -1L |]
            let split = LabelSplitter.Draw(labels, 1, 5L, 2)
            Expect.containsAll split.Unlabelled [ 2L; 5L ] "pool"
        }

        test "asking for more labels than a class has" {
            let e = Prop.throws<ArgumentException> (fun () -> LabelSplitter.Draw([| 0L; 0L; 1L |], 2, 0L, 2) |> ignore)
            Expect.stringContains e.Message "class 1 has 1 examples" "names the short class"
        }
    ]

[<Tests>]
let tests = testList "sampling" [ samplerTests; splitterTests ]
