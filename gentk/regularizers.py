"""Regularizers: how a latent's codes q(z|x) are matched to its prior p(z).

PixelGAN autoencoders (Makhzani & Frey 2017, §2, eq. 2) start from the VAE's split
E_x KL(q(z|x) || p(z)) = I(x; z) + KL(q(z) || p(z)): the VAE and PixelVAE pay both terms
(`KLRegularizer`), PixelGAN and the AAE drop the mutual information and replace
KL(q(z) || p(z)) by a GAN between prior samples and codes (`AdversarialRegularizer`).

A regularizer declares the training phase it acts in (``phase``; docs/architecture.md,
"Training phases"):

- ``"reconstruction"``: it offers ``penalty(head, step) -> (scalar, logs)``, added to the
  reconstruction loss, and ``kl(head) -> (B,)``, its exact term of the ELBO;
- ``"regularization"``: it offers ``parts()`` (its trainable modules, e.g. the
  discriminator), ``discriminator_loss(real, fake)`` and ``generator_loss(fake)``;
- ``None``: it does nothing (``none``).

These are the contracts `gentk.contracts.Penalty` (with `KLTerm`) and `Adversary`. `head`
is an encoder head's output dict (gentk.encoders). A regularizer knows its latent's
size, prior and head kind, never the model it belongs to.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from gentk.contracts import Categorical, DiagonalNormal, support_problem
from gentk.distributions import categorical_kl, normal_kl, normal_log_prob
from gentk.nn import current_loss_scale, mlp
from gentk.options import configured, option
from gentk.plugins import hookimpl

# --------------------------------------------------------------------------- pure losses


def gan_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """-log D(real) - log(1 - D(fake)), averaged; D = sigmoid(logits) (Goodfellow et al. 2014, eq. 1)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def gan_generator_loss(fake_logits: Tensor) -> Tensor:
    """The non-saturating generator loss -log D(fake), averaged (Goodfellow et al. 2014, §3)."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: Tensor, real: Tensor, scale: float | None = None) -> Tensor:
    """E ||grad_z D(z)||^2 at real samples z (Mescheder et al. 2018, eq. 9, without the gamma / 2).

    `real` must require grad and `real_logits` (B,) depend on it; the graph is kept so that
    the penalty can be minimised. The gradient is taken of ``scale * mean(real_logits)`` and
    multiplied by B / scale: under fp16 AMP, `scale` (default: the engine's loss scale,
    `gentk.nn.current_loss_scale`, 1 otherwise) keeps small gradients from flushing to zero
    in fp16 (PyTorch's AMP gradient-penalty recipe); the mean keeps the gradient reaching
    each logit, scale / B, within fp16's range. An overflow gives an infinite penalty, and
    the GradScaler skips the step and lowers the scale, as for any other overflow.
    """
    scale = current_loss_scale() if scale is None else scale
    (grad,) = torch.autograd.grad(real_logits.float().mean() * scale, real, create_graph=True)
    grad = grad * (len(real_logits) / scale)
    return grad.pow(2).sum(-1).mean()


def free_bits_kl(kl_terms: Tensor, free_bits: float) -> Tensor:
    """sum_j max(free_bits, mean_b kl_terms[b, j]) (Kingma et al. 2016, IAF, eq. 15).

    kl_terms: (B, J) KL terms per example and group (latent dimension); each group's batch
    mean below `free_bits` nats costs (and teaches) nothing.
    """
    return kl_terms.mean(0).clamp_min(free_bits).sum()


# --------------------------------------------------------------------------- KL


class KLRegularizer(nn.Module):
    """The VAE's KL(q(z|x) || p(z)), analytic where it exists, else a one-sample Monte Carlo estimate.

    Analytic: a Gaussian head against a diagonal Gaussian prior (`normal_kl`), a categorical
    head against a categorical prior (`categorical_kl`). Monte Carlo: a Gaussian head against
    any prior with a log_prob, log q(z|x) - log p(z) at the head's sample z. The weight
    rises linearly from 0 over `warmup` steps (Sønderby et al. 2016); `free_bits` nats per
    dimension are free (Kingma et al. 2016).
    """

    phase = "reconstruction"
    heads = ("gaussian", "categorical")  # a deterministic code has no density q(z|x)

    @attrs.frozen
    class Config:
        weight: float = option(1.0, "weight of the KL term (1: the ELBO; other values give a beta-VAE)", ge=0)
        warmup: int = option(0, "steps over which the weight rises linearly from 0 (0: no warm-up)", ge=0)
        free_bits: float = option(0.0, "nats per latent dimension (per latent for Monte Carlo) that cost nothing", ge=0)
        estimator: Literal["auto", "analytic", "monte_carlo"] = option("auto", "auto: analytic where it exists, else Monte Carlo")

    def __init__(self, config: Config | None = None, *, size: int, prior: nn.Module, head: str, **options) -> None:
        super().__init__()
        cfg = configured(self.Config, config, options)
        estimator = cfg.estimator
        self.prior = prior
        self.weight, self.warmup, self.free_bits = cfg.weight, cfg.warmup, cfg.free_bits
        analytic = (head == "gaussian" and isinstance(prior, DiagonalNormal)) or (head == "categorical" and isinstance(prior, Categorical))
        if head == "deterministic":
            raise ValueError("a KL regularizer needs a stochastic head (gaussian or categorical); a deterministic code has no density q(z|x)")
        if head == "categorical" and not isinstance(prior, Categorical):
            raise ValueError("a KL regularizer on a categorical head needs a categorical prior")
        if estimator == "analytic" and not analytic:
            raise ValueError(f'no analytic KL between a {head} head and a {type(prior).__name__}; use estimator = "monte_carlo" or "auto"')
        if estimator == "monte_carlo" and head == "categorical":
            raise ValueError('the categorical KL is an exact finite sum; use estimator = "analytic" or "auto"')
        self.head = head
        self.analytic = analytic and estimator != "monte_carlo"

    def kl_terms(self, head: dict[str, Tensor]) -> Tensor:
        """KL terms (B, J): per dimension for an analytic Gaussian KL, else one column (J = 1)."""
        if self.head == "categorical":
            return categorical_kl(head["logits"], self.prior.log_probs)[:, None]
        if self.analytic:
            mean, logvar = self.prior.normal_params()
            return normal_kl(head["mean"], head["logvar"], mean, logvar)
        log_q = normal_log_prob(head["code"], head["mean"], head["logvar"]).sum(-1)
        return (log_q - self.prior.log_prob(head["code"]))[:, None]

    def kl(self, head: dict[str, Tensor]) -> Tensor:
        """KL(q(z|x) || p(z)) per example (B,) (an unbiased estimate when Monte Carlo)."""
        return self.kl_terms(head).sum(-1)

    def weight_at(self, step: int) -> float:
        return self.weight * (min(1.0, step / self.warmup) if self.warmup > 0 else 1.0)

    def penalty(self, head: dict[str, Tensor], step: int) -> tuple[Tensor, dict[str, float | Tensor]]:
        """The weighted, free-bits KL to add to the reconstruction loss at training step `step`."""
        terms = self.kl_terms(head)
        kl = terms.sum(-1).mean()
        penalty = free_bits_kl(terms, self.free_bits) if self.free_bits > 0 else kl
        weight = self.weight_at(step)
        return weight * penalty, {"kl": kl.detach(), "kl_weight": weight}


# --------------------------------------------------------------------------- adversarial


def with_batch_mean(z: Tensor) -> Tensor:
    """Each row of z (B, D) followed by the mean of all rows: (B, 2 D).

    A minibatch feature (Salimans et al. 2016, §3.2, in its simplest form): a discriminator
    that sees it judges each code together with the batch it came from, so it can tell a
    batch whose codes crowd a few prior modes from a batch of prior samples, which a
    per-example discriminator sees only through slow, saturating gradients.
    """
    return torch.cat([z, z.mean(0, keepdim=True).expand_as(z)], dim=-1)


class Discriminator(nn.Module):
    """An MLP of a code's features (B, F) -> one logit (B,): the probability that the code came from the prior.

    Its forward takes one tensor, so a wrapper (DDP) sees a plain call; the regularizer
    builds the features (`AdversarialRegularizer.features`).
    """

    def __init__(self, features: int, hidden: list[int], act: str) -> None:
        super().__init__()
        self.net = mlp([features, *hidden, 1], act)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features).squeeze(-1)


class AdversarialRegularizer(nn.Module):
    """A GAN matching the aggregated posterior q(z) to p(z) (AAE paper §2; PixelGAN §2).

    The discriminator learns to tell prior samples ("real") from codes ("fake"); the encoder
    then learns to fool it with the non-saturating loss. An optional R1 gradient penalty on
    real samples (Mescheder et al. 2018) steadies the discriminator.

    The encoder's update comes in one of two forms (``generator``): "separate", the AAE
    paper's, an update of its own after the reconstruction (its optimizer normalizes the
    adversarial gradient, so it moves the encoder as far as a reconstruction update does);
    or "joint", where the generator loss times ``generator_weight`` is added to the
    reconstruction loss and encoder and decoder take one update of the sum, the adversarial
    gradient weighed against the reconstruction's (``joint_weight``: that weight, None
    when separate).
    """

    phase = "regularization"

    @attrs.frozen
    class Config:
        discriminator: list[int] = option(doc="hidden widths of the discriminator MLP (AAE paper: [1000, 1000])", factory=lambda: [1000, 1000], ge=1)
        activation: Literal["relu", "leaky_relu", "elu", "tanh", "softplus"] = option("relu", "nonlinearity of the discriminator")
        gradient_penalty: float = option(0.0, "weight gamma / 2 of the R1 penalty on real samples (0: off)", ge=0)
        batch_features: bool = option(
            False,
            "the discriminator also sees the batch mean of the codes (a minibatch feature), so it can tell codes that crowd a few categories "
            "from prior samples",
        )
        generator: Literal["separate", "joint"] = option(
            "separate",
            "separate: the encoder fools the discriminator in an update of its own, in the regularization phase (the AAE paper); joint: the "
            "generator loss, times generator_weight, joins the reconstruction loss in one update of encoder and decoder",
        )
        generator_weight: float | None = option(
            None, 'weight of the generator loss in the reconstruction loss (generator = "joint" only; default 1)', gt=0
        )

    def __init__(self, config: Config | None = None, *, size: int, prior: nn.Module, head: str, **options) -> None:
        super().__init__()
        cfg = configured(self.Config, config, options)
        problem = support_problem(head, prior)
        if problem is not None:
            raise ValueError(problem)
        self.batch_features = cfg.batch_features
        self.discriminator = Discriminator(2 * size if cfg.batch_features else size, list(cfg.discriminator), cfg.activation)
        self.gradient_penalty = cfg.gradient_penalty
        # the R1 penalty differentiates the discriminator's own gradient, which torch.compile
        # cannot (no double backward): `train.compile` leaves such a part eager
        self.discriminator.double_backward = cfg.gradient_penalty > 0
        if cfg.generator_weight is not None and cfg.generator != "joint":
            raise ValueError('generator_weight weighs the generator loss in a joint update: it needs generator = "joint"')
        self.joint_weight = (1.0 if cfg.generator_weight is None else cfg.generator_weight) if cfg.generator == "joint" else None

    def features(self, z: Tensor, batches: int = 1) -> Tensor:
        """What the discriminator sees of codes z (B, D): z itself, or with ``batch_features``
        each z beside its batch's mean (`with_batch_mean`), where z stacks `batches` equal
        batches, each from one source (all prior samples, or all codes)."""
        if not self.batch_features:
            return z
        grouped = rearrange(z, "(g b) d -> g b d", g=batches)
        return rearrange(torch.stack([with_batch_mean(part) for part in grouped]), "g b d -> (g b) d")

    def parts(self) -> dict[str, nn.Module]:
        return {"discriminator": self.discriminator}

    def discriminator_loss(self, real: Tensor, fake: Tensor) -> tuple[Tensor, dict[str, float | Tensor]]:
        """Loss of the discriminator on prior samples `real` and detached codes `fake`.

        One forward pass over both halves, so that a DDP-wrapped discriminator sees one call
        (with batch features, the halves are stacked as two batches and scored separately).
        The R1 penalty is added only where gradients are enabled (not in evaluation).
        """
        penalize = self.gradient_penalty > 0 and torch.is_grad_enabled()
        real = real.detach().requires_grad_(penalize)
        if len(real) != len(fake):
            raise ValueError(f"the discriminator scores as many prior samples as codes; got {len(real)} and {len(fake)}")
        logits = self.discriminator(self.features(torch.cat([real, fake.detach()]), batches=2))
        real_logits, fake_logits = logits[: len(real)], logits[len(real) :]
        loss = gan_discriminator_loss(real_logits, fake_logits)
        logs = {"d_loss": loss.detach(), "d_real": torch.sigmoid(real_logits.detach()).mean(), "d_fake": torch.sigmoid(fake_logits.detach()).mean()}
        if penalize:
            penalty = r1_penalty(real_logits, real)
            loss = loss + self.gradient_penalty * penalty
            logs["r1"] = penalty.detach()
        return loss, logs

    def generator_loss(self, fake: Tensor) -> tuple[Tensor, dict[str, float | Tensor]]:
        """The encoder's non-saturating loss on codes `fake` (gradients flow into the encoder)."""
        loss = gan_generator_loss(self.discriminator(self.features(fake)))
        return loss, {"g_loss": loss.detach()}


class NoRegularizer(nn.Module):
    """No regularization: the latent is a free code (or only supervised)."""

    phase = None

    def __init__(self, *, size: int, prior: nn.Module, head: str) -> None:
        super().__init__()


@hookimpl
def gentk_register_regularizers(register):
    register("kl", KLRegularizer)
    register("adversarial", AdversarialRegularizer)
    register("none", NoRegularizer)
