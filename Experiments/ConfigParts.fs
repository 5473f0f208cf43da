/// What every recipe's config shares: its `Schedule` (a TrainingSchedule: epochs, batch, rate, decay, warm-up) and its
/// `Probe` (the representation the protocols read). A config holds them as fields named Schedule and
/// Probe (`--set Schedule.Epochs=3`, `--set Probe=branch:3`); the template reads them there.
[<AutoOpen>]
module Ssl.Experiments.ConfigParts

open System
open System.Text.Json.Nodes
open Ssl.Host.Engine
open Ssl.Experiments.Configs

/// A recipe's training schedule. Rate, decay and warm-up are its main optimizer's (the Optim
/// helpers read them); a recipe with more optimizers keeps their own rates in its config.
type TrainingSchedule =
    { /// Passes over the examples an epoch walks (the training set, or a semi-supervised pool).
      [<Range(1.0)>] Epochs: int
      /// Images a step: the engine's batch (a semi-supervised recipe's labelled batch, B).
      [<Range(1.0)>] BatchSize: int
      [<Range(0.0)>] LearningRate: float
      [<Range(0.0)>] WeightDecay: float
      /// Epochs of linear warm-up before the cosine decay (0: none).
      [<Range(0.0)>] WarmupEpochs: float }

/// The representation the protocols (linear probe, kNN, few-label probe) read, as config text:
/// `output`, `branch:<pool>`, `layer:<name>:<pool>`, `class-tokens:<blocks>`, `class-tokens-patch-mean:<blocks>`.
[<RequireQualifiedAccess>]
type Probe =
    /// The encoder's output.
    | Output
    /// The branch layer a staged encoder names (SmallConvNet's block 2), average-pooled to pool x pool.
    | Branch of pool: int64
    /// A named inner layer (e.g. features.block3b_relu), average-pooled to pool x pool.
    | Layer of name: string * pool: int64
    /// A ViT's class tokens of its last `blocks` blocks concatenated (DINO's linear evaluation),
    /// with the mean of the last block's patch tokens when `patchMean`.
    | ClassTokens of blocks: int64 * patchMean: bool

    /// The (layer, pool) pair Pipeline.probed and config.json's `probe` block read.
    member p.LayerAndPool =
        match p with
        | Output -> "", 0L
        | Branch pool -> "branch", pool
        | Layer(name, pool) -> name, pool
        | ClassTokens(blocks, false) -> "class-tokens", blocks
        | ClassTokens(blocks, true) -> "class-tokens-patch-mean", blocks

    override p.ToString() =
        match p with
        | Output -> "output"
        | Branch pool -> $"branch:{pool}"
        | Layer(name, pool) -> $"layer:{name}:{pool}"
        | ClassTokens(blocks, false) -> $"class-tokens:{blocks}"
        | ClassTokens(blocks, true) -> $"class-tokens-patch-mean:{blocks}"

    /// The probe of a (layer, pool) pair as config.json's `probe` block and C#'s TrainingPlan name it.
    static member OfLayer(layer: string, pool: int64) =
        match (if isNull layer then "" else layer) with
        | "" -> Output
        | "branch" -> Branch pool
        | "class-tokens" -> ClassTokens(pool, false)
        | "class-tokens-patch-mean" -> ClassTokens(pool, true)
        | name -> Layer(name, pool)

    static member Forms = "output|branch:<pool>|layer:<name>:<pool>|class-tokens:<blocks>|class-tokens-patch-mean:<blocks>"

    static member TryParse(text: string) : Probe option =
        let number (s: string) = match Int64.TryParse s with | true, v when v > 0L -> Some v | _ -> None
        match (if isNull text then "" else text.Trim()).Split(':') |> List.ofArray with
        | [ "output" ] -> Some Output
        | [ "branch"; pool ] -> number pool |> Option.map Branch
        | [ "layer"; name; pool ] when name <> "" -> number pool |> Option.map (fun p -> Layer(name, p))
        | [ "class-tokens"; blocks ] -> number blocks |> Option.map (fun b -> ClassTokens(b, false))
        | [ "class-tokens-patch-mean"; blocks ] -> number blocks |> Option.map (fun b -> ClassTokens(b, true))
        | _ -> None

/// A batch of at least `minimum` images (batch statistics need two), or an invalidArg naming
/// Schedule.BatchSize, for a recipe's CheckData.
let requireBatchOf (minimum: int) (schedule: TrainingSchedule) =
    if schedule.BatchSize < minimum then
        invalidArg "Schedule.BatchSize" $"Schedule.BatchSize: expected integer >= {minimum}, found {schedule.BatchSize}"

/// The optimizers most recipes take, from their schedule: momentum 0.9 and the engine's cosine
/// decay after the schedule's warm-up (OptimizerSpec).
module Optim =
    /// SGD with momentum 0.9.
    let sgd (schedule: TrainingSchedule) =
        OptimizerSpec(Kind = OptimizerKind.Sgd, LearningRate = schedule.LearningRate, Momentum = 0.9,
                      WeightDecay = schedule.WeightDecay, WarmupEpochs = schedule.WarmupEpochs)

    /// SGD with Nesterov momentum 0.9: most pretext recipes' and the supervised baseline's.
    let nesterov (schedule: TrainingSchedule) =
        OptimizerSpec(Kind = OptimizerKind.Sgd, LearningRate = schedule.LearningRate, Momentum = 0.9, Nesterov = true,
                      WeightDecay = schedule.WeightDecay, WarmupEpochs = schedule.WarmupEpochs)

    /// LARS with momentum 0.9 and trust coefficient η = `eta` (You et al. 2017, Alg. 1).
    let lars (schedule: TrainingSchedule) (eta: float) =
        OptimizerSpec(Kind = OptimizerKind.Lars, LearningRate = schedule.LearningRate, Momentum = 0.9,
                      WeightDecay = schedule.WeightDecay, WarmupEpochs = schedule.WarmupEpochs, LarsEta = eta)

    /// Adam with PyTorch's β = (0.9, 0.999).
    let adam (schedule: TrainingSchedule) =
        OptimizerSpec(Kind = OptimizerKind.Adam, LearningRate = schedule.LearningRate, WeightDecay = schedule.WeightDecay,
                      WarmupEpochs = schedule.WarmupEpochs)

/// A config written before Schedule and Probe (older run folders' config.json, results/ records) in
/// today's shape: `template` (today's config of the recipe, as JSON) with each of the old top-level
/// fields put where today's field of that name is (`Epochs` → `Schedule.Epochs`; semi-supervised
/// `LabelledBatch` and Exemplar's `ImagesPerBatch` → `Schedule.BatchSize`; DINO's `LearningRatePer256` → `Schedule.LearningRate`),
/// `ProbeLayer` and `ProbePool` as the Probe text; fields the old config did not have (a warm-up it
/// never took) keep the template's value, and a field today's shape has nowhere stays at the top for
/// the reader to refuse. A config already in today's shape (no top-level field that today's type
/// lacks) comes back as it is.
let upgrade (configType: Type) (template: JsonObject) (old: JsonObject) : JsonObject =
    let leaves = Configs.fields configType |> List.map fst
    // Whether every key of `json` (and of its nested objects) is one `shape` has.
    let rec fits (shape: JsonObject) (json: JsonObject) =
        json |> Seq.forall (fun kv ->
            match shape[kv.Key], kv.Value with
            | null, _ when not (shape.ContainsKey kv.Key) -> false
            | (:? JsonObject as inner), (:? JsonObject as given) -> fits inner given
            | _ -> true)
    let renamed = dict [ "LabelledBatch", "BatchSize"; "ImagesPerBatch", "BatchSize"; "LearningRatePer256", "LearningRate" ]
    // `old`'s fields put into a copy of `template`, the object at `prefix` (a dotted path) of the config.
    let rec place (prefix: string) (template: JsonObject) (old: JsonObject) =
        let result = template.DeepClone().AsObject()
        let set (path: string) (value: JsonNode) =
            let parts = path.Split('.')
            let parent = parts[.. parts.Length - 2] |> Array.fold (fun (o: JsonObject) p -> o[p].AsObject()) result
            parent[parts[parts.Length - 1]] <- (if isNull value then null else value.DeepClone())
        for kv in old do
            match kv.Key, template[kv.Key], kv.Value with
            | ("ProbeLayer" | "ProbePool"), _, _ when template.ContainsKey "Probe" ->
                let text (key: string) = match old[key] with null -> None | v -> Some v
                let layer = text "ProbeLayer" |> Option.map (fun v -> v.GetValue<string>()) |> Option.defaultValue ""
                let pool = text "ProbePool" |> Option.map (fun v -> v.GetValue<int64>()) |> Option.defaultValue 1L
                result["Probe"] <- JsonValue.Create(string (Probe.OfLayer(layer, pool)))
            | key, (:? JsonObject as inner), (:? JsonObject as given) -> result[key] <- place (prefix + key + ".") inner given
            | key, _, value when template.ContainsKey key -> set key value
            | key, _, value ->
                let name = match renamed.TryGetValue key with | true, n -> n | _ -> key
                let matches =
                    leaves |> List.filter (fun f -> f.StartsWith(prefix, StringComparison.Ordinal) && f.EndsWith("." + name, StringComparison.Ordinal))
                match matches with
                | [ path ] -> set (path.Substring prefix.Length) value
                | _ -> result[key] <- value.DeepClone()
        result
    if fits template old then old else place "" template old
