module Ssl.Tests.EvalTests

open System
open System.IO
open System.Text.Json
open Expecto
open TorchSharp
open Ssl.Host.Eval
open Ssl.Host.Runs

/// The kNN rule written out slowly: cosine similarities, the k best, exp(s / T) votes.
let private knnOracle (train: float[][]) (labels: int64[]) (test: float[][]) classes k t =
    let norm (v: float[]) = let n = sqrt (Array.sumBy (fun x -> x * x) v) in v |> Array.map (fun x -> x / n)
    let train = train |> Array.map norm
    [| for q in test |> Array.map norm do
         let sims = train |> Array.mapi (fun i v -> Array.fold2 (fun acc a b -> acc + a * b) 0.0 q v, labels[i])
         let votes = Array.zeroCreate classes
         for s, l in sims |> Array.sortByDescending fst |> Array.truncate k do
             votes[int l] <- votes[int l] + exp (s / t)
         int64 (Array.findIndex ((=) (Array.max votes)) votes) |]

let private rows (t: torch.Tensor) =
    let d = int t.shape[1]
    t.to_type(torch.ScalarType.Float64).data<float>().ToArray() |> Array.chunkBySize d

let knnTests =
    testList "knn" [
        test "predictions match the slow oracle" {
            use gen = new torch.Generator(3UL)
            use train = torch.randn([| 60L; 5L |], generator = gen)
            use labels = torch.randint(0L, 4L, [| 60L |], generator = gen)
            use test = torch.randn([| 25L; 5L |], generator = gen)
            use predicted = Knn.Predict(train, labels, test, 4, k = 7, temperature = 0.1, chunk = 10)
            let expected = knnOracle (rows train) (labels.data<int64>().ToArray()) (rows test) 4 7 0.1
            Expect.sequenceEqual (predicted.data<int64>().ToArray()) expected "oracle"
        }
        test "k larger than the training set uses all of it, and leaves no tensor behind" {
            use train = torch.eye(3L)
            use labels = torch.tensor([| 0L; 1L; 2L |])
            Check.noLeak "knn" (fun () ->
                let acc = Knn.Accuracy(train, labels, train, labels, 3, k = 200)
                Expect.equal acc 1.0 "each point is its own nearest neighbour")
        }
        test "mismatched dimensions are refused" {
            use a = torch.zeros(4L, 3L)
            use b = torch.zeros(2L, 5L)
            use l = torch.zeros([| 4L |], dtype = torch.int64)
            let e = Prop.throws<ArgumentException> (fun () -> Knn.Predict(a, l, b, 2).Dispose())
            Expect.stringContains e.Message "expected dimension 3" "message"
        }
    ]

let probeTests =
    testList "linear probe" [
        test "separable classes are learned; the weight decay comes from the grid" {
            use gen = new torch.Generator(5UL)
            let make n =
                let y = torch.randint(0L, 3L, [| n |], generator = gen)
                let centres = torch.tensor([| 4.0f; 0.0f; 0.0f; 4.0f; -4.0f; -4.0f |]).reshape(3L, 2L)
                let x = centres.index_select(0L, y) + torch.randn([| n; 2L |], generator = gen) * 0.5f
                x, y
            let xtr, ytr = make 300L
            let xte, yte = make 200L
            let result = LinearProbe.Evaluate(xtr, ytr, xte, yte, 3)
            Expect.isGreaterThan result.TestAccuracy 0.97 "accuracy"
            Expect.contains LinearProbe.WeightDecayGrid result.WeightDecay "grid value"
        }
        test "the fit reaches the optimum of a tiny problem (gradient ~ 0) without leaking" {
            use x = torch.tensor([| 1.0f; 0.0f; 0.0f; 1.0f; -1.0f; 0.5f; 0.3f; -0.7f |]).reshape(4L, 2L)
            use y = torch.tensor([| 0L; 1L; 0L; 1L |])
            // TorchSharp's native L-BFGS step takes over the handle of each loss the closure returns, but
            // its .NET wrapper stays counted as live: at most one per evaluation (max_eval = 5/4 max_iter).
            // Everything else Fit makes must be gone.
            let before = TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount
            let struct (w, b) = LinearProbe.Fit(x, y, 2, 0.1, maxIterations = 20)
            w.Dispose()
            b.Dispose()
            let surplus = TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount - before
            Expect.isLessThanOrEqual surplus 25L "only L-BFGS's loss wrappers remain"
            use scope = torch.NewDisposeScope()
            let struct (w, b) = LinearProbe.Fit(x, y, 2, 0.1)
            let wg = w.detach().clone().requires_grad_(true)
            let bg = b.detach().clone().requires_grad_(true)
            let loss = torch.nn.functional.cross_entropy(x.mm(wg) + bg, y) + 0.05 * wg.pow(torch.tensor(2.0f)).sum()
            loss.backward()
            Expect.isLessThan (wg.grad.abs().max().item<float32>()) 1e-3f "stationary point in W"
            Expect.isLessThan (bg.grad.abs().max().item<float32>()) 1e-3f "stationary point in b"
        }
    ]

let resultTests =
    testList "result.json" [
        test "result.json carries every key of the contract, with null where a figure does not apply" {
            let folder = RunFolder(Fixtures.tempDir "result")
            folder.WriteResult(RunResult(Method = "rotnet", Dataset = "fashion-mnist", Seed = 0L,
                                         Eval = EvalFigures(LinearProbeAcc = Nullable 0.9)))
            use doc = JsonDocument.Parse(File.ReadAllText folder.ResultPath)
            let root = doc.RootElement
            for key in [ "method"; "dataset"; "seed"; "labels_per_class"; "eval"; "baselines"; "train"; "versions" ] do
                Expect.isTrue (fst (root.TryGetProperty key)) $"key {key}"
            for key in [ "linear_probe_acc"; "knn_acc"; "test_acc"; "few_label_linear_acc" ] do
                Expect.isTrue (fst (root.GetProperty("eval").TryGetProperty key)) $"eval.{key}"
            for key in [ "random_init"; "raw_pixels"; "supervised_only" ] do
                Expect.isTrue (fst (root.GetProperty("baselines").TryGetProperty key)) $"baselines.{key}"
            for key in [ "epochs"; "steps"; "wall_s"; "images_per_s"; "peak_rss_mb" ] do
                Expect.isTrue (fst (root.GetProperty("train").TryGetProperty key)) $"train.{key}"
            Expect.equal (root.GetProperty("eval").GetProperty("knn_acc").ValueKind) JsonValueKind.Null "null, not 0"
            Expect.equal (root.GetProperty("labels_per_class").ValueKind) JsonValueKind.Null "null"
            Expect.equal (folder.ReadResult().Eval.LinearProbeAcc) (Nullable 0.9) "round trip"
            Expect.isFalse (File.Exists(folder.ResultPath + ".tmp")) "no temp file left"
        }
    ]

[<Tests>]
let tests = testList "eval" [ knnTests; probeTests; resultTests ]
