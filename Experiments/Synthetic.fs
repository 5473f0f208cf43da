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
