"""Recipe loading: every kind of bad input gets a precise error; good input round-trips."""

from __future__ import annotations

import pytest

from gentk.errors import RecipeError
from gentk.recipe import load_recipe, parse_override

GOOD = """
name = "toy"
seed = 3
[data]
name = "toyset"
binarize = "dynamic"
batch_size = 32
[model.decoder]
name = "toydec"
layers = 4
[train]
steps = 20
[train.phases.reconstruction]
optimizer = { name = "adam", lr = 1e-3, part_lr = { encoder = 1e-4 } }
schedule = { name = "cosine", final = 0.1 }
"""


def load(write, toy_plugins, text, *overrides, name="r.toml"):
    return load_recipe(write(name, text), overrides, plugins=toy_plugins)


def error(write, toy_plugins, text, *overrides, name="r.toml") -> str:
    with pytest.raises(RecipeError) as info:
        load(write, toy_plugins, text, *overrides, name=name)
    return str(info.value)


def test_good_recipe_is_structured(write, toy_plugins):
    r = load(write, toy_plugins, GOOD)
    assert r.name == "toy" and r.seed == 3
    assert r.data.name == "toyset" and r.data.config.binarize == "dynamic" and r.data.common.batch_size == 32
    assert r.model.decoder.config.layers == 4 and r.model.decoder.config.channels == 64
    phase = r.train.phases["reconstruction"]
    assert phase.optimizer.config.lr == 1e-3 and phase.optimizer.common.part_lr == {"encoder": 1e-4}
    assert phase.schedule.name == "cosine" and phase.schedule.config.final == 0.1
    assert r.model.encoder is None and r.model.latents == {}


def test_show_round_trips(write, toy_plugins):
    r = load(write, toy_plugins, GOOD)
    again = load(write, toy_plugins, r.to_toml(), name="again.toml")
    assert again == r
    assert "widths = [" in r.to_toml()  # defaults are written out


def test_name_defaults_to_file_stem(write, toy_plugins):
    r = load(write, toy_plugins, GOOD.replace('name = "toy"\n', ""), name="my_model.toml")
    assert r.name == "my_model"


def test_unknown_top_level_table(write, toy_plugins):
    msg = error(write, toy_plugins, GOOD + "\n[trian]\nsteps = 3\n")
    assert "r.toml" in msg and "trian" in msg and "Did you mean 'train'?" in msg and "Valid keys:" in msg


def test_unknown_component_name(write, toy_plugins):
    msg = error(write, toy_plugins, GOOD.replace('name = "toydec"', 'name = "toydek"'))
    assert "model.decoder.name" in msg and "unknown decoder 'toydek'" in msg and "Did you mean 'toydec'?" in msg


def test_unknown_key_names_closest(write, toy_plugins):
    msg = error(write, toy_plugins, GOOD.replace("layers = 4", "layrs = 4"))
    assert "model.decoder.layrs" in msg and "Did you mean 'layers'?" in msg
    assert "channels, layers, likelihood, name, widths" in msg


def test_a_switch_with_an_auto_setting_lists_its_three_values():
    from typing import Literal

    from gentk.options import describe_type

    assert describe_type(bool | Literal["auto"]) == "true, false or 'auto'"
    assert describe_type(int | None) == "an integer"


def test_wrong_type(write, toy_plugins):
    msg = error(write, toy_plugins, GOOD.replace("layers = 4", 'layers = "four"'))
    assert "model.decoder.layers" in msg and "expected an integer" in msg and "'four' (a string)" in msg
    msg = error(write, toy_plugins, GOOD.replace("layers = 4", "layers = 4.0"))
    assert "without a decimal point" in msg


def test_out_of_range(write, toy_plugins):
    msg = error(write, toy_plugins, GOOD.replace("layers = 4", "layers = 0"))
    assert "model.decoder.layers" in msg and ">= 1" in msg and "found 0" in msg
    msg = error(write, toy_plugins, GOOD.replace('binarize = "dynamic"', 'binarize = "dynamc"'))
    assert "data.binarize" in msg and "Did you mean 'dynamic'?" in msg
    msg = error(write, toy_plugins, GOOD.replace("lr = 1e-3,", "lr = -1.0,"))
    assert "train.phases.reconstruction.optimizer.lr" in msg and "> 0" in msg


def test_out_of_range_in_list(write, toy_plugins):
    msg = error(write, toy_plugins, GOOD.replace("layers = 4", "layers = 4\nwidths = [8, 0]"))
    assert "model.decoder.widths" in msg and ">= 1" in msg


def test_missing_required_key(write, toy_plugins):
    msg = error(write, toy_plugins, GOOD.split("[model.decoder]")[0])
    assert "model" in msg and "missing required key 'model'" in msg
    msg = error(write, toy_plugins, GOOD.replace('name = "toyset"\n', ""))
    assert "data.name" in msg and "toyset" in msg


def test_unknown_phase(write, toy_plugins):
    msg = error(write, toy_plugins, GOOD.replace("[train.phases.reconstruction]", "[train.phases.reconstuction]"))
    assert "train.phases.reconstuction" in msg and "Did you mean 'reconstruction'?" in msg


def test_malformed_toml_gives_line_and_column(write, toy_plugins):
    msg = error(write, toy_plugins, 'name = "x"\nseed = = 1\n')
    assert "r.toml" in msg and "line 2" in msg and "column" in msg


def test_missing_recipe_file(tmp_path, toy_plugins):
    (tmp_path / "vae.toml").write_text("")
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path / "vea.toml", plugins=toy_plugins)
    assert "does not exist" in str(info.value) and "vae.toml" in str(info.value)


def test_extends_merges_and_reports_origin(write, toy_plugins):
    write("base.toml", GOOD)
    r = load(write, toy_plugins, 'extends = "base.toml"\nname = "child"\n[model.decoder]\nlayers = 2\n[train]\nsteps = 5\n', name="child.toml")
    assert r.name == "child" and r.model.decoder.config.layers == 2 and r.model.decoder.name == "toydec"
    assert r.train.steps == 5 and r.data.common.batch_size == 32
    # an error in an inherited key names the file it came from
    write("base.toml", GOOD.replace("batch_size = 32", "batch_size = 0"))
    msg = error(write, toy_plugins, 'extends = "base.toml"\n', name="child.toml")
    assert "base.toml: data.batch_size" in msg


def test_extends_arrays_replace(write, toy_plugins):
    write("base.toml", GOOD.replace("layers = 4", "layers = 4\nwidths = [1, 2, 3]"))
    r = load(write, toy_plugins, 'extends = "base.toml"\n[model.decoder]\nwidths = [5]\n', name="child.toml")
    assert r.model.decoder.config.widths == [5]


def test_extends_missing_file(write, toy_plugins):
    msg = error(write, toy_plugins, 'extends = "nope.toml"\n' + GOOD)
    assert "extends" in msg and "nope.toml" in msg and "does not exist" in msg


def test_extends_cycle(write, toy_plugins):
    write("a.toml", 'extends = "b.toml"\n' + GOOD)
    write("b.toml", 'extends = "a.toml"\n')
    msg = error(write, toy_plugins, 'extends = "a.toml"\n', name="c.toml")
    assert "cycle" in msg and "a.toml" in msg and "b.toml" in msg


def test_set_overrides(write, toy_plugins):
    r = load(write, toy_plugins, GOOD, "train.steps=500", "model.decoder.likelihood=categorical256", "model.decoder.widths=[3, 4]")
    assert r.train.steps == 500 and r.model.decoder.config.likelihood == "categorical256"
    assert r.model.decoder.config.widths == [3, 4]


def test_set_unknown_path_names_the_override(write, toy_plugins):
    msg = error(write, toy_plugins, GOOD, "model.decoder.layrs=3")
    assert msg.startswith("--set model.decoder.layrs=3") and "Did you mean 'layers'?" in msg


def test_set_unparsable_value(write, toy_plugins):
    msg = error(write, toy_plugins, GOOD, "train.steps=[1,")
    assert "--set train.steps=[1," in msg and "cannot parse" in msg
    msg = error(write, toy_plugins, GOOD, "train.steps")
    assert "KEY.PATH=VALUE" in msg


def test_set_into_a_value(write, toy_plugins):
    msg = error(write, toy_plugins, GOOD, "seed.x=1")
    assert "'seed' is a value" in msg


# --------------------------------------------------------------------------- profiles

PROFILED = (
    GOOD
    + """
[profiles.small]
"train.steps" = 2          # a key path as --set takes it
model.decoder.layers = 1   # TOML's dotted keys
"""
)


def test_a_profile_applies_its_keys_after_extends_and_before_set(write, toy_plugins):
    path = write("r.toml", PROFILED)
    plain = load_recipe(path, plugins=toy_plugins)
    assert plain.train.steps == 20 and plain.profiles == ("small",) and plain.profile is None
    small = load_recipe(path, profile="small", plugins=toy_plugins)
    assert small.train.steps == 2 and small.model.decoder.config.layers == 1 and small.profile == "small"
    assert small.model.decoder.config.channels == 64 and small.model.decoder.name == "toydec"  # the rest of the table is the recipe's
    assert load_recipe(path, ["train.steps=7"], profile="small", plugins=toy_plugins).train.steps == 7  # --set comes last
    assert "profiles" not in small.to_dict()  # the resolved recipe is what the run trains


def test_profiles_merge_through_extends_whatever_the_key_spelling(write, toy_plugins):
    write("base.toml", PROFILED)
    child = """extends = "base.toml"
[profiles.small]
"model.decoder.widths" = [3]
[profiles.small.train]
steps = 4
[profiles.tiny.model.decoder]
channels = 8
"""
    path = write("child.toml", child)
    small = load_recipe(path, profile="small", plugins=toy_plugins)
    assert small.train.steps == 4 and small.model.decoder.config.layers == 1 and small.model.decoder.config.widths == [3]
    assert load_recipe(path, profile="tiny", plugins=toy_plugins).model.decoder.config.channels == 8
    assert load_recipe(path, plugins=toy_plugins).profiles == ("small", "tiny")


def test_an_unknown_profile_names_the_valid_ones_and_the_closest(write, toy_plugins):
    path = write("r.toml", PROFILED)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, profile="smal", plugins=toy_plugins)
    assert str(info.value) == f"{path}: --profile smal: no profile 'smal'. Its profiles: small. Did you mean 'small'?"
    with pytest.raises(RecipeError) as info:
        load_recipe(write("plain.toml", GOOD), profile="small", plugins=toy_plugins)
    assert "this recipe has no profiles" in str(info.value) and "[profiles.small]" in str(info.value)


def test_a_bad_value_in_a_profile_names_its_file_and_profile(write, toy_plugins):
    write("base.toml", PROFILED.replace("model.decoder.layers = 1", "model.decoder.layers = 0"))
    path = write("child.toml", 'extends = "base.toml"\n')
    load_recipe(path, plugins=toy_plugins)  # the recipe itself is fine
    with pytest.raises(RecipeError) as info:
        load_recipe(path, profile="small", plugins=toy_plugins)
    assert "base.toml [profiles.small]: model.decoder.layers" in str(info.value)
    msg = error(write, toy_plugins, GOOD + '[profiles.small]\nextends = "other.toml"\n')
    assert "profiles.small.extends" in msg and "cannot hold 'extends'" in msg
    assert "expected a table of overrides" in error(write, toy_plugins, GOOD + "[profiles]\nsmall = 3\n")


def test_parse_override_values():
    assert parse_override("a.b=3") == (("a", "b"), 3)
    assert parse_override("a=1e-3") == (("a",), 1e-3)
    assert parse_override("a=hello") == (("a",), "hello")
    assert parse_override('a="two words"') == (("a",), "two words")
    assert parse_override("a=true") == (("a",), True)
    assert parse_override("a={x = 1}") == (("a",), {"x": 1})


def test_cross_table_checks(write, toy_plugins):
    latent = '[model.encoder]\nname = "toyenc"\n[model.latents.y]\nsize = 10\nhead = "categorical"\nsupervised = true\n'
    msg = error(write, toy_plugins, GOOD + latent)
    assert "data.labeled" in msg and "supervised" in msg
    r = load(write, toy_plugins, GOOD + latent, "data.labeled=100")
    assert r.model.latents["y"].supervised and r.model.latents["y"].prior.name == "standard_normal"
    msg = error(write, toy_plugins, GOOD + latent.replace('name = "toyenc"', 'name = "toyenc"\n[model.x]'), "data.labeled=100")
    assert "model.x" in msg
    msg = error(write, toy_plugins, GOOD + latent.split("[model.latents.y]")[0])
    assert "model.latents" in msg and "no latents" in msg
    msg = error(write, toy_plugins, GOOD + latent.replace('head = "categorical"', 'head = "gaussian"'), "data.labeled=100")
    assert "model.latents.y.supervised" in msg and "categorical" in msg
