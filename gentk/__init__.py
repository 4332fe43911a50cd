"""gentk: a plugin-based toolkit for latent-variable generative image models.

Models of the PixelGAN autoencoder paper (Makhzani & Frey, NIPS 2017) and its baselines
are assembled from TOML recipes of registered components and trained by one engine.
"""

from __future__ import annotations

__version__ = "0.1.0"

from gentk.errors import GentkError, RecipeError, RegistryError
from gentk.plugins import hookimpl, load_plugins
from gentk.options import option
from gentk.recipe import Recipe, load_recipe

__all__ = ["GentkError", "RecipeError", "RegistryError", "Recipe", "__version__", "build_model", "hookimpl", "load_plugins", "load_recipe", "option", "train"]

from gentk.model import build_model  # noqa: E402  (after the light modules it builds on)
from gentk.train import train  # noqa: E402  (the function; the module stays importable as `from gentk.train import ...`)
