#!/usr/bin/python3
"""The twin's side of scripts/op-probe.fsx: each layer of the supervised quick step's network
(SmallConvNet-16 + linear head + cross-entropy, batch 256 of 28x28) or, with --moco, of MoCo
quick's (SmallConvNet-40 through twin/models.py's conv_layer + its fc, one batch-norm group of 32)
alone at the shape it sees in the step, forward and backward timed separately, in Debian's
python3-torch.

Usage: /usr/bin/python3 scripts/peer/op_probe.py [--threads N] [--layout nchw|channels-last] [--moco] [--json OUT]
       /usr/bin/python3 scripts/peer/op_probe.py --join ours1.json twin1.json ours2.json twin2.json ...
--layout nchw (the default) is what the twin's step runs. As peer.py, it runs with OpenBLAS and glibc's
malloc thresholds pinned as ours. --join prints a Markdown table: per layer
the median over the files of each side, and the step's totals (each layer times its count).
"""
import argparse
import json
import statistics
import sys
import time

sys.dont_write_bytecode = True


def probe(threads: int, channels_last: bool, moco: bool = False):
    from peer import pin_malloc_thresholds, select_openblas
    select_openblas()  # as peer.py: OpenBLAS for the linear layer, re-executing if needed
    pin_malloc_thresholds()
    import torch
    from torch import nn
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    def layout(x):
        # As SafeConv.channelsLast: canonical channels-last strides, which contiguous(memory_format=...)
        # does not give a 1-channel tensor (its NCHW strides already count as dense in both layouts).
        if not (channels_last and x.dim() == 4):
            return x
        n, c, h, w = x.shape
        return torch.empty_strided(x.shape, (c * h * w, 1, w * c, c), dtype=x.dtype).copy_(x)

    def conv(cin, cout):
        return nn.Conv2d(cin, cout, 3, padding=1, bias=False)

    labels = torch.randint(10, (256,))
    ops = [
        ("conv 1->16 @28", 1, (256, 1, 28, 28), False, conv(1, 16)),
        ("batch norm 16 @28", 1, (256, 16, 28, 28), True, nn.BatchNorm2d(16)),
        ("relu 16 @28", 1, (256, 16, 28, 28), True, nn.ReLU()),
        ("max-pool 16 @28", 1, (256, 16, 28, 28), True, nn.MaxPool2d(2)),
        ("conv 16->32 @14", 1, (256, 16, 14, 14), True, conv(16, 32)),
        ("conv 32->32 @14", 1, (256, 32, 14, 14), True, conv(32, 32)),
        ("batch norm 32 @14", 2, (256, 32, 14, 14), True, nn.BatchNorm2d(32)),
        ("relu 32 @14", 2, (256, 32, 14, 14), True, nn.ReLU()),
        ("max-pool 32 @14", 1, (256, 32, 14, 14), True, nn.MaxPool2d(2)),
        ("conv 32->64 @7", 1, (256, 32, 7, 7), True, conv(32, 64)),
        ("conv 64->64 @7", 1, (256, 64, 7, 7), True, conv(64, 64)),
        ("batch norm 64 @7", 2, (256, 64, 7, 7), True, nn.BatchNorm2d(64)),
        ("relu 64 @7", 2, (256, 64, 7, 7), True, nn.ReLU()),
        ("avg-pool + flatten 64 @7", 1, (256, 64, 7, 7), True, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
        ("linear 64->10", 1, (256, 64), True, nn.Linear(64, 10)),
        ("cross-entropy", 1, (256, 10), True, lambda x: F.cross_entropy(x, labels)),
    ]

    if moco:
        from twin import models

        def safe(cin, cout):
            return models.conv_layer(cin, cout, 3, 1, 1, False)

        b = 32
        ops = [
            ("conv 1->40 @28", 4, (b, 1, 28, 28), False, safe(1, 40)),
            ("batch norm 40 @28", 4, (b, 40, 28, 28), True, nn.BatchNorm2d(40)),
            ("relu 40 @28", 4, (b, 40, 28, 28), True, nn.ReLU()),
            ("max-pool 40 @28", 4, (b, 40, 28, 28), True, nn.MaxPool2d(2)),
            ("conv 40->80 @14", 4, (b, 40, 14, 14), True, safe(40, 80)),
            ("conv 80->80 @14", 4, (b, 80, 14, 14), True, safe(80, 80)),
            ("batch norm 80 @14", 8, (b, 80, 14, 14), True, nn.BatchNorm2d(80)),
            ("relu 80 @14", 8, (b, 80, 14, 14), True, nn.ReLU()),
            ("max-pool 80 @14", 4, (b, 80, 14, 14), True, nn.MaxPool2d(2)),
            ("conv 80->160 @7", 4, (b, 80, 7, 7), True, safe(80, 160)),
            ("conv 160->160 @7", 4, (b, 160, 7, 7), True, safe(160, 160)),
            ("batch norm 160 @7", 8, (b, 160, 7, 7), True, nn.BatchNorm2d(160)),
            ("relu 160 @7", 8, (b, 160, 7, 7), True, nn.ReLU()),
            ("avg-pool + flatten 160 @7", 4, (b, 160, 7, 7), True, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
            ("linear 160->128", 4, (b, 160), True, nn.Linear(160, 128)),
        ]

    def timed(shape, input_grad, layer, n):
        parameters = list(layer.parameters()) if isinstance(layer, nn.Module) else []
        source = layout(torch.randn(shape))
        forward = backward = 0.0
        for i in range(n + 3):
            for p in parameters:
                if p.grad is not None:
                    p.grad.zero_()
            x = source.detach().requires_grad_(True) if input_grad else source
            start = time.perf_counter()
            y = layer(x)
            f = time.perf_counter() - start
            g = torch.ones_like(y) if y.dim() == 0 else layout(torch.ones_like(y))
            start = time.perf_counter()
            y.backward(g)
            b = time.perf_counter() - start
            if i >= 3:
                forward += f
                backward += b
        return 1000.0 * forward / n, 1000.0 * backward / n

    rounds = [[timed(shape, grad, layer, 20) for _, _, shape, grad, layer in ops] for _ in range(5)]
    results = []
    for i, (name, count, _, _, _) in enumerate(ops):
        f = statistics.median(r[i][0] for r in rounds)
        b = statistics.median(r[i][1] for r in rounds)
        print(f"{name:28s} x{count}  forward {f:7.3f} ms  backward {b:7.3f} ms", file=sys.stderr)
        results.append({"op": name, "count": count, "forward_ms": round(f, 4), "backward_ms": round(b, 4)})
    return {"side": "twin", "network": "moco" if moco else "supervised", "torch": torch.__version__, "threads": threads,
            "layout": "channels-last" if channels_last else "nchw", "ops": results}


def read_sides(paths, tool: str) -> dict:
    """The probe documents of `paths` by side ("ours", "twin"); exits naming `tool` unless both have one."""
    sides = {"ours": [], "twin": []}
    for path in paths:
        with open(path) as f:
            document = json.load(f)
        side = document.get("side")
        if side not in sides:
            sys.exit(f"{tool} --join: {path}: expected a probe document with side 'ours' or 'twin', found {side!r}")
        sides[side].append(document)
    if not sides["ours"] or not sides["twin"]:
        sys.exit(f"{tool} --join: expected files of both sides (ours, twin), found {len(sides['ours'])} ours "
                 f"and {len(sides['twin'])} twin among {len(paths)}")
    return sides


def join(paths):
    sides = read_sides(paths, "op_probe.py")

    def medians(documents):
        names = [o["op"] for o in documents[0]["ops"]]
        return names, {o["op"]: o["count"] for o in documents[0]["ops"]}, {
            name: tuple(statistics.median(next(o for o in d["ops"] if o["op"] == name)[k] for d in documents)
                        for k in ("forward_ms", "backward_ms")) for name in names}

    names, counts, ours = medians(sides["ours"])
    _, _, twin = medians(sides["twin"])
    o, t = sides["ours"][0], sides["twin"][0]
    print(f"ours: libtorch {o['torch']}, {o['layout']}, {len(sides['ours'])} runs; "
          f"twin: torch {t['torch']}, {t['layout']}, {len(sides['twin'])} runs; {o['threads']} threads; medians, ms")
    print()
    print("| layer | count | ours forward | twin forward | ours backward | twin backward | backward ours/twin |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    totals = [0.0, 0.0, 0.0, 0.0]
    for name in names:
        (of, ob), (tf, tb) = ours[name], twin[name]
        c = counts[name]
        for k, v in enumerate((of, tf, ob, tb)):
            totals[k] += c * v
        print(f"| {name} | {c} | {of:.2f} | {tf:.2f} | {ob:.2f} | {tb:.2f} | {ob / tb:.2f} |")
    print(f"| step (each layer x its count) | | {totals[0]:.1f} | {totals[1]:.1f} | {totals[2]:.1f} | {totals[3]:.1f} "
          f"| {totals[2] / totals[3]:.2f} |")


def cli(description: str, probe_with, join_with, layouts=None, config=False, moco=False):
    """The command line both probes share: --threads, --json, --join, --layout where `layouts` lists
    them, --config where `config` and --moco where `moco`; `probe_with(args)` returns the document to write."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    if layouts:
        parser.add_argument("--layout", choices=layouts, default=layouts[0])
    if moco:
        parser.add_argument("--moco", action="store_true", help="MoCo quick's layers instead of the supervised step's")
    if config:
        parser.add_argument("--config", metavar="FILE", help="the document `ssl config moco --preset quick` prints")
    parser.add_argument("--json")
    parser.add_argument("--join", nargs="+", metavar="FILE")
    args = parser.parse_args()
    if args.join:
        join_with(args.join)
        return
    text = json.dumps(probe_with(args), indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    cli(__doc__, lambda args: probe(args.threads, args.layout == "channels-last", args.moco), join, ["nchw", "channels-last"],
        moco=True)
