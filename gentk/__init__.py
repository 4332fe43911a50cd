"""gentk: a plugin-based toolkit for latent-variable generative image models.

Models of the PixelGAN autoencoder paper (Makhzani & Frey, NIPS 2017) and its baselines
are assembled from TOML recipes of registered components and trained by one engine.

``import gentk`` is light: it loads the declarations, the plugin manager and the recipe
loader, not torch. `build_model` and `train` load the model and the engine on first use
(a module ``__getattr__``), so a plugin that imports `gentk.options` pulls in nothing heavy.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

from gentk.errors import GentkError, RecipeError, RegistryError  # noqa: E402
from gentk.options import option  # noqa: E402
from gentk.plugins import hookimpl, load_plugins  # noqa: E402
from gentk.recipe import Recipe, load_recipe  # noqa: E402

__all__ = [
    "GentkError",
    "RecipeError",
    "RegistryError",
    "Recipe",
    "__version__",
    "build_model",
    "hookimpl",
    "load_plugins",
    "load_recipe",
    "option",
    "train",
]

_LAZY = {"build_model": "gentk.model", "train": "gentk.train"}  # name -> the module that defines it (and imports torch)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gentk' has no attribute '{name}'")


class _Package(types.ModuleType):
    """``gentk.train`` stays the function once the module of that name is imported.

    Importing the submodule ``gentk.train`` binds it as the package's attribute ``train``;
    this property takes that binding and keeps answering with the function, as gentk did
    when it imported the function eagerly. The module stays importable as
    ``from gentk.train import ...``.
    """

    @property
    def train(self):
        return __getattr__("train")

    @train.setter
    def train(self, module) -> None:
        pass


sys.modules[__name__].__class__ = _Package
