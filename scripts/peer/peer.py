#!/usr/bin/python3
"""The PyTorch twin of `ssl bench`: one recipe's training step (supervised, rotnet, moco, byol, dino or
fixmatch) with the same model, optimiser, batch, augmentations and timing as ours, on Debian's
python3-torch.

The recipe and its hyper-parameters come from the document `ssl config <method> --preset P` prints
(`ssl bench --peer` writes it for each twin), so the twin trains exactly the config ours resolves.
It prints one JSON object (or writes it to --json and prints one line): img/s, the torch, oneDNN
and BLAS it loaded, its threads and what makes the steps comparable (parameters, forward MFLOP per
image, the loss of every step).

BLAS: Debian's torch links libblas.so.3, which is netlib's reference BLAS unless another is chosen.
--blas openblas (the default) runs with libopenblas0-openmp's folder first on LD_LIBRARY_PATH,
re-executing itself to set it where it is not; --blas system takes whatever libblas.so.3 resolves to.

Configurations (what a PyTorch user would try for speed; `ssl bench --peer` runs each and compares
ours with the fastest): --layout nchw|channels-last (model and input) and --convolutions safe|plain
(SafeConv's padding, the convolutions ours runs; or nn.Conv2d wherever PyTorch computes it right,
twin/models.py). The JSON names the configuration and the layers built plain or kept padded.

Usage: /usr/bin/python3 scripts/peer/peer.py --config moco.json [--warmup 5] [--steps 30]
       [--threads N] [--layout nchw|channels-last] [--convolutions safe|plain] [--json OUT]
       [--blas openblas|system] [--no-matmul-peak]
       /usr/bin/python3 scripts/peer/peer.py --check     (versions only: is the twin runnable here?)
"""
import argparse
import ctypes
import json
import os
import platform
import re
import sys
import sysconfig

sys.dont_write_bytecode = True

INSTALL = "sudo apt-get install python3-torch libopenblas0-openmp"
MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def fail(message: str, code: int = 2):
    print(f"peer.py: {message}", file=sys.stderr)
    sys.exit(code)


def openblas_folder() -> str:
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
    return f"/usr/lib/{multiarch}/openblas-openmp"


def best_openblas_core():
    """The OpenBLAS 0.3.21 kernel set this CPU runs best, from its /proc/cpuinfo flags; None if unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return None
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "Cooperlake" if "avx512_bf16" in flags else "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    return None


def select_openblas():
    """Re-executes with libopenblas0-openmp's folder first on LD_LIBRARY_PATH (the loader reads it
    at start-up only), or fails naming the package. OpenBLAS 0.3.21 takes CPU models newer than it
    (e.g. family 6 model 207) for a Prescott and runs SSE3 kernels, 5x slower than the AVX-512 ones
    here: then OPENBLAS_CORETYPE is set to what the CPU's flags support, unless the user set it."""
    folder = openblas_folder()
    if not os.path.isfile(os.path.join(folder, "libblas.so.3")):
        fail(f"--blas openblas: expected {folder}/libblas.so.3 (Debian's libopenblas0-openmp), found no such file; "
             f"install it with `{INSTALL}` or run with --blas system", 3)
    env = dict(os.environ)
    paths = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
    if not paths or paths[0] != folder:
        env["LD_LIBRARY_PATH"] = ":".join([folder] + [p for p in paths if p != folder])
    if "OPENBLAS_CORETYPE" not in env and openblas_core(os.path.join(folder, "libopenblas.so.0")) == "Prescott":
        best = best_openblas_core()
        if best:
            env["OPENBLAS_CORETYPE"] = best
            env["SSL_PEER_BLAS_NOTE"] = f"OPENBLAS_CORETYPE={best}, set by peer.py: OpenBLAS took this CPU for a Prescott"
    if env != dict(os.environ):
        os.execve(sys.executable, sys.orig_argv, env)


def openblas_core(library: str) -> str:
    """The kernel set OpenBLAS chose when it loaded (openblas_get_corename), or "" if not OpenBLAS."""
    try:
        lib = ctypes.CDLL(library)
        lib.openblas_get_corename.restype = ctypes.c_char_p
        return lib.openblas_get_corename().decode()
    except (OSError, AttributeError):
        return ""


def pin_malloc_thresholds() -> bool:
    """NativeMemory.PinThresholds: glibc's mmap threshold 32 MiB and trim threshold 256 MiB, unless
    the user set them; before the first tensor, as ours does when libtorch loads."""
    if any(os.environ.get(v) for v in MALLOC_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return libc.mallopt(-3, 32 * 1024 * 1024) == 1 and libc.mallopt(-1, 256 * 1024 * 1024) == 1


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def sgemm_library() -> str:
    """The file whose sgemm_ libtorch_cpu calls (dlsym from libtorch_cpu's handle searches its
    dependencies as the loader binds them, dladdr names the file); "" if none is found."""
    with open("/proc/self/maps") as maps:
        torch_cpu = next((line.split()[-1] for line in maps if "libtorch_cpu" in line), None)
    if torch_cpu is None:
        return ""
    try:
        sgemm = ctypes.CDLL(torch_cpu).sgemm_
    except (OSError, AttributeError):
        return ""
    info = _DlInfo()
    if ctypes.CDLL("libc.so.6").dladdr(ctypes.cast(sgemm, ctypes.c_void_p), ctypes.byref(info)) == 0:
        return ""
    return os.path.realpath(info.dli_fname.decode())


def loaded_blas() -> dict:
    """The BLAS torch's matrix products run on, and for OpenBLAS its version, threading and kernels."""
    library = sgemm_library()
    try:
        lib = ctypes.CDLL(library)
        lib.openblas_get_config.restype = ctypes.c_char_p
        parallel = {0: "sequential", 1: "pthreads", 2: "OpenMP"}.get(lib.openblas_get_parallel(), "unknown threading")
        version = lib.openblas_get_config().decode().split()[1]
        name = f"OpenBLAS {version} ({parallel}, {openblas_core(library)} kernels)"
    except (OSError, AttributeError):
        name = "netlib reference BLAS" if "/blas/" in library else (os.path.basename(library) or "unknown")
    return {"blas": name, "blas_library": library, "blas_note": os.environ.get("SSL_PEER_BLAS_NOTE")}


def versions(torch) -> dict:
    shown = torch.__config__.show()
    onednn = re.search(r"MKL-DNN v([\d.]+)", shown) or re.search(r"oneDNN v([\d.]+)", shown)
    capability = re.search(r"CPU capability usage: (\S+)", shown)
    return {"torch": torch.__version__, "onednn": onednn.group(1) if onednn else None,
            "cpu_capability": capability.group(1) if capability else None,
            "python": platform.python_version(), **loaded_blas()}


def parse_args():
    p = argparse.ArgumentParser(description="The PyTorch twin of one `ssl bench` training step.")
    p.add_argument("--config", help="the document `ssl config <method> --preset P` prints (method, preset, config)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--steps", type=int, default=30, help="timed steps (default 30)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default 0: every core this process may use)")
    p.add_argument("--seed", type=int, default=0, help="the run seed (ssl bench: 0)")
    p.add_argument("--json", help="write the JSON object here (and print one line) instead of printing it")
    p.add_argument("--layout", choices=["nchw", "channels-last"], default="nchw", help="the models' and inputs' memory layout")
    p.add_argument("--convolutions", choices=["safe", "plain"], default="safe",
                   help="SafeConv's padding (ours' convolutions) or plain nn.Conv2d where PyTorch computes it right")
    p.add_argument("--blas", choices=["openblas", "system"], default="openblas", help="which libblas.so.3 to load")
    p.add_argument("--no-matmul-peak", action="store_true", help="skip the float32 matmul peak (1.5 s or more)")
    p.add_argument("--check", action="store_true", help="print the versions and exit")
    args = p.parse_args()
    if not args.check and not args.config:
        p.error("expected --config FILE (the output of `ssl config <method> --preset quick`) or --check")
    if args.warmup < 0 or args.steps < 1 or args.threads < 0:
        p.error(f"expected --warmup >= 0, --steps >= 1 and --threads >= 0, found {args.warmup}, {args.steps}, {args.threads}")
    return args


def read_config(path: str, recipes: dict):
    try:
        with open(path) as f:
            document = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"--config {path}: expected the JSON document `ssl config <method>` prints, found {e}")
    missing = [k for k in ("method", "preset", "config") if k not in document]
    if missing:
        fail(f"--config {path}: expected the keys method, preset and config, found no {', '.join(missing)}")
    if document["method"] not in recipes:
        fail(f"--config {path}: expected a method with a twin ({', '.join(recipes)}), found {document['method']}")
    # The twins read a recipe's fields flat: its Schedule's fields (Epochs, BatchSize, ...) sit beside the rest.
    config = dict(document["config"])
    config.update(config.pop("Schedule", None) or {})
    document["config"] = config
    return document


def main():
    args = parse_args()
    if args.blas == "openblas":
        select_openblas()
    pinned = pin_malloc_thresholds()
    try:
        import torch
    except ImportError as e:
        fail(f"expected PyTorch for {sys.executable} (Debian's python3-torch), found none ({e}); install it with `{INSTALL}`", 3)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from twin import data, engine, models, recipes

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.mm(torch.ones(64, 64), torch.ones(64, 64))
    info = versions(torch)
    if args.blas == "openblas" and "OpenBLAS" not in info["blas"]:
        fail(f"--blas openblas: expected OpenBLAS to be loaded, found {info['blas']} ({info['blas_library']})", 3)
    if args.check:
        print(json.dumps({**info, "threads": threads}))
        return

    document = read_config(args.config, recipes.RECIPES)
    method, preset, config = document["method"], document["preset"], document["config"]
    peak = None if args.no_matmul_peak else engine.matmul_peak_gflops()
    try:
        train = data.load_train(preset)
    except data.DataError as e:
        fail(str(e), 3)
    models.configure(args.layout, args.convolutions)
    torch.manual_seed(args.seed)
    try:
        recipe = recipes.RECIPES[method](config, train, args.seed)
    except recipes.ConfigError as e:
        fail(f"--config {args.config}: {e}")
    except KeyError as e:
        fail(f"--config {args.config}: expected the field {e} in its config (the {method} recipe's), found none")
    try:
        # An epoch walks the training set, or a recipe's own examples (a semi-supervised recipe's unlabelled pool).
        examples = getattr(recipe, "examples", train[0].shape[0])
        images, seconds, losses, phases = engine.benchmark(recipe, examples, recipe.batch_size, recipe.epochs, args.seed,
                                                   args.warmup, args.steps)
    except ValueError as e:
        fail(f"{method}: {e}")
    result = {
        "method": method, "preset": preset, "dataset": "fashion-mnist", "program": "scripts/peer/peer.py",
        "configuration": models.configuration(), "plain_layers": list(models.plain_layers),
        "padded_layers": list(models.padded_layers),
        "warmup_steps": args.warmup, "steps": args.steps, "images": images, "seconds": seconds,
        "images_per_s": images / max(seconds, 1e-9), "batch_size": recipe.batch_size,
        "parameters": sum(p.numel() for o in recipe.optimizers for p in o.all),
        "encoder_forward_mflop_per_image": models.forward_mflop_per_image(recipe.encoder, tuple(train[0].shape[1:])),
        "matmul_peak_gflop_per_s": peak, "threads": torch.get_num_threads(), "malloc_thresholds_pinned": pinned,
        "phases_ms_per_step": phases, "losses": losses, **info}
    text = json.dumps(result, indent=2)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json + ".partial", "w") as f:
            f.write(text + "\n")
        os.replace(args.json + ".partial", args.json)
        print(f"{method} (PyTorch twin, {result['configuration']}: torch {info['torch']}, {info['blas']}, {result['threads']} threads): "
              f"{result['images_per_s']:.0f} img/s -> {args.json}")
    else:
        print(text)


if __name__ == "__main__":
    main()
