module Ssl.Tests.ReportingTests

open System
open System.IO
open Expecto
open TorchSharp
open Ssl.Host.Reporting
open Ssl.Host.Export

/// Three well-separated Gaussian blobs in 10-D, 40 points each.
let private blobs () =
    use gen = new torch.Generator(9UL)
    let labels = torch.arange(3L).repeat_interleave(40L)
    let centres = torch.randn([| 3L; 10L |], generator = gen, dtype = torch.float64) * 10.0
    let points = centres.index_select(0L, labels) + torch.randn([| 120L; 10L |], generator = gen, dtype = torch.float64)
    points, labels

let tsneTests =
    testList "t-SNE" [
        test "each conditional row has the asked perplexity" {
            use scope = torch.NewDisposeScope()
            let points, _ = blobs ()
            let d = torch.cdist(points, points).pow(torch.tensor(2.0))
            let p = Tsne.ConditionalProbabilities(d, 15.0)
            let entropy = -(p * p.clamp_min(1e-300).log()).sum(1L)
            Check.close 1e-6 0.0 "row entropies" entropy (torch.ones([| 120L |], dtype = torch.float64) * log 15.0)
            Check.close 1e-9 0.0 "rows sum to 1" (p.sum(1L)) (torch.ones([| 120L |], dtype = torch.float64))
            Expect.equal (p.diagonal().abs().max().item<float>()) 0.0 "no self-probability"
        }
        test "separated clusters stay separated in 2-D, the KL falls, and a seed repeats" {
            use scope = torch.NewDisposeScope()
            let points, labels = blobs ()
            let y = Tsne.Embed(points, perplexity = 15.0, iterations = 400, seed = 1L)
            Expect.sequenceEqual y.shape [| 120L; 2L |] "shape"
            let p = Tsne.JointProbabilities(points, 15.0)
            use gen = new torch.Generator(1UL)
            let start = torch.randn([| 120L; 2L |], dtype = torch.float64, generator = gen) * 1e-4
            Expect.isLessThan (Tsne.KlDivergence(p, y)) (Tsne.KlDivergence(p, start) * 0.5) "KL(P||Q) falls"
            let acc = Ssl.Host.Eval.Knn.Accuracy(y, labels, y, labels, 3, k = 5)
            Expect.isGreaterThan acc 0.97 "2-D neighbours share the class"
            Check.close 0.0 0.0 "same seed, same map" (Tsne.Embed(points, perplexity = 15.0, iterations = 400, seed = 1L)) y
        }
        test "too few points or a perplexity out of range are refused" {
            use x = torch.zeros(10L, 3L)
            let e = Prop.throws<ArgumentException> (fun () -> (Tsne.Embed(x, perplexity = 30.0)).Dispose())
            Expect.stringContains e.Message "expected a value in (1, 10)" "message"
        }
    ]

let plotTests =
    testList "plots" [
        test "curves, class maps and bars are written as PNGs of the asked size" {
            let dir = Fixtures.tempDir "plots"
            let xs = Array.init 100 float
            Plots.Curves(Path.Combine(dir, "loss.png"), "loss", "step", "loss",
                         readOnlyDict [ "loss", (xs, xs |> Array.map (fun x -> 1.0 / (1.0 + x))); "nan", (xs, Array.create 100 nan) ])
            use scope = torch.NewDisposeScope()
            let points, labels = blobs ()
            Plots.ClassMap(Path.Combine(dir, "map.png"), "map", points.narrow(1L, 0L, 2L), labels, [| "a"; "b"; "c" |])
            Plots.Bars(Path.Combine(dir, "bars.png"), "accuracy", "top-1", [| "linear"; "kNN" |],
                       readOnlyDict [ "method", [| Nullable 0.9; Nullable 0.85 |]; "random", [| Nullable 0.7; Nullable() |] ])
            for name, w, h in [ "loss.png", 900, 520; "map.png", 900, 700; "bars.png", 900, 360 ] do
                use bitmap = SkiaSharp.SKBitmap.Decode(Path.Combine(dir, name))
                Expect.isNotNull bitmap $"{name} decodes"
                Expect.equal (bitmap.Width, bitmap.Height) (w, h) $"{name} size"
        }
        test "curves put logged steps at fractional epochs beside the epoch means, bookkeeping left out" {
            let row (text: string) = System.Text.Json.Nodes.JsonNode.Parse(text).AsObject()
            let metrics =
                [| row """{"epoch":0,"step":50,"images_per_s":9,"loss":3.0}"""
                   row """{"epoch":0,"step":100,"summary":"epoch","rss_mb":1,"loss":2.5}"""
                   row """{"epoch":1,"step":150,"loss":2.0,"lr/main":0.1}"""
                   row """{"epoch":1,"step":200,"summary":"epoch","rss_mb":1,"loss":1.5}""" |]
            let series = Ssl.Experiments.Pipeline.curveSeries 100.0 metrics
            Expect.equal (series |> List.map (fun (k, _, _) -> k)) [ "loss"; "lr/main" ] "figures drawn"
            let _, (sx, sy), (ex, ey) = series |> List.find (fun (k, _, _) -> k = "loss")
            Expect.equal (sx, sy) ([| 0.5; 1.5 |], [| 3.0; 2.0 |]) "logged steps at step / steps per epoch"
            Expect.equal (ex, ey) ([| 1.0; 2.0 |], [| 2.5; 1.5 |]) "epoch means at epoch + 1"
            let _, (_, lrSteps), (_, lrMeans) = series |> List.find (fun (k, _, _) -> k = "lr/main")
            Expect.isTrue (Double.IsNaN lrSteps[0] && lrSteps[1] = 0.1) "a figure missing from a row is NaN there"
            Expect.isTrue (lrMeans |> Array.forall Double.IsNaN) "no epoch mean logged: NaN, which Curves skips"
        }
    ]

let exportTests =
    testList "export" [
        test "an encoder exported as safetensors reads back with the same names, shapes and values" {
            let dir = Fixtures.tempDir "export"
            use encoder =
                torch.nn.Sequential([| struct ("conv", torch.nn.Conv2d(1L, 4L, 3L) :> torch.nn.Module<torch.Tensor, torch.Tensor>)
                                       struct ("norm", torch.nn.BatchNorm2d(4L)) |])
            let struct (dat, safetensors, names) = EncoderExport.Save(encoder, dir)
            Expect.isTrue (File.Exists dat) "TorchSharp weights"
            let loaded = TorchSharp.PyBridge.Safetensors.LoadStateDict(safetensors, null)
            let expected = encoder.state_dict()
            Expect.equal (set loaded.Keys) (set expected.Keys) "same names"
            for KeyValue(k, v) in expected do
                Check.close 0.0 0.0 k loaded[k] v
            Expect.contains (File.ReadAllLines names) "conv.weight Float32 [4, 1, 3, 3]" "documented names and shapes"
        }
        test "EncoderExport.Load reads an export, one whose SafeConv2d layers still name conv.weight too" {
            let dir = Fixtures.tempDir "export-legacy"
            // The old SafeConv2d: an nn.Conv2d held as `conv`, so its weights were `<layer>.conv.weight`.
            use legacy =
                torch.nn.Sequential([| struct ("stem", torch.nn.Sequential([| struct ("conv", torch.nn.Conv2d(4L, 3L, 3L) :> torch.nn.Module<torch.Tensor, torch.Tensor>) |])
                                                         :> torch.nn.Module<torch.Tensor, torch.Tensor>)
                                       struct ("norm", torch.nn.BatchNorm2d(3L)) |])
            let struct (dat, _, _) = EncoderExport.Save(legacy, dir)
            use today =
                torch.nn.Sequential([| struct ("stem", new Ssl.Core.Models.SafeConv.SafeConv2d(4L, 3L, 3L, 1L, 0L, true) :> torch.nn.Module<torch.Tensor, torch.Tensor>)
                                       struct ("norm", torch.nn.BatchNorm2d(3L)) |])
            EncoderExport.Load(today, dat)
            let old, loaded = legacy.state_dict(), today.state_dict()
            Check.close 0.0 0.0 "weight" loaded["stem.weight"] old["stem.conv.weight"]
            Check.close 0.0 0.0 "bias" loaded["stem.bias"] old["stem.conv.bias"]
            Check.close 0.0 0.0 "norm" loaded["norm.running_var"] old["norm.running_var"]
            use other = torch.nn.Sequential([| struct ("fc", torch.nn.Linear(2L, 2L) :> torch.nn.Module<torch.Tensor, torch.Tensor>) |])
            let e = Expect.throwsC (fun () -> EncoderExport.Load(other, dat)) id
            Expect.stringContains e.Message "stem.conv.weight" "another model's file names the tensor it cannot place"
        }
    ]

[<Tests>]
let tests = testList "reporting" [ tsneTests; plotTests; exportTests ]
