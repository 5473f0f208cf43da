// The build script: `dotnet fsi build.fsx <target>`. Targets: build, test, demo, repro, bench, clean.
// It needs nothing but the .NET SDK; it installs the data sets the demo and tests read (Debian's
// dataset-fashion-mnist with apt, the emoji npm packages with npm) where they are missing and it can,
// and says how to provide them otherwise; the bench target installs what the PyTorch twins run on
// (python3-torch, libopenblas0-openmp) the same way.
open System
open System.Diagnostics
open System.IO
open System.Text.RegularExpressions

let root = __SOURCE_DIRECTORY__
let configuration = "Release"

let run (file: string) (args: string) =
    printfn "> %s %s" file args
    use p = Process.Start(ProcessStartInfo(file, args, WorkingDirectory = root, UseShellExecute = false))
    p.WaitForExit()
    p.ExitCode

/// Runs a command, echoing its output as it comes, and returns the exit code with all the output.
let runCapture (file: string) (args: string) =
    printfn "> %s %s" file args
    let psi = ProcessStartInfo(file, args, WorkingDirectory = root, UseShellExecute = false,
                               RedirectStandardOutput = true, RedirectStandardError = true)
    use p = new Process(StartInfo = psi)
    let lines = Collections.Concurrent.ConcurrentQueue<string>()
    let echo (e: DataReceivedEventArgs) = if not (isNull e.Data) then (printfn "%s" e.Data; lines.Enqueue e.Data)
    p.OutputDataReceived.Add echo
    p.ErrorDataReceived.Add echo
    p.Start() |> ignore
    p.BeginOutputReadLine()
    p.BeginErrorReadLine()
    p.WaitForExit()
    p.ExitCode, String.Join("\n", lines)

let fail (message: string) =
    eprintfn "build.fsx: %s" message
    exit 1

let must code what = if code <> 0 then fail $"{what} failed with exit code {code}"

// ---- data --------------------------------------------------------------------------------------
let fashionMnistFile = "train-images-idx3-ubyte.gz"
let debianFashionMnist = "/usr/share/datasets/fashion-mnist"

let fashionMnistPresent () =
    let fromEnv =
        match Environment.GetEnvironmentVariable "SSL_DATA" with
        | null | "" -> []
        | dir -> [ Path.Combine(dir, "fashion-mnist"); dir ]
    (fromEnv @ [ debianFashionMnist ])
    |> List.exists (fun d -> File.Exists(Path.Combine(d, fashionMnistFile)) || File.Exists(Path.Combine(d, "train-images-idx3-ubyte")))

let onPath (tool: string) =
    (Environment.GetEnvironmentVariable "PATH").Split(':') |> Array.exists (fun d -> File.Exists(Path.Combine(d, tool)))

let isRoot () = Environment.UserName = "root"

/// Installs Debian `packages` with apt (as root, or through sudo without a password), updating the
/// package lists once if the first try fails; otherwise fails with `howTo`. `what` names the need.
let aptInstall (what: string) (packages: string) (howTo: string) =
    if not (onPath "apt-get") then fail $"{what} is missing and apt-get is not available. {howTo}"
    let apt args =
        if isRoot () then run "apt-get" args
        elif onPath "sudo" then run "sudo" ("-n apt-get " + args)
        else 1
    let env = "-y -q -o Dpkg::Use-Pty=0"
    // No configuration questions from the packages' install scripts (apt-get as root inherits it).
    Environment.SetEnvironmentVariable("DEBIAN_FRONTEND", "noninteractive")
    printfn "%s not found: installing the Debian package(s) %s." what packages
    if apt $"install {env} {packages}" <> 0 then
        apt "update -q" |> ignore
        if apt $"install {env} {packages}" <> 0 then fail $"could not install {packages} with apt. {howTo}"

/// Makes sure Fashion-MNIST is readable: installs Debian's package where apt can, else explains.
let ensureFashionMnist () =
    if not (fashionMnistPresent ()) then
        let howTo =
            "Provide Fashion-MNIST yourself: `sudo apt-get install dataset-fashion-mnist` on Debian/Ubuntu, or put the four " +
            "IDX files (train/t10k images/labels, .gz or raw) in a folder $SSL_DATA/fashion-mnist and set SSL_DATA."
        aptInstall "Fashion-MNIST" "dataset-fashion-mnist" howTo
        if not (fashionMnistPresent ()) then fail $"dataset-fashion-mnist installed, but {debianFashionMnist}/{fashionMnistFile} is missing. {howTo}"

// ---- emoji (npm) --------------------------------------------------------------------------------
// The emoji data set's npm packages, found and installed by the loader's rule (docs/data.md#emoji,
// Host.CSharp/Data/Emoji.cs): installed into $SSL_DATA/emoji where SSL_DATA is set, else into
// <user data folder>/ssl/emoji; looked for there and in $SSL_DATA and /usr/share/datasets/emoji.
let emojiVersion = "16.0.0"
let emojiPackages = [ "emoji-datasource-google"; "emoji-datasource-twitter" ]

let userEmojiFolder () =
    Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.DoNotVerify), "ssl", "emoji")

let emojiInstallFolder () =
    match Environment.GetEnvironmentVariable "SSL_DATA" with
    | null | "" -> userEmojiFolder ()
    | dir -> Path.Combine(dir, "emoji")

let emojiPresent () =
    let fromEnv =
        match Environment.GetEnvironmentVariable "SSL_DATA" with
        | null | "" -> []
        | dir -> [ Path.Combine(dir, "emoji"); dir ]
    (fromEnv @ [ userEmojiFolder (); "/usr/share/datasets/emoji" ])
    |> List.exists (fun d -> emojiPackages |> List.forall (fun p -> File.Exists(Path.Combine(d, "node_modules", p, "emoji.json"))))

/// Makes sure the emoji packages are readable: installs them with npm (itself installed with apt
/// where missing and apt can), else explains.
let ensureEmoji () =
    if not (emojiPresent ()) then
        let folder = emojiInstallFolder ()
        let packages = emojiPackages |> List.map (fun p -> $"{p}@{emojiVersion}") |> String.concat " "
        let npmArgs = $"install --no-save --no-audit --no-fund --prefix \"{folder}\" {packages}"
        let install = $"npm {npmArgs}"
        let howTo = $"Install them yourself: `{install}` (or into $SSL_DATA/emoji with SSL_DATA set)."
        if not (onPath "npm") then aptInstall "npm (to install the emoji data set)" "npm" howTo
        printfn "The emoji data set not found: installing the npm packages %s into %s." packages folder
        Directory.CreateDirectory folder |> ignore
        if run "npm" npmArgs <> 0 then fail $"could not install the emoji packages with npm. {howTo}"
        if not (emojiPresent ()) then fail $"npm installed {packages}, but {folder}/node_modules/<package>/emoji.json is missing. {howTo}"

/// The folder of the npm packages the tests run under node: $SSL_DATA/node where SSL_DATA is set,
/// else <user data folder>/ssl/node (the embed test looks in both).
let nodeToolsFolder () =
    match Environment.GetEnvironmentVariable "SSL_DATA" with
    | null | "" -> Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.DoNotVerify), "ssl", "node")
    | dir -> Path.Combine(dir, "node")

/// Makes sure hyparquet (a JavaScript Parquet reader, the embed test's outside client: Debian 12
/// serves none for Python) is installed: with npm (itself installed with apt where missing) where
/// missing, else explains.
let ensureHyparquet () =
    let folder = nodeToolsFolder ()
    if not (File.Exists(Path.Combine(folder, "node_modules", "hyparquet", "src", "node.js"))) then
        let npmArgs = $"install --no-save --no-audit --no-fund --prefix \"{folder}\" hyparquet@1.31.5"
        let howTo = $"Install it yourself: `npm {npmArgs}`."
        if not (onPath "npm") then aptInstall "npm (to install hyparquet)" "npm" howTo
        Directory.CreateDirectory folder |> ignore
        if run "npm" npmArgs <> 0 then fail $"could not install hyparquet with npm. {howTo}"

// ---- the PyTorch twins (ssl bench --peer) -------------------------------------------------------
let debianTorch = "/usr/lib/python3/dist-packages/torch/__init__.py"
let multiarch = if Runtime.InteropServices.RuntimeInformation.ProcessArchitecture = Runtime.InteropServices.Architecture.Arm64 then "aarch64-linux-gnu" else "x86_64-linux-gnu"
let openblasOpenmp = $"/usr/lib/{multiarch}/openblas-openmp/libblas.so.3"

/// Makes sure the twins can run: Debian's python3-torch for /usr/bin/python3 and OpenBLAS (OpenMP)
/// instead of the reference BLAS it links; installs both where apt can, else explains.
let ensurePeer () =
    let missing = [ if not (File.Exists debianTorch) then "python3-torch"
                    if not (File.Exists openblasOpenmp) then "libopenblas0-openmp" ]
    if not missing.IsEmpty then
        let packages = String.concat " " missing
        let howTo = $"Install them yourself (`sudo apt-get install {packages}`), or bench without the PyTorch twins: `dotnet build` and `ssl bench`."
        aptInstall "The PyTorch twins' runtime" packages howTo
        for file in [ debianTorch; openblasOpenmp ] do
            if not (File.Exists file) then fail $"{packages} installed, but {file} is missing. {howTo}"

/// Makes sure /usr/bin/python3 imports `modul` (tests read or check our outputs with it: numpy the
/// embed test's .npy, torchvision the --init test's resnet18, onnx the export's checker): installs
/// the Debian package `package` where apt can, else explains.
let ensurePythonModule (modul: string) (package: string) =
    let imports () = File.Exists "/usr/bin/python3" && run "/usr/bin/python3" $"-c \"import {modul}\"" = 0
    if not (imports ()) then
        aptInstall $"{modul} for /usr/bin/python3" package $"Install it yourself: `sudo apt-get install {package}`."
        if not (imports ()) then fail $"{package} installed, but /usr/bin/python3 cannot import {modul}."

/// Makes sure Open MPI (mpirun and libmpi.so.40) is installed: a run on several processes
/// (`ssl train --ranks N`, docs/distributed.md) and its tests use it; installs it where apt can.
let ensureOpenMpi () =
    let library = $"/usr/lib/{multiarch}/libmpi.so.40"
    if not (onPath "mpirun" && File.Exists library) then
        aptInstall "Open MPI (runs on several processes)" "openmpi-bin libopenmpi-dev"
            "Install it yourself: `sudo apt-get install openmpi-bin libopenmpi-dev`."
        if not (File.Exists library) then fail $"openmpi-bin installed, but {library} is missing."

// ---- targets -----------------------------------------------------------------------------------
let build () = must (run "dotnet" $"build Ssl.sln -c {configuration} -nologo -v minimal") "dotnet build"

let ssl (args: string) = run "dotnet" $"Experiments/bin/{configuration}/net10.0/ssl.dll {args}"

/// Runs the Expecto suite and ends with one line `N passed, N failed` (errored tests count as failed).
let test () =
    ensureFashionMnist ()
    ensureEmoji ()
    for modul, package in [ "numpy", "python3-numpy"; "torchvision", "python3-torchvision"; "onnx", "python3-onnx" ] do
        ensurePythonModule modul package
    ensureHyparquet ()
    ensureOpenMpi ()
    build ()
    let code, output = runCapture "dotnet" $"tests/bin/{configuration}/net10.0/Ssl.Tests.dll --no-spinner --colours 0"
    let summary = Regex.Match(output, @"(\d+) passed, (\d+) ignored, (\d+) failed, (\d+) errored")
    if not summary.Success then
        printfn "0 passed, 1 failed"
        fail $"the test runner ended (exit code {code}) without its summary line"
    let count (i: int) = int summary.Groups[i].Value
    printfn "%d passed, %d failed" (count 1) (count 3 + count 4)
    if code <> 0 || count 3 + count 4 > 0 then exit 1

/// The main job: the data set's statistics and samples, then MoCo's quick preset trained, evaluated
/// beside its baselines (random-initialised encoder, raw pixels, supervised-only on the same labels)
/// and reported with its plots, and its test images' nearest training images beside the
/// random-initialised encoder's.
let demo () =
    ensureFashionMnist ()
    ensureEmoji ()
    build ()
    let out = Path.Combine("runs", "demo")
    must (ssl $"data --dataset fashion-mnist --grid {out}/samples.png --json {out}/data.json") "ssl data"
    // The colour set: both emoji styles (Noto Emoji and Twemoji) of each class side by side.
    must (ssl $"data --dataset emoji --grid {out}/emoji.png --json {out}/emoji.json") "ssl data --dataset emoji"
    must (ssl $"train moco --preset quick --out {out}/moco") "ssl train moco"
    must (ssl $"neighbours {out}/moco --queries 8 --k 8 --out {out}/neighbours.png") "ssl neighbours"
    printfn "Demo written to %s." (Path.GetFullPath(Path.Combine(root, out)))

/// `--only a,b` after the target, passed on to `ssl` (which checks the names).
let onlyArgument (args: string list) =
    match args with
    | [] -> ""
    | [ "--only"; names ] -> $" --only {names}"
    | other ->
        let found = String.concat " " other
        fail $"expected no options or `--only a,b`, found {found}"

/// Every registered recipe's quick preset on seeds 0, 1, 2 with its baselines into runs/repro/ (runs
/// done for this commit and config are skipped), recorded into results/, then RESULTS.md and its
/// figures in docs/results/ from every record.
let repro (args: string list) =
    ensureFashionMnist ()
    build ()
    must (ssl $"repro --runs-dir runs/repro --records results --out RESULTS.md --figures docs/results{onlyArgument args}") "ssl repro"

/// Each recipe's training step timed (img/s, encoder GFLOP/s against a matmul peak measured in the
/// same process, peak RSS) and, for the recipes with a PyTorch twin, alternately with the twin:
/// runs/bench/bench.json and the table in docs/performance.md ("The bench table").
let bench (args: string list) =
    ensureFashionMnist ()
    ensurePeer ()
    build ()
    must (ssl $"bench --peer --out runs/bench --readme docs/performance.md{onlyArgument args}") "ssl bench"

let clean () =
    for dir in [ "Core.FSharp"; "Host.CSharp"; "Experiments"; "tests" ] do
        for sub in [ "bin"; "obj" ] do
            let path = Path.Combine(root, dir, sub)
            if Directory.Exists path then Directory.Delete(path, true)

let targets =
    [ "build", (fun (_: string list) -> build ()); "test", (fun _ -> test ()); "demo", (fun _ -> demo ())
      "repro", repro; "bench", bench; "clean", (fun _ -> clean ()) ]

match fsi.CommandLineArgs |> Array.skip 1 |> Array.toList with
| name :: rest when targets |> List.exists (fst >> (=) name) && (rest.IsEmpty || name = "repro" || name = "bench") ->
    (targets |> List.find (fst >> (=) name) |> snd) rest
| args ->
    let names = targets |> List.map fst |> String.concat ", "
    eprintfn "usage: dotnet fsi build.fsx <target> [--only a,b (repro, bench)]   (targets: %s); got %A" names args
    exit 2
