#!/usr/bin/python3
"""The twin's side of scripts/step-probe.fsx: the supervised quick step (Fashion-MNIST batch 256,
random resized crop, flip, SmallConvNet-16 + linear head, cross-entropy, SGD with Nesterov) cut
into its parts, each timed in place, and the encoder's forward by layer (pre-hook to hook), in
Debian's python3-torch. Each part's median over the steps, and its mean and 90th percentile.

Usage: /usr/bin/python3 scripts/peer/step_probe.py [--threads N] [--json OUT]
       /usr/bin/python3 scripts/peer/step_probe.py --join ours1.json twin1.json ours2.json twin2.json ...
As peer.py, it runs with OpenBLAS and glibc's malloc thresholds pinned as ours, in NCHW (the twin's
step). --join prints a Markdown table: each part's median over the files of each side.
"""
import json
import statistics
import sys
import time

sys.dont_write_bytecode = True
from op_probe import read_sides  # noqa: E402  (the scripts/peer folder is on the path)


def probe(threads: int):
    from peer import pin_malloc_thresholds, select_openblas
    select_openblas()
    pin_malloc_thresholds()
    import torch
    import torch.nn.functional as F
    from twin import data, models, transforms

    torch.set_num_threads(threads)
    images, labels, _, _ = data.load_train("quick")
    mean, std = [0.2860], [0.3530]
    torch.manual_seed(0)
    encoder = models.SmallConvNet(1, 16)
    head = models.LinearHead(encoder.feature_dim, 10)
    parameters = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(parameters, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    encoder.train()
    head.train()

    warmup, steps, batch = 5, 40, 256
    generator = torch.Generator()
    generator.manual_seed(0)
    order = torch.randperm(images.shape[0], generator=generator)
    times = {}
    measuring = [False]
    layers = []
    for name, module in encoder.named_modules():
        if name and not list(module.children()):
            key = "  " + name.replace("features.", "")
            clock = [0.0]

            def pre(_, __, clock=clock):
                clock[0] = time.perf_counter()

            def post(_, __, ___, key=key, clock=clock):
                if measuring[0]:
                    times[key].append(1000.0 * (time.perf_counter() - clock[0]))

            module.register_forward_pre_hook(pre)
            module.register_forward_hook(post)
            layers.append(key)
    parts = ["input", "crop", "flip", "encoder forward", *layers, "head + loss", "backward", "optimizer", "accuracy", "step"]
    for p in parts:
        times[p] = []
    for s in range(warmup + steps):
        picked = order[s * batch:(s + 1) * batch]
        measuring[0] = s >= warmup
        start = last = time.perf_counter()

        def lap(name):
            nonlocal last
            now = time.perf_counter()
            if measuring[0]:
                times[name].append(1000.0 * (now - last))
            last = now

        x = data.to_input(images.index_select(0, picked), mean, std)
        y = labels.index_select(0, picked)
        lap("input")
        cropped = transforms.random_resized_crop((0.8, 1.0), (3.0 / 4.0, 4.0 / 3.0), (28, 28), generator, x)
        lap("crop")
        augmented = transforms.random_horizontal_flip(0.5, generator, cropped)
        lap("flip")
        features = encoder(augmented)
        lap("encoder forward")
        logits = head(features)
        loss = F.cross_entropy(logits, y)
        lap("head + loss")
        loss.backward()
        lap("backward")
        optimizer.step()
        optimizer.zero_grad()
        lap("optimizer")
        logits.argmax(1).eq(y).to(torch.float32).mean().item()
        lap("accuracy")
        if measuring[0]:
            times["step"].append(1000.0 * (time.perf_counter() - start))
    print(f"threads {threads}, torch {torch.__version__}, nchw, median of {steps} steps", file=sys.stderr)
    rows = []
    for p in parts:
        ms = statistics.median(times[p])
        mean, p90 = statistics.mean(times[p]), sorted(times[p])[len(times[p]) * 9 // 10]
        print(f"{p:16s} {ms:7.2f} ms  (mean {mean:.2f}, p90 {p90:.2f})", file=sys.stderr)
        rows.append({"part": p, "ms": round(ms, 4), "mean_ms": round(mean, 4), "p90_ms": round(p90, 4)})
    return {"side": "twin", "torch": torch.__version__, "threads": threads, "layout": "nchw", "parts": rows}


def join(paths):
    sides = read_sides(paths, "step_probe.py")

    def medians(documents, key="ms"):
        names = [r["part"] for r in documents[0]["parts"]]
        return names, {n: statistics.median(next(r.get(key, float("nan")) for r in d["parts"] if r["part"] == n)
                                            for d in documents) for n in names}

    names, ours = medians(sides["ours"])
    _, twin = medians(sides["twin"])
    o, t = sides["ours"][0], sides["twin"][0]
    print(f"ours: libtorch {o['torch']}, {o['layout']}, {len(sides['ours'])} runs; "
          f"twin: torch {t['torch']}, {t['layout']}, {len(sides['twin'])} runs; {o['threads']} threads; "
          "medians of 40 steps, then over runs, ms")
    print()
    print("| part | ours | twin | ours/twin |")
    print("| --- | --- | --- | --- |")
    for name in names:
        if name not in twin:
            continue
        label = f"&nbsp;&nbsp;{name.strip()}" if name.startswith("  ") else name
        print(f"| {label} | {ours[name]:.2f} | {twin[name]:.2f} | {ours[name] / max(twin[name], 1e-9):.2f} |")
    for key in ("mean_ms", "p90_ms"):
        o, t = medians(sides["ours"], key)[1]["step"], medians(sides["twin"], key)[1]["step"]
        print(f"| step, {key[:-3]} of the steps | {o:.2f} | {t:.2f} | {o / max(t, 1e-9):.2f} |")


if __name__ == "__main__":
    from op_probe import cli
    cli(__doc__, lambda args: probe(args.threads), join)
