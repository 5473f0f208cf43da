/// The `ssl` command line (Argu). Unknown commands, flags or values are usage errors: exit code 2.
module Ssl.Experiments.Cli

open Argu

/// What --layout says in every command that reads image folders.
/// What the run-folder argument of the commands that read a finished run says.
[<Literal>]
let runDirUsage = "a run folder written by `ssl train` (it holds config.json and export/encoder.dat)."

[<Literal>]
let deviceUsage = "cpu (default), cuda or auto."

[<Literal>]
let threadsUsage = "torch threads (default: all cores)."

[<Literal>]
let layoutUsage =
    "how an image folder is read: auto (default: train/ + val/ trees are a split, no images at the top and 2 or more sub-folders with images a class tree, else unlabelled; the log says which and why), unlabelled, classes or split."

/// What --memory-format says wherever a run's runtime options are set.
[<Literal>]
let memoryFormatUsage =
    "the convolutions' memory layout: channels-last (default; $SSL_MEMORY_FORMAT sets the default) or nchw. Recorded in config.json's runtime; a resume asks for the same."

/// What --side-thread says.
[<Literal>]
let sideThreadUsage =
    "on (default; $SSL_SIDE_THREAD sets the default) lets a step run two passes side by side on two cores (MoCo), off runs them one after the other. Recorded in config.json's runtime."

type DataArgs =
    | [<AltCommandLine("-d")>] Dataset of name: string
    | Layout of layout: string
    | Split of split: string
    | Data_Root of dir: string
    | Grid of png: string
    | Json of path: string
    | Threads of int

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Dataset _ -> "data set: fashion-mnist (default), mnist, cifar10, cifar100, stl10, emoji[-google|-twitter][-skin-tones][-subcategory], or an image-folder path."
            | Split _ -> "train (default; a built-in set's class counts then show the test split beside it), test, or unlabelled (stl10 only)."
            | Layout _ -> layoutUsage
            | Data_Root _ -> "folder holding the data set's files (default: $SSL_DATA, then /usr/share/datasets)."
            | Grid _ -> "write a PNG grid of samples, one row per class named beside it, to this path."
            | Json _ -> "write the statistics as JSON to this path."
            | Threads _ -> threadsUsage

type InfoArgs =
    | Device of string
    | Threads of int
    | Seed of int64
    | Deterministic
    | Memory_Format of format: string
    | Side_Thread of switch: string

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Device _ -> "cpu (default), cuda or auto (CUDA where available, else CPU, and says so)."
            | Threads _ -> threadsUsage
            | Seed _ -> "seed for torch and .NET randomness (default 0)."
            | Deterministic -> "fixed threads, seeded generators, no TF32: CPU runs repeat exactly."
            | Memory_Format _ -> memoryFormatUsage
            | Side_Thread _ -> sideThreadUsage

type TrainArgs =
    | [<MainCommand; Unique>] Method of method: string
    | Preset of preset: string
    | [<AltCommandLine("-s")>] Set of assignment: string
    | Config of file: string
    | [<AltCommandLine("-d")>] Dataset of name: string
    | Eval_Dataset of name: string
    | Image_Size of pixels: int
    | Data_Memory_Mb of mib: int64
    | Workers of threads: int
    | Layout of layout: string
    | Data_Root of dir: string
    | Labels of perClass: int
    | Seed of int64
    | Device of string
    | Threads of int
    | Deterministic
    | Memory_Format of format: string
    | Side_Thread of switch: string
    | Out of dir: string
    | Resume
    | Force
    | Init of file: string
    | Ranks of count: int
    | Batch_Norm of mode: string

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Batch_Norm _ -> "batch norm on several ranks: paper (default: synchronised where the paper syncs it, SimCLR, BYOL, Barlow Twins; else per rank), rank or sync. Recorded in config.json's runtime."
            | Ranks _ -> "one run on N processes of this machine (through mpirun; cores / N threads each); under mpirun or srun, the launcher's count. BatchSize stays the global batch."
            | Method _ -> "recipe to train (see `ssl methods`); may be left out with --config of a run's config.json."
            | Preset _ -> "smoke (under a minute), quick (real numbers on 2 cores, default) or paper (the paper's schedule)."
            | Set _ -> "override a config field, Field=value (repeatable; Nested.Field=value; tuples a,b; see `ssl config <method>`)."
            | Config _ -> "start from this JSON config: a run's config.json (replays it) or a config object as `ssl config` prints."
            | Dataset _ -> "data set: fashion-mnist (default), mnist, cifar10, cifar100, stl10, emoji[-google|-twitter][-skin-tones][-subcategory], or an image folder (a class tree, train/ + val/ trees, or unlabelled images)."
            | Eval_Dataset _ -> "the labelled set the probes, kNN and baselines read (for an unlabelled --dataset, or another one)."
            | Image_Size _ -> "image folders: resize the shorter side to N and centre-crop N x N at load."
            | Data_Memory_Mb _ -> "image folders whose decoded pixels exceed this many MiB are streamed from their files, batches decoded ahead (default 2048; 0 streams any folder)."
            | Workers _ -> "image decoding threads (default: all cores)."
            | Layout _ -> layoutUsage
            | Data_Root _ -> "folder holding the data set's files (default: $SSL_DATA, then /usr/share/datasets)."
            | Labels _ -> "labels per class (few-label and semi-supervised runs), drawn with the seed."
            | Seed _ -> "seed for torch and .NET randomness, data order and label splits (default 0)."
            | Device _ -> deviceUsage
            | Threads _ -> threadsUsage
            | Deterministic -> "fixed threads, seeded generators, no TF32: CPU runs repeat exactly."
            | Out _ -> "run folder (default runs/<method>-<preset>[-<data set>][-labelsN][-seedS][-set-<digest of the --set list>]); a folder holding a run is refused without --resume or --force."
            | Resume -> "continue the run folder's run from its last checkpoint (a finished run: evaluate it again, its training figures kept)."
            | Memory_Format _ -> memoryFormatUsage
            | Side_Thread _ -> sideThreadUsage
            | Force -> "replace the run the folder holds (its config, metrics, checkpoints, results and plots are deleted first)."
            | Init _ -> "start the encoder from these weights: a state dict in .pt/.pth (torch.save), .safetensors or .dat (an ssl export), matched by name (torchvision's resnet18 into resnet18-imagenet; a module./backbone./encoder. prefix is stripped); recorded in config.json with its SHA-256."

type ConfigArgs =
    | [<MainCommand; ExactlyOnce>] Method of method: string
    | Preset of preset: string
    | [<AltCommandLine("-s")>] Set of assignment: string
    | Fields

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Method _ -> "recipe whose config to print (see `ssl methods`)."
            | Preset _ -> "smoke, quick (default) or paper."
            | Set _ -> "override a config field, Field=value (repeatable)."
            | Fields -> "list the settable fields and their types instead."

type EvalArgs =
    | [<MainCommand; ExactlyOnce>] Run_Dir of dir: string
    | Protocol of protocol: string
    | Labels of perClass: int
    | Device of string
    | Threads of int
    | Layer of name: string
    | Pool of size: int
    | Eval_Dataset of name: string
    | Random_Init
    | Init of file: string

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Init _ -> "evaluate these weights (a state dict file, as `ssl train --init` reads) in the run's architecture instead of its export."
            | Layer _ -> "probe this layer instead of the one the run's evaluation read (config.json's probe; default: that one, so figures match result.json); linear or knn. `output` reads the encoder's output; e.g. features.block2b_relu of SmallConvNet, branch for a staged encoder's branch layer, class-tokens for a ViT's class tokens of its last --pool blocks, class-tokens-patch-mean for those and the mean of the last block's patch tokens."
            | Pool _ -> "with --layer: average-pool the layer's maps to size x size before flattening (default 2); with class-tokens or class-tokens-patch-mean, the number of last blocks."
            | Eval_Dataset _ -> "the labelled set to evaluate on (default: the run's --eval-dataset, else its --dataset); needed for runs trained on unlabelled images."
            | Random_Init -> "evaluate the same architecture randomly initialised (seeded by the run's seed) instead of the trained weights: the baseline."
            | Run_Dir _ -> runDirUsage
            | Protocol _ -> "linear (default), knn or finetune."
            | Labels _ -> "labels per class for the protocol's training (default: all), drawn with the run's seed."
            | Device _ -> deviceUsage
            | Threads _ -> threadsUsage

/// What --dataset says in the commands that use a trained encoder on a data set.
[<Literal>]
let encoderDatasetUsage =
    "the data set to read instead of the run's own: fashion-mnist, mnist, cifar10, cifar100, stl10, or an image-folder path; every image of it, converted to the run's channels (a folder's images resized and centre-cropped to the run's size) and standardised with the run's training statistics (default: the run's data set as the run read it, both splits)."

type EmbedArgs =
    | [<MainCommand; ExactlyOnce>] Run_Dir of dir: string
    | [<AltCommandLine("-d")>] Dataset of name: string
    | Layout of layout: string
    | Data_Root of dir: string
    | Data_Memory_Mb of mib: int64
    | Workers of threads: int
    | Layer of name: string
    | Pool of size: int
    | Random_Init
    | Batch_Size of images: int
    | Device of string
    | Threads of int
    | Out of prefix: string

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Run_Dir _ -> runDirUsage
            | Dataset _ -> encoderDatasetUsage
            | Layout _ -> layoutUsage
            | Data_Root _ -> "folder holding the built-in data sets' files (default: $SSL_DATA, then /usr/share/datasets)."
            | Data_Memory_Mb _ -> "image folders whose decoded pixels exceed this many MiB are streamed from their files, a batch at a time (default 2048; 0 streams any folder)."
            | Workers _ -> "image decoding threads (default: all cores)."
            | Layer _ -> "embed this layer instead of the one the run's protocols read (config.json's probe, the default): output, a layer name, branch, class-tokens or class-tokens-patch-mean, as `ssl eval --layer`."
            | Pool _ -> "with --layer: the pooled size, or the number of last blocks of class-tokens (default 2)."
            | Random_Init -> "embed with the same architecture randomly initialised (seeded by the run's seed, as `ssl eval --random-init`): the baseline."
            | Batch_Size _ -> "images encoded at once (default 512)."
            | Device _ -> deviceUsage
            | Threads _ -> threadsUsage
            | Out _ -> "file prefix of the outputs <prefix>.npy, <prefix>.files.txt and <prefix>.parquet (default <run-dir>/embed/<data set>[-random-init]; a .npy or .parquet ending is dropped)."

type NeighboursArgs =
    | [<MainCommand; ExactlyOnce>] Run_Dir of dir: string
    | [<AltCommandLine("-d")>] Dataset of name: string
    | Layout of layout: string
    | Data_Root of dir: string
    | Data_Memory_Mb of mib: int64
    | Workers of threads: int
    | Query of image: string
    | [<AltCommandLine("--random")>] Queries of count: int
    | K of count: int
    | Seed of int64
    | Layer of name: string
    | Pool of size: int
    | Device of string
    | Threads of int
    | Out of png: string

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Run_Dir _ -> runDirUsage
            | Dataset _ -> encoderDatasetUsage
            | Layout _ -> layoutUsage
            | Data_Root _ -> "folder holding the built-in data sets' files (default: $SSL_DATA, then /usr/share/datasets)."
            | Data_Memory_Mb _ -> "image folders whose decoded pixels exceed this many MiB are streamed from their files (default 2048; 0 streams any folder)."
            | Workers _ -> "image decoding threads (default: all cores)."
            | Query _ -> "an image file to find the nearest training images of, instead of drawn test images (repeatable); decoded to the run's channels and size."
            | Queries _ -> "query images drawn from the test split (default 8)."
            | K _ -> "nearest training images shown per query (default 8)."
            | Seed _ -> "seed of the query draw (default 0)."
            | Layer _ -> "compare this layer instead of the one the run's protocols read (as `ssl eval --layer`)."
            | Pool _ -> "with --layer: the pooled size, or the number of last blocks of class-tokens (default 2)."
            | Device _ -> deviceUsage
            | Threads _ -> threadsUsage
            | Out _ -> "the PNG to write (default <run-dir>/plots/neighbours-<data set>.png): the trained encoder's neighbours beside the random-initialised one's."

type ExportArgs =
    | [<MainCommand; ExactlyOnce>] Run_Dir of dir: string
    | [<Mandatory; Unique>] Format of format: string
    | Out of file: string
    | Threads of int

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Run_Dir _ -> runDirUsage
            | Format _ -> "onnx: the encoder at the run's probe as an ONNX model (opset 17), raw [0, 1] pixels in, the run's standardisation inside; safetensors: the whole encoder's weights `ssl train` wrote (export/encoder.safetensors)."
            | Out _ -> "the file to write (default <run-dir>/export/encoder.onnx; for safetensors, a copy of the run's file)."
            | Threads _ -> threadsUsage

type ReportArgs =
    | [<MainCommand; Unique>] Runs_Dir of dir: string
    | Record of records: string
    | Records of records: string
    | Out of markdown: string
    | Figures of dir: string

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Runs_Dir _ -> "a folder of run folders (each with a result.json), e.g. runs/repro or a sweep folder."
            | Record _ -> "copy each finished run of the runs folder into this records folder (e.g. results/), then write the report from all its records."
            | Records _ -> "write the report from this records folder alone (mean ± std over seeds)."
            | Out _ -> "the Markdown file to write (default RESULTS.md)."
            | Figures _ -> "folder for the report's PNG figures (default docs/results beside --out)."

type ReproArgs =
    | Only of methods: string
    | Seeds of seeds: string
    | Shard of slice: string
    | Local of processes: int
    | Runs_Dir of dir: string
    | Records of dir: string
    | Preset of preset: string
    | Out of markdown: string
    | Figures of dir: string
    | Colour_Dataset of dataset: string

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Colour_Dataset _ -> "colour data set (cifar10, cifar100, stl10 or an image-folder path) for the colour-only recipes; without it they are reported as not run."
            | Only _ -> "comma-separated recipes to run (default: every registered one)."
            | Seeds _ -> "comma-separated seeds of every run (default 0,1,2)."
            | Shard _ -> "i/n: run only every n-th run of the grid from the i-th (merge the shards through the records)."
            | Local _ -> "runs at once on this machine (default 1), each with cores / N torch threads."
            | Runs_Dir _ -> "where the run folders go (default runs/repro)."
            | Records _ -> "the records folder the finished runs are copied into and the report is written from (default results)."
            | Preset _ -> "preset of every run (default quick)."
            | Out _ -> "the report to write (default RESULTS.md)."
            | Figures _ -> "folder for the report's figures (default docs/results beside --out)."

type SweepArgs =
    | [<AltCommandLine("-m")>] Method of methods: string
    | Seeds of seeds: string
    | Labels of budgets: string
    | Preset of preset: string
    | [<AltCommandLine("-s")>] Set of assignment: string
    | File of json: string
    | [<AltCommandLine("-d")>] Dataset of name: string
    | Colour_Dataset of dataset: string
    | Out of dir: string
    | Local of processes: int
    | Emit of scheduler: string
    | Cpus of count: int
    | Mem_Gb of gigabytes: int
    | Hours of limit: int
    | Ssl_Command of command: string
    | Image of image: string
    | Claim of pvc: string
    | Parallelism of pods: int
    | Ranks_Per_Run of ranks: int

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Method _ -> "comma-separated recipes of the grid (see `ssl methods`)."
            | Seeds _ -> "comma-separated seeds (default 0)."
            | Labels _ -> "comma-separated labels per class of the semi-supervised recipes (default: each recipe's own budgets)."
            | Preset _ -> "preset of every run (default quick)."
            | Set _ -> "Field=a,b: a config field and its alternatives (repeatable; the grid takes every combination; ';' separates tuple values)."
            | File _ -> "a JSON sweep file {methods, seeds, labels, preset, set: {Field: [a, b]}, dataset, colour_dataset} instead of the flags."
            | Dataset _ -> "data set of every run (default fashion-mnist)."
            | Colour_Dataset _ -> "data set of the colour-only recipes (without it they are listed as not run)."
            | Out _ -> "the sweep folder: one run folder per run (default runs/sweep)."
            | Local _ -> "run on this machine, N processes at once (the default executor, N = 1)."
            | Emit _ -> "slurm (an sbatch array script) or k8s (an Indexed Job manifest) for the runs not done yet, instead of running them."
            | Cpus _ -> "with --emit: CPUs (torch threads) per task (default 2)."
            | Mem_Gb _ -> "with --emit: memory per task in GiB (default 8)."
            | Hours _ -> "with --emit: time limit per task in hours (default 4)."
            | Ssl_Command _ -> "with --emit slurm: the command that runs ssl on the nodes (default: this ssl's own path)."
            | Image _ -> "with --emit k8s: the container image with ssl on its PATH (default ssl:latest)."
            | Claim _ -> "with --emit k8s: the PersistentVolumeClaim holding the run folders, mounted at /runs (default ssl-runs)."
            | Parallelism _ -> "with --emit k8s: pods at once (default 4)."
            | Ranks_Per_Run _ -> "with --emit slurm: processes of each run (ssl train --ranks N; N Slurm tasks of --cpus each, default 1)."

type SweepTaskArgs =
    | [<MainCommand; ExactlyOnce>] Task of tasks_json: string * index: int
    | Root of dir: string
    | Threads of int
    | Ranks of count: int

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Ranks _ -> "processes of the run (ssl train --ranks N; default 1)."
            | Task _ -> "the tasks.json an `ssl sweep --emit` wrote and the index of the run to do (0-based)."
            | Root _ -> "the sweep folder the run folders go in (default: the folder of tasks.json)."
            | Threads _ -> "torch threads of the run (default: all cores)."

type BenchArgs =
    | Only of methods: string
    | Method of name: string
    | Preset of preset: string
    | Warmup of steps: int
    | Steps of steps: int
    | Threads of int
    | Out of dir: string
    | Readme of markdown: string
    | Colour_Dataset of dataset: string
    | Data of path: string
    | Image_Size of pixels: int
    | Data_Memory_Mb of mib: int64
    | Pairs of count: int
    | [<Hidden>] In_Process
    | Peer
    | Ranks of count: int

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Ranks _ -> "time each recipe's step on N ranks (mpirun, threads / N each) against one process with all the threads: alternating pairs (--pairs, default 3), medians and ratio; with --method, this recipe on N ranks."
            | Peer -> "beside each recipe with a PyTorch twin (supervised, rotnet, moco: scripts/peer/, on Debian's python3-torch), run ours and the twin alternately, three pairs: medians and ratio ours / twin."
            | Data _ -> "time decoding and resizing this image folder (images/s on all cores), then --method's step (default moco) on it in memory against streamed."
            | Image_Size _ -> "with --data: resize the shorter side to N and centre-crop, as a run's --image-size."
            | Data_Memory_Mb _ -> "with --data: the streamed run's --data-memory-mb (default 0: stream whatever its size)."
            | Pairs _ -> "with --data or --ranks: alternating pairs of runs (default 3)."
            | In_Process -> "with --data: time --method's step on the folder in this process (what each child of `ssl bench --data` does)."
            | Colour_Dataset _ -> "colour data set for the colour-only recipes (default: generated colour images, throughput only)."
            | Only _ -> "comma-separated recipes to benchmark (default: every registered one)."
            | Method _ -> "benchmark this one recipe in this process (what each child process of `ssl bench` does)."
            | Preset _ -> "preset whose training step is timed (default quick)."
            | Warmup _ -> "untimed steps first (default 5)."
            | Steps _ -> "timed steps (default 30)."
            | Threads _ -> threadsUsage
            | Out _ -> "folder for bench.json and one JSON per method (default runs/bench)."
            | Readme _ -> "also write the table between the bench markers of this Markdown file."

[<HelpFlags("--help", "-h")>]
type SslArgs =
    | [<SubCommand; CliPrefix(CliPrefix.None)>] Methods
    | [<CliPrefix(CliPrefix.None)>] Train of ParseResults<TrainArgs>
    | [<CliPrefix(CliPrefix.None)>] Config of ParseResults<ConfigArgs>
    | [<CliPrefix(CliPrefix.None)>] Eval of ParseResults<EvalArgs>
    | [<CliPrefix(CliPrefix.None)>] Embed of ParseResults<EmbedArgs>
    | [<CliPrefix(CliPrefix.None)>] Neighbours of ParseResults<NeighboursArgs>
    | [<CliPrefix(CliPrefix.None)>] Export of ParseResults<ExportArgs>
    | [<CliPrefix(CliPrefix.None)>] Data of ParseResults<DataArgs>
    | [<CliPrefix(CliPrefix.None)>] Info of ParseResults<InfoArgs>
    | [<CliPrefix(CliPrefix.None)>] Report of ParseResults<ReportArgs>
    | [<CliPrefix(CliPrefix.None)>] Repro of ParseResults<ReproArgs>
    | [<CliPrefix(CliPrefix.None)>] Bench of ParseResults<BenchArgs>
    | [<CliPrefix(CliPrefix.None)>] Sweep of ParseResults<SweepArgs>
    | [<CliPrefix(CliPrefix.None)>] Sweep_Task of ParseResults<SweepTaskArgs>
    | Version

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Methods -> "list the registered recipes and their presets."
            | Train _ -> "train a recipe, evaluate it beside its baselines, write the run folder."
            | Config _ -> "print a recipe's resolved config as JSON (what --config accepts back)."
            | Eval _ -> "evaluate a trained run's encoder again with one protocol (linear, knn, finetune)."
            | Embed _ -> "write a trained run's features of every image of a data set: .npy, .files.txt and .parquet."
            | Export _ -> "write a trained run's encoder for other runtimes: --format onnx (an ONNX model of the representation its protocols read) or safetensors."
            | Neighbours _ -> "draw test images beside their nearest training images, by the trained and the random-initialised encoder, as a PNG."
            | Data _ -> "read a data set, print its statistics, optionally save a PNG grid of samples."
            | Info _ -> "set up the device and print it with threads, seed and library versions."
            | Report _ -> "write RESULTS.md from a folder of run folders, or record them into results/ and report mean ± std over seeds."
            | Repro _ -> "train every registered recipe's preset on seeds 0,1,2 with its baselines (skipping runs done), record them into results/, then report."
            | Sweep _ -> "run a grid of ssl train runs (methods x seeds x labels x --set values) locally, or emit it for Slurm or Kubernetes."
            | Sweep_Task _ -> "run one run of a sweep's tasks.json (what each Slurm array task or Kubernetes pod does)."
            | Bench _ -> "time each recipe's training step: img/s, encoder GFLOP/s against a measured matmul peak, peak RSS."
            | Version -> "print the versions of Ssl, TorchSharp and libtorch."

let parser = ArgumentParser.Create<SslArgs>(programName = "ssl")
