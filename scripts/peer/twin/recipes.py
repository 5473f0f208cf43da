"""The training steps of Ssl's `supervised`, `rotnet` and `moco` recipes, built from the recipe's
resolved config (the document `ssl config <method>` prints), in the order ours builds them (so the
seeded initialisation draws the same numbers). Each step returns its loss value.
"""
import torch
import torch.nn.functional as F

from . import models, transforms
from .data import to_input, unit_pixels
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


RECIPES = {"supervised": Supervised, "rotnet": RotNet, "moco": MoCo}
