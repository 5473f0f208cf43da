/// The emoji data set (docs/data.md#emoji): its split, labels and pixels on a fake package folder
/// written here, then the real packages the build installs.
module Ssl.Tests.EmojiTests

open System
open System.IO
open System.Text.Json.Nodes
open Expecto
open SkiaSharp
open TorchSharp
open Ssl.Host.Data
open Ssl.Host.Native
open Ssl.Tests.Fixtures

/// The fake emoji.json's base emoji: code points, category, subcategory, whether Twemoji draws it.
let private fakeEmoji =
    let categories = [| "Smileys & Emotion"; "Animals & Nature"; "Food & Drink"; "Flags" |]
    [| for k in 0 .. 29 ->
         let category = categories[k % categories.Length]
         let prefix = (category.Split ' ').[0].ToLowerInvariant()
         $"1F{600 + k}", category, $"{prefix}-{k / categories.Length % 2}", k <> 7 |]

let private componentEmoji = "1F3FB"
let private skinTone = "1F600-1F3FB"

/// The colour of emoji `k` drawn in `style` (0 Google, 1 Twitter): how a test tells the images apart.
let private colour k style = byte (8 * k), byte (60 + 100 * style), 30uy

/// A 64 x 64 RGBA PNG of one colour, but for pixel (0, 0) fully transparent and (0, 1) half-transparent black.
let private writeEmoji (path: string) (r: byte, g: byte, b: byte) =
    use bitmap = new SKBitmap(SKImageInfo(64, 64, SKColorType.Rgba8888, SKAlphaType.Unpremul))
    let pixels = bitmap.GetPixelSpan()
    for p in 0 .. 64 * 64 - 1 do
        let rgba = match p with 0 -> [| 0uy; 0uy; 0uy; 0uy |] | 1 -> [| 0uy; 0uy; 0uy; 128uy |] | _ -> [| r; g; b; 255uy |]
        for c in 0 .. 3 do pixels[4 * p + c] <- rgba[c]
    use image = SKImage.FromBitmap bitmap
    use data = image.Encode(SKEncodedImageFormat.Png, 100)
    File.WriteAllBytes(path, data.ToArray())

/// A folder laid out as the build installs the two packages: node_modules/<package>/emoji.json and
/// img/<style>/64/*.png, with a Component entry and a skin-tone variant (both drawn, neither read).
let private fakePackages () =
    let root = tempDir "emoji"
    for style, s in [ "google", 0; "twitter", 1 ] do
        let package = Path.Combine(root, "node_modules", $"emoji-datasource-{style}")
        let images = Path.Combine(package, "img", style, "64")
        Directory.CreateDirectory images |> ignore
        /// An entry, its drawing written where it has one.
        let entry (unified: string) (category: string) (subcategory: string) (drawing: (byte * byte * byte) option) =
            let o = JsonObject()
            o["unified"] <- JsonValue.Create unified
            o["image"] <- JsonValue.Create(unified.ToLowerInvariant() + ".png")
            o["category"] <- JsonValue.Create category
            o["subcategory"] <- JsonValue.Create subcategory
            o[$"has_img_{style}"] <- JsonValue.Create drawing.IsSome
            drawing |> Option.iter (writeEmoji (Path.Combine(images, unified.ToLowerInvariant() + ".png")))
            o
        let white = Some(255uy, 255uy, 255uy)
        let list = JsonArray()
        fakeEmoji |> Array.iteri (fun k (unified, category, subcategory, twitter) ->
            let o = entry unified category subcategory (if style = "google" || twitter then Some(colour k s) else None)
            if k = 0 then
                let variant = entry skinTone category subcategory white
                let tones = JsonObject()
                tones["1F3FB"] <- variant
                o["skin_variations"] <- tones
            list.Add o)
        list.Add(entry componentEmoji "Component" "skin-tone" white)
        File.WriteAllText(Path.Combine(package, "emoji.json"), list.ToJsonString())
    root

/// Which fake emoji and style each image is, by its colour at (8, 8); None for another colour.
let private identify (data: ImageDataset) =
    [ for i in 0L .. data.Count - 1L ->
        let at c = data.Images[i, c, 8L, 8L].item<byte>()
        [ for k in 0 .. fakeEmoji.Length - 1 do for s in 0 .. 1 -> k, s ]
        |> List.tryFind (fun (k, s) -> colour k s = (at 0L, at 1L, at 2L)) ]

let private unified k = let u, _, _, _ = fakeEmoji[k] in u
let private category k = let _, c, _, _ = fakeEmoji[k] in c

let private read (name: string) split root = DataCatalog.Load(name, split, root)

[<Tests>]
let tests =
    testList "emoji" [
        test "the split is by emoji: none on both sides, both drawings on one side, the side the hash says" {
            TorchRuntime.EnsureLoaded()
            let root = fakePackages ()
            use train = read "emoji" Split.Train root
            use test = read "emoji" Split.Test root
            let trainIds, testIds = identify train, identify test
            Expect.allEqual (trainIds @ testIds |> List.map Option.isSome) true "every image is a fake emoji's drawing"
            let emojiOf ids = ids |> List.choose id |> List.map fst |> set
            Expect.isEmpty (Set.intersect (emojiOf trainIds) (emojiOf testIds)) "no emoji on both sides"
            Expect.isNonEmpty (emojiOf testIds) "this fixture has emoji on the test side"
            for ids, isTest in [ trainIds, false; testIds, true ] do
                for k in emojiOf ids do
                    Expect.equal (Emoji.IsTest(unified k)) isTest $"{unified k} on the side its hash gives"
                    let styles = ids |> List.choose id |> List.filter (fst >> (=) k) |> List.map snd
                    Expect.equal styles (if k = 7 then [ 0 ] else [ 0; 1 ]) $"{unified k}: each drawing once, both on one side"
            Expect.equal (train.Count + test.Count) (2L * int64 fakeEmoji.Length - 1L) "every drawing read once (one emoji has no Twemoji)"
        }

        test "labels are the categories; Component, skin-tone variants and missing drawings are not read" {
            let root = fakePackages ()
            use train = read "emoji" Split.Train root
            Expect.sequenceEqual train.ClassNames
                [ "Smileys & Emotion"; "People & Body"; "Animals & Nature"; "Food & Drink"; "Travel & Places"; "Activities"; "Objects"; "Symbols"; "Flags" ]
                "the 9 categories in Unicode's order, no Component"
            let labels = train.Labels.data<int64>().ToArray()
            identify train |> List.iteri (fun i id ->
                let k, _ = Option.get id
                Expect.equal train.ClassNames[int labels[i]] (category k) $"image {i} is labelled with its emoji's category")
            let all = Emoji.Catalogue(root, EmojiStyle.Both)
            Expect.isFalse (all |> Seq.exists (fun e -> e.Unified = componentEmoji || e.Unified = skinTone)) "no Component, no skin tone"
            let count name =
                use train = read name Split.Train root
                use test = read name Split.Test root
                train.Count + test.Count
            Expect.equal (count "emoji-google", count "emoji-twitter") (int64 fakeEmoji.Length, int64 fakeEmoji.Length - 1L) "one style each"
        }

        test "-skin-tones reads each variant beside its base emoji: its labels, its side of the split" {
            let root = fakePackages ()
            let all = Emoji.Catalogue(root, EmojiStyle.Both, true)
            let variants = all |> Seq.filter (fun e -> e.Unified = skinTone) |> List.ofSeq
            Expect.equal (variants |> List.map (fun e -> e.Style)) [ EmojiStyle.Google; EmojiStyle.Twitter ] "the variant in both styles"
            for v in variants do
                Expect.equal v.Base (unified 0) "its base emoji"
                Expect.equal (v.Category, v.IsTest) (category 0, Emoji.IsTest(unified 0)) "the base's category and side"
            Expect.isFalse (all |> Seq.exists (fun e -> e.Unified = componentEmoji)) "still no Component"
            let count name =
                use train = read name Split.Train root
                use test = read name Split.Test root
                train.Count + test.Count
            Expect.equal (count "emoji-skin-tones" - count "emoji") 2L "two more images: the variant's two drawings"
            Expect.equal (count "emoji-twitter-skin-tones-subcategory" - count "emoji-twitter-subcategory") 1L "one style, subcategory labels"
            Expect.isFalse (Emoji.Names |> Array.contains "emoji-subcategory-skin-tones") "one order of the suffixes"
        }

        test "images are 64 x 64 x 3 uint8, RGBA composed on white" {
            let root = fakePackages ()
            use data = read "emoji-twitter" Split.Train root
            Expect.sequenceEqual data.Images.shape [| data.Count; 3L; 64L; 64L |] "shape"
            Expect.equal data.Images.dtype torch.uint8 "uint8"
            let rgb y x = [ for c in 0L .. 2L -> data.Images[0L, c, y, x].item<byte>() ]
            Expect.equal (rgb 0L 0L) [ 255uy; 255uy; 255uy ] "a fully transparent pixel reads white"
            Expect.equal (rgb 0L 1L) [ 127uy; 127uy; 127uy ] "half-transparent black is mid-grey: (255·127 + 127) / 255"
            let k, s = Option.get (identify data).Head
            let r, g, b = colour k s
            Expect.equal (rgb 63L 63L) [ r; g; b ] "an opaque pixel keeps its colour"
        }

        test "subcategory labels: ordered by category, then name" {
            let root = fakePackages ()
            use train = read "emoji-subcategory" Split.Train root
            Expect.sequenceEqual train.ClassNames
                [ "smileys-0"; "smileys-1"; "animals-0"; "animals-1"; "food-0"; "food-1"; "flags-0"; "flags-1" ] "subcategories"
        }

        test "the split hash is fixed, case-insensitive and puts about 20% on the test side" {
            let sides = [ "1F600"; "0023-FE0F-20E3"; "1F44B"; "1F1EB-1F1F7"; "2764-FE0F" ] |> List.map Emoji.IsTest
            Expect.equal sides [ true; true; false; false; false ] "pinned sides of real emoji"
            Expect.equal (Emoji.IsTest "1f1eb-1f1f7") (Emoji.IsTest "1F1EB-1F1F7") "case-insensitive"
            let share = float (Seq.init 10000 (fun i -> Emoji.IsTest $"{i:X5}") |> Seq.filter id |> Seq.length) / 10000.0
            Expect.isTrue (share > 0.18 && share < 0.22) $"test share {share:F3}"
        }

        test "missing packages: one line naming the folders searched and the build command" {
            let empty = tempDir "no-emoji"
            let e = Prop.throws<DataException> (fun () -> Emoji.Locate(EmojiStyle.Both, [| empty |]) |> ignore)
            printfn "    message: %s" e.Message
            Expect.stringContains e.Message empty "names the folder"
            Expect.stringContains e.Message "dotnet fsi build.fsx test" "says how to install them"
            Expect.isFalse (e.Message.Contains '\n') "one line"
        }

        // The build's test target installs the packages first (build.fsx, ensureEmoji).
        test "the real packages: every category on both sides, no emoji on both, both drawings of each" {
            use train = DataCatalog.Load("emoji", Split.Train)
            use test = DataCatalog.Load("emoji", Split.Test)
            let folder = Emoji.Locate(EmojiStyle.Both)
            let all = Emoji.Catalogue(folder, EmojiStyle.Both)
            Expect.equal (train.Count + test.Count) (int64 all.Count) "every catalogued drawing read"
            let withTones = Emoji.Catalogue(folder, EmojiStyle.Both, true)
            let splitByBase = withTones |> Seq.groupBy (fun e -> e.Base) |> Seq.forall (fun (_, es) -> es |> Seq.map (fun e -> e.IsTest) |> Seq.distinct |> Seq.length = 1)
            Expect.isTrue splitByBase "every skin tone on its base emoji's side"
            Expect.isGreaterThan withTones.Count (all.Count + 1000) "the skin tones read (1,875 variants in 16.0.0, most in both styles)"
            Expect.sequenceEqual train.Images.shape [| train.Count; 3L; 64L; 64L |] "64 x 64 x 3"
            let sides = all |> Seq.groupBy (fun e -> e.Unified) |> Seq.map (fun (u, es) -> u, es |> Seq.map (fun e -> e.IsTest) |> Seq.distinct |> List.ofSeq) |> List.ofSeq
            Expect.allEqual (sides |> List.map (snd >> List.length)) 1 "no emoji on both sides"
            let drawings = all |> Seq.countBy (fun e -> e.Unified) |> Seq.map snd |> Seq.filter ((<>) 2) |> Seq.length
            Expect.isLessThan drawings 10 "nearly every emoji drawn in both styles"
            let share = float (sides |> List.filter (fun (_, s) -> s = [ true ]) |> List.length) / float sides.Length
            Expect.isTrue (share > 0.15 && share < 0.25) $"test share of emoji {share:F3}"
            let trainCounts, testCounts = train.ClassCounts(), test.ClassCounts()
            for c in 0 .. train.ClassNames.Count - 1 do
                printfn "    %-18s train %4d  test %4d" train.ClassNames[c] trainCounts[c] testCounts[c]
                Expect.isGreaterThan testCounts[c] 0L $"{train.ClassNames[c]} on the test side"
                Expect.isGreaterThan trainCounts[c] 0L $"{train.ClassNames[c]} on the training side"
        }
    ]
