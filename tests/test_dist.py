"""Data-parallel training: two CPU processes under torchrun (gloo) against one process.

The recipe is deterministic given the batches (no input noise, no adversarial prior
samples, a static binarization: dynamic binarization draws each rank's noise from a stream
of its own), and `gentk.data` gives each rank its slice of the same global batch, so two
ranks must reach the weights of one process with the same global batch, up to float
summation order. Stated tolerance: every weight within 1e-5 (absolute, on values of
order 0.1) after 6 steps of Adam; measured: at most 3e-8.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gentk
from gentk import checkpoint, dist
from gentk.errors import TrainingError
from gentk.train import train

DETERMINISTIC = """
name = "tiny_ddp"
seed = 1
[data]
name = "synthetic"
binarize = "static"
classes = 4
batch_size = 20
labeled = 20
labeled_batch_size = 10
[model.encoder]
name = "mlp"
hidden = [16]
[model.latents.y]
size = 4
head = "categorical"
supervised = true
prior = { name = "categorical" }
[model.latents.z]
size = 2
[model.decoder]
name = "bernoulli"
body = "mlp"
hidden = [16]
[train]
steps = 6
log_every = 2
checkpoint_every = 3
[train.phases.supervised]
optimizer = { name = "adam", lr = 1e-3 }
[eval]
every = 6
samples = 4
"""

ADVERSARIAL = """
name = "tiny_ddp_aae"
[data]
name = "synthetic"
batch_size = 20
[model.encoder]
name = "mlp"
hidden = [16]
input_noise = 0.2
[model.latents.z]
size = 2
regularizer = { name = "adversarial", discriminator = [8] }
[model.decoder]
name = "bernoulli"
body = "mlp"
hidden = [16]
[train]
steps = 4
log_every = 2
[eval]
every = 4
samples = 0
"""

REPO = Path(__file__).resolve().parents[1]


def torchrun_command(recipe: Path, out: Path, *extra: str) -> list[str]:
    """``gentk run`` on two CPU processes under torchrun."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return [*launcher, "-m", "gentk", "run", str(recipe), "--out", str(out), "--device", "cpu", *extra]


def torchrun(recipe: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = torchrun_command(recipe, out, *extra)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=REPO)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    recipe_file = tmp_path / "tiny_ddp.toml"
    recipe_file.write_text(DETERMINISTIC)
    done = torchrun(recipe_file, tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    (two,) = (tmp_path / "two").glob("tiny_ddp-*")

    plugins = gentk.load_plugins(autoload=False)
    one = train(gentk.load_recipe(recipe_file, plugins=plugins), plugins=plugins, out=tmp_path / "one", device="cpu").run_dir

    a, b = checkpoint.load(one / "checkpoints" / "latest.pt"), checkpoint.load(two / "checkpoints" / "latest.pt")
    assert a["step"] == b["step"] == 6 and a["world_size"] == 1 and b["world_size"] == 2
    assert len(b["rng"]) == 2 and len(b["data"]) == 2  # every rank's RNG and data position
    assert a["model"].keys() == b["model"].keys()  # no DDP "module." prefixes in the checkpoint
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], atol=1e-5, rtol=0, msg=lambda m, key=key: f"{key}: {m}")
    # the logged losses are global means: the same numbers as one process
    log_one = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    log_two = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(log_one, log_two, strict=True):
        for key in x:
            if key.startswith(("train/", "eval/")):
                assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), key
    assert (two / "samples" / "step-00000006.png").exists() and (two / "env.json").exists()
    assert json.loads((two / "env.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_adversarial_recipe_trains_and_resumes_under_two_processes(tmp_path):
    recipe_file = tmp_path / "tiny_ddp_aae.toml"
    recipe_file.write_text(ADVERSARIAL)
    done = torchrun(recipe_file, tmp_path, "--set", "train.steps=2")
    assert done.returncode == 0, done.stderr[-3000:]  # every rank exits cleanly (see dist.shutdown)
    (run,) = tmp_path.glob("tiny_ddp_aae-*")
    assert done.stdout.count("run directory:") == 1 and str(run) in done.stdout  # rank 0 alone says where
    done = torchrun(recipe_file, tmp_path, "--resume", "auto", "--force")  # the recipe now says 4 steps
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train.steps: 2 -> 4" in done.stdout + done.stderr  # the --force warning names the change
    state = checkpoint.load(run / "checkpoints" / "latest.pt")
    assert state["step"] == 4 and state["world_size"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_ctrl_c_under_torchrun_saves_once_and_the_run_resumes(tmp_path, signal_group_when):
    # A terminal's Ctrl-C goes to the whole process group: torchrun and both workers, which
    # torchrun then signals again. Every rank must stop at the same step after saving.
    import signal

    recipe_file = tmp_path / "tiny_ddp_aae.toml"
    recipe_file.write_text(ADVERSARIAL)
    command = torchrun_command(recipe_file, tmp_path, "--set", "train.steps=100000", "--set", "train.log_every=10")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, start_new_session=True)

    def started() -> bool:
        return any(p.stat().st_size for p in tmp_path.glob("tiny_ddp_aae-*/metrics.jsonl"))

    out, err = signal_group_when(child, started, signal.SIGINT)
    (run,) = tmp_path.glob("tiny_ddp_aae-*")
    state = checkpoint.load(run / "checkpoints" / "latest.pt")
    assert state["world_size"] == 2 and state["step"] >= 1
    assert err.count("Resume with:") == 1, err[-3000:]  # rank 0 says it, once
    assert f"SIGINT at step {state['step']} of 100000" in err
    # as the message says
    done = torchrun(run / "recipe.toml", tmp_path, "--resume", str(run), "--force", "--set", f"train.steps={state['step'] + 2}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert checkpoint.load(run / "checkpoints" / "latest.pt")["step"] == state["step"] + 2


def test_single_process_helpers_are_no_ops():
    info = dist.DistInfo()
    assert not info.distributed and info.is_main
    assert dist.broadcast_object({"a": 1}, info) == {"a": 1}
    assert dist.gather_objects(3, info) == [3]
    assert dist.mean_scalars({"x": 2.0}, info, torch.device("cpu")) == {"x": 2.0}
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    loss, votes = dist.average_gradients([p], torch.tensor(1.5), info, votes=(True, False))
    assert loss.item() == 1.5 and votes == [True, False] and p.grad.tolist() == [3.0, 3.0]


def test_device_choice(monkeypatch):
    assert dist.choose_device("cpu").type == "cpu"
    assert dist.choose_device("auto").type in ("cuda", "mps", "cpu")
    with pytest.raises(gentk.errors.TrainingError, match="unknown device"):
        dist.choose_device("tpu:0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist.from_environment() == dist.DistInfo(rank=3, world_size=4, local_rank=1, local_world_size=4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two machines
    assert dist.from_environment().local_world_size == 2


def test_batch_norm_under_several_cpu_processes_is_a_clear_error():
    # Per-rank batch statistics would silently differ from one process's; SyncBatchNorm,
    # the fix, runs on GPUs only, so a CPU run with several processes must refuse.
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    with pytest.raises(TrainingError, match="SyncBatchNorm"):
        dist.PartSync(model, dist.DistInfo(rank=0, world_size=2), torch.device("cpu"))
    assert isinstance(dist.PartSync(model, dist.DistInfo(), torch.device("cpu")), dist.PartSync)  # one process: fine


class TwoParts(torch.nn.Module):
    """The least a model needs for `PartSync` to wrap its parts."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.decoder = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)

    def wrap_parts(self, wrap) -> None:
        self.encoder, self.decoder = wrap("encoder", self.encoder), wrap("decoder", self.decoder)


@pytest.mark.parametrize("torch_version", ["2.3", "2.13"])
def test_parts_are_wrapped_with_the_ddp_keywords_this_torch_has(monkeypatch, torch_version):
    # torch 2.13 renamed DDP's broadcast_buffers to forward_sync_buffers; pyproject allows torch >= 2.3
    made = []

    class DDP23(torch.nn.Module):  # the keywords of DistributedDataParallel in torch 2.3 to 2.12 (some of them)
        def __init__(self, module, device_ids=None, output_device=None, dim=0, broadcast_buffers=True, process_group=None):
            super().__init__()
            self.module = module
            made.append({"broadcast_buffers": broadcast_buffers})

    class DDP213(torch.nn.Module):
        def __init__(self, module, device_ids=None, broadcast_buffers=None, forward_sync_buffers=None):
            super().__init__()
            self.module = module
            made.append({"broadcast_buffers": broadcast_buffers, "forward_sync_buffers": forward_sync_buffers})

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", DDP23 if torch_version == "2.3" else DDP213)
    model = TwoParts()
    sync = dist.PartSync(model, dist.DistInfo(rank=0, world_size=2), torch.device("cpu"))
    assert set(sync.wrappers) == {"encoder", "decoder"} and sync.wrappers["encoder"] is model.encoder
    expected = {"broadcast_buffers": False} if torch_version == "2.3" else {"broadcast_buffers": None, "forward_sync_buffers": False}
    assert made == [expected, expected]


def test_two_ranks_never_share_a_gpu(monkeypatch):
    # NCCL stops such a run with "Duplicate GPU detected"; gentk says why and what to do before it starts
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    third = dist.DistInfo(rank=2, world_size=3, local_rank=2)  # torchrun --nproc-per-node 3 on a machine with 2 GPUs
    for choice in ("auto", "cuda"):
        with pytest.raises(TrainingError, match=r"sees 2 GPU\(s\): two processes would share a GPU.*--nproc-per-node 2"):
            dist.choose_device(choice, third)
    second = dist.DistInfo(rank=1, world_size=2, local_rank=1)
    with pytest.raises(TrainingError, match=r"--device cuda:0 would put all 2 processes of this machine on one GPU.*--device cuda"):
        dist.choose_device("cuda:0", second)
    assert dist.choose_device("auto", second) == dist.choose_device("cuda", second) == torch.device("cuda", 1)
    assert dist.choose_device("cuda:1", dist.DistInfo()) == torch.device("cuda", 1)  # one process may pick its GPU
    one_per_machine = dist.DistInfo(rank=3, world_size=4, local_rank=0, local_world_size=1)  # 4 machines, 1 process each
    assert dist.choose_device("cuda:1", one_per_machine) == torch.device("cuda", 1)


def test_sync_batch_norm_keeps_the_optimizer_s_and_the_ema_s_tensors():
    # The optimizers and the EMA are built before the parts are converted to SyncBatchNorm (a GPU-only
    # module; converting runs anywhere): they must still hold the model's own tensors afterwards.
    from gentk.train import EMA

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    optimizer = torch.optim.Adam(model.parameters())
    ema = EMA(model, 0.9)
    dist.PartSync(model, dist.DistInfo(rank=0, world_size=2), torch.device("cuda", 0))
    assert isinstance(model[1], torch.nn.SyncBatchNorm)
    params = list(model.parameters())
    assert [id(p) for g in optimizer.param_groups for p in g["params"]] == [id(p) for p in params]
    live = model.state_dict()
    assert ema.live.keys() == {k for k, v in live.items() if v.dtype.is_floating_point}
    assert all(ema.live[k].data_ptr() == live[k].data_ptr() for k in ema.live)  # the EMA follows the running statistics too
