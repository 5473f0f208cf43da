#!/usr/bin/python3
"""The twin's side of scripts/step-probe.fsx: a quick step cut into its parts, each timed in place,
and the encoder's forward by layer (pre-hook to hook, summed over a step's batch-norm groups), in
Debian's python3-torch. Each part's median over the steps, and its mean and 90th percentile. Two steps:
the supervised one (Fashion-MNIST batch 256, random resized crop, flip, SmallConvNet-16 + linear
head, cross-entropy, SGD with Nesterov) and, with --config, MoCo's (twin/recipes.py's MoCo built from
the document `ssl config moco --preset quick` prints, its step cut where ours is cut).

Usage: /usr/bin/python3 scripts/peer/step_probe.py [--threads N] [--json OUT] [--config moco.json]
       /usr/bin/python3 scripts/peer/step_probe.py --join ours1.json twin1.json ours2.json twin2.json ...
As peer.py, it runs with OpenBLAS and glibc's malloc thresholds pinned as ours, in NCHW (the twin's
step). --join prints a Markdown table: each part's median over the files of each side.
"""
import json
import math
import statistics
import sys
import time

sys.dont_write_bytecode = True
from op_probe import read_sides  # noqa: E402  (the scripts/peer folder is on the path)


def minor_faults() -> int:
    """Minor page faults of this process so far (/proc/self/stat's 10th field), as step-probe.fsx counts them."""
    with open("/proc/self/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def hook_layers(encoder, accumulated: dict) -> list:
    """Clocks on the encoder's layers (its leaf modules, a SafeConv2d with its padding as one), each
    adding its forward's milliseconds to accumulated[key]; returns the keys in order."""
    from twin import models
    modules = list(encoder.named_modules())
    safe = {name for name, m in modules if isinstance(m, models.SafeConv2d)}
    keys = []
    for name, module in modules:
        inside = any(name.startswith(s + ".") for s in safe)
        if not name or not ((not list(module.children()) and not inside) or name in safe):
            continue
        key = "  " + name.replace("features.", "")
        clock = [0.0]
        accumulated[key] = 0.0

        def pre(_, __, clock=clock):
            clock[0] = time.perf_counter()

        def post(_, __, ___, key=key, clock=clock):
            accumulated[key] += 1000.0 * (time.perf_counter() - clock[0])

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)
        keys.append(key)
    return keys


def supervised(images, labels, accumulated):
    import torch
    import torch.nn.functional as F
    from twin import data, models, transforms
    mean, std = [0.2860], [0.3530]
    encoder = models.SmallConvNet(1, 16)
    head = models.LinearHead(encoder.feature_dim, 10)
    parameters = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(parameters, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    encoder.train()
    head.train()
    generator = torch.Generator()
    generator.manual_seed(0)
    layers = hook_layers(encoder, accumulated)
    parts = ["input", "crop", "flip", "encoder forward", *layers, "head + loss", "backward", "optimizer", "accuracy"]

    def step(s, picked, lap):
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
    return 256, parts, step


def moco(images, labels, accumulated, config_path: str):
    import torch
    from twin import data, recipes, transforms
    with open(config_path) as f:
        document = json.load(f)
    if document.get("method") != "moco":
        sys.exit(f"step_probe.py --config {config_path}: expected the document of `ssl config moco`, found method {document.get('method')!r}")
    c = document["config"]
    recipe = recipes.MoCo(c, (images, labels, [0.2860], [0.3530]), 0)
    query, key, queue, main = recipe.query, recipe.key, recipe.queue, recipe.main
    for m in recipe.modules:
        m.train()
    layers = hook_layers(query.encoder, accumulated)
    parts = ["schedule + generator", "input", "query view", "key view", "query forward", *layers, "key forward", "loss",
             "loss.item", "zero_grad", "backward", "optimizer", "momentum update", "accuracy", "enqueue", "free"]

    def step(s, picked, lap):
        main.schedule(s / 468.0, c["Epochs"])
        torch.manual_seed(s)
        generator = torch.Generator()
        generator.manual_seed(1_000_000 + s)
        lap("schedule + generator")
        x = data.unit_pixels(images.index_select(0, picked))
        lap("input")
        xq = transforms.moco_view(c["Augmentation"], recipe.mean, recipe.std, generator, x)
        lap("query view")
        xk = transforms.moco_view(c["Augmentation"], recipe.mean, recipe.std, generator, x)
        lap("key view")
        q = transforms.per_group(c["Groups"], query, xq)
        lap("query forward")
        with torch.no_grad():
            k = transforms.shuffled_per_group(c["Groups"], generator, key.copy, xk)
        lap("key forward")
        keys = queue.keys
        positive = (q * k).sum(1, keepdim=True)
        negatives = q.mm(keys.t())
        logits = torch.cat([positive, negatives], 1) / c["Temperature"]
        loss = torch.nn.functional.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.int64))
        lap("loss")
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value}: expected a finite number")
        lap("loss.item")
        main.optimizer.zero_grad(set_to_none=False)
        lap("zero_grad")
        loss.backward()
        lap("backward")
        with torch.no_grad():
            grads = [p.grad for p in main.all if p.grad is not None]
            torch.stack([g.norm() for g in grads]).norm().item()
            main.optimizer.step()
        lap("optimizer")
        key.update(c["Momentum"])
        lap("momentum update")
        positive = (q * k).sum(1, keepdim=True)
        negatives = q.detach().matmul(keys.t())
        positive.detach().gt(negatives.amax([1], keepdim=True)).to(torch.float32).mean().item()
        lap("accuracy")
        queue.enqueue(k)
        lap("enqueue")
    return c["BatchSize"], parts, step


def probe(threads: int, config_path):
    from peer import pin_malloc_thresholds, select_openblas
    select_openblas()
    pin_malloc_thresholds()
    import torch
    from twin import data

    torch.set_num_threads(threads)
    images, labels, _, _ = data.load_train("quick")
    torch.manual_seed(0)
    accumulated = {}
    recipe = "moco" if config_path else "supervised"
    batch, parts, step = moco(images, labels, accumulated, config_path) if config_path else supervised(images, labels, accumulated)
    parts = [*parts, "step"]
    times = {p: [] for p in parts}
    faults = []
    warmup, steps = 5, 40
    generator = torch.Generator()
    generator.manual_seed(0)
    order = torch.randperm(images.shape[0], generator=generator)
    for s in range(warmup + steps):
        picked = order[s * batch:(s + 1) * batch]
        measuring = s >= warmup
        for k in accumulated:
            accumulated[k] = 0.0
        faults0 = minor_faults()
        start = time.perf_counter()
        last = [start]

        def lap(name):
            now = time.perf_counter()
            if measuring:
                times[name].append(1000.0 * (now - last[0]))
            last[0] = now

        step(s, picked, lap)  # the step's tensors are freed as it returns (reference counts)
        if "free" in times:
            lap("free")
        if measuring:
            times["step"].append(1000.0 * (time.perf_counter() - start))
            faults.append(minor_faults() - faults0)
            for k, v in accumulated.items():
                times[k].append(v)
    print(f"{recipe}, threads {threads}, torch {torch.__version__}, nchw, median of {steps} steps", file=sys.stderr)
    print(f"minor page faults per step: median {statistics.median(faults):.0f}, mean {statistics.mean(faults):.0f}", file=sys.stderr)
    rows = []
    for p in parts:
        ms = statistics.median(times[p])
        mean, p90 = statistics.mean(times[p]), sorted(times[p])[len(times[p]) * 9 // 10]
        print(f"{p:20s} {ms:7.2f} ms  (mean {mean:.2f}, p90 {p90:.2f})", file=sys.stderr)
        rows.append({"part": p, "ms": round(ms, 4), "mean_ms": round(mean, 4), "p90_ms": round(p90, 4)})
    return {"side": "twin", "recipe": recipe, "torch": torch.__version__, "threads": threads, "layout": "nchw", "parts": rows}


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
    cli(__doc__, lambda args: probe(args.threads, args.config), join, config=True)
