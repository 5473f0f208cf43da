"""The training steps of Ssl's `supervised`, `rotnet`, `moco`, `byol`, `dino` and `fixmatch` recipes, built from the recipe's
resolved config (the document `ssl config <method>` prints), in the order ours builds them (so the
seeded initialisation draws the same numbers). Each step returns its loss value.
"""
import math

import torch
import torch.nn.functional as F

from . import models, sampling, transforms
from .data import standardise, to_input, unit_pixels
from .engine import OptimizerSpec, TrainingOptimizer


class ConfigError(Exception):
    """A config value the twin does not mirror: names the field, what was expected and what was found."""


def _smallconvnet_width(config: dict) -> int:
    encoder = str(config["Encoder"])
    parts = encoder.split("-")
    if len(parts) != 2 or parts[0] != "smallconvnet" or not parts[1].isdigit():
        raise ConfigError(f"Encoder: expected smallconvnet-<width> (the twin mirrors SmallConvNet), found {encoder}")
    return int(parts[1])


def _require(config: dict, field: str, expected, what: str):
    if config[field] != expected:
        raise ConfigError(f"{field}: expected {what}, found {config[field]}")


class Supervised:
    """SupervisedTraining.Step: random resized crop, flip, cross-entropy, SGD with Nesterov."""

    def __init__(self, config: dict, data, seed: int):
        self.images, self.labels, self.mean, self.std = data
        self.config = config
        examples = self.images.shape[0]
        self.batch_size = min(config["BatchSize"], examples)
        per_epoch = examples // self.batch_size
        self.epochs = max(config["Epochs"], (config["MinSteps"] + per_epoch - 1) // per_epoch)
        self.encoder = models.SmallConvNet(self.images.shape[1], _smallconvnet_width(config))
        torch.manual_seed(seed)
        self.head = models.LinearHead(self.encoder.feature_dim, int(self.labels.max()) + 1)
        spec = OptimizerSpec(config["LearningRate"], 0.9, True, config["WeightDecay"], config["WarmupEpochs"])
        self.main = TrainingOptimizer(spec, list(self.encoder.parameters()) + list(self.head.parameters()))
        self.modules = [self.encoder, self.head]
        self.optimizers = [self.main]

    def step(self, ctx, batch) -> float:
        idx = torch.tensor(batch)
        x = to_input(self.images.index_select(0, idx), self.mean, self.std)
        y = self.labels.index_select(0, idx)
        h, w = x.shape[2], x.shape[3]
        augmented = transforms.random_resized_crop(tuple(self.config["CropScale"]), (3.0 / 4.0, 4.0 / 3.0), (h, w), ctx.generator, x)
        augmented = transforms.random_horizontal_flip(self.config["FlipProbability"], ctx.generator, augmented)
        logits = self.head(self.encoder(augmented))
        loss = F.cross_entropy(logits, y)
        value = self.main.optimize(loss)
        logits.argmax(1).eq(y).to(torch.float32).mean().item()
        return value


class RotNet:
    """RotNet.Step: flip, the batch in all four rotations, a 4-way linear classifier, cross-entropy."""

    def __init__(self, config: dict, data, seed: int):
        self.images, _, self.mean, self.std = data
        self.config = config
        self.batch_size = config["BatchSize"]
        self.epochs = config["Epochs"]
        self.encoder = models.SmallConvNet(self.images.shape[1], _smallconvnet_width(config))
        self.head = models.LinearHead(self.encoder.feature_dim, 4)
        spec = OptimizerSpec(config["LearningRate"], 0.9, True, config["WeightDecay"], 0.0)
        self.main = TrainingOptimizer(spec, list(self.encoder.parameters()) + list(self.head.parameters()))
        self.modules = [self.encoder, self.head]
        self.optimizers = [self.main]

    def step(self, ctx, batch) -> float:
        idx = torch.tensor(batch)
        x = to_input(self.images.index_select(0, idx), self.mean, self.std)
        x = transforms.random_horizontal_flip(self.config["FlipProbability"], ctx.generator, x)
        rotated, rotations = transforms.rotation_batch(x)
        logits = self.head(self.encoder(rotated))
        loss = F.cross_entropy(logits, rotations)
        value = self.main.optimize(loss)
        logits.argmax(1).eq(rotations).to(torch.float32).mean().item()
        return value


class MoCo:
    """MoCo.Step (v1): two views, queries per batch-norm group, keys from the momentum network per
    shuffled group, InfoNCE against the queue, SGD on the query network, momentum update, enqueue."""

    def __init__(self, config: dict, data, seed: int):
        self.images, _, self.mean, self.std = data
        self.config = config
        _require(config, "MlpHead", False, "false (the twin mirrors MoCo v1's linear projection)")
        if config["BatchSize"] % config["Groups"] != 0:
            raise ConfigError(f"BatchSize: expected a multiple of Groups ({config['Groups']}), found {config['BatchSize']}")
        self.batch_size = config["BatchSize"]
        self.epochs = config["Epochs"]
        width = _smallconvnet_width(config)
        self.query = self._embedding_net(width, config["EmbeddingDim"])
        self.key = models.MomentumCopy(self.query, self._embedding_net(width, config["EmbeddingDim"]))
        generator = torch.Generator()
        generator.manual_seed(seed)
        self.queue = models.KeyQueue(config["QueueSize"], config["EmbeddingDim"], generator)
        spec = OptimizerSpec(config["LearningRate"], 0.9, False, config["WeightDecay"], config["WarmupEpochs"])
        self.main = TrainingOptimizer(spec, list(self.query.parameters()))
        self.modules = [self.query, self.key, self.queue]
        self.optimizers = [self.main]
        self.encoder = self.query.encoder

    def _embedding_net(self, width: int, dim: int):
        # MoCo.embeddingNet builds the projection before the encoder.
        projection = models.LinearHead(4 * width, dim)
        return models.EmbeddingNet(models.SmallConvNet(self.images.shape[1], width), projection)

    def step(self, ctx, batch) -> float:
        c = self.config
        x = unit_pixels(self.images.index_select(0, torch.tensor(batch)))
        xq = transforms.moco_view(c["Augmentation"], self.mean, self.std, ctx.generator, x)
        xk = transforms.moco_view(c["Augmentation"], self.mean, self.std, ctx.generator, x)
        q = transforms.per_group(c["Groups"], self.query, xq)
        with torch.no_grad():
            if c["ShuffleBn"]:
                k = transforms.shuffled_per_group(c["Groups"], ctx.generator, self.key.copy, xk)
            else:
                k = transforms.per_group(c["Groups"], self.key.copy, xk)
        queue = self.queue.keys
        positive = (q * k).sum(1, keepdim=True)
        negatives = q.mm(queue.t())
        logits = torch.cat([positive, negatives], 1) / c["Temperature"]
        loss = F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.int64))
        value = self.main.optimize(loss)
        self.key.update(c["Momentum"])
        positive = (q * k).sum(1, keepdim=True)
        negatives = q.detach().matmul(queue.t())
        positive.detach().gt(negatives.amax([1], keepdim=True)).to(torch.float32).mean().item()
        self.queue.enqueue(k)
        return value


def momentum_cosine(base: float, step: int, total: int) -> float:
    """Momentum.cosine: tau = 1 - (1 - base) (cos(pi k / K) + 1) / 2 at step k of K."""
    k = float(max(0, min(step, total)))
    return 1.0 - (1.0 - base) * (math.cos(math.pi * k / float(total)) + 1.0) / 2.0


def normalised_squared_error(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Siamese.normalisedSquaredError: mean over rows of |p/|p| - stopgrad(z)/|z||^2."""
    return (F.normalize(p, 2.0, 1) - F.normalize(z.detach(), 2.0, 1)).square().sum(1).mean()


def output_std(z: torch.Tensor) -> float:
    """Siamese.outputStd: the std over the batch of the normalised rows, averaged over dimensions."""
    with torch.no_grad():
        return F.normalize(z, 2.0, 1).std(0, unbiased=True, keepdim=False).mean().to(torch.float64).item()


class Byol:
    """Byol.build: two views; online projections z = g(f(v)) and predictions q(z) against the EMA
    target's projections of the other view, 2 - 2 cos symmetrised; LARS on encoder, projector and
    predictor; the target's decay on a cosine from BaseMomentum to 1; z_std logged."""

    def __init__(self, config: dict, data, seed: int):
        self.images, _, self.mean, self.std = data
        self.config = config
        self.batch_size = config["BatchSize"]
        self.epochs = config["Epochs"]
        width = _smallconvnet_width(config)
        hidden, dim = config["HiddenDim"], config["ProjectionDim"]
        channels = self.images.shape[1]
        # Byol.build's order: encoder, its projector; the target's encoder and projector; the predictor.
        encoder = models.SmallConvNet(channels, width)
        self.online = models.projected(encoder, models.MlpHead(encoder.feature_dim, hidden, dim))
        target_encoder = models.SmallConvNet(channels, width)
        self.target = models.MomentumCopy(self.online, models.projected(target_encoder, models.MlpHead(target_encoder.feature_dim, hidden, dim)))
        self.predictor = models.MlpHead(dim, hidden, dim)
        spec = OptimizerSpec(config["LearningRate"], 0.9, False, config["WeightDecay"], config["WarmupEpochs"], config["LarsEta"])
        self.main = TrainingOptimizer(spec, list(self.online.parameters()) + list(self.predictor.parameters()))
        self.modules = [self.online, self.predictor, self.target]
        self.optimizers = [self.main]
        self.encoder = encoder

    def step(self, ctx, batch) -> float:
        c = self.config
        x = unit_pixels(self.images.index_select(0, torch.tensor(batch)))
        v1 = transforms.moco_view(c["Augmentation"], self.mean, self.std, ctx.generator, x)
        v2 = transforms.moco_view(c["Augmentation"], self.mean, self.std, ctx.generator, x)
        z1, z2 = self.online(v1), self.online(v2)
        with torch.no_grad():
            t1, t2 = self.target(v1), self.target(v2)
        loss = normalised_squared_error(self.predictor(z1), t2) + normalised_squared_error(self.predictor(z2), t1)
        value = self.main.optimize(loss)
        self.target.update(momentum_cosine(c["BaseMomentum"], ctx.step, ctx.total_steps))
        output_std(z1)
        return value


def _vit_tiny(config: dict):
    """(patch, depth) of a vit-tiny-<patch>[-<depth>] encoder (Backbone.fs; depth 12 when not given)."""
    encoder = str(config["Encoder"])
    parts = encoder.split("-")
    if len(parts) in (3, 4) and parts[:2] == ["vit", "tiny"] and all(p.isdigit() for p in parts[2:]):
        return int(parts[2]), int(parts[3]) if len(parts) == 4 else 12
    raise ConfigError(f"Encoder: expected vit-tiny-<patch>[-<depth>] (the twin mirrors ViT-Tiny), found {encoder}")


# Backbone.vitPositionImageSide: the image side the ViT's positional table is sized for.
VIT_POSITION_IMAGE_SIDE = 28


def dino_teacher_temperature(warmup: float, final: float, warmup_epochs: int, epoch: int) -> float:
    """Dino.teacherTemperature: linspace(warmup, final, warmupEpochs)[epoch], then final."""
    if epoch >= warmup_epochs:
        return final
    if warmup_epochs == 1:
        return warmup
    return warmup + (final - warmup) * float(epoch) / float(warmup_epochs - 1)


def dino_teacher_probabilities(temperature: float, center: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Dino.teacherProbabilities: softmax((teacher - center) / temperature), detached."""
    return F.softmax((teacher.detach() - center.detach().reshape(1, -1)) / temperature, 1)


def dino_loss(student_temperature: float, teacher_temperature: float, crops: int, center, teacher, student) -> torch.Tensor:
    """Dino.loss: the mean over pairs of different crops of H(P_t^i, P_s^v), over the batch."""
    n, k = student.shape[0] // crops, student.shape[1]
    global_crops = teacher.shape[0] // n
    targets = dino_teacher_probabilities(teacher_temperature, center, teacher).reshape(global_crops, n * k)
    log_student = F.log_softmax(student / student_temperature, 1).reshape(crops, n * k)
    cross = targets.matmul(log_student.t())
    different = torch.ones(global_crops, crops, dtype=torch.bool).logical_xor(torch.eye(global_crops, crops, dtype=torch.bool))
    pairs = float(global_crops * (crops - 1))
    return -(cross.masked_select(different).sum()) / (float(n) * pairs)


def dino_entropy(probabilities: torch.Tensor) -> float:
    """Dino.entropy: the mean row entropy in nats, float64."""
    with torch.no_grad():
        p = probabilities.detach().to(torch.float64)
        terms = torch.where(p.gt(0.0), -(p * p.clamp_min(1e-300).log()), torch.zeros_like(p))
        return terms.sum(1).mean().item()


class Dino:
    """Dino.build and Dino.run: a student (ViT + DinoHead) and its momentum teacher; two global
    crops (blur 1.0; blur 0.1 and solarisation 0.2) and the local crops (blur 0.5); the teacher on
    the globals, the student on all; DINO's loss against the centred, sharpened teacher; AdamW with
    clipping and the warm-up + cosine rate; DINO's cosine weight decay applied in the step; the
    teacher's EMA on a cosine; the center update."""

    def __init__(self, config: dict, data, seed: int):
        self.images, _, self.mean, self.std = data
        self.config = config
        if config["PretrainImages"] != 0:
            raise ConfigError(f"PretrainImages: expected 0 (the twin walks every training image), found {config['PretrainImages']}")
        if config["FreezeLastLayerEpochs"] != 0:
            raise ConfigError(f"FreezeLastLayerEpochs: expected 0 (quick's), found {config['FreezeLastLayerEpochs']}")
        self.batch_size = config["BatchSize"]
        self.epochs = config["Epochs"]
        patch, depth = _vit_tiny(config)
        channels = self.images.shape[1]

        def net():
            encoder = models.VisionTransformer(channels, patch, depth, max(1, VIT_POSITION_IMAGE_SIDE // patch))
            return models.DinoNet(encoder, models.DinoHead(encoder.feature_dim, config["HeadHidden"], config["HeadBottleneck"], config["Outputs"]))

        self.student = net()
        self.teacher = models.MomentumCopy(self.student, net())
        self.center = torch.zeros(config["Outputs"])
        lr = config["LearningRate"] * config["BatchSize"] / 256.0
        spec = OptimizerSpec(lr, 0.9, False, 0.0, config["WarmupEpochs"], adamw=True,
                             final_lr_fraction=min(1.0, config["MinLearningRate"] / lr), clip_grad_norm=config["ClipGradNorm"])
        self.main = TrainingOptimizer(spec, list(self.student.parameters()))
        self.decayed = [p for p in self.student.parameters() if p.dim() > 1]
        self.modules = [self.student, self.teacher]
        self.optimizers = [self.main]
        self.encoder = self.student.encoder

    def _crop(self, generator, scale, size: int, blur: float, solarize: float, x):
        c = self.config
        views = transforms.multi_crop_pixels(c["Jitter"], 0.5, 0.8, scale, size, generator, x)
        views = transforms.sometimes(generator, blur, lambda i: transforms.random_gaussian_blur(c["BlurKernel"], c["BlurSigma"], generator, i), views)
        views = transforms.sometimes(generator, solarize, lambda i: torch.where(i.ge(0.5), i.neg() + 1.0, i), views)
        return standardise(views, self.mean, self.std)

    def step(self, ctx, batch) -> float:
        c = self.config
        x = unit_pixels(self.images.index_select(0, torch.tensor(batch)))
        side = x.shape[2]
        g = ctx.generator
        globals_ = torch.cat([self._crop(g, c["GlobalCropScale"], side, 1.0, 0.0, x),
                              self._crop(g, c["GlobalCropScale"], side, 0.1, 0.2, x)], 0)
        locals_ = [self._crop(g, c["LocalCropScale"], c["LocalCropSize"], 0.5, 0.0, x) for _ in range(c["LocalCrops"])]
        with torch.no_grad():
            teacher_logits = self.teacher(globals_)
        features = [self.student.encoder(globals_)] + ([self.student.encoder(torch.cat(locals_, 0))] if locals_ else [])
        student_logits = self.student.head(torch.cat(features, 0))
        epoch = ctx.step // (ctx.total_steps // self.epochs)
        temperature = dino_teacher_temperature(c["WarmupTeacherTemperature"], c["TeacherTemperature"], c["TeacherTemperatureWarmupEpochs"], epoch)
        dino_entropy(dino_teacher_probabilities(temperature, self.center, teacher_logits))
        loss = dino_loss(c["StudentTemperature"], temperature, 2 + c["LocalCrops"], self.center, teacher_logits, student_logits)
        value = self.main.optimize(loss)
        progress = float(ctx.step) / float(max(1, ctx.total_steps))
        start, stop = c["WeightDecay"], c["WeightDecayEnd"]
        weight_decay = stop + (start - stop) * (1.0 + math.cos(math.pi * progress)) / 2.0
        with torch.no_grad():
            for p in self.decayed:
                p.mul_(1.0 - self.main.learning_rate * weight_decay)
        self.teacher.update(momentum_cosine(c["TeacherMomentum"], ctx.step, ctx.total_steps))
        with torch.no_grad():
            self.center.copy_(self.center.reshape(-1) * c["CenterMomentum"] + teacher_logits.mean([0]) * (1.0 - c["CenterMomentum"]))
        self.center.norm().item()
        return value


# Template.semiSupervised's first label budget per class: what `ssl bench` runs a semi-supervised recipe with.
LABELS_PER_CLASS = 10


def labelled_batch(generator, labelled: list, size: int) -> list:
    """SemiSupervised.labelledBatch: `size` labelled indices, without replacement, in rounds of randperm."""
    n = len(labelled)
    rounds = (size + n - 1) // n
    order = [i for _ in range(rounds) for i in torch.randperm(n, generator=generator).tolist()]
    return [labelled[order[i]] for i in range(size)]


class FixMatch:
    """FixMatch.buildFamily with the fixed threshold: B labelled images drawn each step beside the muB
    the epoch walks over the unlabelled pool; weak views (translate, flip) of both, a strong view
    (weak, RandAugment, Cutout) of the unlabelled; one pass through the classifier; cross-entropy plus
    lambda_u times the masked cross-entropy against the weak view's hard pseudo-labels; SGD with
    Nesterov to a cos(7 pi / 16) floor; the EMA classifier after every step; the logged figures."""

    def __init__(self, config: dict, data, seed: int):
        self.images, self.labels, self.mean, self.std = data
        self.config = config
        width = _smallconvnet_width(config)
        classes = int(self.labels.max()) + 1
        self.labelled, self.pool = sampling.label_split(self.labels.tolist(), LABELS_PER_CLASS, seed, classes)
        self.batch_size = config["BatchSize"] * config["UnlabelledRatio"]
        self.examples = len(self.pool)
        self.epochs = config["Epochs"]
        channels = self.images.shape[1]
        # parts, then TrainWithEma's EmaClassifier: encoder, head, the EMA's encoder and head.
        self.encoder = models.SmallConvNet(channels, width, config["BatchNormMomentum"])
        self.head = models.LinearHead(self.encoder.feature_dim, classes)
        self.ema_encoder = models.MomentumCopy(self.encoder, models.SmallConvNet(channels, width, config["BatchNormMomentum"]))
        self.ema_head = models.MomentumCopy(self.head, models.LinearHead(self.encoder.feature_dim, classes))
        spec = OptimizerSpec(config["LearningRate"], 0.9, True, config["WeightDecay"], config["WarmupEpochs"],
                             final_lr_fraction=math.cos(7.0 * math.pi / 16.0))
        self.main = TrainingOptimizer(spec, list(self.encoder.parameters()) + list(self.head.parameters()))
        self.modules = [self.encoder, self.head, self.ema_encoder, self.ema_head]
        self.optimizers = [self.main]

    def step(self, ctx, batch) -> float:
        c = self.config
        g = ctx.generator
        labelled = labelled_batch(g, self.labelled, c["BatchSize"])
        unlabelled = [self.pool[i] for i in batch]

        def weak(images):
            return transforms.weak_augment(c["TranslatePixels"], c["FlipProbability"], g, images)

        x = weak(unit_pixels(self.images.index_select(0, torch.tensor(labelled))))
        y = self.labels.index_select(0, torch.tensor(labelled))
        raw = unit_pixels(self.images.index_select(0, torch.tensor(unlabelled)))
        weak_view = weak(raw)
        strong_view = transforms.strong_augment(c["StrongOperations"], c["CutoutFraction"], 0.5, g, weak(raw))
        logits = self.head(self.encoder(standardise(torch.cat([x, weak_view, strong_view], 0), self.mean, self.std)))
        b, u = x.shape[0], raw.shape[0]
        labelled_logits = logits.narrow(0, 0, b)
        strong_logits = logits.narrow(0, b + u, u)
        supervised = F.cross_entropy(labelled_logits, y)
        probs = logits.narrow(0, b, u).detach().softmax(1)
        pseudo_labels = probs.argmax(1)
        confidence, _ = probs.max(1)
        weights = confidence.ge(c["Threshold"]).to(probs.dtype)
        unlabelled_loss = (F.cross_entropy(strong_logits, pseudo_labels, reduction="none") * weights.detach()).mean()
        total = supervised + unlabelled_loss * c["UnlabelledWeight"]
        truth = self.labels.index_select(0, torch.tensor(unlabelled))
        kept = weights.gt(0.0)
        supervised.item(), unlabelled_loss.item(), weights.mean().item()
        labelled_logits.argmax(1).eq(y).to(torch.float32).mean().item()
        for among in (torch.ones_like(truth, dtype=torch.bool), kept):
            counted = truth.ge(0).logical_and(among)
            if counted.sum().item() > 0:
                pseudo_labels.eq(truth).logical_and(counted).sum().item()
        value = self.main.optimize(total)
        self.ema_encoder.update(c["EmaMomentum"])
        self.ema_head.update(c["EmaMomentum"])
        return value


RECIPES = {"supervised": Supervised, "rotnet": RotNet, "moco": MoCo, "byol": Byol, "dino": Dino, "fixmatch": FixMatch}
