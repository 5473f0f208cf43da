/// Recipe configs as data: an F# config record to JSON and back, and typed `--set Field=value`
/// overrides (nested fields with dots, tuples as comma lists), by reflection over the record, so
/// every recipe's config gets them without code of its own. Field names are the record's own. A
/// C# config is a class whose public properties all have setters (`init` included), such as a
/// C# record: its properties are its fields, in declaration order.
[<AutoOpen>]
module Ssl.Experiments.Configs

open System
open System.Globalization
open System.Text.Json.Nodes
open Microsoft.FSharp.Reflection

/// The inclusive range a numeric config field accepts, checked by `--set` and `--config`.
[<AttributeUsage(AttributeTargets.Property ||| AttributeTargets.Field)>]
type RangeAttribute(minimum: float, maximum: float) =
    inherit Attribute()
    /// At least `minimum`, no upper bound.
    new(minimum: float) = RangeAttribute(minimum, Double.PositiveInfinity)
    member _.Minimum = minimum
    member _.Maximum = maximum

let private invariant = CultureInfo.InvariantCulture

/// A C# config class: not an F# type, not a collection, with public properties that all have setters.
let private isClassConfig (t: Type) =
    t.IsClass && t <> typeof<string> && not t.IsArray && not (typeof<Collections.IEnumerable>.IsAssignableFrom t)
    && not (FSharpType.IsRecord t || FSharpType.IsUnion t || FSharpType.IsTuple t || FSharpType.IsFunction t)
    && (let props = t.GetProperties(Reflection.BindingFlags.Public ||| Reflection.BindingFlags.Instance)
        props.Length > 0 && props |> Array.forall (fun p -> p.CanRead && p.CanWrite && p.GetIndexParameters().Length = 0))

/// An F# record or a C# config class: a type whose fields a config reads and writes.
let private isRecord (t: Type) = FSharpType.IsRecord t || isClassConfig t

/// The fields of a record type, in declaration order.
let private recordFields (t: Type) : Reflection.PropertyInfo[] =
    if FSharpType.IsRecord t then FSharpType.GetRecordFields t
    else t.GetProperties(Reflection.BindingFlags.Public ||| Reflection.BindingFlags.Instance) |> Array.sortBy (fun p -> p.MetadataToken)

let private recordValues (t: Type) (value: obj) : obj[] =
    if FSharpType.IsRecord t then FSharpValue.GetRecordFields value
    else recordFields t |> Array.map (fun p -> p.GetValue value)

/// A new record of type `t` holding `values` (in `recordFields` order). A C# class is built by its
/// constructor whose parameters are all fields (a C# record's primary one; the longest such), the
/// remaining fields set through their setters.
let private makeRecord (t: Type) (values: obj[]) : obj =
    if FSharpType.IsRecord t then FSharpValue.MakeRecord(t, values)
    else
        let props = recordFields t
        let index (name: string) = props |> Array.tryFindIndex (fun p -> String.Equals(p.Name, name, StringComparison.OrdinalIgnoreCase))
        let constructor =
            t.GetConstructors()
            |> Array.filter (fun c -> c.GetParameters() |> Array.forall (fun a -> (index a.Name).IsSome))
            |> Array.sortByDescending (fun c -> c.GetParameters().Length)
            |> Array.tryHead
        match constructor with
        | None -> invalidOp $"Configs: {t.Name} has no public constructor whose parameters are its properties (a C# record, or a class with a parameterless constructor)"
        | Some c ->
            let parameters = c.GetParameters()
            let value = c.Invoke(parameters |> Array.map (fun a -> values[(index a.Name).Value]))
            let given = parameters |> Array.map (fun a -> (index a.Name).Value) |> Set.ofArray
            props |> Array.iteri (fun i p -> if not (given.Contains i) then p.SetValue(value, values[i]))
            value

/// A union with fields is config data when it offers `static TryParse: string -> 'T option` and a
/// `ToString` that TryParse reads back (e.g. Backbone; its static `Forms` text names the forms in
/// messages); a union without fields is its case name.
let private tryParseMethod (t: Type) = t.GetMethod("TryParse", [| typeof<string> |])

let private isTextUnion (t: Type) = FSharpType.IsUnion t && not (isNull (tryParseMethod t))

let rec private typeName (t: Type) =
    if t = typeof<int> || t = typeof<int64> then "integer"
    elif t = typeof<float> then "number"
    elif t = typeof<bool> then "true or false"
    elif t = typeof<string> then "text"
    elif FSharpType.IsTuple t then FSharpType.GetTupleElements t |> Array.map typeName |> String.concat "," |> sprintf "(%s)"
    elif isTextUnion t then
        match t.GetProperty("Forms") with
        | null -> t.Name
        | p -> string (p.GetValue null)
    elif FSharpType.IsUnion t then FSharpType.GetUnionCases t |> Array.map (fun c -> c.Name) |> String.concat "|"
    elif t.IsEnum then Enum.GetNames t |> String.concat "|"
    else t.Name

/// Every settable leaf of a config record type: (dotted path, expected type), in field order.
let rec fields (t: Type) : (string * string) list =
    [ for p in recordFields t do
          if isRecord p.PropertyType then
              for sub, kind in fields p.PropertyType -> $"{p.Name}.{sub}", kind
          else yield p.Name, typeName p.PropertyType ]

let private rangeOf (p: Reflection.PropertyInfo) =
    match p.GetCustomAttributes(typeof<RangeAttribute>, true) with
    | [| :? RangeAttribute as r |] -> Some r
    | _ -> None

let private describeRange (r: RangeAttribute) =
    if Double.IsPositiveInfinity r.Maximum then $">= {r.Minimum}" else $"in [{r.Minimum}, {r.Maximum}]"

/// Parses one leaf value of type `t`; Error says what was expected.
let rec private parseLeaf (t: Type) (text: string) : Result<obj, string> =
    let text = text.Trim()
    let number (parse: string -> bool * 'a) = match parse text with | true, v -> Ok(box v) | _ -> Error(typeName t)
    if t = typeof<int> then number (fun s -> Int32.TryParse(s, NumberStyles.Integer, invariant))
    elif t = typeof<int64> then number (fun s -> Int64.TryParse(s, NumberStyles.Integer, invariant))
    elif t = typeof<float> then
        // A config number is finite: NaN and infinities are no learning rate, and JSON cannot hold them.
        match Double.TryParse(text, NumberStyles.Float, invariant) with
        | true, v when Double.IsFinite v -> Ok(box v)
        | _ -> Error "a finite number"
    elif t = typeof<bool> then number (fun s -> Boolean.TryParse s)
    elif t = typeof<string> then Ok(box text)
    elif FSharpType.IsTuple t then
        let elements = FSharpType.GetTupleElements t
        let parts = text.Trim('(', ')').Split(',')
        if parts.Length <> elements.Length then Error(typeName t)
        else
            match Array.map2 parseLeaf elements parts with
            | parsed when parsed |> Array.forall Result.isOk ->
                Ok(FSharpValue.MakeTuple(parsed |> Array.map (function Ok v -> v | Error _ -> null), t))
            | _ -> Error(typeName t)
    elif isTextUnion t then
        match (tryParseMethod t).Invoke(null, [| text |]) with
        | null -> Error(typeName t)
        | option ->
            let case, values = FSharpValue.GetUnionFields(option, option.GetType())
            if case.Name = "Some" then Ok values[0] else Error(typeName t)
    elif FSharpType.IsUnion t then
        match FSharpType.GetUnionCases t |> Array.tryFind (fun c -> String.Equals(c.Name, text, StringComparison.OrdinalIgnoreCase)) with
        | Some c when c.GetFields().Length = 0 -> Ok(FSharpValue.MakeUnion(c, [||]))
        | _ -> Error(typeName t)
    elif t.IsEnum then
        // A C# enum is its member's name (never a number, which might name no member).
        match Enum.GetNames t |> Array.tryFind (fun n -> String.Equals(n, text, StringComparison.OrdinalIgnoreCase)) with
        | Some n -> Ok(Enum.Parse(t, n))
        | None -> Error(typeName t)
    else Error $"a supported config type (found {t.Name})"

let private checkRange (path: string) (p: Reflection.PropertyInfo) (value: obj) =
    match rangeOf p with
    | Some r ->
        let v = Convert.ToDouble(value, invariant)
        if v < r.Minimum || v > r.Maximum then
            invalidArg path $"{path}: expected {typeName p.PropertyType} {describeRange r}, found {value}"
    | None -> ()

let private unknown (t: Type) (path: string) (what: string) =
    let valid = fields t |> List.map (fun (f, kind) -> $"{f} ({kind})") |> String.concat ", "
    invalidArg path $"{path}: {what}; valid fields: {valid}"

/// `value` (a record of type `t`) with the field at `path` (dots for nested records) set from
/// `text`. Unknown fields, wrong types and values outside a
/// field's Range are ArgumentExceptions naming the field, what was expected and what was found.
let setText (t: Type) (value: obj) (path: string) (text: string) : obj =
    let rec go (t: Type) (value: obj) (prefix: string) (names: string list) =
        let props = recordFields t
        match names with
        | [] -> invalidArg path $"{path}: expected a field name"
        | name :: rest ->
            let full = if prefix = "" then name else $"{prefix}.{name}"
            match props |> Array.tryFindIndex (fun p -> p.Name = name) with
            | None -> unknown t path $"no field '{full}'"
            | Some i ->
                let p = props[i]
                let values = recordValues t value
                let updated =
                    match rest, isRecord p.PropertyType with
                    | [], true ->
                        let inner = fields p.PropertyType |> List.map (fun (f, _) -> full + "." + f) |> String.concat ", "
                        invalidArg path $"{path}: '{full}' is a group of fields; set one of {inner}"
                    | [], false ->
                        match parseLeaf p.PropertyType text with
                        | Ok v -> checkRange full p v; v
                        | Error expected -> invalidArg path $"{full}: expected {expected}, found '{text}'"
                    | _, true -> go p.PropertyType values[i] full rest
                    | _, false -> invalidArg path $"{path}: '{full}' has no fields"
                values[i] <- updated
                makeRecord t values
    go t value "" (List.ofArray (path.Split('.')))

/// The dotted path a `--set` names: `path` itself, or the one nested field it ends (`Epochs` for
/// `Schedule.Epochs`) when no top-level field is so named and exactly one nested one is.
let resolvePath (t: Type) (path: string) =
    let top = path.Split('.')[0]
    if recordFields t |> Array.exists (fun p -> p.Name = top) then path
    else
        let tails =
            fields t |> List.map fst
            |> List.filter (fun f -> f.EndsWith("." + path, StringComparison.Ordinal)) |> List.map (fun f -> f.Substring(0, f.Length - path.Length - 1))
            |> List.distinct
        match tails with
        | [ parent ] -> $"{parent}.{path}"
        | _ -> path

/// Applies `Field=value` overrides in order (a later one wins); a nested field may be named by
/// its own name alone where that is unambiguous (resolvePath).
let applyOverrides<'T> (overrides: string list) (config: 'T) : 'T =
    overrides
    |> List.fold (fun (value: obj) (o: string) ->
        match o.IndexOf '=' with
        | i when i > 0 -> setText typeof<'T> value (resolvePath typeof<'T> (o.Substring(0, i).Trim())) (o.Substring(i + 1))
        | _ -> invalidArg "--set" $"--set: expected Field=value, found '{o}'") (box config)
    |> unbox<'T>

/// `config` with field `path` set to `value` (typed, the C# surface): `Edit.Set(c, "Epochs", 2)`.
type Edit =
    static member Set<'T>(config: 'T, path: string, value: obj) : 'T =
        let text =
            match value with
            | :? IFormattable as f -> f.ToString(null, invariant)
            | v -> string v
        unbox<'T> (setText typeof<'T> (box config) (resolvePath typeof<'T> path) text)

let rec private toNode (t: Type) (value: obj) : JsonNode =
    if isRecord t then
        let o = JsonObject()
        for p, v in Array.zip (recordFields t) (recordValues t value) do
            o[p.Name] <- toNode p.PropertyType v
        o
    elif FSharpType.IsTuple t then
        JsonArray(Array.map2 toNode (FSharpType.GetTupleElements t) (FSharpValue.GetTupleFields value)) :> JsonNode
    elif isTextUnion t then JsonValue.Create(string value)
    elif FSharpType.IsUnion t then JsonValue.Create((fst (FSharpValue.GetUnionFields(value, t))).Name)
    elif t.IsEnum then JsonValue.Create(Enum.GetName(t, value))
    elif t = typeof<int> then JsonValue.Create(unbox<int> value)
    elif t = typeof<int64> then JsonValue.Create(unbox<int64> value)
    elif t = typeof<float> then JsonValue.Create(unbox<float> value)
    elif t = typeof<bool> then JsonValue.Create(unbox<bool> value)
    elif t = typeof<string> then JsonValue.Create(unbox<string> value)
    else invalidOp $"Configs: {t.Name} is not a supported config type"

/// The config record as a JSON object whose keys are its field names (what config.json holds).
let toJson<'T> (config: 'T) : JsonObject = (toNode typeof<'T> (box config)).AsObject()

let rec private ofNode (source: string) (t: Type) (path: string) (node: JsonNode) : obj =
    let wrong () =
        let found = if isNull node then "null" else node.ToJsonString()
        invalidArg "--config" $"{source}: {path}: expected {typeName t}, found {found}"
    if isNull node then wrong ()
    elif isRecord t then
        match node with
        | :? JsonObject as o ->
            let props = recordFields t
            for kv in o do
                if not (props |> Array.exists (fun p -> p.Name = kv.Key)) then
                    let at = if path = "" then kv.Key else $"{path}.{kv.Key}"
                    let valid = props |> Array.map (fun p -> p.Name) |> String.concat ", "
                    invalidArg "--config" $"{source}: unknown field '{at}'; valid fields: {valid}"
            let values =
                props |> Array.map (fun p ->
                    let at = if path = "" then p.Name else $"{path}.{p.Name}"
                    match o.ContainsKey p.Name with
                    | true ->
                        let value = ofNode source p.PropertyType at o[p.Name]
                        (try checkRange at p value with :? ArgumentException as e -> invalidArg "--config" $"{source}: {e.Message}")
                        value
                    | _ -> invalidArg "--config" $"{source}: missing field '{at}' ({typeName p.PropertyType})")
            makeRecord t values
        | _ -> wrong ()
    elif FSharpType.IsTuple t then
        match node with
        | :? JsonArray as a when a.Count = (FSharpType.GetTupleElements t).Length ->
            FSharpValue.MakeTuple(Array.map2 (fun e n -> ofNode source e path n) (FSharpType.GetTupleElements t) (Seq.toArray a), t)
        | _ -> wrong ()
    else
        match node with
        | :? JsonValue as v ->
            // Numbers and booleans must be JSON numbers and booleans, not text that parses as one.
            let quoted = v.GetValueKind() = Text.Json.JsonValueKind.String
            let scalar = t = typeof<float> || t = typeof<int> || t = typeof<int64> || t = typeof<bool>
            match parseLeaf t (if quoted then v.GetValue<string>() else v.ToJsonString()) with
            | Ok value when not (quoted && scalar) -> value
            | _ -> wrong ()
        | _ -> wrong ()

/// Reads a config record back from JSON: every field must be present and none unknown; `source`
/// (a file path) names it in messages.
let ofJson<'T> (source: string) (node: JsonNode) : 'T = unbox<'T> (ofNode source typeof<'T> "" node)
