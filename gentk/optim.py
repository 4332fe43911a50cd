"""Optimizers and learning-rate schedules, registered as built-in plugins.

Each phase of training (docs/architecture.md, "Training phases") has its own optimizer
and schedule, picked in the recipe as ``train.phases.<phase>.optimizer = { name = "adam",
lr = 1e-3 }`` and ``schedule = { name = "cosine" }``. Adam is the paper's (and the AAE paper's) choice.
Each factory takes its validated config and the engine's context: ``params`` for an
optimizer, ``optimizer`` and ``total_steps`` for a schedule.
"""

from __future__ import annotations

import math

import attrs
import torch

from gentk.options import REQUIRED, option
from gentk.plugins import hookimpl


def adam(config: AdamConfig, *, params) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015)."""
    return torch.optim.Adam(params, lr=config.lr, betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay)


@attrs.frozen
class AdamConfig:
    lr: float = option(1e-3, "learning rate", gt=0)
    betas: tuple[float, float] = option((0.9, 0.999), "coefficients of the running averages of the gradient and its square", ge=0, lt=1)
    eps: float = option(1e-8, "term added to the denominator for stability", gt=0)
    weight_decay: float = option(0.0, "L2 penalty (coupled, as torch.optim.Adam)", ge=0)


def adamw(config: AdamWConfig, *, params) -> torch.optim.Optimizer:
    """AdamW: Adam with decoupled weight decay (Loshchilov & Hutter 2019)."""
    return torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay)


@attrs.frozen
class AdamWConfig(AdamConfig):
    weight_decay: float = option(0.01, "decoupled weight decay", ge=0)


def sgd(config: SGDConfig, *, params) -> torch.optim.Optimizer:
    """Stochastic gradient descent with optional (Nesterov) momentum."""
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay)


@attrs.frozen
class SGDConfig:
    lr: float = option(0.01, "learning rate", gt=0)
    momentum: float = option(0.9, "momentum factor", ge=0, lt=1)
    nesterov: bool = option(False, "use Nesterov momentum")
    weight_decay: float = option(0.0, "L2 penalty", ge=0)


def rmsprop(config: RMSpropConfig, *, params) -> torch.optim.Optimizer:
    """RMSprop (Hinton's lecture notes, 2012)."""
    return torch.optim.RMSprop(params, lr=config.lr, alpha=config.alpha, eps=config.eps)


@attrs.frozen
class RMSpropConfig:
    lr: float = option(1e-3, "learning rate", gt=0)
    alpha: float = option(0.99, "smoothing constant", gt=0, lt=1)
    eps: float = option(1e-8, "term added to the denominator", gt=0)


def constant(config: ConstantConfig, *, optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning rate stays as set (after an optional linear warm-up)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _warmup(step, config.warmup))


@attrs.frozen
class ConstantConfig:
    warmup: int = option(0, "steps of linear warm-up from 0", ge=0)


def step_decay(config: StepConfig, *, optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Multiply the learning rate by `factor` every `every` steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _warmup(step, config.warmup) * config.factor ** (step // config.every))


@attrs.frozen
class StepConfig:
    every: int = option(REQUIRED, "steps between decays", ge=1)
    factor: float = option(0.1, "multiplier at each decay", gt=0, le=1)
    warmup: int = option(0, "steps of linear warm-up from 0", ge=0)


def cosine(config: CosineConfig, *, optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay from the set learning rate to `final` times it over the run (Loshchilov & Hutter 2017)."""
    final, warmup = config.final, config.warmup

    def factor(step: int) -> float:
        progress = min(1.0, max(0.0, (step - warmup) / max(1, total_steps - warmup)))
        return _warmup(step, warmup) * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@attrs.frozen
class CosineConfig:
    final: float = option(0.0, "final learning rate as a fraction of the initial one", ge=0, le=1)
    warmup: int = option(0, "steps of linear warm-up from 0", ge=0)


def _warmup(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


@hookimpl
def gentk_register_optimizers(register):
    register("adam", adam, config=AdamConfig)
    register("adamw", adamw, config=AdamWConfig)
    register("sgd", sgd, config=SGDConfig)
    register("rmsprop", rmsprop, config=RMSpropConfig)


@hookimpl
def gentk_register_schedules(register):
    register("constant", constant, config=ConstantConfig)
    register("step", step_decay, config=StepConfig)
    register("cosine", cosine, config=CosineConfig)
