/// Small data files in every supported format, written by the tests into a fresh temp folder:
/// well-formed ones with known content and malformed ones (truncated, wrong magic, mismatched counts).
module Ssl.Tests.Fixtures

open System
open System.IO
open SkiaSharp
open Ssl.Host.Data

/// A fresh, empty folder under the system temp folder.
let tempDir (name: string) =
    let dir = Path.Combine(Path.GetTempPath(), "ssl-tests", $"{name}-{Guid.NewGuid():N}")
    Directory.CreateDirectory dir |> ignore
    dir

/// Pixel value of image i at (channel, row, col) used by every fixture: easy to recompute.
let pixel i c y x = byte ((i * 31 + c * 17 + y * 7 + x * 3) % 256)

/// Writes an IDX pair of `n` images of rows x cols with labels i % classes; returns both paths.
let writeIdx dir prefix n rows cols classes gzip =
    let ext = if gzip then ".gz" else ""
    let images = Path.Combine(dir, $"{prefix}-images-idx3-ubyte{ext}")
    let labels = Path.Combine(dir, $"{prefix}-labels-idx1-ubyte{ext}")
    let pixels = [| for i in 0 .. n - 1 do for y in 0 .. rows - 1 do for x in 0 .. cols - 1 -> pixel i 0 y x |]
    Idx.WriteImages(images, pixels, n, rows, cols, gzip)
    Idx.WriteLabels(labels, Array.init n (fun i -> byte (i % classes)), gzip)
    images, labels

/// CIFAR record bytes: label bytes then R, G, B planes of 32x32.
let cifarRecords (labelBytes: int -> byte[]) n =
    [| for i in 0 .. n - 1 do
         yield! labelBytes i
         for c in 0 .. 2 do for y in 0 .. 31 do for x in 0 .. 31 -> pixel i c y x |]

/// STL-10 image bytes: each channel column-major (x outer, y inner).
let stlImages n =
    [| for i in 0 .. n - 1 do for c in 0 .. 2 do for x in 0 .. 95 do for y in 0 .. 95 -> pixel i c y x |]

/// Encodes an RGB image of the fixture pattern as PNG or JPEG.
let writeImage (path: string) i (height: int) (width: int) =
    use bitmap = new SKBitmap(width, height, SKColorType.Rgba8888, SKAlphaType.Opaque)
    for y in 0 .. height - 1 do
        for x in 0 .. width - 1 do
            bitmap.SetPixel(x, y, SKColor(pixel i 0 y x, pixel i 1 y x, pixel i 2 y x))
    use image = SKImage.FromBitmap bitmap
    let format = if path.EndsWith ".png" then SKEncodedImageFormat.Png else SKEncodedImageFormat.Jpeg
    use data = image.Encode(format, 95)
    File.WriteAllBytes(path, data.ToArray())

/// Truncates a file to its first `keep` bytes.
let truncate (path: string) keep =
    let bytes = File.ReadAllBytes path
    File.WriteAllBytes(path, bytes[.. keep - 1])

/// A class tree of `classes` x `perClass` colour PNGs of `size` x `size` in `dir`; returns `dir`.
let classTree (dir: string) classes perClass size =
    for c in 0 .. classes - 1 do
        let classDir = Path.Combine(dir, $"class{c}")
        Directory.CreateDirectory classDir |> ignore
        for i in 0 .. perClass - 1 do writeImage (Path.Combine(classDir, $"{i:D2}.png")) (c * 100 + i) size size
    dir

/// A colour image folder (the colour recipes' fixture): Synthetic.writeColourFolder.
let writeColourFolder (dir: string) (classes: int) (perClass: int) (size: int) =
    Ssl.Experiments.Synthetic.writeColourFolder dir classes perClass size

/// The colour fixture the smoke tests of colour-only recipes train on (2 classes x 100 images of
/// 32 x 32: enough for the few-label probe's 100 labels per class), written once per test process.
let colourFolder =
    let made = lazy (writeColourFolder (tempDir "colour-folder") 2 100 32)
    fun () -> made.Force()

/// Checks the run folder `dir` holds the result.json of the contract for `method` (the method's
/// linear probe and kNN, the random-init and raw-pixel baselines as fractions in [0, 1]); returns
/// the parsed document for further checks.
let expectContractResult (dir: string) (method: string) =
    let doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "result.json")))
    let root = doc.RootElement
    Expecto.Expect.equal (root.GetProperty("method").GetString()) method "method"
    let fraction (e: System.Text.Json.JsonElement) = let v = e.GetDouble() in v >= 0.0 && v <= 1.0
    Expecto.Expect.isTrue (fraction (root.GetProperty("eval").GetProperty("linear_probe_acc"))) "linear probe"
    Expecto.Expect.isTrue (fraction (root.GetProperty("eval").GetProperty("knn_acc"))) "kNN"
    let baselines = root.GetProperty "baselines"
    Expecto.Expect.isTrue (fraction (baselines.GetProperty("random_init").GetProperty("linear_probe_acc"))) "random-init baseline"
    Expecto.Expect.isTrue (fraction (baselines.GetProperty("raw_pixels").GetProperty("knn_acc"))) "raw-pixel baseline"
    doc

/// Runs `ssl args` in this process with standard error captured: (exit code, the lines written to it).
let sslCapturingErrors (args: string[]) =
    let saved = Console.Error
    use captured = new StringWriter()
    Console.SetError captured
    let code =
        try Ssl.Experiments.Program.run args
        finally Console.SetError saved
    code, captured.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries)
