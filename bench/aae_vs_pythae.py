"""gentk's adversarial autoencoder against Pythae's `Adversarial_AE`: same networks, same
initial weights, same data, same number of epochs.

Both sides train the very modules one gentk recipe builds (default recipes/aae.toml: 2 x 1000
ReLU encoder, decoder and discriminator, an 8-D deterministic code, N(0, I) prior), started
from one copy of the initial weights; then both are measured by the same code:

- ``recon_nll``: the test reconstruction NLL, -log p(x | z = f(x)) in nats per image under the
  Bernoulli decoder, on gentk's fixed binarization of the 10 000 MNIST test images;
- ``mmd``: the unbiased squared MMD between test codes and N(0, I) samples, with gentk's
  kernel (`gentk.metrics.mmd_rbf`: a sum of RBF kernels at bandwidths 0.2 ... 5 times
  sqrt(D)); the mean over five blocks of 2 000 test codes, each against 2 000 fresh prior
  samples of a fixed seed.

gentk trains with its own engine (`gentk.train`, the recipe's phases and optimizers);
Pythae with its `AdversarialTrainer` and its defaults (0.1.2: Adam at 1e-4 for the
autoencoder and for the discriminator, one simultaneous update of both per batch, the
autoencoder's loss the summed Bernoulli NLL plus 0.5 times the generator's BCE), its encoder
made deterministic (``deterministic_posterior``), like the recipe's. Both see training
images binarized afresh at each draw (gentk's ``binarize = "dynamic"``) from gentk's 50 000
training images, in batches of the recipe's size.

Pythae is not a dependency of gentk: install it only where this runs, in a venv of its own
(torch first, so that pip does not fetch a CUDA build):

    python3 -m venv /tmp/pythae-venv
    /tmp/pythae-venv/bin/pip install torch==2.13.0 && /tmp/pythae-venv/bin/pip install pythae -e .
    GENTK_DATA=... /tmp/pythae-venv/bin/python bench/aae_vs_pythae.py                 # both sides, seed 0
    /tmp/pythae-venv/bin/python bench/aae_vs_pythae.py --only gentk --set train.phases.regularization.optimizer.lr=1e-4

Each side prints one JSON line (also appended to --out when given). docs/benchmarks.md has
the measured table.
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
from gentk.metrics import mmd_rbf
from gentk.seeding import seed_everything

MMD_BLOCKS, MMD_BLOCK = 5, 2000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", default="recipes/aae.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="a recipe override, as gentk run --set")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0, help="the recipe's seed: initial weights and gentk's data order")
    parser.add_argument("--only", choices=("both", "gentk", "pythae"), default="both")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label", default="", help="a name for this configuration in the output")
    parser.add_argument("--out", help="append the JSON lines to this file")
    return parser.parse_args()


def latent_name(model) -> str:
    (name,) = model.latents  # the bench compares single-latent AAEs
    return name


@torch.no_grad()
def measure(model, data, seed: int = 0) -> dict[str, float]:
    """Test reconstruction NLL (nats per image) and the MMD of the test codes to the prior (module docstring)."""
    model.eval()
    name = latent_name(model)
    nll, count, codes = 0.0, 0, []
    for batch in data.eval_batches("test", 500):
        code = model.encode(batch.x)[name]
        nll -= float(model.decoder(batch.x, code).double().sum())
        count += len(batch.x)
        codes.append(code.double())
    codes = torch.cat(codes)
    generator = torch.Generator().manual_seed(seed)
    blocks = [mmd_rbf(block, model.priors[name].sample(len(block), generator).double()) for block in codes[: MMD_BLOCKS * MMD_BLOCK].split(MMD_BLOCK)]
    return {"recon_nll": nll / count, "mmd": sum(blocks) / len(blocks), "mmd_blocks": blocks}


def build(recipe, data):
    seed_everything(recipe.seed)
    return gentk.build_model(recipe, image_shape=data.image_shape)


def run_gentk(recipe, data, initial: dict) -> dict:
    model = build(recipe, data)
    model.load_state_dict(initial)
    with tempfile.TemporaryDirectory() as out:
        gentk.train(recipe, out=out, model=model, data=data)
    return measure(model, data)


def run_pythae(recipe, data, initial: dict, epochs: int, seed: int) -> dict:
    """Pythae's Adversarial_AE and AdversarialTrainer (defaults) on gentk's modules, wrapped in Pythae's interfaces."""
    from pythae.data.datasets import BaseDataset, DatasetOutput
    from pythae.models import Adversarial_AE, Adversarial_AE_Config
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseDiscriminator, BaseEncoder
    from pythae.trainers import AdversarialTrainer, AdversarialTrainerConfig

    model = build(recipe, data)
    model.load_state_dict(initial)
    name = latent_name(model)
    size = model.latents[name].size

    class Encoder(BaseEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.net = model.encoder

        def forward(self, x):
            code = self.net(x)[name]["code"]
            return ModelOutput(embedding=code, log_covariance=torch.zeros_like(code))  # unused: deterministic_posterior

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

    config = Adversarial_AE_Config(input_dim=tuple(data.image_shape), latent_dim=size, reconstruction_loss="bce", deterministic_posterior=True)
    pythae_model = Adversarial_AE(config, encoder=Encoder(), decoder=Decoder(), discriminator=Discriminator())
    with tempfile.TemporaryDirectory() as out:
        training = AdversarialTrainerConfig(
            output_dir=out, num_epochs=epochs, per_device_train_batch_size=recipe.data.common.batch_size, no_cuda=True, seed=seed
        )
        AdversarialTrainer(pythae_model, DynamicBinarized(), training_config=training).train()
    return measure(model, data)  # the same modules, trained in place


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
    sides = ("gentk", "pythae") if args.only == "both" else (args.only,)
    for side in sides:
        started = time.perf_counter()
        if side == "gentk":
            result = run_gentk(recipe, data, initial)
        else:
            result = run_pythae(recipe, data, initial, int(args.epochs), args.seed)
        row = {
            "side": side,
            "label": args.label,
            "recipe": args.recipe,
            "overrides": args.overrides,
            "seed": args.seed,
            "epochs": args.epochs,
            "steps": steps,
            **result,
            "minutes": (time.perf_counter() - started) / 60,
        }
        print(json.dumps(row), flush=True)
        if args.out:
            with Path(args.out).open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
