"""The contracts of gentk's components, written as `typing.Protocol` classes.

A component meets its contract by having the members (structural typing: there is no
base class to inherit). The Model calls nothing else, so a plugin's component with these
members works like a built-in one. gentk checks a contract twice:

- when a plugin registers a class, its methods and class attributes
  (`check_factory`): a missing one drops the plugin with an error naming it;
- when it builds a component, the instance, instance attributes included
  (`check_built`): a factory that is a function is checked only there.

How each component is built (the context of each kind) is in `gentk.hookspecs`.

    kind            contract                      checked members
    encoders        Encoder                       __call__
    decoders        Decoder                       __call__, log_prob, sample, cond_size
    priors          Prior                         sample
    regularizers    Regularizer, then by phase:   phase
      "reconstruction"  Penalty                   penalty
      "regularization"  Adversary                 parts, discriminator_loss, generator_loss

Optional capabilities have Protocols of their own, which the Model and the metrics test
with ``isinstance`` (they are runtime-checkable): `Density`, `DiagonalNormal` and
`Categorical` for priors, `KLTerm` for regularizers. A prior's ``support`` and a
regularizer's ``heads`` are optional class attributes, read by `support` and `heads`; an
adversary's ``joint_weight`` (its generator loss joins the reconstruction loss with that
weight, instead of an update of its own) is an optional attribute, read by `joint_weight`.

Axis legend of the signatures: B batch, n samples, D a latent's size, C, H, W an image.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from gentk.errors import ContractError

if TYPE_CHECKING:  # annotations only: this module must not import torch
    import torch
    from torch import Tensor, nn

PHASES = ("reconstruction", "regularization", None)  # a regularizer's phase
SUPPORTS = ("real", "simplex")  # where a prior's samples live


# --------------------------------------------------------------------------- encoders and decoders


@runtime_checkable
class Encoder(Protocol):
    """q(z|x): an ``nn.Module`` built with ``input_shape`` (C, H, W) and ``latents`` (name -> LatentSpec)."""

    def __call__(self, x: Tensor) -> dict[str, dict[str, Tensor]]:
        """x (B, C, H, W) -> {latent: {"code": (B, D), plus "mean" and "logvar" (gaussian head) or "logits" (categorical head)}}."""


@runtime_checkable
class Decoder(Protocol):
    """p(x|c): an ``nn.Module`` built with ``image_shape`` (C, H, W) and ``cond_size``."""

    cond_size: int  # the length of the code c it accepts: (B, cond_size); 0 for an unconditional decoder, which takes c = None

    def __call__(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """log p(x|c) per image (B,) in nats; the Model calls the decoder so, which is what a DDP wrapper sees."""

    def log_prob(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """log p(x|c) per image (B,) in nats, x (B, C, H, W), c (B, cond_size) or None."""

    def sample(self, n: int, c: Tensor | None = None, *, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        """n images (n, C, H, W) in the data range from p(x|c).

        Optional: a decoder of binary pixels whose attribute ``bernoulli_probs`` is true also
        takes ``return_probs=True`` and returns ``(x, probs)``, probs (n, C, H, W) the
        probability of 1 each pixel was drawn with (read with `bernoulli_probs`).
        """


# --------------------------------------------------------------------------- priors


@runtime_checkable
class Prior(Protocol):
    """p(z) of one latent: an ``nn.Module`` built with ``size`` (D).

    Optional class attribute ``support``: "real" (the default) or "simplex" (one-hot
    samples, which only a categorical head can match; read with `support`).
    """

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples (n, D) on the prior's device (drawn on the generator's device when one is given)."""


@runtime_checkable
class Density(Protocol):
    """A prior with a log-density (the KL regularizer's Monte Carlo estimate, importance weights)."""

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) per sample (n,) of z (n, D)."""


@runtime_checkable
class DiagonalNormal(Protocol):
    """A diagonal Gaussian prior: the KL regularizer takes its analytic form, the code_space metric its moments."""

    def normal_params(self) -> tuple[Tensor, Tensor]:
        """(mean, logvar), each (D,)."""


@runtime_checkable
class Categorical(Protocol):
    """A categorical prior: the KL regularizer of a categorical head sums over its classes."""

    log_probs: Tensor  # (D,) normalized log-probabilities of the D classes


# --------------------------------------------------------------------------- regularizers


@runtime_checkable
class Regularizer(Protocol):
    """Matches a latent's codes to its prior: an ``nn.Module`` built with ``size``, ``prior`` and ``head``.

    ``phase`` (a class attribute) says where it acts: "reconstruction" (it meets `Penalty`),
    "regularization" (it meets `Adversary`) or None (it does nothing). Optional class
    attribute ``heads``: the head kinds it accepts, e.g. ("gaussian", "categorical"),
    checked when a recipe loads (read with `heads`).
    """

    phase: ClassVar[Literal["reconstruction", "regularization"] | None]


@runtime_checkable
class Penalty(Regularizer, Protocol):
    """A regularizer of phase "reconstruction": its penalty joins the reconstruction loss."""

    def penalty(self, head: dict[str, Tensor], step: int) -> tuple[Tensor, dict[str, float | Tensor]]:
        """(scalar to add to the loss, values to log) for the encoder's dict of this latent at training step `step`.

        The values are floats or detached 0-dim tensors; the engine sums tensors where they
        are and reads them once per log interval, so a value that is a tensor costs no
        GPU-to-host copy per step (``.item()`` does)."""


@runtime_checkable
class KLTerm(Protocol):
    """A regularizer with an exact term of the ELBO (what `Model.elbo` needs of every latent)."""

    def kl(self, head: dict[str, Tensor]) -> Tensor:
        """KL(q(z|x) || p(z)) per example (B,), in nats."""


@runtime_checkable
class Adversary(Regularizer, Protocol):
    """A regularizer of phase "regularization": a critic of prior samples against codes, trained in turns with the encoder."""

    def parts(self) -> dict[str, nn.Module]:
        """Its trainable modules under names of its choice ({"discriminator": module}), each held in an attribute of its own."""

    def discriminator_loss(self, real: Tensor, fake: Tensor) -> tuple[Tensor, dict[str, float | Tensor]]:
        """(loss, logs) of its parts on prior samples `real` (B, D) and detached codes `fake` (B, D)."""

    def generator_loss(self, fake: Tensor) -> tuple[Tensor, dict[str, float | Tensor]]:
        """(loss, logs) of the encoder on codes `fake` (B, D), through which gradients flow."""


CONTRACTS: dict[str, type] = {"encoders": Encoder, "decoders": Decoder, "priors": Prior, "regularizers": Regularizer}
BY_PHASE: dict[str | None, type | None] = {"reconstruction": Penalty, "regularization": Adversary, None: None}


# --------------------------------------------------------------------------- optional class attributes


def support(prior: Any) -> str:
    """Where a prior's samples live, "real" or "simplex", from its class or an instance."""
    return getattr(prior, "support", "real")


def bernoulli_probs(decoder: Any) -> bool:
    """Whether a decoder's ``sample(..., return_probs=True)`` gives the probabilities of its binary pixels (see `Decoder`)."""
    return bool(getattr(decoder, "bernoulli_probs", False))


def heads(regularizer: Any) -> tuple[str, ...] | None:
    """The head kinds a regularizer (class or instance) accepts; None: any."""
    return getattr(regularizer, "heads", None)


def joint_weight(regularizer: Any) -> float | None:
    """For an `Adversary` whose generator loss joins the reconstruction loss: its weight there; None (the default): a separate update."""
    return getattr(regularizer, "joint_weight", None)


def support_problem(head: str, prior: Any, what: str = "its prior") -> str | None:
    """Why a head of kind `head` can never match `prior` (class or instance), or None when it can.

    A prior on the simplex samples one-hot vectors, which only a categorical head (a
    softmax) produces; `what` names the prior in the message.
    """
    if support(prior) == "simplex" and head != "categorical":
        return f"{what} samples one-hot vectors (the simplex), which a '{head}' head can never match. Use head = \"categorical\"."
    return None


# --------------------------------------------------------------------------- checking


def members(protocol: type) -> dict[str, str]:
    """A Protocol's members: name -> "method", "class" (a ClassVar) or "instance" (any other attribute)."""
    out: dict[str, str] = {}
    for base in reversed(protocol.__mro__):
        if base is Protocol or not getattr(base, "_is_protocol", False):
            continue
        for name, hint in base.__dict__.get("__annotations__", {}).items():
            out[name] = "class" if "ClassVar" in str(hint) else "instance"
        for name, value in base.__dict__.items():
            if inspect.isfunction(value) and (not name.startswith("_") or name == "__call__"):
                out[name] = "method"
    return out


def _lacks(obj: Any, protocol: type, *, on_class: bool) -> list[str]:
    """Members of `protocol` that `obj` lacks; on a class, instance attributes are not looked for."""
    found = []
    for name, how in members(protocol).items():
        if on_class and how == "instance":
            continue
        present = any(name in vars(k) for k in obj.__mro__) if on_class else hasattr(obj, name)
        if not present:
            found.append(name)
    return found


def _describe(protocol: type, name: str) -> str:
    value = protocol.__dict__.get(name) or next((b.__dict__[name] for b in protocol.__mro__ if name in b.__dict__), None)
    if inspect.isfunction(value):
        signature = str(inspect.signature(value)).replace("'", "").replace("(self, ", "(").replace("(self)", "()")
        return f"`{name}{signature}`, {(value.__doc__ or '').strip()}"
    return f"{name} (attribute)"


def lacking(kind: str, obj: Any, *, on_class: bool = False) -> tuple[type | None, list[str], str | None]:
    """(contract, missing members, other problem) of a factory class (`on_class`) or a built component."""
    contract = CONTRACTS.get(kind)
    if contract is None:
        return None, [], None
    missing = _lacks(obj, contract, on_class=on_class)
    if missing or kind != "regularizers":
        return contract, missing, None
    phase = obj.phase
    if phase not in BY_PHASE:
        return contract, [], f"its phase is {phase!r}; expected one of {', '.join(map(repr, PHASES))}."
    contract = BY_PHASE[phase]
    return contract, (_lacks(obj, contract, on_class=on_class) if contract is not None else []), None


def _raise(kind: str, name: str, plugin: str, what: str, contract: type, missing: list[str], problem: str | None) -> None:
    if problem is None and not missing:
        return
    where = f"{kind[:-1]} '{name}' from plugin '{plugin}' ({what})"
    if problem is not None:
        raise ContractError(f"{where} does not meet the contract gentk.contracts.{contract.__name__}: {problem}")
    needs = " ".join(_describe(contract, member) for member in missing)
    raise ContractError(
        f"{where} does not meet the contract gentk.contracts.{contract.__name__}: it lacks {', '.join(missing)}. {needs} "
        "docs/architecture.md describes every contract."
    )


def check_factory(kind: str, name: str, factory: Any, plugin: str) -> None:
    """Raise `ContractError` when `factory`, a class, lacks a method or class attribute of its kind's contract.

    A factory that is a function is checked when it builds (`check_built`).
    """
    if inspect.isclass(factory):
        _raise(kind, name, plugin, factory.__qualname__, *lacking(kind, factory, on_class=True))


def check_built(kind: str, name: str, component: Any, plugin: str) -> None:
    """Raise `ContractError` when a built component lacks a member of its kind's contract."""
    _raise(kind, name, plugin, f"built as {type(component).__qualname__}", *lacking(kind, component))
