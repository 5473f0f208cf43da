"""Ssl's engine around a step: the optimizer with its parameter groups and schedule
(Host.CSharp/Engine/OptimizerSpec.cs), StepContext.Optimize (loss value, finiteness check,
zero_grad, backward, gradient norm, step), and the trainer loop of `ssl bench` (Trainer.cs with
StepBenchmark.cs): per step the schedule, the global seed and a fresh generator from (seed, step),
the step, its duration from before the schedule to after its tensors are freed; after the warm-up
steps, the timed ones; img/s = the images the timed steps drew / the sum of their durations.
Inside the timed steps the backward pass and the optimizer (zero_grad, gradient norm, step) are
timed as StepContext.Optimize times ours (StepBenchmark.Phase), the rest is "forward+other".
"""
import math
import time

import torch

from .sampling import batch_order, derive

# Seconds per phase over the timed steps (StepBenchmark's phases); None outside them.
_phases = None


def add_phase(name: str, seconds: float):
    if _phases is not None:
        _phases[name] = _phases.get(name, 0.0) + seconds


class OptimizerSpec:
    """OptimizerSpec: SGD (with or without Nesterov), LARS over SGD when lars_eta is given, or AdamW
    (betas 0.9, 0.999, eps 1e-8); linear warm-up then cosine decay to final_lr_fraction of the rate;
    the global gradient norm clipped to clip_grad_norm where given."""

    def __init__(self, lr: float, momentum: float, nesterov: bool, weight_decay: float, warmup_epochs: float,
                 lars_eta: float = None, adamw: bool = False, final_lr_fraction: float = 0.0, clip_grad_norm: float = None):
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.weight_decay, self.warmup_epochs = weight_decay, warmup_epochs
        self.lars_eta, self.adamw = lars_eta, adamw
        self.final_lr_fraction, self.clip_grad_norm = final_lr_fraction, clip_grad_norm

    def factor(self, progress: float, total_epochs: float) -> float:
        if self.warmup_epochs > 0 and progress < self.warmup_epochs:
            return (progress + 1e-12) / self.warmup_epochs
        span = max(total_epochs - self.warmup_epochs, 1e-12)
        t = min(max((progress - self.warmup_epochs) / span, 0.0), 1.0)
        return self.final_lr_fraction + (1 - self.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * t))


class TrainingOptimizer:
    """TrainingOptimizer: parameters of more than one dimension decayed, the rest (batch-norm scales
    and shifts, biases) in a group without weight decay; the step reports the global gradient norm.
    LARS (You et al. 2017, Alg. 1, ScaleByTrustRatio): before SGD's step (which then has no weight
    decay), each decayed gradient g becomes eta |w| / (|g| + wd |w|) (g + wd w)."""

    def __init__(self, spec: OptimizerSpec, parameters):
        self.spec = spec
        self.all = [p for p in parameters if p.requires_grad]
        if not self.all:
            raise ValueError("optimizer: expected at least one trainable parameter, found none")
        decayed = [p for p in self.all if p.dim() > 1]
        plain = [p for p in self.all if p.dim() <= 1]
        self.decayed = decayed
        wd = 0.0 if spec.lars_eta is not None else spec.weight_decay
        groups = [{"params": decayed, "weight_decay": wd}] if decayed else []
        groups += [{"params": plain, "weight_decay": 0.0}] if plain else []
        if spec.adamw:
            self.optimizer = torch.optim.AdamW(groups, lr=spec.lr, betas=(0.9, 0.999), eps=1e-8, amsgrad=False, foreach=False)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, dampening=0,
                                             nesterov=spec.nesterov, foreach=False)

    @property
    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def schedule(self, progress: float, total_epochs: float):
        lr = self.spec.lr * self.spec.factor(progress, total_epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def optimize(self, loss: torch.Tensor) -> float:
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value}: expected a finite number")
        start = time.perf_counter()
        # TorchSharp 0.107's zero_grad zeroes the gradients in place, as PyTorch 1.13's default does.
        self.optimizer.zero_grad(set_to_none=False)
        zeroed = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
        with torch.no_grad():
            if self.spec.clip_grad_norm is not None:
                self.gradient_norm = torch.nn.utils.clip_grad_norm_(self.all, self.spec.clip_grad_norm).item()
            else:
                grads = [p.grad for p in self.all if p.grad is not None]
                self.gradient_norm = torch.stack([g.norm() for g in grads]).norm().item() if grads else 0.0
            if self.spec.lars_eta is not None:
                self._scale_by_trust_ratio()
            self.optimizer.step()
        add_phase("backward", backward - zeroed)
        add_phase("optimizer", zeroed - start + time.perf_counter() - backward)
        return value


    def _scale_by_trust_ratio(self):
        eta, wd = self.spec.lars_eta, self.spec.weight_decay
        for p in self.decayed:
            if p.grad is None:
                continue
            w_norm, g_norm = p.norm().item(), p.grad.norm().item()
            ratio = eta * w_norm / (g_norm + wd * w_norm) if w_norm > 0 and g_norm > 0 else 1.0
            p.grad.add_(p, alpha=wd).mul_(ratio)


class Context:
    """StepContext: this step's generator, seeded from (run seed, step), the step (from 0) and the
    run's total steps."""

    def __init__(self, seed: int, step: int, total_steps: int):
        self.generator = torch.Generator()
        self.generator.manual_seed(derive(seed, 1_000_000 + step))
        self.step, self.total_steps = step, total_steps


def benchmark(recipe, examples: int, batch_size: int, epochs: int, seed: int, warmup: int, steps: int):
    """Runs warmup + steps training steps of `recipe` over the batches BatchSampler gives each epoch
    (its modules in training mode from every epoch's start) and returns (images, seconds) of the
    timed steps, the losses of every step and the milliseconds per timed step of each phase
    (backward, optimizer, forward+other)."""
    global _phases
    per_epoch = examples // batch_size
    if warmup + steps > epochs * per_epoch:
        raise ValueError(f"the run has {epochs * per_epoch} steps, fewer than the {warmup + steps} asked for; lower --steps")
    images, seconds, losses = 0, 0.0, []
    phases = {}

    def per_step():
        timed = {k: 1000.0 * v / steps for k, v in phases.items()}
        return {**timed, "forward+other": 1000.0 * seconds / steps - sum(timed.values())}

    for epoch in range(epochs):
        order = batch_order(examples, seed, epoch)
        for m in recipe.modules:
            m.train()
        for b in range(per_epoch):
            step = epoch * per_epoch + b
            if step == warmup + steps:
                _phases = None
                return images, seconds, losses, per_step()
            _phases = phases if step >= warmup else None
            batch = order[b * batch_size:(b + 1) * batch_size]
            start = time.perf_counter()
            for o in recipe.optimizers:
                o.schedule(epoch + b / per_epoch, epochs)
            torch.manual_seed(derive(seed, step))
            loss = recipe.step(Context(seed, step, epochs * per_epoch), batch)
            elapsed = time.perf_counter() - start
            losses.append(loss)
            if step >= warmup:
                images += len(batch)
                seconds += elapsed
    _phases = None
    return images, seconds, losses, per_step()


def matmul_peak_gflops(seconds_per_size: float = 0.5) -> float:
    """MachineInfo.MatmulPeakGflops: the best float32 n x n matmul rate for n = 512, 1024, 2048."""
    best = 0.0
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        clock = time.perf_counter()
        reps = 0
        while time.perf_counter() - clock < seconds_per_size or reps < 2:
            t = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2.0 * n ** 3 / (time.perf_counter() - t) / 1e9)
            reps += 1
    return best
