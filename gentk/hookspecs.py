"""The hooks a gentk plugin may implement; these docstrings are the plugin documentation.

A plugin is a module (or object) with functions named after these specs, marked with
``@gentk.hookimpl`` (the marker is optional: any function with the ``gentk_`` prefix is
taken as an implementation, and a misspelled one is an error, not silently ignored).
Built-in components register through the very same hooks (see `gentk.plugins.BUILTIN`).

Each ``gentk_register_<kind>`` hook receives ``register(name, factory, *, config=None,
doc=None)``. ``factory`` is usually a class; its options are the fields of an attrs class,
``factory.Config`` by default, declared with `gentk.options.option`. gentk builds a
component as ``factory(config=config, **context)``: the config is the validated instance
of that class (from the recipe; its defaults where the recipe sets nothing), the context
comes from gentk, as listed per hook below. A factory without a ``config`` parameter gets
the options as keyword arguments instead. Register a name once: a second registration
of the same name, by any plugin, is an error naming both plugins.

Encoders, decoders, priors and regularizers meet the Protocols of `gentk.contracts`, which
gentk checks when a plugin registers a class (and when it builds a component): a missing
member drops the plugin with an error naming it and the member.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("gentk")


@hookspec
def gentk_register_encoders(register):
    """Register encoders: networks x -> one output per latent.

    Context: ``input_shape`` (C, H, W) and ``latents``, a dict mapping each latent's name to
    its `gentk.recipe.LatentSpec` (``size`` and ``head``). The module's ``forward(x)`` (x of
    shape (B, C, H, W) in [0, 1]) returns ``{latent: {key: Tensor (B, size)}}`` with, per
    head: ``code`` always (what the decoder and the discriminator see); ``mean`` and
    ``logvar`` for "gaussian" (``code`` the reparameterized sample); ``logits`` for
    "categorical" (``code`` their softmax). `gentk.encoders.Encoder` composes any body
    with these heads. Contract: `gentk.contracts.Encoder`.
    """


@hookspec
def gentk_register_decoders(register):
    """Register decoders: likelihood models p(x | c).

    Context: ``image_shape`` (C, H, W) and ``cond_size`` (the length of the conditioning
    vector c; 0 for an unconditional model). The module's ``forward(x, c)`` (also
    ``log_prob``) returns log p(x | c) in nats per image, shape (B,), with c of shape
    (B, cond_size) or None; ``sample(n, c=None, *, generator=None, temperature=1.0)``
    returns (n, C, H, W) in the data range. Contract: `gentk.contracts.Decoder` (with
    ``cond_size``, the length of the code it accepts).
    """


@hookspec
def gentk_register_priors(register):
    """Register priors p(z) for a latent.

    Context: ``size`` (the latent's size). The prior offers ``sample(n, generator=None)`` ->
    (n, size) on its own device and, where it exists, ``log_prob(z)`` -> (n,). Optional:
    ``support``, a class attribute checked when a recipe loads ("real", the default, or
    "simplex" for one-hot samples, which only a categorical head can match),
    ``normal_params()`` -> (mean, logvar) for a diagonal
    Gaussian and ``log_probs`` (size,) for a categorical, used by analytic KL terms.
    Contract: `gentk.contracts.Prior` (optional: `Density`, `DiagonalNormal`, `Categorical`).
    """


@hookspec
def gentk_register_regularizers(register):
    """Register regularizers that match a latent's codes to its prior (KL, adversarial, ...).

    Context: ``size`` (the latent's size), ``prior`` (the built prior) and ``head`` (the
    latent's head kind: "deterministic", "gaussian" or "categorical"). The ``phase``
    attribute says where it acts: "reconstruction" (``penalty(head_out, step)`` -> (scalar,
    logs) added to the reconstruction loss, and ``kl(head_out)`` -> (B,) for the ELBO),
    "regularization" (``parts()`` -> {name: module}, its trainable modules under names of
    its choice, e.g. {"discriminator": module}, each held in an attribute of its own;
    ``discriminator_loss(real, fake)`` and ``generator_loss(fake)``, each -> (scalar,
    logs)) or None. ``head_out`` is
    the encoder's dict for this latent. An optional class attribute ``heads`` (e.g.
    ("gaussian", "categorical")) lists the head kinds it accepts, checked when a recipe
    loads. Contract: `gentk.contracts.Regularizer`, then `Penalty` or `Adversary` by phase
    (``kl`` is `KLTerm`, optional). See `gentk.regularizers`.
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
# values or images written; a log sink (a dashboard, a remote tracker) needs nothing else.
# In one run they come in this order:
#
#   gentk_run_start -> (gentk_log | gentk_log_image | gentk_after_eval)* -> gentk_run_end
#
# A logger opens its writer (or remote run) in gentk_run_start, sends what the other three
# give, and closes in gentk_run_end, which comes however the run ends. One process may
# train several runs (`gentk compare`), one after the other: key any state by ``run_dir``.
# `plugins/gentk-tensorboard` is a complete logger; W&B or MLflow map the same way (their
# init / log / image / finish calls). The return values are ignored.


@hookspec
def gentk_run_start(run_dir, step, recipe):
    """A run starts, or resumes at training step ``step`` (0 for a fresh run).

    ``run_dir`` is the run directory (a ``pathlib.Path``), already laid out with its
    ``recipe.toml``; ``recipe`` is the resolved `gentk.recipe.Recipe` (``recipe.to_dict()``
    for a tracker's config, ``recipe.to_toml()`` for text). A resumed run may log again
    the steps after ``step`` that a previous process logged before it stopped: a logger
    that can, drops those (TensorBoard: ``purge_step``).
    """


@hookspec
def gentk_log(run_dir, step, scalars):
    """Scalars were logged at training step ``step`` (every ``train.log_every`` steps).

    ``scalars`` maps names such as ``train/reconstruction/loss``, ``lr/reconstruction`` or
    ``speed/images_per_s`` to floats (means over the interval, averaged over ranks).
    """


@hookspec
def gentk_log_image(run_dir, step, tag, path):
    """The engine wrote a PNG image at ``path`` (a ``pathlib.Path`` inside ``run_dir``) during the evaluation at ``step``.

    ``tag`` says what it shows: ``samples``, the sample grid of ``eval.samples`` images
    (``run_dir / "samples" / f"step-{step:08d}.png"``), and ``code_space/NAME``, the
    scatter of latent NAME's codes that the ``code_space`` metric draws (when matplotlib
    is installed). The file stays where it is: read it, never move it. Called during the
    evaluation, before `gentk_after_eval` for the same step.
    """


@hookspec
def gentk_after_eval(run_dir, step, metrics):
    """An evaluation finished at training step ``step``.

    ``metrics`` maps names such as ``eval/validation/reconstruction/loss`` to floats (the held-out losses
    of ``Model.eval_losses`` and the recipe's ``eval.metrics``); its images came just
    before, through `gentk_log_image`.
    """


@hookspec
def gentk_run_end(run_dir, status):
    """The run stopped: close what `gentk_run_start` opened; ``status`` says why.

    ``status`` is "finished" (all steps, or the time budget, and the final evaluation),
    "interrupted" (Ctrl-C or SIGTERM; it can be resumed) or "failed" (an error, such as a
    NaN loss, is on its way to the caller). Called once per `gentk_run_start`, after the
    run's last callback.
    """
