// An unlabelled folder of real images for `ssl bench --data` and own-image runs: the first COUNT
// Fashion-MNIST training images as JPEG and PNG files of random sizes MIN..MAX px (seed 7), plus
// CORRUPT undecodable files (truncated, empty, text). Run after a build, from the repository root:
//   dotnet fsi scripts/image-folder.fsx OUT COUNT MIN MAX [CORRUPT]
// docs/data.md ("Train on your own images") and the notes quote benches on folders it wrote.
#r "../Experiments/bin/Release/net10.0/TorchSharp.dll"
#r "../Experiments/bin/Release/net10.0/SkiaSharp.dll"
#r "../Experiments/bin/Release/net10.0/Ssl.Host.dll"
#r "../Experiments/bin/Release/net10.0/ssl.dll"

let args = fsi.CommandLineArgs |> Array.skip 1
if args.Length < 4 then
    eprintfn "usage: dotnet fsi scripts/image-folder.fsx OUT COUNT MIN MAX [CORRUPT]"
    exit 2
Ssl.Host.Native.TorchRuntime.EnsureLoaded()
// fsi does not read the build's runtimes/ folder: point SkiaSharp at its native library there.
let rid = System.Runtime.InteropServices.RuntimeInformation.RuntimeIdentifier
let skia = System.IO.Path.Combine(__SOURCE_DIRECTORY__, "..", "Experiments", "bin", "Release", "net10.0", "runtimes", rid, "native", "libSkiaSharp.so")
System.Runtime.InteropServices.NativeLibrary.SetDllImportResolver(typeof<SkiaSharp.SKBitmap>.Assembly, fun name _ _ ->
    if name = "libSkiaSharp" then System.Runtime.InteropServices.NativeLibrary.Load skia else nativeint 0)
let out, count, low, high = args[0], int args[1], int args[2], int args[3]
let clock = System.Diagnostics.Stopwatch.StartNew()
Ssl.Experiments.Synthetic.writeFashionFolder out count low high 7 |> ignore
if args.Length > 4 then Ssl.Experiments.Synthetic.writeCorruptFiles out "bad" (int args[4])
printfn "%s: %d images of %d..%d px%s in %.0f s" out count low high (if args.Length > 4 then $" and {args[4]} corrupt files" else "") clock.Elapsed.TotalSeconds
