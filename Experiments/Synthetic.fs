/// Generated image data for what needs colour input where no colour data set is installed: the
/// colour recipes' test fixture and `ssl bench`'s throughput runs of colour-only recipes. Its
/// pixels are made up; nothing measured on them is an accuracy.
module Ssl.Experiments.Synthetic

open System.IO
open SkiaSharp

/// A colour image folder: `classes` sub-folders of `perClass` PNGs of size x size, each a coloured
/// square on a background whose hues depend on the class, with brightness and position varying per
/// image, so colour is partly predictable from lightness. Returns `dir`.
let writeColourFolder (dir: string) (classes: int) (perClass: int) (size: int) =
    let palette = [| (70, 130, 220), (220, 40, 30); (200, 200, 60), (120, 40, 160); (40, 160, 70), (250, 140, 20) |]
    for c in 0 .. classes - 1 do
        let classDir = Path.Combine(dir, $"class{c}")
        Directory.CreateDirectory classDir |> ignore
        let (br, bg, bb), (fr, fg, fb) = palette[c % palette.Length]
        for i in 0 .. perClass - 1 do
            let shade v = byte (min 255 (v * (70 + (i * 37) % 50) / 100))
            let side = size / 3 + i % (size / 4)
            let top, left = (i * 7) % (size - side), (i * 11) % (size - side)
            use bitmap = new SKBitmap(size, size, SKColorType.Rgba8888, SKAlphaType.Opaque)
            for y in 0 .. size - 1 do
                for x in 0 .. size - 1 do
                    let inside = y >= top && y < top + side && x >= left && x < left + side
                    let r, g, b = if inside then fr, fg, fb else br, bg, bb
                    bitmap.SetPixel(x, y, SKColor(shade r, shade g, shade b))
            use image = SKImage.FromBitmap bitmap
            use data = image.Encode(SKEncodedImageFormat.Png, 100)
            File.WriteAllBytes(Path.Combine(classDir, $"{i:D4}.png"), data.ToArray())
    dir

/// Writes a 28x28 grey image (784 bytes) resized to width x height as a PNG or JPEG (by the extension).
let writeGrey (pixels: byte[]) (path: string) (width: int) (height: int) =
    use source = new SKBitmap(28, 28, SKColorType.Gray8, SKAlphaType.Opaque)
    System.Runtime.InteropServices.Marshal.Copy(pixels, 0, source.GetPixels(), pixels.Length)
    use sized = source.Resize(SKImageInfo(width, height, SKColorType.Gray8, SKAlphaType.Opaque), SKSamplingOptions(SKFilterMode.Linear))
    use image = SKImage.FromBitmap sized
    let format = if path.EndsWith ".png" then SKEncodedImageFormat.Png else SKEncodedImageFormat.Jpeg
    use data = image.Encode(format, 90)
    File.WriteAllBytes(path, data.ToArray())

/// The first `n` images of a grey 28x28 set (uint8 (N, 1, 28, 28)) as 784-byte arrays.
let greyImages (images: TorchSharp.torch.Tensor) (n: int) =
    let all = images.narrow(0L, 0L, int64 n).contiguous().data<byte>().ToArray()
    Array.init n (fun i -> all[i * 784 .. i * 784 + 783])

/// An unlabelled flat folder of the first `count` Fashion-MNIST training images (real pixels, as
/// users' own photos are) resized to random sizes in [minSize, maxSize] (`seed`), JPEG for even
/// indices and PNG for odd ones: the own-images tests' and benchmarks' data. Returns `dir`.
let writeFashionFolder (dir: string) (count: int) (minSize: int) (maxSize: int) (seed: int) =
    use train = Ssl.Host.Data.DataCatalog.Load("fashion-mnist", Ssl.Host.Data.Split.Train)
    if count > int train.Count then invalidArg "count" $"count: expected at most {train.Count} (the training set), found {count}"
    Directory.CreateDirectory dir |> ignore
    let random = System.Random(seed)
    let sizes = Array.init count (fun _ -> random.Next(minSize, maxSize + 1), random.Next(minSize, maxSize + 1))
    let pixels = greyImages train.Images count
    System.Threading.Tasks.Parallel.For(0, count, fun i ->
        let ext = if i % 2 = 0 then "jpg" else "png"
        writeGrey pixels[i] (Path.Combine(dir, $"img{i:D5}.{ext}")) (fst sizes[i]) (snd sizes[i])) |> ignore
    dir

/// `n` undecodable files in `dir` named `<prefix>k`: truncated JPEGs (a third of one of the folder's),
/// empty PNGs, and text named .jpg, in turn.
let writeCorruptFiles (dir: string) (prefix: string) (n: int) =
    let sample = Directory.GetFiles(dir, "*.jpg") |> Array.head |> File.ReadAllBytes
    for k in 0 .. n - 1 do
        match k % 3 with
        | 0 -> File.WriteAllBytes(Path.Combine(dir, $"{prefix}{k}.jpg"), sample[.. sample.Length / 3])
        | 1 -> File.WriteAllBytes(Path.Combine(dir, $"{prefix}{k}.png"), [||])
        | _ -> File.WriteAllText(Path.Combine(dir, $"{prefix}{k}.jpg"), "this is not an image")
