"""The gated PixelCNN decoder: causality, no blind spot, normalisation, known answers, and
the cached sampler equal to the naive one (samples and logits) in every mode."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gentk.distributions import bernoulli_log_prob, bits_per_dim
from gentk.errors import GentkError
from gentk.pixelcnn import (
    CONDITIONINGS,
    LIKELIHOODS,
    PixelCNNDecoder,
    SubpixelDraws,
    _AddToRowsBelowFirst,
    categorical256_log_prob,
    cpu_has_native_bf16,
    gate,
    logistic_mixture_log_prob,
)
from gentk.plugins import load_plugins


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny shapes gain nothing from threads, and on a shared CPU the threads' barriers
    stall whenever one is descheduled (a causality test: 0.07 s on one thread, 30 s on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(shape=(1, 6, 6), conditioning="none", likelihood="bernoulli", cond_size=None, seed=0, **options):
    torch.manual_seed(seed)
    cond_size = (0 if conditioning == "none" else 3) if cond_size is None else cond_size
    options = {"layers": 3, "channels": 6, "first_kernel": 5, "kernel": 3, "mixtures": 2, "map_channels": 4, **options}
    model = PixelCNNDecoder(image_shape=shape, cond_size=cond_size, conditioning=conditioning, likelihood=likelihood, **options)
    code = torch.randn(2, cond_size) if cond_size else None
    return model, code


def data(shape, likelihood, n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    if likelihood == "bernoulli":
        return torch.randint(0, 2, (n, *shape), generator=g).float()
    return torch.randint(0, 256, (n, *shape), generator=g).float() / 255


def input_jacobian(model, x, code):
    """d (random projection of each sub-pixel's parameters) / d x: (C, H, W) outputs x (C, H, W) inputs."""
    x = x[:1].clone().requires_grad_(True)
    code = None if code is None else code[:1]
    params = model.logits(x, code)[0]  # (C, K, H, W)
    proj = torch.randn(params.shape[1])
    outputs = torch.einsum("ckhw,k->chw", params, proj)
    rows = []
    for idx in itertools.product(*map(range, outputs.shape)):
        (grad,) = torch.autograd.grad(outputs[idx], x, retain_graph=True)
        rows.append(grad[0])
    return torch.stack(rows).reshape(*outputs.shape, *outputs.shape)


def order(shape):
    """Position of each sub-pixel in the autoregressive order: raster order, then channels."""
    c, h, w = shape
    return torch.arange(c * h * w).reshape(h, w, c).permute(2, 0, 1)


# --------------------------------------------------------------------------- causality


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
@pytest.mark.parametrize("shape", [(1, 5, 5), (3, 4, 4)])
def test_no_output_sees_its_own_or_a_later_subpixel(shape, conditioning):
    model, code = make(shape, conditioning, likelihood="categorical256", channels=12)
    jac = input_jacobian(model, data(shape, "categorical256"), code)
    pos = order(shape).flatten()
    later_or_same = pos[None, :] >= pos[:, None]  # (outputs, inputs)
    jac = jac.reshape(pos.numel(), pos.numel())
    assert torch.count_nonzero(jac[later_or_same]) == 0
    # ... while most earlier sub-pixels do matter (the test can see a gradient at all).
    assert torch.count_nonzero(jac[~later_or_same]) > 0.5 * (~later_or_same).sum()


@pytest.mark.parametrize("shape", [(1, 6, 6), (3, 4, 4)])
def test_no_blind_spot_every_earlier_subpixel_matters(shape):
    # first kernel 7 reaches 3 columns/rows, each 3x3 layer one more: 4 layers cover 6x6.
    model, code = make(shape, "adaptive_bias", layers=4, channels=24, first_kernel=7, kernel=3)
    jac = input_jacobian(model, data(shape, "bernoulli"), code)
    pos = order(shape).flatten()
    earlier = pos[None, :] < pos[:, None]
    jac = jac.reshape(pos.numel(), pos.numel())
    assert torch.all(jac[earlier] != 0), "some earlier sub-pixel does not reach a later output"
    assert torch.count_nonzero(jac[~earlier]) == 0


def test_the_upper_right_pixel_is_reached():
    # The blind spot of masked 3x3 PixelCNNs: (i-1, j+2) and beyond, right of the current column.
    model, code = make((1, 6, 6), "none", layers=5, channels=12, first_kernel=3, kernel=3)
    jac = input_jacobian(model, data((1, 6, 6), "bernoulli"), code)
    assert jac[0, 3, 1, 0, 2, 5] != 0  # output (3, 1) sees input (2, 5)


# --------------------------------------------------------------------------- likelihoods


@pytest.mark.parametrize(
    "likelihood, shape",
    [("bernoulli", (1, 3, 3)), ("bernoulli", (3, 1, 2)), ("categorical256", (1, 1, 2)), ("logistic_mixture", (1, 1, 2))],
)
def test_the_model_is_a_normalised_distribution(likelihood, shape):
    """p(x) summed over every possible image is 1: true only if each factor is normalised
    and no factor sees its own or a later sub-pixel."""
    model, _ = make(shape, "none", likelihood)
    levels = [0.0, 1.0] if likelihood == "bernoulli" else (torch.arange(256.0) / 255).tolist()
    images = torch.tensor(list(itertools.product(levels, repeat=math.prod(shape)))).reshape(-1, *shape)
    with torch.no_grad():
        total = model.log_prob(images).logsumexp(0)
    assert abs(total.item()) < 1e-4


@pytest.mark.parametrize("shape", [(1, 4, 5), (3, 2, 2)])
def test_half_everywhere_is_one_bit_per_dim_and_uniform_is_eight(shape):
    x_bin, x_8bit = data(shape, "bernoulli", n=3), data(shape, "categorical256", n=3)
    for likelihood, x, expected in (("bernoulli", x_bin, 1.0), ("categorical256", x_8bit, 8.0)):
        model, _ = make(shape, "none", likelihood)
        with torch.no_grad():
            model.head2.weight.zero_()
            model.head2.bias.zero_()  # every logit 0: p = 1/2, or uniform over 256 levels
        bpd = bits_per_dim(-model.log_prob(x), math.prod(shape))
        assert torch.allclose(bpd, torch.full((3,), expected), atol=1e-6, rtol=0)
    assert torch.allclose(bits_per_dim(-bernoulli_log_prob(torch.ones(5), torch.zeros(5)).sum(), 5), torch.tensor(1.0))
    assert torch.allclose(bits_per_dim(-categorical256_log_prob(torch.zeros(7, 256), torch.rand(7)).sum(), 7), torch.tensor(8.0))


def test_logistic_mixture_bins_sum_to_one_and_match_the_cdf():
    torch.manual_seed(0)
    params = torch.cat([torch.randn(4, 3), torch.rand(4, 3) * 2 - 1, torch.randn(4, 3) * 2 - 3], dim=-1)  # K = 3
    levels = torch.arange(256.0) / 255
    logp = logistic_mixture_log_prob(params[:, None].expand(4, 256, 9), levels[None].expand(4, 256))
    assert torch.allclose(logp.exp().sum(-1), torch.ones(4), atol=1e-5)
    # One component, in float64: compare with the logistic CDF difference written out.
    mean, log_scale = 0.1, -4.0
    one = torch.tensor([[0.0, mean, log_scale]], dtype=torch.float64)
    x = torch.tensor([0.0, 100 / 255, 140 / 255, 1.0], dtype=torch.float64)
    xs = 2 * x - 1
    cdf = lambda y: torch.sigmoid((y - mean) / math.exp(log_scale))  # noqa: E731
    upper_tail = torch.sigmoid(-(xs[3] - 1 / 255 - mean) / math.exp(log_scale))  # 1 - cdf, without cancellation
    expected = torch.stack(
        [cdf(xs[0] + 1 / 255), cdf(xs[1] + 1 / 255) - cdf(xs[1] - 1 / 255), cdf(xs[2] + 1 / 255) - cdf(xs[2] - 1 / 255), upper_tail]
    )
    got = logistic_mixture_log_prob(one.expand(4, 3), x).exp()
    assert torch.allclose(got, expected, rtol=1e-9, atol=1e-300)
    # A very sharp component far in a tail: the mass is tiny but finite, never log(0).
    sharp = torch.tensor([[0.0, -0.9, -7.0]])
    assert torch.isfinite(logistic_mixture_log_prob(sharp, torch.tensor([0.5]))).all()


def test_training_lowers_the_nll():
    model, code = make((1, 5, 5), "adaptive_bias")
    stripes = (torch.arange(5) % 2).float().expand(5, 5)
    x = torch.stack([stripes, 1 - stripes, stripes.t(), 1 - stripes.t()] * 2)[:, None]  # predictable images
    code = torch.randn(8, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = -model(x, code).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


@pytest.mark.parametrize("conditioning", ["adaptive_bias", "location_dependent", "input_concat"])
def test_the_code_changes_the_likelihood(conditioning):
    model, code = make((1, 4, 4), conditioning)
    x = data((1, 4, 4), "bernoulli")
    assert (model(x, code) - model(x, code + 1)).abs().min() > 1e-6


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_the_gate_is_tanh_times_sigmoid_with_the_right_gradient(memory_format):
    pre = torch.randn(2, 8, 3, 4, dtype=torch.float64).contiguous(memory_format=memory_format).requires_grad_(True)
    a, b = pre.chunk(2, dim=1)
    assert torch.allclose(gate(pre), torch.tanh(a) * torch.sigmoid(b), atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(gate, (pre,))
    assert torch.autograd.gradgradcheck(gate, (pre,))  # gradient penalties differentiate twice


def test_the_link_add_keeps_the_layout_and_has_the_right_gradient():
    for memory_format in (torch.contiguous_format, torch.channels_last):
        h = torch.randn(2, 4, 3, 5, dtype=torch.float64).contiguous(memory_format=memory_format).requires_grad_(True)
        link = torch.randn(2, 4, 2, 5, dtype=torch.float64).contiguous(memory_format=memory_format).requires_grad_(True)
        out = _AddToRowsBelowFirst.apply(h.clone(), link)
        assert torch.equal(out, h + torch.nn.functional.pad(link, (0, 0, 1, 0))) and out.is_contiguous(memory_format=memory_format)
        (grad_link,) = torch.autograd.grad(
            _AddToRowsBelowFirst.apply(h.clone(), link), link, torch.ones_like(h).contiguous(memory_format=memory_format)
        )
        assert grad_link.is_contiguous(memory_format=memory_format)
        assert torch.autograd.gradcheck(lambda h, link: _AddToRowsBelowFirst.apply(h.clone(), link), (h, link))


def reference_logits(model, x, code):
    """The decoder written the plain way (NCHW, torch.tanh, padded inputs, in-place link add):
    the network the faster code must reproduce, value and gradient."""
    bias, cmap = model._conditioning(code)
    v = h = 2 * x - 1
    if model.config.conditioning == "input_concat":
        v = h = torch.cat([v, cmap], dim=1)
    skip = 0
    for i, layer in enumerate(model.layers):
        cond_v, cond_h = model._layer_cond(i, bias, cmap)
        k = layer.kernel
        v_pre = F.conv2d(F.pad(v, (k // 2, k // 2, layer.v_rows - 1, 0)), layer.v_conv.weight, layer.v_conv.bias)
        h_pre = F.conv2d(F.pad(h, (layer.h_cols - 1, 0, 0, 0)), layer.h_conv.masked_weight(), layer.h_conv.bias)
        if cond_v is not None:
            v_pre, h_pre = v_pre + cond_v, h_pre + cond_h
        h_pre = h_pre.clone()
        h_pre[:, :, 1:] += F.conv2d(v_pre[:, :, :-1], layer.link.weight, layer.link.bias)
        a, b = h_pre.chunk(2, dim=1)
        res, s = F.conv2d(torch.tanh(a) * torch.sigmoid(b), layer.out.masked_weight(), layer.out.bias).chunk(2, dim=1)
        a, b = v_pre.chunk(2, dim=1)
        v, h, skip = torch.tanh(a) * torch.sigmoid(b), res if i == 0 else h + res, skip + s
    out = F.conv2d(F.relu(F.conv2d(F.relu(skip), model.head1.masked_weight(), model.head1.bias)), model.head2.masked_weight(), model.head2.bias)
    return out.reshape(x.shape[0], x.shape[1], -1, *x.shape[2:])


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
@pytest.mark.parametrize("shape", [(1, 6, 6), (3, 4, 5)])
def test_the_network_equals_its_plain_reference_in_value_and_gradient(shape, conditioning):
    model, code = make(shape, conditioning, "bernoulli")
    x = data(shape, "bernoulli")
    fast, slow = model.logits(x, code), reference_logits(model, x, code)
    assert torch.allclose(fast, slow, atol=1e-5, rtol=0)
    proj = torch.randn_like(fast)
    grads = [torch.autograd.grad((out * proj).sum(), list(model.parameters()), allow_unused=True) for out in (fast, slow)]
    for name, (g_fast, g_slow) in zip([n for n, _ in model.named_parameters()], zip(*grads)):
        assert (g_fast is None) == (g_slow is None), name
        assert g_fast is None or torch.allclose(g_fast, g_slow, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("shape", [(1, 6, 6), (3, 4, 5)])
def test_every_convolution_runs_channels_last_on_cpu(shape):
    """oneDNN keeps each convolution in its input's format, and channels last is the fast
    one; a 1-channel input must say so in its strides (channel stride 1), or the first
    layer runs NCHW. The function is the reference's (test above)."""
    model, code = make(shape, "adaptive_bias", "bernoulli")
    seen = []
    hooks = [
        m.register_forward_pre_hook(lambda m, args, name=name: seen.append((name, args[0])))
        for name, m in model.named_modules()
        if name.startswith("layers.") and isinstance(m, torch.nn.Conv2d)
    ]
    try:
        model.logits(data(shape, "bernoulli"), code)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) == 4 * len(model.layers)
    for name, x in seen:
        assert x.stride(1) == 1 and x.is_contiguous(memory_format=torch.channels_last), (name, x.stride())


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("conditioning", CONDITIONINGS)
@pytest.mark.parametrize("shape", [(1, 4, 5), (3, 3, 3)])
def test_cached_sampler_equals_naive_sampler(shape, conditioning, likelihood):
    model, code = make(shape, conditioning, likelihood, channels=6)
    cached, cached_params = model.sample(2, code, generator=torch.Generator().manual_seed(7), temperature=0.9, return_params=True)
    naive, naive_params = model.sample_naive(2, code, generator=torch.Generator().manual_seed(7), temperature=0.9, return_params=True)
    assert torch.equal(cached, naive)
    with torch.no_grad():
        full = model.logits(cached, code)
    assert torch.allclose(cached_params, full, atol=1e-5, rtol=0)
    assert torch.allclose(naive_params, full, atol=1e-5, rtol=0)
    # Samples lie in the data range.
    levels = cached * (1 if likelihood == "bernoulli" else 255)
    assert torch.equal(levels, levels.round()) and levels.min() >= 0 and levels.max() <= (1 if likelihood == "bernoulli" else 255)


def test_mean_images_are_the_probabilities_each_pixel_was_drawn_with():
    """Known answer: p(x_i = 1 | x_<i, c) is sigmoid of a full pass's logit on the final sample (the mask hides x_>=i)."""
    model, code = make((1, 4, 5), "adaptive_bias", "bernoulli", channels=6)
    x, probs = model.sample(2, code, generator=torch.Generator().manual_seed(1), return_probs=True)
    assert torch.equal(x, model.sample(2, code, generator=torch.Generator().manual_seed(1)))  # the same samples as without
    with torch.no_grad():
        torch.testing.assert_close(probs, torch.sigmoid(model.logits(x, code)[:, :, 0]), atol=1e-5, rtol=0)
    assert model.bernoulli_probs and not make((1, 4, 5), "adaptive_bias", "categorical256", channels=6)[0].bernoulli_probs
    with pytest.raises(GentkError, match="return_probs needs the bernoulli likelihood"):
        make((1, 4, 5), "adaptive_bias", "categorical256", channels=6)[0].sample(2, code, return_probs=True)


def test_sampling_seeds_temperature_and_conditioning_computed_once():
    model, code = make((1, 6, 6), "location_dependent")
    calls = {"map": 0}
    model.spatial.register_forward_hook(lambda *args: calls.__setitem__("map", calls["map"] + 1))
    a = model.sample(2, code, generator=torch.Generator().manual_seed(3))
    assert calls["map"] == 1  # the deconvolution runs once per sampling call, not per pixel
    b = model.sample(2, code, generator=torch.Generator().manual_seed(3))
    c = model.sample(2, code, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Ordinary tensors come back, although the sampler runs in inference mode inside.
    assert not a.is_inference()
    weight = torch.ones((), requires_grad=True)
    (a * weight).sum().backward()
    assert weight.grad == a.sum()
    with torch.no_grad():
        model.head2.bias.fill_(0.0)
        model.head2.weight.mul_(0.0).add_(0.05)
    cold = model.sample(64, torch.zeros(64, 3), generator=torch.Generator().manual_seed(0), temperature=0.05)
    warm = model.sample(64, torch.zeros(64, 3), generator=torch.Generator().manual_seed(0), temperature=20.0)
    # A low temperature makes every draw (nearly) the most likely value; a high one makes them coin flips.
    assert (cold.mean() - 0.5).abs() > (warm.mean() - 0.5).abs()
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, code, temperature=0.0)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_a_cpu_generator_serves_a_decoder_on_another_device(generators_like_cuda, likelihood):
    # the meta device plays the GPU (tests/conftest.py)
    args = (likelihood, 3, (1, 2, 2), torch.Generator().manual_seed(5), 1.0)
    on_meta = SubpixelDraws(*args, device=torch.device("meta"), dtype=torch.float32)
    assert on_meta.u.device.type == "meta"
    on_cpu = SubpixelDraws(likelihood, 3, (1, 2, 2), torch.Generator().manual_seed(5), 1.0, device=torch.device("cpu"), dtype=torch.float32)
    d = 2 if likelihood == "logistic_mixture" else 1
    assert torch.equal(on_cpu.u, torch.rand((2, 2, 1, d, 3), generator=torch.Generator().manual_seed(5)))  # the generator's own numbers


# --------------------------------------------------------------------------- building


def test_registered_and_built_like_gentk_builds_it():
    plugins = load_plugins(builtin=("gentk.optim", "gentk.pixelcnn"), autoload=False)
    entry = plugins.get("decoders", "pixelcnn")
    config = entry.config(layers=2, channels=8, conditioning="adaptive_bias", likelihood="categorical256")
    model = entry.build(config, image_shape=(1, 4, 4), cond_size=5)
    assert isinstance(model, PixelCNNDecoder)
    x = data((1, 4, 4), "categorical256", n=3)
    assert model(x, torch.randn(3, 5)).shape == (3,)
    assert model.sample(2, torch.randn(2, 5)).shape == (2, 1, 4, 4)
    defaults = PixelCNNDecoder.Config()
    assert (defaults.layers, defaults.channels, defaults.first_kernel, defaults.kernel) == (10, 64, 7, 3)
    assert (defaults.conditioning, defaults.likelihood, defaults.mixtures) == ("adaptive_bias", "bernoulli", 5)


def test_bad_configurations_and_inputs_are_errors():
    with pytest.raises(GentkError, match="odd"):
        PixelCNNDecoder(image_shape=(1, 4, 4), cond_size=0, conditioning="none", kernel=4)
    with pytest.raises(GentkError, match="one of"):
        PixelCNNDecoder(image_shape=(1, 4, 4), cond_size=2, conditioning="adaptive")
    with pytest.raises(GentkError, match='conditioning = "none"'):
        PixelCNNDecoder(image_shape=(1, 4, 4), cond_size=0)
    with pytest.raises(GentkError, match="channels"):
        PixelCNNDecoder(image_shape=(3, 4, 4), cond_size=0, conditioning="none", channels=2)
    model, code = make((1, 4, 4), "adaptive_bias")
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(2, 1, 5, 4), code)
    with pytest.raises(ValueError, match="code c"):
        model(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="code c"):
        model.sample(3, code)


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bfloat16")
def test_bf16_training_is_close_and_evaluation_stays_exact():
    model, code = make((1, 5, 5), "adaptive_bias", bf16=True)
    reference, _ = make((1, 5, 5), "adaptive_bias", bf16=False)
    x = data((1, 5, 5), "bernoulli")
    exact = reference.eval()(x, code)
    approx = model.train()(x, code)
    assert approx.dtype == torch.float32 and not torch.equal(approx, exact)
    assert torch.allclose(approx, exact, rtol=0.05)
    assert torch.equal(model.eval()(x, code), exact)


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "no-bf16"])
def test_bf16_auto_trains_in_bf16_only_on_a_cpu_that_has_it(monkeypatch, native):
    import gentk.pixelcnn

    monkeypatch.setattr(gentk.pixelcnn, "cpu_has_native_bf16", lambda: native)
    model, code = make((1, 5, 5), "adaptive_bias", bf16="auto")
    reference, _ = make((1, 5, 5), "adaptive_bias", bf16=False)
    x = data((1, 5, 5), "bernoulli")
    exact = reference.train()(x, code)
    trained = model.train()(x, code)
    assert model.cpu_bf16() is native
    if native:  # autocast rounds the activations to bfloat16 (emulated where the CPU lacks it)
        assert not torch.equal(trained, exact) and torch.allclose(trained, exact, rtol=0.05)
    else:
        assert torch.equal(trained, exact)
    assert torch.equal(model.eval()(x, code), reference.eval()(x, code))


def test_bf16_true_on_a_cpu_without_it_says_what_to_set(monkeypatch):
    import gentk.pixelcnn

    monkeypatch.setattr(gentk.pixelcnn, "cpu_has_native_bf16", lambda: False)
    model, code = make((1, 5, 5), "adaptive_bias", bf16=True)
    with pytest.raises(GentkError, match='bf16 = "auto"'):
        model.train()(data((1, 5, 5), "bernoulli"), code)


def test_bf16_autocast_keeps_the_logistic_mixture_nll_of_fp32():
    # Sharp components (scales of about a bin) with means near 0.8: in bfloat16 the heads' outputs
    # would be rounded by up to 2^-9, a quarter of a bin's half-width, which cost 0.012 bits/dim here.
    model, _ = make((3, 4, 4), likelihood="logistic_mixture")
    model.eval()
    with torch.no_grad():
        bias = model.head2.bias.view(3, 3, 2)  # (channel, logit/mean/log scale, component)
        bias[:, 1] += 0.8
        bias[:, 2] -= 5.0
    x = model.sample(8, generator=torch.Generator().manual_seed(1), temperature=0.5)
    with torch.no_grad():
        fp32 = bits_per_dim(-model(x), x[0].numel()).mean()
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as the engine's train.amp = "bf16" on a GPU
            bf16 = bits_per_dim(-model(x), x[0].numel()).mean()
    assert abs(bf16 - fp32) < 0.002, (bf16, fp32)


def test_the_documented_example_runs():
    text = (Path(__file__).resolve().parents[1] / "docs" / "pixelcnn.md").read_text()
    example = text.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(example, "docs/pixelcnn.md", "exec"), {})
