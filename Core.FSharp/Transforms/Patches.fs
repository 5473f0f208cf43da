/// Patch-based pretext inputs: the overlapping patch grid of CPC v2, relative-position patch pairs
/// (Doersch et al. 2015) and jigsaw puzzles (Noroozi & Favaro 2016), with the jigsaw permutation
/// set of maximal Hamming distance. Images are float tensors (N, C, H, W); results stay on the
/// images' device and dtype.
module Ssl.Core.Transforms.Patches

open System
open TorchSharp
open type TorchSharp.torch
// Last, so F#'s float, int64, log, exp, ... win over torch's dtype fields and tensor functions.
open Microsoft.FSharp.Core.Operators
open Ssl.Core.Shape

let private expectImages (images: Tensor) = expect "images" [| Any; Any; Any; Any |] images

/// The overlapping grid of patches (Hénaff et al. 2019, "Data-efficient image recognition with
/// contrastive predictive coding", Sec. 4.1: 64 × 64 patches with stride 32 of a 256 × 256 image,
/// a 7 × 7 grid). images: (N, C, H, W) with H, W >= patchSize →
/// (N, gh, gw, C, patchSize, patchSize), gh = (H - patchSize) / stride + 1 (rounded down; the
/// rows and columns that do not fill a patch are dropped), gw likewise; patch (i, j) is the image
/// slice at rows i·stride .. i·stride + patchSize - 1 and columns j·stride ...
let patchGrid (patchSize: int64) (stride: int64) (images: Tensor) : Tensor =
    if patchSize < 1L then invalidArg "patchSize" $"patchSize: expected a positive size, found {patchSize}"
    if stride < 1L then invalidArg "stride" $"stride: expected a positive stride, found {stride}"
    expectImages images
    if images.shape[2] < patchSize || images.shape[3] < patchSize then
        invalidArg "images" $"images: expected H, W >= patchSize = {patchSize}, found {show images.shape}"
    use scope = NewDisposeScope()
    images.unfold(2L, patchSize, stride).unfold(3L, patchSize, stride).permute(0L, 2L, 3L, 1L, 4L, 5L).contiguous()
        .MoveToOuterDisposeScope()

/// Square patches at given positions, K per image, gathered batched.
/// size: the side; tops, lefts: (N, K) int64 pixel positions of the patches' top-left corners, each
/// patch inside the image; images: (N, C, H, W) → (N, K, C, size, size).
let patchesAt (size: int64) (tops: Tensor) (lefts: Tensor) (images: Tensor) : Tensor =
    expectImages images
    let count, channels, height, width = images.shape[0], images.shape[1], images.shape[2], images.shape[3]
    expect "tops" [| Exactly count; Any |] tops
    let perImage = tops.shape[1]
    expect "lefts" [| Exactly count; Exactly perImage |] lefts
    use scope = NewDisposeScope()
    let offsets = arange(size, dtype = ScalarType.Int64, device = images.device)
    let rows = tops.``to``(images.device).unsqueeze(2) + offsets
    let columns = lefts.``to``(images.device).unsqueeze(2) + offsets
    let source = images.unsqueeze(1).expand(count, perImage, channels, height, width)
    let band = source.gather(3L, rows.view(count, perImage, 1L, size, 1L).expand(count, perImage, channels, size, width))
    band.gather(4L, columns.view(count, perImage, 1L, 1L, size).expand(count, perImage, channels, size, size))
        .MoveToOuterDisposeScope()

/// Rows and columns (in the 3 × 3 grid) of Doersch et al.'s eight neighbour labels, in their
/// Fig. 2 order: top-left, top, top-right, left, right, bottom-left, bottom, bottom-right.
let neighbourOffsets = [| -1, -1; -1, 0; -1, 1; 0, -1; 0, 1; 1, -1; 1, 0; 1, 1 |]

/// Relative-position patch pairs (Doersch et al. 2015, "Unsupervised visual representation learning
/// by context prediction", Sec. 3 and Fig. 2; there: 96-pixel patches, 48-pixel gaps, jitter up to 7).
/// Geometry: a 3 × 3 grid of patch slots, slot (r, c) at (r, c) · (patchSize + gap) from the grid's
/// corner, spanning S = 3·patchSize + 2·gap; each patch is then moved by its own jitter, whole
/// pixels uniform in [-jitter, jitter] per axis; the grid's corner is drawn uniformly so every
/// jittered patch lies inside: H, W >= S + 2·jitter. Per image a label in 0..7 picks the neighbour
/// slot (see `neighbourOffsets`) of the centre slot.
/// images: (N, C, H, W) → centres (N, C, p, p), neighbours (N, C, p, p), labels (N) int64, and
/// positions (N, 2, 2) int64: [n, 0] = (top, left) of the centre patch, [n, 1] of the neighbour.
let relativePatchPairs (patchSize: int64) (gap: int64) (jitter: int64) (generator: Generator) (images: Tensor)
    : Tensor * Tensor * Tensor * Tensor =
    if patchSize < 1L then invalidArg "patchSize" $"patchSize: expected a positive size, found {patchSize}"
    if gap < 0L then invalidArg "gap" $"gap: expected >= 0 pixels, found {gap}"
    if jitter < 0L then invalidArg "jitter" $"jitter: expected >= 0 pixels, found {jitter}"
    expectImages images
    let span = 3L * patchSize + 2L * gap
    if images.shape[2] < span + 2L * jitter || images.shape[3] < span + 2L * jitter then
        invalidArg "images" $"images: expected H, W >= 3·patchSize + 2·gap + 2·jitter = {span + 2L * jitter}, found {show images.shape}"
    use scope = NewDisposeScope()
    let count = images.shape[0]
    let device = images.device
    let cornerY = Draw.integers generator jitter (images.shape[2] - span - jitter) [| count; 1L |] device
    let cornerX = Draw.integers generator jitter (images.shape[3] - span - jitter) [| count; 1L |] device
    let labels = Draw.integers generator 0L 7L [| count |] device
    let offsetTable = tensor(neighbourOffsets |> Array.collect (fun (dy, dx) -> [| int64 dy; int64 dx |]), dtype = ScalarType.Int64, device = device).view(8L, 2L)
    let neighbourSlot = offsetTable.index_select(0L, labels) + 1L
    // Column 0: the centre slot (1, 1); column 1: the neighbour's slot.
    let slotRows = stack([| ones_like(labels); neighbourSlot.select(1L, 0L) |], 1L)
    let slotColumns = stack([| ones_like(labels); neighbourSlot.select(1L, 1L) |], 1L)
    let jitters = Draw.integers generator (-jitter) jitter [| count; 2L; 2L |] device
    let tops = cornerY + slotRows * (patchSize + gap) + jitters.select(2L, 0L)
    let lefts = cornerX + slotColumns * (patchSize + gap) + jitters.select(2L, 1L)
    let pairs = patchesAt patchSize tops lefts images
    let centres = pairs.select(1L, 0L).contiguous()
    let neighbours = pairs.select(1L, 1L).contiguous()
    let positions = stack([| tops; lefts |], 2L)
    centres.MoveToOuterDisposeScope(), neighbours.MoveToOuterDisposeScope(), labels.MoveToOuterDisposeScope(),
    positions.MoveToOuterDisposeScope()

/// A jigsaw permutation set: permutation k sends tile Permutations[k][i] of the image to place i.
type PermutationSet =
    { /// The permutations of 0..8, in the order chosen.
      Permutations: int[][]
      /// The smallest Hamming distance between two permutations of the set (9 when it has one).
      MinimumHamming: int
      /// The mean Hamming distance over all pairs of the set (0 when it has one).
      MeanHamming: float }

/// All 9! permutations of 0..8 in lexicographic order, row by row: 362880 × 9 bytes.
let private allPermutations () =
    let count = 362880
    let rows = Array.zeroCreate<byte> (count * 9)
    let current = Array.init 9 byte
    for row in 0 .. count - 1 do
        Array.blit current 0 rows (row * 9) 9
        // Next permutation in lexicographic order (Narayana Pandita).
        let mutable i = 7
        while i >= 0 && current[i] > current[i + 1] do i <- i - 1
        if i >= 0 then
            let mutable j = 8
            while current[j] < current[i] do j <- j - 1
            let swap = current[i]
            current[i] <- current[j]
            current[j] <- swap
            Array.Reverse(current, i + 1, 8 - i)
    rows

let private hamming (rows: byte[]) (a: int) (b: int) =
    let mutable distance = 0
    for place in 0 .. 8 do
        if rows[a * 9 + place] <> rows[b * 9 + place] then distance <- distance + 1
    distance

/// The jigsaw permutation set of Noroozi & Favaro 2016 ("Unsupervised learning of visual
/// representations by solving jigsaw puzzles", Sec. 3.2 and Algorithm 1, "maximal" variant):
/// start from one of the 9! permutations drawn with `seed`, then repeatedly add the remaining
/// permutation whose summed Hamming distance to those already chosen is largest (ties: the first in
/// lexicographic order). size: 1 .. 9!, e.g. 100 or 1000 (the paper's choice); with seed 0 the sets
/// of 100 and 1000 reach minimum distance 2 and mean distance 8.08 and 8.01. Runs on the CPU in
/// plain loops: one pass over the 9! candidates per chosen permutation, faster here than tensor ops
/// over a dimension of 9.
let permutationSet (size: int) (seed: int64) : PermutationSet =
    if size < 1 || size > 362880 then invalidArg "size" $"size: expected 1 .. 9! = 362880 permutations, found {size}"
    let rows = allPermutations ()
    let total = rows.Length / 9
    let first =
        use generator = new Generator(uint64 seed, CPU)
        use drawn = randint(0L, int64 total, [| 1L |], dtype = ScalarType.Int64, generator = generator)
        int (drawn.item<int64>())
    let chosen = Collections.Generic.List<int>([ first ])
    let taken = Array.zeroCreate<bool> total
    let summed = Array.zeroCreate<int> total
    for _ in 2 .. size do
        let latest = chosen[chosen.Count - 1]
        taken[latest] <- true
        let mutable best = -1
        let mutable bestSum = -1
        for candidate in 0 .. total - 1 do
            summed[candidate] <- summed[candidate] + hamming rows latest candidate
            if not taken[candidate] && summed[candidate] > bestSum then
                best <- candidate
                bestSum <- summed[candidate]
        chosen.Add best
    let pairs = [| for a in 0 .. size - 1 do for b in a + 1 .. size - 1 -> hamming rows chosen[a] chosen[b] |]
    { Permutations = [| for k in chosen -> Array.init 9 (fun place -> int rows[k * 9 + place]) |]
      MinimumHamming = if pairs.Length = 0 then 9 else Array.min pairs
      MeanHamming = if pairs.Length = 0 then 0.0 else Array.averageBy float pairs }

/// A permutation set as a tensor (P, 9) int64 on `device`, as `shuffleTiles` and `jigsaw` take it.
let permutationTensor (set: PermutationSet) (device: Device) : Tensor =
    tensor(set.Permutations |> Array.concat |> Array.map int64, dtype = ScalarType.Int64, device = device)
        .view(int64 set.Permutations.Length, 9L)

/// The nine tiles of each image in reading order (Noroozi & Favaro 2016, Sec. 3: a 225-pixel crop
/// cut into 3 × 3 cells of 75 pixels, a random 64-pixel tile inside each cell, so neighbouring tiles
/// are separated by a random gap). Here: a 3 × 3 grid of cellSize cells at a corner drawn uniformly
/// in the image (H, W >= 3·cellSize), and in each cell a tileSize tile at a whole-pixel offset
/// uniform in [0, cellSize - tileSize] per axis.
/// images: (N, C, H, W) → tiles (N, 9, C, t, t) and positions (N, 9, 2) int64 (top, left) of each tile.
let jigsawTiles (cellSize: int64) (tileSize: int64) (generator: Generator) (images: Tensor) : Tensor * Tensor =
    if tileSize < 1L || tileSize > cellSize then
        invalidArg "tileSize" $"tileSize: expected 1 .. cellSize = {cellSize}, found {tileSize}"
    expectImages images
    if images.shape[2] < 3L * cellSize || images.shape[3] < 3L * cellSize then
        invalidArg "images" $"images: expected H, W >= 3·cellSize = {3L * cellSize}, found {show images.shape}"
    use scope = NewDisposeScope()
    let count = images.shape[0]
    let device = images.device
    let cornerY = Draw.integers generator 0L (images.shape[2] - 3L * cellSize) [| count; 1L |] device
    let cornerX = Draw.integers generator 0L (images.shape[3] - 3L * cellSize) [| count; 1L |] device
    let cells = arange(9L, dtype = ScalarType.Int64, device = device).unsqueeze(0)
    let within = Draw.integers generator 0L (cellSize - tileSize) [| count; 9L; 2L |] device
    let tops = cornerY + cells.div(3L.ToScalar(), rounding_mode = RoundingMode.floor) * cellSize + within.select(2L, 0L)
    let lefts = cornerX + cells.remainder(3L.ToScalar()) * cellSize + within.select(2L, 1L)
    let tiles = patchesAt tileSize tops lefts images
    tiles.MoveToOuterDisposeScope(), (stack([| tops; lefts |], 2L)).MoveToOuterDisposeScope()

/// Puts each image's tiles in the order of its permutation: place i receives tile
/// permutations[labels[n], i]. permutations: (P, 9) int64; labels: (N) int64 in 0..P-1;
/// tiles: (N, 9, C, t, t) → (N, 9, C, t, t).
let shuffleTiles (permutations: Tensor) (labels: Tensor) (tiles: Tensor) : Tensor =
    expect "permutations" [| Any; Exactly 9L |] permutations
    expect "tiles" [| Any; Exactly 9L; Any; Any; Any |] tiles
    expect "labels" [| Exactly tiles.shape[0] |] labels
    use scope = NewDisposeScope()
    let order = permutations.``to``(tiles.device).index_select(0L, labels.``to``(tiles.device))
    let index = order.view(tiles.shape[0], 9L, 1L, 1L, 1L).expand(tiles.shape)
    tiles.gather(1L, index).MoveToOuterDisposeScope()

/// Each tile standardised on its own (Noroozi & Favaro 2016, Sec. 3.2). tiles: (M, C, t, t) → same
/// shape; a flat tile (an empty background) stays flat instead of amplifying float noise.
let normaliseTiles (tiles: Tensor) =
    use scope = NewDisposeScope()
    let mean = tiles.mean([| 1L; 2L; 3L |], keepdim = true)
    let std = tiles.std([| 1L; 2L; 3L |], keepdim = true)
    ((tiles - mean) / std.clamp_min(1e-2)).MoveToOuterDisposeScope()

/// A jigsaw puzzle per image (Noroozi & Favaro 2016, Sec. 3): tiles from `jigsawTiles`, a
/// permutation index drawn uniformly per image, the tiles shuffled by it (`shuffleTiles`).
/// permutations: (P, 9) int64 (`permutationTensor`); images: (N, C, H, W) →
/// shuffled tiles (N, 9, C, t, t) and labels (N) int64, the permutation indices to predict.
let jigsaw (permutations: Tensor) (cellSize: int64) (tileSize: int64) (generator: Generator) (images: Tensor) : Tensor * Tensor =
    expect "permutations" [| Any; Exactly 9L |] permutations
    use scope = NewDisposeScope()
    let tiles, _ = jigsawTiles cellSize tileSize generator images
    let labels = Draw.integers generator 0L (permutations.shape[0] - 1L) [| images.shape[0] |] images.device
    let shuffled = shuffleTiles permutations labels tiles
    shuffled.MoveToOuterDisposeScope(), labels.MoveToOuterDisposeScope()
