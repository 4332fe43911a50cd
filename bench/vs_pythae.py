"""gentk's VAE and adversarial autoencoder against Pythae's `VAE` and `Adversarial_AE`: same
networks, same initial weights, same data, same number of epochs.

Both sides train the very modules one gentk recipe builds, started from one copy of the
initial weights, then both are measured by the same code. ``--model vae`` (default
recipes/vae.toml: 784-200-200-50 tanh encoder with a Gaussian head, 50-200-200-784 tanh
Bernoulli decoder, N(0, I) prior, KL regularizer) against Pythae's `VAE`; ``--model aae``
(default recipes/aae.toml: 2 x 1000 ReLU encoder, decoder and discriminator, an 8-D
deterministic code, N(0, I) prior) against Pythae's `Adversarial_AE`. The measures, on
gentk's fixed binarization of the 10 000 MNIST test images, in nats per image:

- ``recon_nll`` (both): -log p(x | z = f(x)) under the Bernoulli decoder, f(x) the
  encoder's code (the posterior mean for a Gaussian head);
- ``elbo_nll`` and ``iwae_nll`` (VAE): gentk's `elbo` and `iwae` metrics, the negative ELBO
  (one z per image, closed-form KL) and the importance-weighted bound with ``--iwae-k``
  samples (Burda et al. 2016), the global and the metric's generators seeded alike for both;
- ``mmd`` (AAE): the unbiased squared MMD between test codes and N(0, I) samples, with
  gentk's kernel (`gentk.metrics.mmd_rbf`: a sum of RBF kernels at bandwidths 0.2 ... 5
  times sqrt(D)); the mean over five blocks of 2 000 test codes, each against 2 000 fresh
  prior samples of a fixed seed.

gentk trains with its own engine (`gentk.train`, the recipe's phases and optimizers);
Pythae (0.1.2) with its trainer at its defaults:
- `VAE` with `BaseTrainer`: Adam at 1e-4 (torch's other defaults, eps 1e-8), one update
  per batch of the mean over the batch of the summed Bernoulli NLL (`binary_cross_entropy`
  of the decoder's probabilities) plus the closed-form KL to N(0, I), one reparameterized z
  per image; without an evaluation set it keeps a copy of the model of lowest training loss
  per epoch, while this bench measures the modules as they end, like gentk's;
- `Adversarial_AE` with `AdversarialTrainer`: Adam at 1e-4 for the autoencoder and for the
  discriminator, one simultaneous update of both per batch, the autoencoder's loss the
  summed Bernoulli NLL plus 0.5 times the generator's BCE; its encoder made deterministic
  (``deterministic_posterior``), like the recipe's.
``--pythae KEY=VALUE`` changes one field of Pythae's trainer config (a JSON value), e.g.
``--pythae learning_rate=1e-3``. Both sides see training images binarized afresh at each
draw (gentk's ``binarize = "dynamic"``) from gentk's 50 000 training images, in batches of
the recipe's size.

Pythae is not a dependency of gentk: install it only where this runs, in a venv of its own
(torch first, so that pip does not fetch a CUDA build):

    python3 -m venv /tmp/pythae-venv
    /tmp/pythae-venv/bin/pip install torch==2.13.0 && /tmp/pythae-venv/bin/pip install pythae -e .
    GENTK_DATA=... /tmp/pythae-venv/bin/python bench/vs_pythae.py --model vae          # both sides, seed 0
    /tmp/pythae-venv/bin/python bench/vs_pythae.py --model aae --only gentk --set train.phases.regularization.optimizer.lr=1e-4

Each side prints one JSON line (also appended to --out when given). docs/benchmarks.md has
the measured tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from pathlib import Path

import torch

import gentk
from gentk.data import build_data
from gentk.evaluate import evaluate
from gentk.metrics import mmd_rbf
from gentk.seeding import seed_everything

MMD_BLOCKS, MMD_BLOCK = 5, 2000
RECIPES = {"vae": "recipes/vae.toml", "aae": "recipes/aae.toml"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=tuple(RECIPES), default="vae", help="which comparison: gentk's VAE or AAE against Pythae's")
    parser.add_argument("recipe", nargs="?", help="default: recipes/vae.toml or recipes/aae.toml, by --model")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="a recipe override, as gentk run --set")
    parser.add_argument("--pythae", action="append", default=[], metavar="KEY=VALUE", help="a field of Pythae's trainer config (JSON value)")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0, help="the recipe's seed: initial weights and gentk's data order")
    parser.add_argument("--iwae-k", type=int, default=500, help="importance samples per test image (VAE)")
    parser.add_argument("--only", choices=("both", "gentk", "pythae"), default="both")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label", default="", help="a name for this configuration in the output")
    parser.add_argument("--out", help="append the JSON lines to this file")
    args = parser.parse_args()
    args.recipe = args.recipe or RECIPES[args.model]
    return args


def latent_name(model) -> str:
    (name,) = model.latents  # the bench compares single-latent models
    return name


@torch.no_grad()
def measure(model, data, *, iwae_k: int = 0, seed: int = 0) -> dict[str, float]:
    """The module docstring's measures: recon_nll always; mmd for a deterministic code, elbo_nll and iwae_nll (k = iwae_k) for a Gaussian one."""
    model.eval()
    name = latent_name(model)
    nll, count, codes = 0.0, 0, []
    for batch in data.eval_batches("test", 500):
        code = model.encode(batch.x)[name]
        nll -= float(model.decoder(batch.x, code).double().sum())
        count += len(batch.x)
        codes.append(code.double())
    result = {"recon_nll": nll / count}
    if model.latents[name].head == "gaussian":
        torch.manual_seed(seed)  # the ELBO's z: the Gaussian head samples with the global generator
        metrics = evaluate(model, data, ["elbo", "iwae"], plugins=gentk.load_plugins(), device="cpu", seed=seed, options={"iwae": {"k": iwae_k}})
        return {**result, "elbo_nll": metrics["elbo_nll"], "iwae_nll": metrics["iwae_nll"], "iwae_k": iwae_k}
    codes = torch.cat(codes)
    generator = torch.Generator().manual_seed(seed)
    blocks = [mmd_rbf(block, model.priors[name].sample(len(block), generator).double()) for block in codes[: MMD_BLOCKS * MMD_BLOCK].split(MMD_BLOCK)]
    return {**result, "mmd": sum(blocks) / len(blocks), "mmd_blocks": blocks}


def build(recipe, data):
    seed_everything(recipe.seed)
    return gentk.build_model(recipe, image_shape=data.image_shape)


def run_gentk(recipe, data, initial: dict) -> object:
    model = build(recipe, data)
    model.load_state_dict(initial)
    with tempfile.TemporaryDirectory() as out:
        gentk.train(recipe, out=out, model=model, data=data)
    return model


def run_pythae(recipe, data, initial: dict, epochs: int, seed: int, options: dict) -> object:
    """Pythae's model and trainer (defaults but for `options`) on gentk's modules, wrapped in
    Pythae's interfaces; returns the gentk model, trained in place."""
    from pythae.data.datasets import BaseDataset, DatasetOutput
    from pythae.models import VAE, Adversarial_AE, Adversarial_AE_Config, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseDiscriminator, BaseEncoder
    from pythae.trainers import AdversarialTrainer, AdversarialTrainerConfig, BaseTrainer, BaseTrainerConfig

    model = build(recipe, data)
    model.load_state_dict(initial)
    name = latent_name(model)
    size = model.latents[name].size

    class Encoder(BaseEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.net = model.encoder

        def forward(self, x):
            head = self.net(x)[name]
            if "logvar" in head:  # a Gaussian head: Pythae's VAE draws z itself
                return ModelOutput(embedding=head["mean"], log_covariance=head["logvar"])
            return ModelOutput(embedding=head["code"], log_covariance=torch.zeros_like(head["code"]))  # unused: deterministic_posterior

    class Decoder(BaseDecoder):
        def __init__(self) -> None:
            super().__init__()
            self.net = model.decoder

        def forward(self, z):
            logits = self.net.body(z, len(z))  # the Bernoulli decoder's logits (B, 1, H, W)
            return ModelOutput(reconstruction=torch.sigmoid(logits))

    class Discriminator(BaseDiscriminator):
        def __init__(self) -> None:
            super().__init__()
            self.net = model.regularizers[name]

        def forward(self, z):
            return ModelOutput(embedding=torch.sigmoid(self.net.discriminator(self.net.features(z)))[:, None])

    class DynamicBinarized(BaseDataset):
        """gentk's training images, each binarized afresh when drawn."""

        def __init__(self) -> None:
            levels, labels, scale = data._splits["train"]
            self.data = torch.from_numpy(levels).float() / scale
            self.labels = torch.from_numpy(labels).float()

        def __getitem__(self, index):
            return DatasetOutput(data=torch.bernoulli(self.data[index]), labels=self.labels[index])

    shape = {"input_dim": tuple(data.image_shape), "latent_dim": size, "reconstruction_loss": "bce"}
    with tempfile.TemporaryDirectory() as out:
        batch_size = recipe.data.common.batch_size
        training = {"output_dir": out, "num_epochs": epochs, "per_device_train_batch_size": batch_size, "no_cuda": True, "seed": seed, **options}
        if model.latents[name].head == "gaussian":
            pythae_model = VAE(VAEConfig(**shape), encoder=Encoder(), decoder=Decoder())
            BaseTrainer(pythae_model, DynamicBinarized(), training_config=BaseTrainerConfig(**training)).train()
        else:
            config = Adversarial_AE_Config(**shape, deterministic_posterior=True)
            pythae_model = Adversarial_AE(config, encoder=Encoder(), decoder=Decoder(), discriminator=Discriminator())
            AdversarialTrainer(pythae_model, DynamicBinarized(), training_config=AdversarialTrainerConfig(**training)).train()
    return model


def parse_pythae(items: list[str]) -> dict:
    """``["learning_rate=1e-3"]`` -> {"learning_rate": 0.001}: JSON values, else strings."""
    options = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as gentk's engine does on a CPU, for both sides
    recipe = gentk.load_recipe(args.recipe, [f"seed={args.seed}", f"train.threads={args.threads}", *args.overrides])
    data = build_data(recipe.data, gentk.load_plugins(), seed=recipe.seed)
    batches_per_epoch = math.ceil(data.split_sizes["train"] / recipe.data.common.batch_size)
    steps = round(args.epochs * batches_per_epoch)
    recipe = gentk.load_recipe(
        args.recipe,
        [
            f"seed={args.seed}",
            f"train.threads={args.threads}",
            f"train.steps={steps}",
            f"train.checkpoint_every={steps}",
            f"eval.every={steps}",
            "eval.metrics=[]",
            "eval.samples=0",
            "eval.max_examples=100",
            *args.overrides,
        ],
    )
    initial = copy.deepcopy(build(recipe, data).state_dict())
    pythae_options = parse_pythae(args.pythae)
    sides = ("gentk", "pythae") if args.only == "both" else (args.only,)
    for side in sides:
        started = time.perf_counter()
        if side == "gentk":
            model = run_gentk(recipe, data, initial)
        else:
            model = run_pythae(recipe, data, initial, int(args.epochs), args.seed, pythae_options)
        trained = time.perf_counter()
        result = measure(model, data, iwae_k=args.iwae_k)
        row = {
            "side": side,
            "model": args.model,
            "label": args.label,
            "recipe": args.recipe,
            "overrides": args.overrides,
            "pythae": args.pythae,
            "seed": args.seed,
            "epochs": args.epochs,
            "steps": steps,
            **result,
            "minutes": (trained - started) / 60,
            "measure_minutes": (time.perf_counter() - trained) / 60,
        }
        print(json.dumps(row), flush=True)
        if args.out:
            with Path(args.out).open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
