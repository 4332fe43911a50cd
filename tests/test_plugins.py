"""The plugin path, for real: entry points found through importlib.metadata, failures
isolated and reported by package name, duplicates refused, plugins disabled by name."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gentk.errors import DuplicateNameError, PluginError, RegistryError
from gentk.plugins import load_plugins
from gentk.registry import Registry

REPO = Path(__file__).resolve().parents[1]


def make_dist(site: Path, package: str, module: str, source: str, ep_name: str | None = None) -> None:
    """Write an installed distribution (module + dist-info with a gentk entry point) into `site`,
    exactly as pip lays one out, so importlib.metadata finds it."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{package.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[gentk]\n{ep_name or module} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("GENTK_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("GENTK_STRICT_PLUGINS", raising=False)
    yield site
    for name in list(sys.modules):
        if name.startswith("gtk_test_"):
            del sys.modules[name]


GOOD_PLUGIN = """
    import attrs, gentk
    from gentk.recipe import option

    class Tiny:
        '''A tiny third-party optimizer.'''
        @attrs.frozen
        class Config:
            lr: float = option(0.5, "learning rate", gt=0)
        def __init__(self, params, lr):
            self.lr = lr

    @gentk.hookimpl
    def gentk_register_optimizers(register):
        register("tiny", Tiny)
"""


def test_entry_point_plugin_adds_component_usable_from_recipe(site, toy_plugins, write):
    make_dist(site, "gentk-tiny", "gtk_test_tiny", GOOD_PLUGIN)
    plugins = load_plugins(autoload=True)
    entry = plugins.registries.optimizers.get("tiny")
    assert entry.plugin == "gentk-tiny" and entry.doc == "A tiny third-party optimizer."
    assert any(p.package == "gentk-tiny" and p.version == "1.2.3" for p in plugins.loaded)

    from gentk.recipe import load_recipe

    plugins = load_plugins(builtin=("gentk.optim",), plugins=["toyplugin"], autoload=True)
    path = write(
        "r.toml",
        '[data]\nname = "toyset"\n[model.decoder]\nname = "toydec"\n[train.phases.reconstruction]\noptimizer = { name = "tiny", lr = 0.25 }\n',
    )
    recipe = load_recipe(path, plugins=plugins)
    assert recipe.train.phases["reconstruction"].optimizer.config.lr == 0.25


def test_broken_plugin_is_reported_and_isolated(site):
    make_dist(site, "gentk-broken", "gtk_test_broken", "raise RuntimeError('boom at import')\n")
    make_dist(site, "gentk-tiny", "gtk_test_tiny2", GOOD_PLUGIN)
    plugins = load_plugins(autoload=True)
    assert "tiny" in plugins.registries.optimizers and "adam" in plugins.registries.optimizers
    [failure] = plugins.failures
    assert failure.package == "gentk-broken" and failure.stage == "import" and "boom at import" in failure.error
    with pytest.raises(PluginError, match="gentk-broken"):
        load_plugins(autoload=True, strict=True)


def test_plugin_failing_inside_its_hook_is_rolled_back(site):
    make_dist(
        site,
        "gentk-half",
        "gtk_test_half",
        """
        def gentk_register_optimizers(register):
            register("half", object)
            raise ValueError("second registration failed")
    """,
    )
    plugins = load_plugins(autoload=True)
    assert "half" not in plugins.registries.optimizers  # nothing half-registered stays behind
    [failure] = plugins.failures
    assert failure.package == "gentk-half" and failure.stage == "gentk_register_optimizers"


def test_misspelled_hook_is_an_error(site):
    make_dist(
        site,
        "gentk-typo",
        "gtk_test_typo",
        """
        def gentk_register_optimisers(register):
            register("typo", object)
    """,
    )
    plugins = load_plugins(autoload=True)
    [failure] = plugins.failures
    assert failure.package == "gentk-typo" and failure.stage == "validation"
    assert "gentk_register_optimisers" in failure.error


def test_duplicate_name_names_both_packages(site):
    make_dist(site, "gentk-one", "gtk_test_one", GOOD_PLUGIN)
    make_dist(site, "gentk-two", "gtk_test_two", GOOD_PLUGIN)
    with pytest.raises(DuplicateNameError) as info:
        load_plugins(autoload=True)
    assert "gentk-one" in str(info.value) and "gentk-two" in str(info.value) and "no:" in str(info.value)
    # disabling one of them by package name resolves the clash, as `gentk -p no:gentk-two` does
    plugins = load_plugins(autoload=True, disable=["no:gentk-two"])
    assert plugins.registries.optimizers.get("tiny").plugin == "gentk-one"


def test_autoload_can_be_disabled(site, monkeypatch):
    make_dist(site, "gentk-tiny", "gtk_test_tiny3", GOOD_PLUGIN)
    monkeypatch.setenv("GENTK_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "tiny" not in load_plugins().registries.optimizers
    monkeypatch.setenv("GENTK_PLUGINS", "gtk_test_tiny3")  # explicit loading still works
    assert "tiny" in load_plugins().registries.optimizers


def test_builtins_register_through_hooks_and_can_be_disabled():
    plugins = load_plugins(autoload=False)
    assert plugins.registries.optimizers.get("adam").plugin == "gentk.optim"
    assert "adam" not in load_plugins(autoload=False, disable=["no:optim"]).registries.optimizers


def test_fresh_managers_share_nothing():
    a, b = load_plugins(autoload=False), load_plugins(autoload=False)
    assert a.pm is not b.pm and a.registries.optimizers is not b.registries.optimizers


def test_registry_errors():
    registry = Registry("priors")
    registry.register("categorical", object, plugin="pkg-a")
    with pytest.raises(DuplicateNameError, match="pkg-a.*pkg-b"):
        registry.register("categorical", object, plugin="pkg-b")
    with pytest.raises(RegistryError, match="Did you mean 'categorical'"):
        registry.get("categorcal")
    with pytest.raises(RegistryError, match="not an attrs class"):
        registry.register("bad", object, plugin="pkg", config=dict)


@pytest.mark.slow
def test_real_package_installs_and_registers(tmp_path):
    """pip-install plugins/gentk-swissroll into a fresh target and ask a new gentk process."""
    target = tmp_path / "target"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO / "plugins" / "gentk-swissroll"),
        ],
        check=True,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GENTK_DISABLE_PLUGIN_AUTOLOAD", "GENTK_PLUGINS")}
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(REPO)])
    out = subprocess.run([sys.executable, "-m", "gentk", "list", "priors"], env=env, capture_output=True, text=True, check=True).stdout
    assert "swiss_roll" in out and "gentk-swissroll" in out
    code = (
        "import gentk, torch; p = gentk.load_plugins(); e = p.registries.priors.get('swiss_roll');"
        "prior = e.build(e.config(turns=1.0, noise=0.0), size=2); z = prior.sample(4096, generator=torch.Generator().manual_seed(0));"
        "r = z.norm(dim=1); print(float(r.max()), float(r.mean()))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert float(out[0]) <= 3.0 + 1e-5  # inside the radius; radius * sqrt(u) has mean 2/3 * radius
    assert abs(float(out[1]) - 2.0) < 0.1


def test_a_regularizer_whose_critic_part_is_named_critic_trains(tmp_path, write):
    """Nothing requires a plugin's adversary to be called "discriminator": the model trains
    the regularizer's own parts (here `critic.z`, held in an attribute named `net`)."""
    import attrs
    import torch
    from torch import nn

    import gentk
    from gentk.regularizers import gan_discriminator_loss, gan_generator_loss

    class CriticRegularizer(nn.Module):
        """An adversarial regularizer whose trainable part is named "critic"."""

        phase = "regularization"

        @attrs.frozen
        class Config:
            pass

        def __init__(self, *, size, prior, head):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(size, 8), nn.ReLU(), nn.Linear(8, 1))

        def parts(self):
            return {"critic": self.net}

        def discriminator_loss(self, real, fake):
            logits = self.net(torch.cat([real, fake.detach()]))
            loss = gan_discriminator_loss(logits[: len(real)], logits[len(real) :])
            return loss, {"d_loss": loss.item()}

        def generator_loss(self, fake):
            loss = gan_generator_loss(self.net(fake))
            return loss, {"g_loss": loss.item()}

    class CriticPlugin:
        @staticmethod
        def gentk_register_regularizers(register):
            register("critic_gan", CriticRegularizer)

    plugins = load_plugins(plugins=[CriticPlugin()], autoload=False)  # a fresh manager: builtins plus this plugin
    recipe = gentk.load_recipe(
        write(
            "critic.toml",
            """
            name = "critic"
            [data]
            name = "synthetic"
            binarize = "dynamic"
            batch_size = 16
            [model.encoder]
            name = "mlp"
            hidden = [16]
            [model.latents.z]
            size = 2
            head = "deterministic"
            prior = { name = "standard_normal" }
            regularizer = { name = "critic_gan" }
            [model.decoder]
            name = "bernoulli"
            body = "mlp"
            hidden = [16]
            [train]
            steps = 3
            [train.phases.regularization]
            optimizer = { name = "adam", lr = 1e-3, part_lr = { "critic.z" = 1e-4 } }
            [eval]
            every = 3
            samples = 0
            max_examples = 16
            """.replace("\n            ", "\n"),
        ),
        plugins=plugins,
    )
    model = gentk.build_model(recipe, image_shape=(1, 8, 8), plugins=plugins)
    critic_step = next(s for s in model.training_steps() if s.name == "discriminator.z")
    assert list(critic_step.parts) == ["critic.z"] and "critic.z" in model.parts()
    before = [p.detach().clone() for p in model.regularizers["z"].net.parameters()]

    result = gentk.train(recipe, plugins=plugins, out=tmp_path / "runs", model=model)
    assert result.step == 3 and "train/discriminator.z/d_loss" in result.metrics and "train/generator.z/g_loss" in result.metrics
    assert any(not torch.equal(a, b) for a, b in zip(before, model.regularizers["z"].net.parameters())), "the critic was trained"

    model.wrap_parts(lambda name, part: nn.ModuleDict({"module": part}) if name == "critic.z" else part)  # as DDP does, whatever the attribute
    assert isinstance(model.regularizers["z"].net, nn.ModuleDict)
    model.unwrap_parts()
    assert isinstance(model.regularizers["z"].net, nn.Sequential)


CLASHING_PLUGIN = """
    import gentk

    class MyAdam:
        '''Adam, again.'''

    @gentk.hookimpl
    def gentk_register_optimizers(register):
        register("tiny2", MyAdam)
        register("adam", MyAdam)  # a built-in's name
"""


def test_a_name_clash_leaves_the_diagnostic_commands_working(site, capsys):
    from gentk.cli import main

    make_dist(site, "gentk-clash", "gtk_test_clash", CLASHING_PLUGIN)
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "gentk.optim" in out and "gentk-clash" in out and "'adam'" in out and "-p no:gentk-clash" in out
    assert main(["list", "optimizers"]) == 0
    out, err = capsys.readouterr()
    assert "adam" in out and "gentk.optim" in out and "tiny2" not in out and "-p no:gentk-clash" in err
    assert main(["show", str(REPO / "recipes" / "vae.toml")]) == 2
    err = capsys.readouterr().err
    assert "'gentk.optim'" in err and "'gentk-clash'" in err and "gentk -p no:gentk-clash" in err and err.count("\n") == 1
    assert main(["-p", "no:gentk-clash", "show", str(REPO / "recipes" / "vae.toml")]) == 0


LACKING_PLUGIN = """
    import gentk

    class NoSample:
        '''A prior that forgot sample().'''

        def log_prob(self, z):
            return z.sum(-1)

    class HalfCritic:
        '''An adversarial regularizer without a generator loss.'''

        phase = "regularization"

        def parts(self):
            return {}

        def discriminator_loss(self, real, fake):
            return real.sum(), {}

    @gentk.hookimpl
    def gentk_register_priors(register):
        register("nosample", NoSample)

    @gentk.hookimpl
    def gentk_register_regularizers(register):
        register("half_critic", HalfCritic)
"""


def test_a_component_lacking_a_member_of_its_contract_is_refused_naming_plugin_and_member(site):
    make_dist(site, "gentk-lacking", "gtk_test_lacking", LACKING_PLUGIN)
    plugins = load_plugins(autoload=True)
    assert "nosample" not in plugins.registries.priors and "standard_normal" in plugins.registries.priors  # the others keep working
    [failure] = plugins.failures
    assert failure.package == "gentk-lacking" and failure.stage == "gentk_register_priors"
    assert "ContractError" in failure.error and "prior 'nosample' from plugin 'gentk-lacking' (NoSample)" in failure.error
    assert (
        "gentk.contracts.Prior: it lacks sample" in failure.error
        and "`sample(n: int, generator: torch.Generator | None = None) -> Tensor`, n samples" in failure.error
    )
    with pytest.raises(PluginError, match="gentk-lacking"):
        load_plugins(autoload=True, strict=True)

    from gentk import contracts
    from gentk.errors import ContractError

    with pytest.raises(ContractError, match=r"regularizer 'half_critic' .*gentk\.contracts\.Adversary: it lacks generator_loss"):
        contracts.check_factory("regularizers", "half_critic", sys.modules["gtk_test_lacking"].HalfCritic, "gentk-lacking")


def test_a_factory_function_is_held_to_the_contract_when_it_builds():
    class Plain:
        cond_size = 0

        def sample(self, n, c=None, *, generator=None, temperature=1.0):
            return None

    class Plugin:
        __name__ = "gentk_plain"

        @staticmethod
        def gentk_register_decoders(register):
            register("plain", lambda *, image_shape, cond_size: Plain())  # a function: checked when built

    entry = load_plugins(builtin=(), plugins=[Plugin()], autoload=False).registries.decoders.get("plain")
    from gentk.errors import ContractError

    with pytest.raises(ContractError, match=r"decoder 'plain' from plugin 'gentk_plain' \(built as .*Plain\) .*it lacks __call__, log_prob"):
        entry.build(None, image_shape=(1, 2, 2), cond_size=0)


def test_components_receive_their_validated_config_and_declare_each_option_once():
    """Built-ins take ``config`` and no parameter named after an option (so no default is written
    twice); a plugin factory without ``config`` still gets the options as keyword arguments."""
    import inspect

    import attrs

    from gentk.options import option
    from gentk.registry import takes_config

    plugins = load_plugins(autoload=False)
    for registry in plugins.registries:
        for entry in registry:
            if entry.config is None or not attrs.fields(entry.config):
                continue
            assert takes_config(entry.factory), f"{registry.kind} '{entry.name}' does not take its config"
            parameters = set(inspect.signature(entry.factory).parameters)
            twice = parameters & {f.name for f in attrs.fields(entry.config)}
            assert not twice, f"{registry.kind} '{entry.name}' declares {', '.join(sorted(twice))} in its config and its signature"

    seen = {}

    @attrs.frozen
    class Config:
        scale: float = option(1.0, "a scale", gt=0)

    class New:
        def __init__(self, config, *, size):
            seen["new"] = (config, size)

        def sample(self, n, generator=None):
            raise NotImplementedError

    class Old(New):
        def __init__(self, *, size, scale):
            seen["old"] = (scale, size)

    class Plugin:
        __name__ = "gentk_conventions"

        @staticmethod
        def gentk_register_priors(register):
            register("new", New, config=Config)
            register("old", Old, config=Config)

    priors = load_plugins(builtin=(), plugins=[Plugin()], autoload=False).registries.priors
    priors.get("new").build(Config(scale=0.5), size=3)
    priors.get("new").build(None, size=4)  # no config: its defaults
    priors.get("old").build(Config(scale=0.5), size=3)
    assert seen == {"new": (Config(scale=1.0), 4), "old": (0.5, 3)}
