/// Image-folder layouts (ImageFolder, FolderLayout): which layout auto chooses and why, every image
/// file at any depth read or refused out loud, non-image files counted, one-class trees refused.
module Ssl.Tests.LayoutTests

open System
open System.IO
open Expecto
open Ssl.Host.Data
open Ssl.Tests.Fixtures

/// Writes `n` tiny PNG images (or JPEG, by `ext`) into root/sub (created), named <prefix>0.<ext> ...
let private images (root: string) (sub: string) (prefix: string) (ext: string) (n: int) =
    let dir = Path.Combine(root, sub)
    Directory.CreateDirectory dir |> ignore
    for i in 0 .. n - 1 do writeImage (Path.Combine(dir, $"{prefix}{i}.{ext}")) i 6 6

/// Writes two undecodable image files into root/sub: text named .jpg and an empty .png.
let private corrupt (root: string) (sub: string) (prefix: string) =
    File.WriteAllText(Path.Combine(root, sub, $"{prefix}-text.jpg"), "not an image")
    File.WriteAllBytes(Path.Combine(root, sub, $"{prefix}-empty.png"), [||])

let private read (root: string) (layout: FolderLayout) =
    ImageFolder.Read(root, Split.Train, ImageFolderOptions(Layout = layout))

let private labels (data: ImageDataset) = data.Labels.data<int64>().ToArray()

/// Expects a DataException whose message contains `fragments`; prints the message.
let private refused (fragments: string list) (f: unit -> IDisposable) =
    let e = Prop.throws<DataException> (fun () -> (f ()).Dispose())
    printfn "    message: %s" e.Message
    for s in fragments do Expect.stringContains e.Message s "the message names the thing, what was expected and what was found"

let private noteOf (data: ImageDataset) =
    let note = data.LayoutNote
    printfn "    note: %s" note
    Expect.isNotNull note "a layout note"
    note

[<Tests>]
let tests =
    testList "image folder layout" [
        test "nested photos with none at the top: auto reads them unlabelled, every file counted, nested and corrupt ones too" {
            let root = tempDir "photos"
            images root "a" "p" "png" 6
            images root (Path.Combine("a", "b")) "j" "jpg" 5
            corrupt root "a" "bad"
            corrupt root (Path.Combine("a", "b")) "worse"
            for data in [ read root FolderLayout.Auto; ImageFolder.Read(root, Split.Train, ImageFolderOptions(MemoryBudgetMb = 0L)) ] do
                use data = data
                Expect.equal data.Count 11L "every decodable image, nested ones included"
                Expect.equal data.FilesSeen 15L "every image file seen, the 4 corrupt ones included"
                Expect.equal data.Skipped.Count 4 "the corrupt ones listed"
                Expect.isEmpty data.ClassNames "not a one-class tree"
                Expect.isFalse data.IsLabelled "unlabelled"
                Expect.allEqual (labels data) -1L "label -1"
                let note = noteOf data
                let name = Path.GetFileName root
                Expect.equal note
                    $"image folder {name}: unlabelled (auto: no images at the top, 1 sub-folder with images (a class tree needs 2)); 15 image files at any depth, in 2 sub-folders; 4 of them undecodable, skipped"
                    "the layout, why and the counts"
            Expect.isFalse (ImageFolder.IsClassTree root) "not a class tree"
            Expect.equal (ImageFolder.ChooseLayout root).Layout FolderLayout.Unlabelled "chosen: unlabelled"
        }

        test "a class tree whose classes hold nested folders reads them into their class" {
            let root = tempDir "pets"
            images root "cat" "c" "png" 2
            images root (Path.Combine("cat", "indoor")) "i" "png" 3
            images root "dog" "d" "jpg" 1
            images root (Path.Combine("dog", "x", "y")) "y" "png" 4
            images root (Path.Combine("dog", "z")) "z" "png" 1
            for layout in [ FolderLayout.Auto; FolderLayout.Classes ] do
                use data = read root layout
                Expect.sequenceEqual data.ClassNames [ "cat"; "dog" ] "one class per sub-folder"
                Expect.sequenceEqual (data.ClassCounts()) [| 5L; 6L |] "nested images counted into their class"
                Expect.equal data.FilesSeen 11L "every image file"
                let sources = data.Sources |> Seq.map (fun p -> Path.GetRelativePath(root, p)) |> List.ofSeq
                Expect.equal sources[5] (Path.Combine("dog", "d0.jpg")) "sorted ordinal within a class"
                let note = noteOf data
                Expect.stringContains note "2 classes (" "the layout"
                Expect.stringContains note "cat 5, dog 6" "the class counts"
                Expect.stringContains note "nested folders read into their class: 8 in 3 nested folders" "the nested images and folders"
                Expect.stringContains note (if layout = FolderLayout.Auto then "auto: no images at the top, 2 sub-folders with images" else "as asked") "why"
            Expect.isTrue (ImageFolder.IsClassTree root) "a class tree"
        }

        test "a one-class tree is refused as classes and read as unlabelled by auto, never a 100% probe" {
            let root = tempDir "one-class"
            images root "only" "o" "png" 3
            images root (Path.Combine("only", "deeper")) "d" "png" 2
            refused [ root; "expected a class tree of at least 2 classes (one sub-folder per class)"; "found 1 class: only" ] (fun () ->
                read root FolderLayout.Classes)
            refused [ "found 1 class: only" ] (fun () ->
                DataCatalog.Load(root, Split.Train, folder = ImageFolderOptions(Layout = FolderLayout.Classes)))
            use data = read root FolderLayout.Auto
            Expect.equal data.Count 5L "every image, nested too"
            Expect.isFalse data.IsLabelled "unlabelled, so no probe reports on it"
            Expect.stringContains (noteOf data) "unlabelled (auto:" "said"
            let flat = tempDir "flat"
            images flat "" "f" "png" 2
            refused [ "found no sub-folders (2 images at the top)" ] (fun () -> read flat FolderLayout.Classes)
        }

        test "unlabelled asked of a class tree: every image, label -1" {
            let root = tempDir "tree"
            images root "a" "a" "png" 2
            images root "b" "b" "png" 3
            use data = read root FolderLayout.Unlabelled
            Expect.equal data.Count 5L "every image"
            Expect.allEqual (labels data) -1L "label -1"
            Expect.isEmpty data.ClassNames "no classes"
            Expect.stringContains (noteOf data) "unlabelled (as asked; 2 sub-folders not read as classes); 5 image files at any depth" "said"
        }

        test "split asked of a folder without train/ is refused, naming the folder, expected and found" {
            let root = tempDir "no-split"
            images root "a" "a" "png" 1
            images root "b" "b" "png" 1
            let fragments = [ root; "expected a split folder: train/ beside val/ or test/"; "found no train/ folder; sub-folders: a, b" ]
            refused fragments (fun () -> read root FolderLayout.Split)
            refused fragments (fun () -> DataCatalog.Load(root, Split.Test, folder = ImageFolderOptions(Layout = FolderLayout.Split)))
            let e = Prop.throws<DataException> (fun () -> ImageFolder.ChooseLayout(root, FolderLayout.Split) |> ignore)
            Expect.stringContains e.Message "no train/ folder" "refused before reading too"
        }

        test "a split folder says which side it reads and names what it does not read" {
            let root = tempDir "split"
            for side, n in [ "train", 3; "val", 2; "test", 1 ] do
                for cls in [ "a"; "b" ] do images root (Path.Combine(side, cls)) cls "png" n
            images root "" "stray" "png" 1
            File.WriteAllText(Path.Combine(root, "README.txt"), "about")
            File.WriteAllText(Path.Combine(root, "train", "a", "notes.txt"), "notes")
            for layout in [ FolderLayout.Auto; FolderLayout.Split ] do
                use train = DataCatalog.Load(root, Split.Train, folder = ImageFolderOptions(Layout = layout))
                use test = DataCatalog.Load(root, Split.Test, folder = ImageFolderOptions(Layout = layout))
                Expect.equal (train.Count, test.Count) (6L, 4L) "each split its side"
                Expect.sequenceEqual test.ClassNames [ "a"; "b" ] "each side a class tree"
                let note = noteOf train
                Expect.stringContains note "split (" "the layout"
                Expect.stringContains note "train/ for training, val/ for evaluation" "the sides"
                Expect.stringContains note "not read: 3 image files outside them (stray0.png, test/a/a0.png, test/b/b0.png)" "what is not read"
                Expect.stringContains note "1 other file ignored outside them (.txt 1): README.txt" "other files outside the sides"
                Expect.stringContains note "reads train/: 2 classes (no images at the top, 2 sub-folders): a 3, b 3" "the side read"
                Expect.stringContains note "1 other file ignored (.txt 1): a/notes.txt" "other files inside the side"
                Expect.stringContains (noteOf test) "reads val/: 2 classes" "the evaluation side"
            Expect.equal (ImageFolder.ChooseLayout root).Layout FolderLayout.Split "auto: split"
            use whole = read root FolderLayout.Unlabelled
            Expect.equal whole.Count 13L "unlabelled asked: every image of every side and the stray one"
        }

        test "images at the top of a class tree are refused as classes; auto reads them all unlabelled" {
            let root = tempDir "top"
            images root "a" "a" "png" 2
            images root "b" "b" "png" 2
            images root "" "loose" "png" 2
            refused [ root; "expected no images at the top of a class tree"; "found 2 images at the top, the first loose0.png" ] (fun () ->
                read root FolderLayout.Classes)
            use data = read root FolderLayout.Auto
            Expect.equal data.Count 6L "every image"
            Expect.isFalse data.IsLabelled "unlabelled"
            Expect.stringContains (noteOf data) "unlabelled (auto: 2 images at the top); 6 image files at any depth, 4 of them in 2 sub-folders" "said"
        }

        test "a sub-folder with no image: auto makes classes of the others and names it; classes asked refuses it" {
            let root = tempDir "empty-class"
            images root "a" "a" "png" 2
            images root "b" "b" "png" 2
            Directory.CreateDirectory(Path.Combine(root, "c", "deep")) |> ignore
            File.WriteAllText(Path.Combine(root, "c", "deep", "x.gif"), "gif")
            use data = read root FolderLayout.Auto
            Expect.sequenceEqual data.ClassNames [ "a"; "b" ] "the sub-folders with images"
            Expect.stringContains (noteOf data) "1 sub-folder with no image, not a class: c" "the empty one named"
            refused [ Path.Combine(root, "c"); "expected at least one .png, .jpg or .jpeg image at any depth"; "found none (1 other file (.gif 1): deep/x.gif)" ] (fun () ->
                read root FolderLayout.Classes)
        }

        test "non-image files are counted and the first named in the note; the layout note survives subsets" {
            let root = tempDir "others"
            images root "a" "a" "png" 2
            images root "b" "b" "jpg" 2
            File.WriteAllText(Path.Combine(root, "a", "a.txt"), "text")
            File.WriteAllText(Path.Combine(root, "a", "b.gif"), "gif")
            File.WriteAllText(Path.Combine(root, "b", "c.webp"), "webp")
            File.WriteAllText(Path.Combine(root, "d.bmp"), "bmp")
            for budget in [ Nullable 2048L; Nullable 0L ] do
                use data = ImageFolder.Read(root, Split.Train, ImageFolderOptions(MemoryBudgetMb = budget))
                Expect.equal data.FilesSeen 4L "the images"
                let note = noteOf data
                Expect.stringEnds note
                    $"""4 other files ignored (.bmp 1, .gif 1, .txt 1, .webp 1): {String.Join(", ", [ Path.Combine("a", "a.txt"); Path.Combine("a", "b.gif"); Path.Combine("b", "c.webp"); "d.bmp" ])}"""
                    "the other files counted, by kind, and named"
                use sub = data.Subset [| 1L; 2L |]
                Expect.equal sub.LayoutNote note "kept through Subset"
        }

        test "a folder with no image at any depth names its sub-folders and other files" {
            let root = tempDir "nothing"
            Directory.CreateDirectory(Path.Combine(root, "x")) |> ignore
            File.WriteAllText(Path.Combine(root, "x", "y.webp"), "webp")
            refused [ root; "expected at least one .png, .jpg or .jpeg image at any depth"; Path.Combine(root, "x"); "1 other file (.webp 1): x/y.webp" ] (fun () ->
                read root FolderLayout.Auto)
        }

        test "layout names parse; anything else is refused naming the choices" {
            Expect.equal (ImageFolder.ParseLayout "auto") FolderLayout.Auto "auto"
            Expect.equal (ImageFolder.ParseLayout "Unlabelled") FolderLayout.Unlabelled "unlabelled"
            Expect.equal (ImageFolder.ParseLayout "classes") FolderLayout.Classes "classes"
            Expect.equal (ImageFolder.ParseLayout "split") FolderLayout.Split "split"
            let e = Prop.throws<ArgumentException> (fun () -> ImageFolder.ParseLayout "tree" |> ignore)
            Expect.stringContains e.Message "--layout: expected auto, unlabelled, classes or split, found 'tree'" "the message"
        }
    ]
