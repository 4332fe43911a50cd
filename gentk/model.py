"""The one Model: an encoder, named latents (prior and regularizer each) and a decoder.

PixelGAN autoencoders (Makhzani & Frey 2017), the VAE, the AAE and PixelVAE are all this
class; they differ only in their recipes (docs/architecture.md, "Training phases"):

    x --encoder--> {latent: head outputs} --concat codes--> c --decoder--> log p(x|c)
                        |                                     ^
                        +-- regularizer vs prior per latent   +-- prior samples at sampling time

The model turns its parts into the training steps the engine runs, so the engine never
looks inside it:

1. ``reconstruction`` (phase reconstruction): -log p(x|c) plus the penalties of
   KL-regularized latents (the (Pixel)VAE's negative ELBO), updating encoder and decoder;
2. for each adversarially regularized latent NAME, ``discriminator.NAME`` (prior samples
   vs detached codes; it updates the regularizer's parts, ``KEY.NAME`` for each KEY of its
   ``parts()``, e.g. ``discriminator.NAME`` or a plugin's ``critic.NAME``) then
   ``generator.NAME`` (the encoder fools it), phase regularization; an adversary with a
   ``joint_weight`` has no generator step: its generator loss, times that weight, joins the
   reconstruction loss (one update of encoder and decoder, as in Pythae's AAE);
3. for each supervised latent NAME, ``supervised.NAME``: cross-entropy of its head's logits
   on the labeled batch (phase supervised), updating the encoder.

The decoder is conditioned on the concatenation of every latent's code in recipe order:
the reparameterized sample of a Gaussian head, the softmax of a categorical head (during
training) or the prior's samples (when sampling). Every trainable part (encoder, decoder,
each discriminator) is called through ``__call__`` only, so the engine may wrap parts
(e.g. in DDP) with `Model.wrap_parts`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from gentk.contracts import Adversary, KLTerm, bernoulli_probs, joint_weight, support_problem
from gentk.data import Batch, build_data, check_held_out
from gentk.distributions import normal_log_prob, standard_normal
from gentk.errors import GentkError
from gentk.plugins import plugins_or_default
from gentk.recipe import PHASES, LatentSpec, Recipe


@attrs.frozen
class TrainingStep:
    """One optimizer update of a training step.

    name: e.g. "reconstruction", "discriminator.y", "generator.y", "supervised.y".
    phase: the recipe's ``train.phases`` entry that configures its optimizer.
    parts: part name -> parameters it updates ({"encoder": [...], "decoder": [...]}).
    loss: batch -> (scalar loss to minimise, values to log: floats or detached 0-dim tensors,
        which the engine reads once per log interval). The supervised phase gets the
        labeled batch, the others the unlabeled one; a batch has ``.x`` (B, C, H, W) and
        ``.y`` (B,) int64.
    """

    name: str
    phase: str
    parts: dict[str, list[nn.Parameter]]
    loss: Callable[[Any], tuple[Tensor, dict[str, float | Tensor]]]

    def parameters(self) -> list[nn.Parameter]:
        return [p for params in self.parts.values() for p in params]


class Model(nn.Module):
    """Encoder + latents + decoder; see the module docstring. Build it with `build_model`."""

    def __init__(
        self,
        encoder: nn.Module | None,
        decoder: nn.Module,
        latents: Mapping[str, LatentSpec],
        priors: Mapping[str, nn.Module],
        regularizers: Mapping[str, nn.Module],
    ) -> None:
        super().__init__()
        if bool(latents) != (encoder is not None):
            raise ValueError("a model has an encoder exactly when it has latents")
        for name, spec in latents.items():  # a LatentSpec checks its own fields (a supervised head is categorical)
            problem = support_problem(spec.head, priors[name])
            if problem is not None:
                raise GentkError(f"latent '{name}': {problem}")
        self.encoder = encoder
        self.decoder = decoder
        self.latents = dict(latents)
        self.priors = nn.ModuleDict(dict(priors))
        self.regularizers = nn.ModuleDict(dict(regularizers))
        # Training steps taken (reconstruction updates), for KL warm-up; saved with the weights.
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_recipe(cls, recipe: Recipe, image_shape: Sequence[int], plugins) -> Model:
        """Build every part from the registries (contexts as in gentk.hookspecs); a part's
        ValueError (a size that cannot work) becomes a `GentkError` naming its recipe table."""
        registries = plugins.registries
        spec = recipe.model
        priors, regularizers = {}, {}
        for name, latent in spec.latents.items():
            try:
                priors[name] = registries.priors.get(latent.prior.name).build(latent.prior.config, size=latent.size)
                regularizers[name] = registries.regularizers.get(latent.regularizer.name).build(
                    latent.regularizer.config, size=latent.size, prior=priors[name], head=latent.head
                )
            except ValueError as exc:
                raise GentkError(f"model.latents.{name}: {exc}") from None
        encoder = None
        if spec.encoder is not None:
            try:
                encoder = registries.encoders.get(spec.encoder.name).build(
                    spec.encoder.config, input_shape=tuple(image_shape), latents=dict(spec.latents)
                )
            except ValueError as exc:
                raise GentkError(f"model.encoder ({spec.encoder.name}) for images {tuple(image_shape)}: {exc}") from None
        cond_size = sum(latent.size for latent in spec.latents.values())
        try:
            decoder = registries.decoders.get(spec.decoder.name).build(spec.decoder.config, image_shape=tuple(image_shape), cond_size=cond_size)
        except ValueError as exc:
            raise GentkError(f"model.decoder ({spec.decoder.name}) for images {tuple(image_shape)} and a code of size {cond_size}: {exc}") from None
        if decoder.cond_size != cond_size:
            raise GentkError(
                f"model.decoder ({spec.decoder.name}) was built for a code of size {cond_size} but accepts codes of size {decoder.cond_size} "
                "(its cond_size)."
            )
        return cls(encoder, decoder, spec.latents, priors, regularizers)

    # ----------------------------------------------------------------------- parts and phases

    def parts(self) -> dict[str, nn.Module]:
        """Every trainable part by name: encoder, decoder, discriminator.NAME, ..."""
        parts = {"decoder": self.decoder} if self.encoder is None else {"encoder": self.encoder, "decoder": self.decoder}
        for name, reg in self.regularizers.items():
            for key, module in reg.parts().items() if isinstance(reg, Adversary) else ():
                parts[f"{key}.{name}"] = module
        return parts

    def wrap_parts(self, wrap: Callable[[str, nn.Module], nn.Module]) -> None:
        """Replace each part by ``wrap(name, part)`` (e.g. DDP); the model then calls the wrapper."""
        for name, module in self.parts().items():
            self._set_part(name, wrap(name, module))

    def unwrap_parts(self) -> None:
        """Undo `wrap_parts` for wrappers that keep the part as ``.module`` (DDP does)."""
        for name, module in self.parts().items():
            self._set_part(name, getattr(module, "module", module))

    def _set_part(self, name: str, module: nn.Module) -> None:
        if name in ("encoder", "decoder"):
            setattr(self, name, module)
            return
        key, latent = name.split(".", 1)
        regularizer = self.regularizers[latent]
        current = regularizer.parts()[key]
        for attribute, child in regularizer.named_children():  # the attribute that holds the part, whatever its name
            if child is current:
                setattr(regularizer, attribute, module)
                return
        raise GentkError(
            f"the regularizer of latent '{latent}' ({type(regularizer).__name__}) returns part '{key}' from parts(), but holds it in no "
            f"attribute of its own, so it cannot be wrapped (e.g. in DDP). Keep each part as an attribute (self.{key} = module)."
        )

    def phases(self) -> list[str]:
        """The phases this model trains in, in the engine's order (reconstruction, regularization, supervised)."""
        used = {step.phase for step in self.training_steps()}
        return [phase for phase in PHASES if phase in used]

    def training_steps(self) -> list[TrainingStep]:
        """The optimizer updates of one training step, in order (see the module docstring)."""

        def params(name: str) -> list[nn.Parameter]:
            return [p for p in self.parts()[name].parameters() if p.requires_grad]

        recon_parts = {name: params(name) for name in ("encoder", "decoder") if name in self.parts()}
        steps = [TrainingStep("reconstruction", "reconstruction", recon_parts, self.reconstruction_loss)]
        for name, reg in self.regularizers.items():
            if reg.phase == "regularization":
                critic = {f"{key}.{name}": params(f"{key}.{name}") for key in reg.parts()}  # the regularizer's own part names
                steps.append(TrainingStep(f"discriminator.{name}", "regularization", critic, _bind(self.discriminator_loss, name)))
                if joint_weight(reg) is None:  # else its generator loss is part of the reconstruction loss
                    fool = _bind(self.generator_loss, name)
                    steps.append(TrainingStep(f"generator.{name}", "regularization", {"encoder": params("encoder")}, fool))
        for name, spec in self.latents.items():
            if spec.supervised:
                steps.append(TrainingStep(f"supervised.{name}", "supervised", {"encoder": params("encoder")}, _bind(self.supervised_loss, name)))
        return steps

    # ----------------------------------------------------------------------- losses

    def _condition(self, heads: Mapping[str, Mapping[str, Tensor]]) -> Tensor | None:
        return torch.cat([heads[name]["code"] for name in self.latents], dim=-1) if self.latents else None

    def reconstruction_loss(self, batch) -> tuple[Tensor, dict[str, float | Tensor]]:
        """-log p(x|c) (nats per image) plus the KL penalties and the weighted generator losses
        of joint adversaries (on the same codes); counts a training step when training."""
        heads = self.encoder(batch.x) if self.encoder is not None else {}
        nll = -self.decoder(batch.x, self._condition(heads)).mean()
        loss, logs = nll, {"nll": nll.detach()}
        penalties = [name for name, reg in self.regularizers.items() if reg.phase == "reconstruction"]
        step = int(self.step) if penalties else 0  # read from the device only where a penalty needs it (KL warm-up)
        for name in penalties:
            penalty, reg_logs = self.regularizers[name].penalty(heads[name], step)
            loss = loss + penalty
            logs.update({f"{key}.{name}": value for key, value in reg_logs.items()})
        for name, reg in self.regularizers.items():
            weight = joint_weight(reg) if reg.phase == "regularization" else None
            if weight is not None:
                fool, reg_logs = reg.generator_loss(heads[name]["code"])
                loss = loss + weight * fool
                logs.update({f"{key}.{name}": value for key, value in reg_logs.items()})
        if self.training and torch.is_grad_enabled():
            self.step += 1
        logs["loss"] = loss.detach()
        return loss, logs

    def discriminator_loss(self, name: str, batch) -> tuple[Tensor, dict[str, float | Tensor]]:
        """Discriminator of latent `name`: prior samples ("real") vs detached codes ("fake")."""
        with torch.no_grad():
            fake = self.encoder(batch.x)[name]["code"]
        real = self.priors[name].sample(len(fake)).to(fake.dtype)
        return self.regularizers[name].discriminator_loss(real, fake)

    def generator_loss(self, name: str, batch) -> tuple[Tensor, dict[str, float | Tensor]]:
        """The encoder's loss for fooling the discriminator of latent `name`."""
        return self.regularizers[name].generator_loss(self.encoder(batch.x)[name]["code"])

    def supervised_loss(self, name: str, batch) -> tuple[Tensor, dict[str, float | Tensor]]:
        """Cross-entropy of latent `name`'s logits against the labels, plus the accuracy."""
        logits = self.encoder(batch.x)[name]["logits"]
        loss = F.cross_entropy(logits, batch.y)
        return loss, {"xent": loss.detach(), "accuracy": (logits.argmax(-1) == batch.y).float().mean()}

    @torch.no_grad()
    def eval_losses(self, batch) -> dict[str, float]:
        """Every training step's logged losses on `batch`, as "STEP/KEY", without updating anything."""
        out = {}
        for step in self.training_steps():
            _, logs = step.loss(batch)
            out.update({f"{step.name}/{key}": float(value) for key, value in logs.items()})
        return out

    # ----------------------------------------------------------------------- using the model

    def encode(self, x: Tensor, *, sample: bool = False) -> dict[str, Tensor]:
        """Codes per latent (B, size): the mean of a Gaussian head (its sample if `sample`),
        the softmax of a categorical head, the output of a deterministic one."""
        if self.encoder is None:
            raise GentkError("this model has no encoder (no latents): there is nothing to encode.")
        heads = self.encoder(x)
        return {name: heads[name]["code"] if sample or "mean" not in heads[name] else heads[name]["mean"] for name in self.latents}

    @torch.no_grad()
    def reconstruct(self, x: Tensor, *, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        """A sample of p(x | encode(x)): same shape as x."""
        codes = self.encode(x)
        return self.decoder.sample(len(x), torch.cat([codes[name] for name in self.latents], -1), generator=generator, temperature=temperature)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, temperature: float = 1.0, return_probs: bool = False):
        """n images: each latent from its prior, then the decoder (a PixelCNN uses its cached sampler).

        return_probs: also the mean images (Bernoulli decoders, `gentk.contracts.bernoulli_probs`).
        """
        self._check_probs(return_probs)
        codes = [self.priors[name].sample(n, generator) for name in self.latents]
        return self.decoder.sample(n, torch.cat(codes, -1) if codes else None, generator=generator, temperature=temperature, **_probs(return_probs))

    @torch.no_grad()
    def sample_per_category(
        self,
        n_per_row: int,
        latent: str | None = None,
        *,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        return_probs: bool = False,
    ):
        """K * n_per_row images, row k (n_per_row images) with categorical `latent` set to class k.

        The other latents come from their priors: rows show what the category holds and
        columns the style the decoder adds (PixelGAN paper, Fig. 6).
        """
        categorical = [name for name, spec in self.latents.items() if spec.head == "categorical"]
        if latent is None:
            if len(categorical) != 1:
                raise GentkError(
                    f"sample_per_category needs latent=NAME: this model has {len(categorical)} categorical latents "
                    f"({', '.join(categorical) or 'none'})."
                )
            latent = categorical[0]
        elif latent not in categorical:
            raise GentkError(f"'{latent}' is not a categorical latent of this model; categorical latents: {', '.join(categorical) or 'none'}.")
        self._check_probs(return_probs)
        k = self.latents[latent].size
        n = k * n_per_row
        device = self.step.device
        one_hot = F.one_hot(torch.arange(k, device=device).repeat_interleave(n_per_row), k).float()
        codes = [one_hot if name == latent else self.priors[name].sample(n, generator) for name in self.latents]
        return self.decoder.sample(n, torch.cat(codes, -1), generator=generator, temperature=temperature, **_probs(return_probs))

    def _check_probs(self, wanted: bool) -> None:
        if wanted and not bernoulli_probs(self.decoder):
            raise GentkError(
                f"return_probs: this model's decoder ({type(self.decoder).__name__}) has no mean image of binary pixels (only a "
                "Bernoulli decoder has); sample without return_probs."
            )

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log p(x) per image (B,), in nats; defined for a model without latents (a PixelCNN)."""
        if self.latents:
            raise GentkError(
                "log p(x) is intractable for a model with latents; use elbo(x) (KL-regularized latents) or an importance-weighted bound."
            )
        return self.decoder(x, None)

    def elbo(self, x: Tensor) -> Tensor:
        """The evidence lower bound per image (B,), in nats: E_q log p(x|z) - KL(q(z|x) || p(z)), one sample.

        Defined when every latent is KL-regularized (VAE, PixelVAE); for a model without
        latents it is log p(x) itself.
        """
        if not self.latents:
            return self.log_prob(x)
        other = [name for name, reg in self.regularizers.items() if not isinstance(reg, KLTerm)]
        if other:
            raise GentkError(
                f"the ELBO needs a KL regularizer on every latent; {', '.join(other)} {'is' if len(other) == 1 else 'are'} not KL-regularized "
                "(an adversarial latent has no q(z|x) density term)."
            )
        heads = self.encoder(x)
        kl = sum(self.regularizers[name].kl(heads[name]) for name in self.latents)
        return self.decoder(x, self._condition(heads)) - kl

    def log_importance_weights(self, x: Tensor, k: int, *, generator: torch.Generator | None = None) -> Tensor:
        """log p(x | z_i) + log p(z_i) - log q(z_i | x) for k samples z_i ~ q(z | x): (k, B) nats.

        The pieces of the importance-weighted bound (Burda et al. 2016, eq. 8; see `iwae` and
        `gentk.metrics.iwae_bound`). Defined when every latent has a Gaussian head, the only
        head with a density q(z | x); sample i of every latent conditions the decoder together.
        The decoder sees k * B images at once: split large batches.
        """
        if not self.latents:
            return repeat(self.log_prob(x), "b -> k b", k=k)
        other = [name for name, spec in self.latents.items() if spec.head != "gaussian"]
        if other:
            raise GentkError(
                f"importance weights need a density q(z|x), i.e. a gaussian head on every latent; {', '.join(other)} "
                f"{'has' if len(other) == 1 else 'have'} none (an adversarial or categorical code gives no likelihood bound: use recon_nll)."
            )
        heads = self.encoder(x)
        log_w = torch.zeros(k, len(x), device=x.device, dtype=x.dtype)
        codes = []
        for name in self.latents:
            mean, logvar = heads[name]["mean"], heads[name]["logvar"]
            eps = standard_normal((k, *mean.shape), generator=generator, device=mean.device).to(mean.dtype)  # on the generator's device
            z = mean + torch.exp(0.5 * logvar) * eps  # (k, B, size)
            log_p = rearrange(self.priors[name].log_prob(rearrange(z, "k b d -> (k b) d")), "(k b) -> k b", k=k)
            log_w += log_p - normal_log_prob(z, mean, logvar).sum(-1)
            codes.append(rearrange(z, "k b d -> (k b) d"))
        log_px = self.decoder(repeat(x, "b c h w -> (k b) c h w", k=k), torch.cat(codes, -1))
        return log_w + rearrange(log_px, "(k b) -> k b", k=k)

    def iwae(self, x: Tensor, samples: int = 50, *, generator: torch.Generator | None = None) -> Tensor:
        """The importance-weighted bound on log p(x) per image (B,), in nats (Burda et al. 2016, eq. 8):
        log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x), k = `samples`.

        Defined where `log_importance_weights` is (VAE, PixelVAE); it rises towards log p(x) as
        k grows, and equals it for a model without latents.
        """
        return torch.logsumexp(self.log_importance_weights(x, samples, generator=generator), dim=0) - math.log(samples)


def _probs(wanted: bool) -> dict[str, bool]:
    """The decoder's sample keyword for mean images, passed only when asked: a plugin's decoder need not take it."""
    return {"return_probs": True} if wanted else {}


def _bind(method: Callable[..., Any], name: str) -> Callable[[Any], tuple[Tensor, dict[str, float | Tensor]]]:
    def loss(batch):
        return method(name, batch)

    loss.__name__ = f"{method.__name__}[{name}]"
    return loss


def build_model(recipe: Recipe, image_shape: Sequence[int], plugins=None) -> Model:
    """The Model of a recipe for images of shape (C, H, W). `plugins` defaults to `gentk.load_plugins()`."""
    return Model.from_recipe(recipe, image_shape, plugins_or_default(plugins))


def declared_image_shape(recipe: Recipe, plugins) -> tuple[int, ...] | None:
    """The image shape a recipe's dataset declares without reading files, or None.

    A factory's class attribute ``image_shape`` (MNIST, SVHN), else the ``image_shape`` of
    the dataset object built from the recipe's options (smallNORB: its camera and size
    options decide it); building that object reads no file.
    """
    entry = plugins.registries.datasets.get(recipe.data.name)
    shape = getattr(entry.factory, "image_shape", None)
    if isinstance(shape, tuple):
        return shape
    root = recipe.data.common.root if recipe.data.common is not None else None
    source = entry.build(recipe.data.config, root=root, download=False, offline=True)
    shape = getattr(source, "image_shape", None)
    return tuple(shape) if shape is not None else None


def check_model(recipe: Recipe, plugins=None, *, image_shape: Sequence[int] | None = None, batch_size: int = 2, offline: bool = False) -> str:
    """Build a recipe's model and run every training step's loss and backward pass once on a
    fake batch (binary images, random labels), updating nothing; returns a one-line summary.

    The image shape is the dataset's ``image_shape`` (an attribute of its factory, or of the
    dataset object its options build, which reads no file) when it declares one, else the
    dataset is loaded (downloaded unless `offline`, as `gentk run` would) and must have
    held-out examples for the evaluations (`gentk.data.check_held_out`). Raises `GentkError`
    when a step's loss is not finite or leaves one of its parts without gradient.
    """
    plugins = plugins_or_default(plugins)
    if image_shape is None:
        image_shape = declared_image_shape(recipe, plugins)
    if image_shape is None:
        data = build_data(recipe.data, plugins, seed=recipe.seed, offline=offline)
        check_held_out(data, recipe.eval.metrics)  # here, not at the first evaluation of a run
        image_shape = data.image_shape
    model = build_model(recipe, image_shape, plugins)
    generator = torch.Generator().manual_seed(recipe.seed)
    x = torch.bernoulli(torch.full((batch_size, *image_shape), 0.5), generator=generator)
    classes = max([spec.size for spec in model.latents.values() if spec.supervised], default=1)
    batch = Batch(x, torch.randint(0, classes, (batch_size,), generator=generator))
    for step in model.training_steps():
        model.zero_grad(set_to_none=True)
        loss, _ = step.loss(batch)
        if not torch.isfinite(loss):
            raise GentkError(f"training step '{step.name}': the loss on a fake batch is {loss.item()}, not finite.")
        loss.backward()
        for part, params in step.parts.items():
            if params and all(p.grad is None for p in params):
                raise GentkError(f"training step '{step.name}': its loss gives no gradient to part '{part}'.")
    model.zero_grad(set_to_none=True)
    model.step.zero_()
    count = sum(p.numel() for p in model.parameters())
    steps = ", ".join(step.name for step in model.training_steps())
    return f"{count:,} parameters for images {tuple(image_shape)}; steps: {steps}"
