module Ssl.Tests.DataTests

open System
open System.Diagnostics
open System.IO
open Expecto
open TorchSharp
open Ssl.Host.Data
open Ssl.Host.Native
open Ssl.Tests.Fixtures

let private classes n = Array.init n string

/// Expects a DataException whose message names `file` and contains `fragments`; prints the message.
let private expectDataError (file: string) (fragments: string list) (read: unit -> IDisposable) =
    let e = Prop.throws<DataException> (fun () -> (read ()).Dispose())
    printfn "    message: %s" e.Message
    Expect.stringContains e.Message file "the message names the file"
    for f in fragments do Expect.stringContains e.Message f "the message says what was expected and found"

let private pixelAt (data: ImageDataset) (i: int64) (c: int64) (y: int64) (x: int64) =
    data.Images[i, c, y, x].item<byte>()

let idxTests =
    testList "idx" [
        for gzip in [ false; true ] do
            test $"reads images and labels (gzip={gzip})" {
                TorchRuntime.EnsureLoaded()
                let dir = tempDir "idx"
                let images, labels = writeIdx dir "train" 20 4 5 3 gzip
                use data = Idx.Read("fixture", Split.Train, images, labels, classes 3)
                Expect.sequenceEqual data.Images.shape [| 20L; 1L; 4L; 5L |] "shape"
                Expect.equal (pixelAt data 7L 0L 3L 2L) (pixel 7 0 3 2) "pixel (7, 0, 3, 2)"
                Expect.sequenceEqual (data.Labels.data<int64>().ToArray()) (Array.init 20 (fun i -> int64 (i % 3))) "labels"
                Expect.sequenceEqual (data.ClassCounts()) [| 7L; 7L; 6L |] "class counts"
            }

        test "a truncated images file names the file and the byte counts" {
            let dir = tempDir "idx"
            let images, labels = writeIdx dir "train" 20 4 5 3 false
            truncate images 100
            expectDataError images [ "expected 416 bytes"; "found 100 bytes (truncated)" ] (fun () ->
                Idx.Read("fixture", Split.Train, images, labels, classes 3))
        }

        test "a labels file given as images has the wrong magic" {
            let dir = tempDir "idx"
            let _, labels = writeIdx dir "train" 20 4 5 3 true
            expectDataError labels [ "expected magic 0x00000803"; "found 0x00000801" ] (fun () ->
                Idx.Read("fixture", Split.Train, labels, labels, classes 3))
        }

        test "a label count that does not match the image count" {
            let dir = tempDir "idx"
            let images, _ = writeIdx dir "train" 20 4 5 3 false
            let _, labels = writeIdx dir "other" 19 4 5 3 false
            expectDataError labels [ "expected 20 labels"; "found 19" ] (fun () ->
                Idx.Read("fixture", Split.Train, images, labels, classes 3))
        }

        test "a label beyond the class list" {
            let dir = tempDir "idx"
            let images, labels = writeIdx dir "train" 20 4 5 3 false
            expectDataError labels [ "expected labels in [0, 1]"; "found label 2" ] (fun () ->
                Idx.Read("fixture", Split.Train, images, labels, classes 2))
        }

        test "a corrupt gzip stream" {
            let dir = tempDir "idx"
            let images, labels = writeIdx dir "train" 20 4 5 3 true
            truncate images 30
            expectDataError images [ "expected a complete gzip stream" ] (fun () ->
                Idx.Read("fixture", Split.Train, images, labels, classes 3))
        }

        test "a missing file" {
            let dir = tempDir "idx"
            let missing = Path.Combine(dir, "nothing-here")
            expectDataError missing [ "expected an existing file"; "found no such file" ] (fun () ->
                Idx.Read("fixture", Split.Train, missing, missing, classes 3))
        }
    ]

let cifarTests =
    testList "cifar" [
        test "CIFAR-10 batches: records split into labels and RGB planes, batches concatenated" {
            TorchRuntime.EnsureLoaded()
            let dir = tempDir "cifar10"
            let b1, b2 = Path.Combine(dir, "data_batch_1.bin"), Path.Combine(dir, "data_batch_2.bin")
            File.WriteAllBytes(b1, cifarRecords (fun i -> [| byte (i % 10) |]) 3)
            File.WriteAllBytes(b2, cifarRecords (fun i -> [| byte ((i + 5) % 10) |]) 2)
            use data = Cifar.Read10(Split.Train, [| b1; b2 |], classes 10)
            Expect.sequenceEqual data.Images.shape [| 5L; 3L; 32L; 32L |] "shape"
            Expect.equal (pixelAt data 2L 1L 4L 9L) (pixel 2 1 4 9) "green pixel of record 2"
            Expect.equal (pixelAt data 4L 2L 31L 31L) (pixel 1 2 31 31) "record 1 of the second batch"
            Expect.sequenceEqual (data.Labels.data<int64>().ToArray()) [| 0L; 1L; 2L; 5L; 6L |] "labels"
        }

        test "CIFAR-100: the fine label (second byte) is the label" {
            let dir = tempDir "cifar100"
            let file = Path.Combine(dir, "train.bin")
            File.WriteAllBytes(file, cifarRecords (fun i -> [| byte 3; byte (50 + i) |]) 4)
            use data = Cifar.Read100(Split.Train, [| file |], classes 100)
            Expect.sequenceEqual (data.Labels.data<int64>().ToArray()) [| 50L; 51L; 52L; 53L |] "fine labels"
            Expect.equal (pixelAt data 3L 0L 0L 1L) (pixel 3 0 0 1) "pixel"
        }

        test "a CIFAR-10 batch with a partial record" {
            let dir = tempDir "cifar10"
            let file = Path.Combine(dir, "data_batch_1.bin")
            File.WriteAllBytes(file, cifarRecords (fun _ -> [| 1uy |]) 2)
            truncate file 5000
            expectDataError file [ "3073-byte records"; "found 5000 bytes (1 records and 1927 bytes over)" ] (fun () ->
                Cifar.Read10(Split.Train, [| file |], classes 10))
        }

        test "a CIFAR-100 file read as CIFAR-10 has out-of-range labels" {
            let dir = tempDir "cifar"
            let file = Path.Combine(dir, "data_batch_1.bin")
            // 3073 * 3074 bytes splits evenly into both record sizes; label bytes of 60 do not fit CIFAR-10.
            File.WriteAllBytes(file, Array.create (3073 * 3074) 60uy)
            expectDataError file [ "expected labels in [0, 9]"; "found label 60" ] (fun () ->
                Cifar.Read10(Split.Train, [| file |], classes 10))
        }
    ]

let stlTests =
    testList "stl10" [
        test "STL-10: column-major channels become (N, 3, 96, 96), labels 1..10 become 0..9" {
            TorchRuntime.EnsureLoaded()
            let dir = tempDir "stl"
            let x, y = Path.Combine(dir, "train_X.bin"), Path.Combine(dir, "train_y.bin")
            File.WriteAllBytes(x, stlImages 2)
            File.WriteAllBytes(y, [| 1uy; 10uy |])
            use data = Stl10.Read(Split.Train, x, y, classes 10)
            Expect.sequenceEqual data.Images.shape [| 2L; 3L; 96L; 96L |] "shape"
            Expect.equal (pixelAt data 1L 2L 10L 70L) (pixel 1 2 10 70) "row 10, column 70 of image 1, blue"
            Expect.sequenceEqual (data.Labels.data<int64>().ToArray()) [| 0L; 9L |] "labels"
        }

        test "STL-10 unlabelled split: label -1, and a limit" {
            let dir = tempDir "stl"
            let x = Path.Combine(dir, "unlabeled_X.bin")
            File.WriteAllBytes(x, stlImages 3)
            use data = Stl10.Read(Split.Unlabelled, x, null, classes 10, limit = 2)
            Expect.equal data.Count 2L "limit"
            Expect.isFalse data.IsLabelled "unlabelled"
            Expect.sequenceEqual (data.Labels.data<int64>().ToArray()) [| -1L; -1L |] "labels"
        }

        test "STL-10 labels that do not match the images" {
            let dir = tempDir "stl"
            let x, y = Path.Combine(dir, "train_X.bin"), Path.Combine(dir, "train_y.bin")
            File.WriteAllBytes(x, stlImages 2)
            File.WriteAllBytes(y, [| 1uy; 2uy; 3uy |])
            expectDataError y [ "expected 2 labels"; "found 3" ] (fun () -> Stl10.Read(Split.Train, x, y, classes 10))
        }

        test "STL-10 images with a partial image" {
            let dir = tempDir "stl"
            let x = Path.Combine(dir, "train_X.bin")
            File.WriteAllBytes(x, stlImages 1)
            truncate x 27000
            expectDataError x [ "27648-byte images"; "found 27000 bytes" ] (fun () -> Stl10.Read(Split.Train, x, null, classes 10))
        }
    ]

let folderTests =
    testList "image folder" [
        test "PNG and JPEG in class folders, classes sorted by name" {
            TorchRuntime.EnsureLoaded()
            let root = tempDir "folder"
            for cls in [ "cat"; "ant" ] do Directory.CreateDirectory(Path.Combine(root, cls)) |> ignore
            writeImage (Path.Combine(root, "ant", "a.png")) 0 6 8
            writeImage (Path.Combine(root, "ant", "b.jpg")) 1 6 8
            writeImage (Path.Combine(root, "cat", "c.png")) 2 6 8
            use data = ImageFolder.Read root
            Expect.sequenceEqual data.ClassNames [ "ant"; "cat" ] "classes"
            Expect.sequenceEqual data.Images.shape [| 3L; 3L; 6L; 8L |] "shape"
            Expect.sequenceEqual (data.Labels.data<int64>().ToArray()) [| 0L; 0L; 1L |] "labels"
            Expect.equal (pixelAt data 2L 1L 5L 7L) (pixel 2 1 5 7) "PNG pixels are exact"
            let jpegError = abs (int (pixelAt data 1L 0L 3L 3L) - int (pixel 1 0 3 3))
            Expect.isLessThan jpegError 40 "JPEG pixels are close"
        }

        test "images of another size are an error unless resized" {
            let root = tempDir "folder"
            Directory.CreateDirectory(Path.Combine(root, "a")) |> ignore
            writeImage (Path.Combine(root, "a", "1.png")) 0 6 8
            writeImage (Path.Combine(root, "a", "2.png")) 1 5 8
            expectDataError (Path.Combine(root, "a", "2.png")) [ "expected 6x8 pixels"; "found 5x8" ] (fun () -> ImageFolder.Read root)
            use resized = ImageFolder.Read(root, size = Nullable<struct (int * int)>(struct (4, 4)))
            Expect.sequenceEqual resized.Images.shape [| 2L; 3L; 4L; 4L |] "resized"
        }

        test "undecodable files are skipped and listed with the reason; none decodable is an error" {
            let root = tempDir "folder"
            Directory.CreateDirectory(Path.Combine(root, "a")) |> ignore
            let bad = Path.Combine(root, "a", "bad.png")
            writeImage bad 0 16 16
            truncate bad 40
            expectDataError root [ "expected at least one decodable image"; "none of 1 files decodes" ] (fun () -> ImageFolder.Read root)
            writeImage (Path.Combine(root, "a", "good.png")) 1 16 16
            File.WriteAllText(Path.Combine(root, "a", "text.jpg"), "not an image")
            File.WriteAllBytes(Path.Combine(root, "a", "zero.png"), [||])
            use data = ImageFolder.Read root
            Expect.equal data.Count 1L "the good one"
            Expect.equal data.FilesSeen 4L "four files seen"
            Expect.sequenceEqual (data.Skipped |> Seq.map (fun struct (p, _) -> Path.GetFileName p)) [ "bad.png"; "text.jpg"; "zero.png" ] "three skipped, sorted"
            for struct (_, why) in data.Skipped do Expect.isNotEmpty why "a reason each"
        }

        test "images at the top or nested without classes are unlabelled; --image-size resizes the shorter side and centre-crops" {
            let root = tempDir "flat"
            Directory.CreateDirectory(Path.Combine(root, "2024", "june")) |> ignore
            writeImage (Path.Combine(root, "top.png")) 0 40 60
            writeImage (Path.Combine(root, "2024", "june", "deep.jpg")) 1 90 30
            expectDataError (Path.Combine(root, "top.png")) [ "--image-size" ] (fun () -> ImageFolder.Read root)
            use data = ImageFolder.Read(root, Split.Train, ImageFolderOptions(Size = 16))
            Expect.sequenceEqual data.Images.shape [| 2L; 3L; 16L; 16L |] "every image 16x16, colour"
            Expect.sequenceEqual (data.Labels.data<int64>().ToArray()) [| -1L; -1L |] "no labels"
            Expect.isFalse data.IsLabelled "unlabelled"
            Expect.isEmpty data.ClassNames "no classes"
            // The centre crop of a 40x60 image resized to 16x24 keeps columns 4..19: its left edge is gone.
            let centre = ImageFolder.Read(root, Split.Train, ImageFolderOptions(Size = 40))
            use centre = centre
            let top = centre.Sources |> Seq.findIndex (fun p -> p.EndsWith "top.png")
            Expect.equal (pixelAt centre (int64 top) 0L 0L 0L) (pixel 0 0 0 10) "the crop starts 10 columns in"
        }

        test "grey and colour images mix: the majority's channel count, grey replicated, colour to luminance" {
            let root = tempDir "mixed"
            let grey (path: string) (value: byte) =
                use bitmap = new SkiaSharp.SKBitmap(8, 8, SkiaSharp.SKColorType.Gray8, SkiaSharp.SKAlphaType.Opaque)
                for y in 0 .. 7 do for x in 0 .. 7 do bitmap.SetPixel(x, y, SkiaSharp.SKColor(value, value, value))
                use image = SkiaSharp.SKImage.FromBitmap bitmap
                use data = image.Encode(SkiaSharp.SKEncodedImageFormat.Png, 100)
                File.WriteAllBytes(path, data.ToArray())
            grey (Path.Combine(root, "g1.png")) 100uy
            grey (Path.Combine(root, "g2.png")) 200uy
            writeImage (Path.Combine(root, "c.png")) 3 8 8
            use data = ImageFolder.Read root
            Expect.equal data.Channels 1L "two grey against one colour: grey"
            let c = data.Sources |> Seq.findIndex (fun p -> p.EndsWith "c.png")
            let luminance = 0.299 * float (pixel 3 0 2 5) + 0.587 * float (pixel 3 1 2 5) + 0.114 * float (pixel 3 2 2 5)
            Expect.isLessThanOrEqual (abs (float (pixelAt data (int64 c) 0L 2L 5L) - luminance)) 0.5 "colour to luminance"
            use colour = ImageFolder.Read(root, Split.Train, ImageFolderOptions(Channels = 3))
            let g = colour.Sources |> Seq.findIndex (fun p -> p.EndsWith "g2.png")
            Expect.equal [ for ch in 0L .. 2L -> pixelAt colour (int64 g) ch 1L 1L ] [ 200uy; 200uy; 200uy ] "grey replicated to RGB"
        }

        test "a folder with train/ and val/ trees reads each split from its tree" {
            let root = tempDir "split"
            for split, n in [ "train", 3; "val", 2 ] do
                for cls in [ "a"; "b" ] do
                    let dir = Path.Combine(root, split, cls)
                    Directory.CreateDirectory dir |> ignore
                    for i in 1 .. n do writeImage (Path.Combine(dir, $"{i}.png")) i 8 8
            use train = DataCatalog.Load(root, Split.Train)
            use test = DataCatalog.Load(root, Split.Test)
            Expect.equal (train.Count, test.Count) (6L, 4L) "each split its tree"
            Expect.sequenceEqual test.ClassNames [ "a"; "b" ] "classes"
            Directory.Delete(Path.Combine(root, "val"), true)
            expectDataError root [ "val/ or test/" ] (fun () -> DataCatalog.Load(root, Split.Test))
        }

        test "a folder over the memory budget is streamed: the same bytes per batch (planned or not), statistics, subsets and skipped files" {
            let root = tempDir "streamed"
            for cls in [ "a"; "b" ] do
                Directory.CreateDirectory(Path.Combine(root, cls)) |> ignore
                for i in 0 .. 19 do
                    let ext = if i % 2 = 0 then "png" else "jpg"
                    writeImage (Path.Combine(root, cls, $"{i:D2}.{ext}")) (i + (if cls = "a" then 0 else 50)) (12 + i) (30 - i)
            let bad = Path.Combine(root, "b", "99.png")
            writeImage bad 1 16 16
            truncate bad 40
            use memory = ImageFolder.Read(root, Split.Train, ImageFolderOptions(Size = 10))
            use streamed = ImageFolder.Read(root, Split.Train, ImageFolderOptions(Size = 10, MemoryBudgetMb = 0L, Workers = 2))
            Expect.isFalse memory.IsStreamed "the default budget holds it"
            Expect.isTrue streamed.IsStreamed "a budget of 0 streams it"
            Expect.equal (streamed.Count, streamed.Channels, streamed.Height, streamed.Width) (memory.Count, 3L, 10L, 10L) "the same shape"
            Expect.sequenceEqual (streamed.Labels.data<int64>().ToArray()) (memory.Labels.data<int64>().ToArray()) "the same labels"
            Expect.sequenceEqual streamed.Skipped memory.Skipped "the same file skipped, found before training"
            let struct (m1, s1) = memory.ChannelStatistics()
            let struct (m2, s2) = streamed.ChannelStatistics()
            Expect.sequenceEqual (Array.append m2 s2) (Array.append m1 s1) "the same statistics to the last bit"
            let same (message: string) (a: torch.Tensor) (b: torch.Tensor) =
                use a = a
                use b = b
                Expect.isTrue (a.shape = b.shape && a.eq(b).all().item<bool>()) message
            same "an unplanned batch" (streamed.Batch [| 5L; 0L; 33L; 7L |]) (memory.Batch [| 5L; 0L; 33L; 7L |])
            let plan = [| [| 1L; 2L |]; [| 30L; 4L; 9L |]; [| 6L |]; [| 38L; 0L |] |]
            streamed.Plan plan
            same "a batch outside the plan" (streamed.Batch [| 3L |]) (memory.Batch [| 3L |])
            for batch in plan do same "each planned batch, decoded ahead" (streamed.Batch batch) (memory.Batch batch)
            same "rows" (streamed.Rows(2L, 3L)) (memory.Rows(2L, 3L))
            Expect.throwsT<InvalidOperationException> (fun () -> streamed.Images |> ignore) "no whole tensor when streamed"
            use sub = streamed.Subset [| 21L; 3L; 8L |]
            use subMemory = memory.Subset [| 21L; 3L; 8L |]
            Expect.isTrue sub.IsStreamed "a subset stays streamed"
            let struct (m3, s3) = sub.ChannelStatistics()
            let struct (m4, s4) = subMemory.ChannelStatistics()
            Expect.sequenceEqual (Array.append m3 s3) (Array.append m4 s4) "a subset's statistics from its images' sums"
            same "a subset's images" (sub.Rows(0L, 3L)) (subMemory.Rows(0L, 3L))
        }

        // Alone (sequenced): other tests' allocations would move this process's resident memory.
        testSequenced <| test "decoding with --image-size keeps no native memory per image (resident memory flat over reads)" {
            let root = tempDir "flat-rss"
            Threading.Tasks.Parallel.For(0, 1000, fun i -> writeImage (Path.Combine(root, $"{i:D4}.jpg")) i (20 + i % 13) (24 + i % 7)) |> ignore
            let read () =
                use data = ImageFolder.Read(root, Split.Train, ImageFolderOptions(Size = 16, MemoryBudgetMb = 0L))
                GC.Collect()
                GC.WaitForPendingFinalizers()
                Ssl.Host.Runtime.ProcessStats.RssMb()
            read () |> ignore
            let first = read ()
            for _ in 1 .. 6 do read () |> ignore
            let last = read ()
            // The subset bitmap this replaced kept ~8 KB per image: 56 MiB over these seven reads.
            Expect.isLessThan (last - first) 20.0 $"resident memory grew {last - first:F1} MiB over 7 reads of 1,000 files"
        }

        test "an empty class folder" {
            let root = tempDir "folder"
            Directory.CreateDirectory(Path.Combine(root, "empty")) |> ignore
            expectDataError (Path.Combine(root, "empty")) [ "expected at least one .png, .jpg or .jpeg image"; "found none" ] (fun () ->
                ImageFolder.Read root)
        }
    ]

let catalogTests =
    testList "catalog" [
        test "an explicit root holding IDX files is found, gzip preferred" {
            let dir = tempDir "catalog"
            writeIdx dir "t10k" 30 28 28 10 true |> ignore
            use data = DataCatalog.Load("mnist", Split.Test, dir)
            Expect.equal data.Count 30L "count"
            Expect.stringContains data.Sources[0] ".gz" "gzip file read"
        }

        test "SSL_DATA/<name> is searched" {
            let root = tempDir "ssl-data"
            let dir = Path.Combine(root, "cifar10", "cifar-10-batches-bin")
            Directory.CreateDirectory dir |> ignore
            for i in 1 .. 5 do File.WriteAllBytes(Path.Combine(dir, $"data_batch_{i}.bin"), cifarRecords (fun _ -> [| byte i |]) 2)
            let previous = Environment.GetEnvironmentVariable DataCatalog.EnvironmentVariable
            Environment.SetEnvironmentVariable(DataCatalog.EnvironmentVariable, root)
            try
                use data = DataCatalog.Load("cifar10", Split.Train)
                Expect.equal data.Count 10L "five batches of two"
                Expect.equal data.ClassNames[0] "airplane" "default CIFAR-10 names"
            finally
                Environment.SetEnvironmentVariable(DataCatalog.EnvironmentVariable, previous)
        }

        test "a missing data set says where it looked and how to provide it" {
            let dir = tempDir "empty"
            let e = Prop.throws<DataException> (fun () -> (DataCatalog.Load("cifar100", Split.Train, dir)).Dispose())
            printfn "    message: %s" e.Message
            Expect.stringContains e.Message dir "names the folder searched"
            Expect.stringContains e.Message "Set SSL_DATA" "says how to provide it"
        }

        test "an unknown data set names the known ones" {
            let e = Prop.throws<ArgumentException> (fun () -> (DataCatalog.Load("imagenet", Split.Train)).Dispose())
            Expect.stringContains e.Message "fashion-mnist, mnist, cifar10, cifar100, stl10" "alternatives"
        }
    ]

/// The real data set (installed by the build script's test and demo targets).
let fashionMnistTests =
    testList "fashion-mnist" [
        test "the real training and test sets read whole, 6,000 and 1,000 images per class" {
            TorchRuntime.EnsureLoaded()
            let clock = Stopwatch.StartNew()
            use train = DataCatalog.Load("fashion-mnist", Split.Train)
            printfn "    read 60,000 training images in %.3f s (speed is measured by `ssl data`, not asserted here)" clock.Elapsed.TotalSeconds
            Expect.sequenceEqual train.Images.shape [| 60000L; 1L; 28L; 28L |] "train shape"
            Expect.sequenceEqual (train.ClassCounts()) (Array.create 10 6000L) "balanced"
            use test = DataCatalog.Load("fashion-mnist", Split.Test)
            Expect.sequenceEqual (test.ClassCounts()) (Array.create 10 1000L) "test balanced"
            let struct (mean, std) = train.ChannelStatistics()
            // Widely quoted statistics of Fashion-MNIST's training set.
            Expect.floatClose Accuracy.low mean[0] 0.2860 "mean"
            Expect.floatClose Accuracy.low std[0] 0.3530 "std"
        }
    ]

let gridTests =
    testList "image grid" [
        test "a grid PNG has one cell per image" {
            TorchRuntime.EnsureLoaded()
            use images = torch.randint(0L, 255L, [| 12L; 1L; 5L; 4L |], dtype = torch.uint8)
            let path = Path.Combine(tempDir "grid", "grid.png")
            ImageGrid.SavePng(images, path, columns = 5, scale = 2, padding = 1)
            use bitmap = SkiaSharp.SKBitmap.Decode path
            Expect.equal (bitmap.Width, bitmap.Height) (5 * (4 * 2 + 1) + 1, 3 * (5 * 2 + 1) + 1) "size"
        }
    ]

[<Tests>]
let tests = testList "data" [ idxTests; cifarTests; stlTests; folderTests; catalogTests; fashionMnistTests; gridTests ]
