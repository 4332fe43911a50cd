"""The hooks a gentk plugin may implement; these docstrings are the plugin documentation.

A plugin is a module (or object) with functions named after these specs, marked with
``@gentk.hookimpl`` (the marker is optional: any function with the ``gentk_`` prefix is
taken as an implementation, and a misspelled one is an error, not silently ignored).
Built-in components register through the very same hooks (see `gentk.plugins.BUILTIN`).

Each ``gentk_register_<kind>`` hook receives ``register(name, factory, *, config=None,
doc=None)``. ``factory`` is usually a class; its options are the fields of an attrs class,
``factory.Config`` by default, declared with `gentk.recipe.option`. gentk builds a
component as ``factory(**options, **context)``: the options come from the recipe, the
context from gentk, as listed per hook below. Register a name once: a second registration
of the same name, by any plugin, is an error naming both plugins.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("gentk")


@hookspec
def gentk_register_encoders(register):
    """Register encoders: networks x -> one output per latent.

    Context: ``input_shape`` (C, H, W) and ``latents``, a dict mapping each latent's name to
    its `gentk.recipe.LatentSpec` (size and head). The module's ``forward(x)`` returns a dict
    with one entry per latent (see `gentk.model` for the head outputs).
    """


@hookspec
def gentk_register_decoders(register):
    """Register decoders: likelihood models p(x | c).

    Context: ``image_shape`` (C, H, W) and ``cond_size`` (the length of the conditioning
    vector c; 0 for an unconditional model). The module offers ``log_prob(x, c)`` (nats per
    image, shape (B,)) and ``sample(n, c, generator=None)``.
    """


@hookspec
def gentk_register_priors(register):
    """Register priors p(z) for a latent.

    Context: ``size`` (the latent's size). The prior offers ``sample(n, generator=None)`` and,
    where it exists, ``log_prob(z)``.
    """


@hookspec
def gentk_register_regularizers(register):
    """Register regularizers that match a latent's codes to its prior (KL, adversarial, ...).

    Context: ``size`` (the latent's size) and ``prior`` (the built prior).
    """


@hookspec
def gentk_register_datasets(register):
    """Register datasets.

    Context: the common ``[data]`` options (root, download, ...) as documented in `gentk.data`.
    """


@hookspec
def gentk_register_metrics(register):
    """Register evaluation metrics, named in a recipe's ``eval.metrics`` list."""


@hookspec
def gentk_register_optimizers(register):
    """Register optimizers.

    Context: ``params`` (parameters or parameter groups, as torch.optim takes them). Returns
    a ``torch.optim.Optimizer``.
    """


@hookspec
def gentk_register_schedules(register):
    """Register learning-rate schedules.

    Context: ``optimizer`` and ``total_steps``. Returns a ``torch.optim.lr_scheduler.LRScheduler``
    stepped once per training step.
    """


# --------------------------------------------------------------------------- run callbacks
# Called by the engine (gentk.train) on rank 0 only, after the run directory has the
# values written; a log sink (a dashboard, a remote tracker) needs nothing else.


@hookspec
def gentk_log(run_dir, step, scalars):
    """Scalars were logged at training step ``step`` (every ``train.log_every`` steps).

    ``run_dir`` is the run directory (a ``pathlib.Path``); ``scalars`` maps names such as
    ``train/reconstruction/loss``, ``lr/reconstruction`` or ``speed/images_per_s`` to floats
    (means over the interval, averaged over ranks). The return value is ignored.
    """


@hookspec
def gentk_after_eval(run_dir, step, metrics):
    """An evaluation finished at training step ``step``.

    ``metrics`` maps names such as ``eval/validation/reconstruction/loss`` to floats (the held-out losses
    of ``Model.eval_losses`` and the recipe's ``eval.metrics``); the sample grid of this
    evaluation is ``run_dir / "samples" / f"step-{step:08d}.png"`` when ``eval.samples`` > 0.
    The return value is ignored.
    """
