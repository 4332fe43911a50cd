"""The command line: every user error is one paragraph on stderr, exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import gentk.plugins
from gentk.cli import main

REPO = Path(__file__).resolve().parents[1]

GOOD = """
name = "toy"
[data]
name = "toyset"
[model.decoder]
name = "toydec"
layers = 4
"""


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run `gentk -p toyplugin ARGS` in-process with only the optimizer built-ins."""
    monkeypatch.setattr(gentk.plugins, "BUILTIN", ("gentk.optim",))

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["-p", "toyplugin", *map(str, args)])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_list_shows_components_with_their_plugin(cli):
    code, out, _ = cli("list")
    assert code == 0
    assert "toydec" in out and "[toyplugin]" in out and "adam" in out and "[gentk.optim]" in out
    code, out, _ = cli("list", "decoders", "toydec")
    assert code == 0 and "layers" in out and "number of layers" in out and "default 10" in out


def test_show_prints_resolved_recipe(cli, write):
    path = write("r.toml", GOOD)
    code, out, _ = cli("show", path, "--set", "train.steps=7")
    assert code == 0 and "steps = 7" in out and "channels = 64" in out
    code2, again, _ = cli("show", write("again.toml", out))
    assert code2 == 0 and again.splitlines()[1:] == out.splitlines()[1:]


@pytest.mark.parametrize(
    "text, overrides, expected",
    [
        (GOOD + "[trian]\n", [], "Did you mean 'train'?"),
        (GOOD.replace('"toydec"', '"toydex"'), [], "unknown decoder 'toydex'"),
        (GOOD.replace("layers = 4", "layrs = 4"), [], "Did you mean 'layers'?"),
        (GOOD.replace("layers = 4", "layers = true"), [], "expected an integer"),
        (GOOD.replace("layers = 4", "layers = -2"), [], "expected a value >= 1"),
        (GOOD.replace('name = "toyset"', ""), [], "missing required key 'name'"),
        (GOOD + "seed = = 3\n", [], "line"),
        ('extends = "missing.toml"\n' + GOOD, [], "does not exist"),
        ('extends = "r.toml"\n' + GOOD, [], "cycle"),
        (GOOD, ["model.decoder.layerz=3"], "--set model.decoder.layerz=3"),
        (GOOD, ["train.steps={"], "cannot parse"),
    ],
    ids=[
        "unknown-table",
        "unknown-name",
        "unknown-key",
        "wrong-type",
        "out-of-range",
        "missing-key",
        "bad-toml",
        "extends-missing",
        "extends-cycle",
        "set-unknown",
        "set-unparsable",
    ],
)
def test_bad_input_exits_2_without_traceback(cli, write, text, overrides, expected):
    path = write("r.toml", text)
    args = ["show", path] + [a for o in overrides for a in ("--set", o)]
    code, out, err = cli(*args)
    assert code == 2 and out == ""
    assert err.startswith("gentk: error: ") and expected in err and "Traceback" not in err
    assert "r.toml" in err or "--set" in err


def test_missing_recipe_file(cli, tmp_path):
    code, _, err = cli("check", tmp_path / "nothing.toml")
    assert code == 2 and "does not exist" in err


def test_unknown_kind_in_list(cli):
    code, _, err = cli("list", "decoderz")
    assert code == 2 and "Did you mean 'decoders'?" in err


def test_plugins_command_reports_failures(cli, monkeypatch):
    monkeypatch.setenv("GENTK_PLUGINS", "no_such_module_xyz")
    code, out, err = cli("plugins")
    assert code == 0 and "toyplugin" in out and "no_such_module_xyz" in out and "import" in out
    code, out, err = cli("list", "optimizers")
    assert code == 0 and "warning" in err and "no_such_module_xyz" in err


def test_console_entry_point_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "gentk", "show", str(bad)], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "bad.toml" in proc.stderr


SYNTHETIC_VAE = """
name = "vae"
[data]
name = "synthetic"
[model.encoder]
name = "mlp"
hidden = [8]
[model.latents.z]
size = 2
head = "gaussian"
regularizer = { name = "kl" }
[model.decoder]
name = "bernoulli"
body = "mlp"
hidden = [8]
[profiles.small]
model.encoder.hidden = [4]
[profiles.broken]
model.decoder.hidden = [0]
"""


def test_check_checks_every_profile_and_show_applies_one(write, capsys):
    path = write("vae.toml", SYNTHETIC_VAE)
    assert main(["check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert f"{path}: ok" in out and f"{path} --profile small: ok" in out
    assert f"{path} --profile broken: FAILED" in err and "[profiles.broken]: model.decoder.hidden" in err
    assert "1 of 3 checks failed" in err and "gentk: error" in err
    assert main(["check", str(path), "--profile", "small"]) == 0 and "--profile broken" not in capsys.readouterr().out
    assert main(["show", str(path), "--profile", "small"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# resolved from {path} --profile small\n") and "hidden = [\n    4,\n]" in out and "profiles" not in out
