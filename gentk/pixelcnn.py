"""Gated PixelCNN decoder: exact likelihoods, latent conditioning and a cached sampler.

References:
- van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves, Kavukcuoglu (2016),
  "Conditional Image Generation with PixelCNN Decoders" (gated layers, vertical and
  horizontal stacks without blind spot, conditioning biases);
- Salimans, Karpathy, Chen, Kingma (2017), "PixelCNN++" (discretized mixture of logistics);
- Ramachandran, Paine, Khorrami, Babaeizadeh, Chang, Zhang, Hasegawa-Johnson, Campbell,
  Huang (2017), "Fast Generation for Convolutional Autoregressive Models" (cached sampling);
- Makhzani & Frey (2017), "PixelGAN Autoencoders" (adaptive and location-dependent biases);
- Gulrajani et al. (2017), "PixelVAE" (the upsampled latent concatenated at the input).

The model factorises p(x | c) = prod_i p(x_i | x_<i, c) over sub-pixels in raster order
(rows top to bottom, columns left to right, then channels R -> G -> B). Axis legend used
in comments and einops patterns: b batch, c image channel (sub-pixel), k parameters of one
sub-pixel's distribution, f feature channel, h row, w column, t kernel tap, l layer.

How a position sees its past (x = the pixel being predicted, o = visible, . = hidden):

    vertical stack at row i         horizontal stack          what the output at x sees
    (kernel k//2+1 by k, covers     (kernel 1 by k//2+1,
     rows i-k//2 .. i)               columns j-k//2 .. j)
      o o o o o                                                 o o o o o o o
      o o o o o   rows <= i                                     o o o o o o o
      o o x o o   (incl. row i)        o o x                    o o o x . . .
                                                                . . . . . . .

The vertical stack at row i sees whole rows up to and including i, so it must never feed
the horizontal stack of row i: its pre-activation reaches the horizontal stack shifted
down one row (the link, paper Fig. 2: 1x1 conv, added before the gate). The horizontal
stack sees the current row up to and including the current column; the first layer uses
mask A (the current pixel hidden), every later layer mask B (the current pixel's features
visible, since they carry only its past). Together the stacks cover every earlier pixel:
no blind spot (the original PixelCNN's masked 3x3 kernels miss a growing wedge to the
upper right).

Channel masks at the current pixel (RGB, paper sec. 2 of van den Oord et al. 2016a):
feature channels are split into C contiguous groups, group g serving sub-pixel g:

    mask A (first layer, from the image)      mask B (later layers, feature to feature)
              in: R  G  B                               in: R  G  B
        out R     .  .  .                         out R     o  .  .
        out G     o  .  .                         out G     o  o  .
        out B     o  o  .                         out B     o  o  o

Earlier positions are visible to every group; these masks apply to the kernel tap of the
current column only (and to every 1x1 conv of the horizontal stack and the head).
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from gentk import distributions
from gentk.errors import GentkError
from gentk.options import OptionValueError, configured, option
from gentk.plugins import hookimpl

Conditioning = Literal["adaptive_bias", "location_dependent", "input_concat", "none"]
Likelihood = Literal["bernoulli", "categorical256", "logistic_mixture"]
CONDITIONINGS = ("adaptive_bias", "location_dependent", "input_concat", "none")
LIKELIHOODS = ("bernoulli", "categorical256", "logistic_mixture")


def _odd(instance, attribute, value):
    if value % 2 != 1:
        raise OptionValueError(attribute.name, f"expected an odd kernel size (the kernel is centred on a column), found {value}")


@attrs.frozen
class PixelCNNConfig:
    """Options of the ``pixelcnn`` decoder (see docs/pixelcnn.md)."""

    layers: int = option(10, "gated layers; the first is the mask-A layer, the others mask-B", ge=1)
    channels: int = option(64, "feature channels of each stack (the gates see twice as many pre-activations)", ge=1)
    first_kernel: int = option(7, "kernel size of the mask-A first layer (odd)", ge=1, validator=_odd)
    kernel: int = option(3, "kernel size of the mask-B gated layers (odd)", ge=1, validator=_odd)
    conditioning: Conditioning = option(
        "adaptive_bias", "how the code c enters: adaptive_bias, location_dependent, input_concat or none", choices=CONDITIONINGS
    )
    likelihood: Likelihood = option("bernoulli", "per sub-pixel distribution: bernoulli, categorical256 or logistic_mixture", choices=LIKELIHOODS)
    mixtures: int = option(5, "logistic components per sub-pixel (logistic_mixture)", ge=1)
    map_channels: int = option(16, "channels of the spatial map made from c (location_dependent, input_concat)", ge=1)
    bf16: bool | Literal["auto"] = option(
        False,
        "train on CPU under bfloat16 autocast: true (needs native bf16: AVX512-BF16 or AMX), false, or auto (when this CPU has native bf16); "
        "evaluation and sampling stay fp32",
    )


# --------------------------------------------------------------------------- likelihoods


def params_per_subpixel(likelihood: str, mixtures: int) -> int:
    """How many network outputs parametrise one sub-pixel's distribution."""
    return {"bernoulli": 1, "categorical256": 256, "logistic_mixture": 3 * mixtures}[likelihood]


def _bernoulli_log_prob(params: Tensor, x: Tensor) -> Tensor:
    """`distributions.bernoulli_log_prob` on params (..., 1), one logit per sub-pixel; x (...) in {0, 1}."""
    return distributions.bernoulli_log_prob(x, params.squeeze(-1))


def categorical256_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """log p(x) under a 256-way softmax per sub-pixel, element-wise.

    logits: (..., 256); x: (...) 8-bit data k/255 in [0, 1]. Returns (...).
    """
    level = torch.round(x * 255).long()
    return torch.log_softmax(logits, dim=-1).gather(-1, level.unsqueeze(-1)).squeeze(-1)


def _split_logistic(params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(..., 3K) -> mixture logits, means in [-1, 1] units, log scales (clamped as PixelCNN++)."""
    logit_pi, mean, log_scale = params.chunk(3, dim=-1)
    return logit_pi, mean, log_scale.clamp(min=-7.0)


def logistic_mixture_log_prob(params: Tensor, x: Tensor) -> Tensor:
    """Exact log p(x) under a discretized mixture of logistics (PixelCNN++ eq. 2), element-wise.

    params: (..., 3K) = K mixture logits, K means, K log scales, on the [-1, 1] scale of
    x' = 2 x - 1; x: (...) 8-bit data k/255. Each component's bin mass is
    `gentk.distributions.discretized_logistic_log_prob` with 256 levels: level k owns the bin
    [x'_k - 1/255, x'_k + 1/255], the extreme bins extend to -inf / +inf, exact at any scale.
    """
    logit_pi, mean, log_scale = _split_logistic(params)
    log_bin = distributions.discretized_logistic_log_prob((2.0 * x - 1.0).unsqueeze(-1), mean, log_scale, bins=256)
    return torch.logsumexp(torch.log_softmax(logit_pi, dim=-1) + log_bin, dim=-1)


LOG_PROBS = {"bernoulli": _bernoulli_log_prob, "categorical256": categorical256_log_prob, "logistic_mixture": logistic_mixture_log_prob}


def _inverse_cdf(logits: Tensor, u: Tensor) -> Tensor:
    """Index drawn from softmax(logits) (n, K) with uniforms u (n,): the first k with CDF > u."""
    cdf = torch.cumsum(torch.softmax(logits, dim=-1), dim=-1)
    return (cdf <= u.unsqueeze(-1)).sum(-1).clamp(max=logits.shape[-1] - 1)


class SubpixelDraws:
    """The random numbers of one sampling call, drawn up front, and the draw of each sub-pixel.

    Both samplers take every uniform they need in one call, ``torch.rand((H, W, C, d, n))``
    (d = 2 for the logistic mixture, which picks a component and then a value, else 1), so
    that for one generator state they use the same numbers on any device, whatever order
    they compute in (the numbers come from the generator's device, so a CPU generator also
    serves a decoder on a GPU). ``draw(params, i, j, ch)`` turns sub-pixel (i, j, ch)'s parameters
    (n, K) into its values (n,) in the data range ({0, 1} or k/255). Temperature divides the
    logits (and multiplies the logistic scales).

    Bernoulli: x = 1 exactly when z > T logit(u), which has probability
    P(u < sigmoid(z / T)) = sigmoid(z / T); the thresholds T logit(u) are computed once, so a
    draw is one comparison.
    """

    def __init__(
        self, likelihood: str, n: int, image_shape: tuple[int, int, int], generator: torch.Generator | None, temperature: float, *, device, dtype
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"pixelcnn: temperature must be > 0, got {temperature}")
        n_channels, height, width = image_shape
        self.likelihood, self.temperature = likelihood, temperature
        d = 2 if likelihood == "logistic_mixture" else 1
        # drawn on the generator's device, then moved (as the priors do): a CPU generator gives the same samples on every device
        source = generator.device if generator is not None else device
        self.u = torch.rand((height, width, n_channels, d, n), generator=generator, device=source, dtype=dtype).to(device)
        if likelihood == "bernoulli":
            threshold = temperature * torch.logit(self.u[:, :, :, 0])  # (H, W, C, n)
            self.threshold = threshold.reshape(-1, n).unbind(0)  # one (n,) view per sub-pixel, raster order
        self.width, self.n_channels = width, n_channels

    def draw(self, params: Tensor, i: int, j: int, ch: int, out: Tensor | None = None) -> Tensor:
        """Sub-pixel (i, j, ch)'s values (n,), written into `out` (n,) if given."""
        if self.likelihood == "bernoulli":
            threshold = self.threshold[(i * self.width + j) * self.n_channels + ch]
            if out is None:
                return (params[:, 0] > threshold).to(params.dtype)
            return torch.gt(params[:, 0], threshold, out=out)
        value = self._draw_levels(params, self.u[i, j, ch])
        return value if out is None else out.copy_(value)

    def _draw_levels(self, params: Tensor, u: Tensor) -> Tensor:
        temperature = self.temperature
        if self.likelihood == "categorical256":
            return _inverse_cdf(params / temperature, u[0]).to(params.dtype) / 255
        logit_pi, mean, log_scale = _split_logistic(params)
        component = _inverse_cdf(logit_pi / temperature, u[0]).unsqueeze(-1)
        v = u[1].clamp(1e-5, 1 - 1e-5)
        # A continuous logistic draw falls in level k's bin with exactly that bin's mass.
        y = mean.gather(-1, component).squeeze(-1) + temperature * torch.exp(log_scale.gather(-1, component).squeeze(-1)) * (
            torch.log(v) - torch.log1p(-v)
        )
        return torch.round((y + 1) * 127.5).clamp(0, 255) / 255


# --------------------------------------------------------------------------- masks


def feature_groups(channels: int, groups: int) -> Tensor:
    """Sub-pixel group of each of `channels` features: contiguous blocks, group g serves channel g."""
    return torch.arange(channels) * groups // channels


def channel_mask(out_groups: Tensor, in_groups: Tensor, *, strict: bool) -> Tensor:
    """(out, in) 0/1 mask: an output of group g may see inputs of groups < g (mask A) or <= g (mask B)."""
    allowed = in_groups.unsqueeze(0) < out_groups.unsqueeze(1) if strict else in_groups.unsqueeze(0) <= out_groups.unsqueeze(1)
    return allowed.float()


class MaskedConv2d(nn.Conv2d):
    """A convolution whose weight is multiplied by a fixed 0/1 mask (None: no mask)."""

    def __init__(self, *args, mask: Tensor | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("mask", mask, persistent=False)

    def masked_weight(self) -> Tensor:
        return self.weight if self.mask is None else self.weight * self.mask

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.masked_weight(), self.bias)


def _conv1x1(in_groups: Tensor, out_groups: Tensor, groups: int, bias: bool = True) -> MaskedConv2d:
    """A 1x1 conv at the current pixel: mask B between channel groups (no mask for one group)."""
    mask = None if groups == 1 else channel_mask(out_groups, in_groups, strict=False)[:, :, None, None]
    return MaskedConv2d(len(in_groups), len(out_groups), 1, bias=bias, mask=mask)


class _Gate(torch.autograd.Function):
    """tanh(a) * sigmoid(b) through sigmoids only, with its derivative written out.

    torch.tanh is slow on CPU (4.1 ms on a 64 x 64 x 28 x 28 fp32 tensor, sigmoid 0.65 ms,
    measured), so tanh(a) is computed as 2 sigmoid(2 a) - 1, the same function. Backward:
    d/da = g sigmoid(b) (1 - tanh(a)^2), d/db = g tanh(a) sigmoid(b) (1 - sigmoid(b)),
    recomputing both factors from the saved input: that input is often kept anyway (the
    link convolution keeps the vertical pre-activation), and the backward stays
    differentiable, so second derivatives (gradient penalties) are right too.
    """

    @staticmethod
    def _factors(pre: Tensor, dim: int) -> tuple[Tensor, Tensor]:
        a, b = pre.chunk(2, dim=dim)
        return 2 * torch.sigmoid(2 * a) - 1, torch.sigmoid(b)

    @staticmethod
    def forward(ctx, pre: Tensor, dim: int) -> Tensor:
        ctx.save_for_backward(pre)
        ctx.dim = dim
        a, b = pre.chunk(2, dim=dim)
        return torch.sigmoid(2 * a).mul_(2).sub_(1).mul_(torch.sigmoid(b))

    @staticmethod
    def backward(ctx, grad: Tensor):
        (pre,) = ctx.saved_tensors
        tanh_a, sig_b = _Gate._factors(pre, ctx.dim)
        if torch.is_grad_enabled():  # create_graph: differentiable ops, for a second derivative
            grad_a = torch.ops.aten.tanh_backward(grad * sig_b, tanh_a)
            grad_b = torch.ops.aten.sigmoid_backward(grad * tanh_a, sig_b)
            return torch.cat([grad_a, grad_b], dim=ctx.dim), None
        # Written into the two halves of one tensor in pre's layout: torch.cat of the halves
        # took 2.3 ms per gate in channels last (measured), longer than the arithmetic.
        grad_pre = torch.empty_like(pre)
        grad_a, grad_b = grad_pre.chunk(2, dim=ctx.dim)
        torch.ops.aten.tanh_backward.grad_input(grad * sig_b, tanh_a, grad_input=grad_a)
        torch.ops.aten.sigmoid_backward.grad_input(grad * tanh_a, sig_b, grad_input=grad_b)
        return grad_pre, None


def gate(pre: Tensor, dim: int = 1) -> Tensor:
    """The gated activation tanh(a) * sigmoid(b) of pre = [a, b] (paper eq. 2)."""
    return _Gate.apply(pre, dim)


class GatedLayer(nn.Module):
    """One gated layer of both stacks (van den Oord et al. 2016, Fig. 2).

    vertical:   v_pre = conv_{k//2+1 x k}(v) + cond_v;  v' = gate(v_pre)
    horizontal: h_pre = conv_{1 x k//2+1}(h) + 1x1(shift_down(v_pre)) + cond_h
                g = gate(h_pre);  [r, s] = 1x1(g)
                h' = h + r (residual; the first layer has none), skip contribution s
    The residual and skip 1x1 convs are one conv with 2p outputs (one GEMM, not two).
    """

    def __init__(self, in_channels: int, channels: int, kernel: int, *, in_groups: Tensor, groups: int, first: bool) -> None:
        super().__init__()
        self.kernel, self.first, self.channels = kernel, first, channels
        self.v_rows, self.h_cols = kernel // 2 + 1, kernel // 2 + 1
        features = feature_groups(channels, groups)
        pre_groups = torch.cat([features, features])  # a and b halves of the gate share groups
        self.v_conv = nn.Conv2d(in_channels, 2 * channels, (self.v_rows, kernel))
        h_mask = torch.ones(2 * channels, in_channels, 1, self.h_cols)
        h_mask[:, :, 0, -1] = channel_mask(pre_groups, in_groups, strict=first)  # current column only
        self.h_conv = MaskedConv2d(in_channels, 2 * channels, (1, self.h_cols), mask=None if h_mask.all() else h_mask)
        self.link = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.out = _conv1x1(features, pre_groups, groups)  # [residual, skip]

    def forward(self, v: Tensor | None, h: Tensor, cond_v: Tensor | None, cond_h: Tensor | None) -> tuple[Tensor | None, Tensor, Tensor]:
        """v: the vertical stack on rows 0 .. H-2 only (None for a 1-row image): row i of the
        horizontal stack uses vertical rows <= i-1, so vertical row H-1 would never reach the
        output and is not computed. h: the horizontal stack, all H rows."""
        # In-place adds below act on fresh conv outputs, which no backward pass needs.
        h_pre = self.h_conv(F.pad(h, (self.h_cols - 1, 0, 0, 0)))
        if cond_h is not None:
            h_pre += cond_h
        v_out = None
        if v is not None:
            v_pre = self.v_conv(F.pad(v, (self.kernel // 2, self.kernel // 2, self.v_rows - 1, 0)))
            if cond_v is not None:
                v_pre += cond_v
            # The link: vertical row i-1 into horizontal row i (row 0 gets nothing).
            h_pre = _AddToRowsBelowFirst.apply(h_pre, self.link(v_pre))
            v_out = gate(v_pre)
        res, skip = self.out(gate(h_pre)).chunk(2, dim=1)
        return v_out, res if self.first else res + h, skip


class _AddToRowsBelowFirst(torch.autograd.Function):
    """h[:, :, 1:] += link, in place on h, with a gradient in the input's memory layout.

    Written out because autograd's version of it is slow in channels last: an in-place add
    into the row slice h[:, :, 1:] copies the whole gradient in backward (CopySlices, 0.6 s
    per training step, measured); here the gradient of h passes through unchanged and the
    link's is one copy, in the link's layout.
    """

    @staticmethod
    def forward(ctx, h: Tensor, link: Tensor) -> Tensor:
        ctx.mark_dirty(h)
        ctx.memory_format = torch.channels_last if link.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        h[:, :, 1:].add_(link)  # add_ on the view: `+=` would copy it back onto itself
        return h

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, grad[:, :, 1:].contiguous(memory_format=ctx.memory_format)


def _channels_last(x: Tensor) -> Tensor:
    """x (b, c, h, w) in channels-last memory format, with strides that say so.

    For one channel both formats have the same memory, and `contiguous(channels_last)`
    returns a contiguous tensor unchanged, with NCHW strides; oneDNN then runs the first
    layer in NCHW and its outputs need converting. Writing the strides out (channel stride
    1) makes the first layer channels last too (bf16 training 3-5 % faster, fp32 the same:
    docs/benchmarks.md).
    """
    if x.shape[1] == 1 and x.is_contiguous():
        _, _, height, width = x.shape
        return x.as_strided(x.shape, (height * width, 1, width, 1))
    return x.contiguous(memory_format=torch.channels_last)


class SpatialMap(nn.Module):
    """c -> linear -> (map_channels, H/4, W/4) -> deconv -> ReLU -> deconv -> (map_channels, H, W).

    The location-dependent conditioning of PixelGAN (sec. 2.1) and PixelVAE's upsampled code.
    """

    def __init__(self, cond_size: int, map_channels: int, height: int, width: int) -> None:
        super().__init__()
        self.height, self.width = height, width
        self.h0, self.w0 = math.ceil(height / 4), math.ceil(width / 4)
        self.linear = nn.Linear(cond_size, map_channels * self.h0 * self.w0)
        self.up1 = nn.ConvTranspose2d(map_channels, map_channels, 4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(map_channels, map_channels, 4, stride=2, padding=1)
        for up in (self.up1, self.up2):
            # Each output of a stride-2, 4x4 deconvolution sums 2x2 taps per input channel: He
            # init for that fan-in keeps the map at the scale of c (the default shrinks it ~10x).
            nn.init.normal_(up.weight, std=math.sqrt(2.0 / (4 * map_channels)))
            nn.init.zeros_(up.bias)

    def forward(self, c: Tensor) -> Tensor:
        m = rearrange(self.linear(c), "b (f h w) -> b f h w", h=self.h0, w=self.w0)
        m = self.up2(F.relu(self.up1(m)))
        return m[:, :, : self.height, : self.width]


# --------------------------------------------------------------------------- the decoder


@torch.compiler.assume_constant_result  # torch.compile takes the answer as a constant instead of tracing a file read
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 dot products natively (Linux /proc/cpuinfo flags)."""
    return _cpuinfo_has_bf16()


@functools.cache
def _cpuinfo_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class PixelCNNDecoder(nn.Module):
    """Gated PixelCNN p(x | c) with exact log-likelihoods and an exact cached sampler.

    gentk builds it as ``PixelCNNDecoder(config, image_shape=(C, H, W), cond_size=K)`` with a
    `PixelCNNConfig`; from Python, ``PixelCNNDecoder(image_shape=..., cond_size=K, **options)``
    takes the same options as keywords; ``cond_size=0`` (unconditional) needs
    ``conditioning="none"`` and the reverse.
    """

    Config = PixelCNNConfig

    def __init__(self, config: PixelCNNConfig | None = None, *, image_shape: tuple[int, int, int], cond_size: int = 0, **options) -> None:
        super().__init__()
        try:
            cfg = configured(PixelCNNConfig, config, options)
        except OptionValueError as exc:
            raise GentkError(f"pixelcnn option {exc}") from None
        self.config = cfg
        self.image_shape = tuple(int(s) for s in image_shape)
        self.cond_size = int(cond_size)
        n_channels, height, width = self.image_shape
        if (cfg.conditioning == "none") != (self.cond_size == 0):
            raise GentkError(
                f"pixelcnn: conditioning='{cfg.conditioning}' with cond_size={self.cond_size}: an unconditional decoder "
                '(no latents) needs conditioning = "none", a conditional one one of adaptive_bias, location_dependent, input_concat.'
            )
        if cfg.channels < n_channels:
            raise GentkError(
                f"pixelcnn: channels={cfg.channels} is fewer than the image's {n_channels} channels; each channel needs its own feature group."
            )
        self.n_params = params_per_subpixel(cfg.likelihood, cfg.mixtures)
        p = cfg.channels
        image_groups = torch.arange(n_channels)
        input_groups = image_groups
        if cfg.conditioning == "input_concat":
            # The map is a function of c alone, so the current pixel may see it: group -1.
            input_groups = torch.cat([image_groups, torch.full((cfg.map_channels,), -1)])
        if cfg.conditioning in ("location_dependent", "input_concat"):
            self.spatial = SpatialMap(self.cond_size, cfg.map_channels, height, width)
        if cfg.conditioning == "adaptive_bias":
            # One linear map gives every layer's vertical and horizontal gate biases.
            self.cond_bias = nn.Linear(self.cond_size, cfg.layers * 2 * 2 * p)
        if cfg.conditioning == "location_dependent":
            self.cond_proj = nn.ModuleList(nn.Conv2d(cfg.map_channels, 2 * 2 * p, 1) for _ in range(cfg.layers))
        features = feature_groups(p, n_channels)
        self.layers = nn.ModuleList(
            GatedLayer(
                len(input_groups) if i == 0 else p,
                p,
                cfg.first_kernel if i == 0 else cfg.kernel,
                in_groups=input_groups if i == 0 else features,
                groups=n_channels,
                first=i == 0,
            )
            for i in range(cfg.layers)
        )
        out_groups = torch.arange(n_channels).repeat_interleave(self.n_params)
        self.head1 = _conv1x1(features, features, n_channels)
        self.head2 = _conv1x1(features, out_groups, n_channels)

    # -- the network

    def _check(self, x: Tensor | None, c: Tensor | None, n: int | None = None) -> None:
        if x is not None and tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"pixelcnn: expected images of shape (B, {', '.join(map(str, self.image_shape))}), got {tuple(x.shape)}")
        n = x.shape[0] if x is not None else n
        if self.cond_size == 0:
            if c is not None:
                raise ValueError("pixelcnn: this decoder is unconditional (cond_size=0) but a code c was given")
        elif c is None or tuple(c.shape) != (n, self.cond_size):
            raise ValueError(f"pixelcnn: expected a code c of shape ({n}, {self.cond_size}), got {None if c is None else tuple(c.shape)}")

    def _conditioning(self, c: Tensor | None):
        """The per-sample conditioning, computed once: (biases (b, l, 4p) or None, map or None)."""
        kind = self.config.conditioning
        bias = rearrange(self.cond_bias(c), "b (l f) -> b l f", l=self.config.layers) if kind == "adaptive_bias" else None
        cmap = self.spatial(c) if kind in ("location_dependent", "input_concat") else None
        return bias, cmap

    def _layer_cond(self, i: int, bias: Tensor | None, cmap: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """Layer i's additive conditioning of the vertical and horizontal pre-activations."""
        if bias is not None:
            cond = bias[:, i, :, None, None]
        elif self.config.conditioning == "location_dependent":
            cond = self.cond_proj[i](cmap)
        else:
            return None, None
        return cond.chunk(2, dim=1)

    def logits(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """The distribution parameters of every sub-pixel: (b, C, K, H, W)."""
        self._check(x, c)
        bias, cmap = self._conditioning(c)
        inp = 2 * x - 1  # centre the input
        if self.config.conditioning == "input_concat":
            inp = torch.cat([inp, cmap], dim=1)
        if inp.device.type == "cpu":
            # oneDNN's convolutions are faster on channels-last activations (measured with
            # bench/pixelcnn.py --roofline, docs/benchmarks.md), and each convolution keeps
            # its input's format, so every layer's activations follow.
            inp = _channels_last(inp)
        h = inp
        v = inp[:, :, :-1] if inp.shape[2] > 1 else None  # the vertical stack's rows 0 .. H-2
        skip = None
        for i, layer in enumerate(self.layers):
            cond_v, cond_h = self._layer_cond(i, bias, cmap)
            if self.config.conditioning == "location_dependent" and v is not None:
                cond_v = cond_v[:, :, :-1]  # the map's rows the vertical stack has
            v, h, s = layer(v, h, cond_v, cond_h)
            skip = s if i == 0 else skip + s if i == 1 else skip.add_(s)  # in place once skip is a fresh sum
        with torch.autocast(skip.device.type, enabled=False):  # the heads in the weights' precision (see `forward`)
            out = self.head2(F.relu(self.head1(F.relu(skip.to(self.head1.weight.dtype)))))
        return rearrange(out, "b (c k) h w -> b c k h w", c=self.image_shape[0])

    def cpu_bf16(self) -> bool:
        """Whether training on CPU runs under bfloat16 autocast (the ``bf16`` option)."""
        if self.config.bf16 == "auto":  # a recipe that runs on any CPU: bf16 only where it is fast
            return cpu_has_native_bf16()
        if self.config.bf16 and not cpu_has_native_bf16():
            raise GentkError(
                "pixelcnn: bf16 = true needs a CPU with native bfloat16 (AVX512-BF16 or AMX); this one has none. Set bf16 = false, "
                'or bf16 = "auto" to use it only where it exists.'
            )
        return self.config.bf16

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """Exact log p(x | c) in nats per image, shape (b,).

        With the ``bf16`` option, in training mode on CPU the network runs under bfloat16
        autocast (1.8x the fp32 throughput, measured on an AVX512-BF16 CPU) and the likelihood of its
        outputs is computed in fp32; in eval mode it is always exact fp32.

        Under any autocast (this option, or the engine's ``train.amp`` on a GPU) the two output
        1x1 convolutions, the heads, run in fp32: in bfloat16 (8 significant bits) a
        logistic mean near +-1 is quantised to about the width of a pixel level's bin
        (2/255), which costs bits/dim.
        """
        if self.training and x.device.type == "cpu" and self.cpu_bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                params = self.logits(x, c)
            params = params.float()
        else:
            params = self.logits(x, c)
        params = rearrange(params, "b c k h w -> b c h w k")
        return LOG_PROBS[self.config.likelihood](params, x).sum(dim=(1, 2, 3))

    def log_prob(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """Exact log p(x | c) in nats per image, shape (b,); x in the data range."""
        return self(x, c)

    # -- sampling

    @torch.no_grad()
    def sample_naive(
        self, n: int, c: Tensor | None = None, *, generator: torch.Generator | None = None, temperature: float = 1.0, return_params: bool = False
    ):
        """Reference sampler: one full forward pass per sub-pixel (C*H*W passes).

        Returns (n, C, H, W) in the data range; with return_params also the parameters
        (n, C, K, H, W) each sub-pixel was drawn from.
        """
        self._check(None, c, n)
        n_channels, height, width = self.image_shape
        device, dtype = self.head2.weight.device, self.head2.weight.dtype
        draws = SubpixelDraws(self.config.likelihood, n, self.image_shape, generator, temperature, device=device, dtype=dtype)
        x = torch.zeros(n, *self.image_shape, device=device, dtype=dtype)
        used = torch.zeros(n, n_channels, self.n_params, height, width, device=device, dtype=dtype)
        for i in range(height):
            for j in range(width):
                for ch in range(n_channels):
                    params = self.logits(x, c)[:, ch, :, i, j]
                    used[:, ch, :, i, j] = params
                    x[:, ch, i, j] = draws.draw(params, i, j, ch)
        return (x, used) if return_params else x

    @property
    def bernoulli_probs(self) -> bool:
        return self.config.likelihood == "bernoulli"

    @torch.no_grad()
    def sample(
        self,
        n: int,
        c: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        return_params: bool = False,
        return_probs: bool = False,
    ):
        """Cached sampler (Ramachandran et al. 2017): exactly the naive sampler's samples, fast.

        Each layer keeps the rows of its vertical-stack input and the current row of its
        horizontal-stack input. After row i is drawn, the vertical stack runs once on row i
        for all layers, giving each layer's link for row i+1; then the horizontal stack and
        the head run once per sub-pixel of row i+1 on the cached columns it needs. It draws
        the same random numbers as `sample_naive` (`SubpixelDraws`).
        Returns (n, C, H, W) in the data range (and, with return_params, the parameters
        (n, C, K, H, W) each sub-pixel was drawn from; with return_probs, for a Bernoulli
        likelihood, the probabilities p(x_i = 1 | x_<i, c) (n, C, H, W) each pixel was drawn
        with: the mean image given the pixels drawn before).
        """
        if return_probs:
            if not self.bernoulli_probs or return_params:
                raise GentkError(
                    f"return_probs needs the bernoulli likelihood (this decoder's is {self.config.likelihood}) and no return_params; "
                    "sample without it."
                )
            x, params = self.sample(n, c, generator=generator, temperature=temperature, return_params=True)
            return x, torch.sigmoid(params[:, :, 0])
        self._check(None, c, n)
        ref = self.head2.weight
        draws = SubpixelDraws(self.config.likelihood, n, self.image_shape, generator, temperature, device=ref.device, dtype=ref.dtype)
        # Inference mode drops autograd's bookkeeping from each of the ~50 small kernels per
        # sub-pixel (measured 6-7 % faster than no_grad); the results are cloned out of it so
        # that callers get ordinary tensors.
        with torch.inference_mode():
            result = _CachedSampler(self, n, c).run(draws, return_params)
        return tuple(t.clone() for t in result) if return_params else result.clone()


@contextlib.contextmanager
def _threads(count: int):
    """Run a block on `count` CPU threads, restoring the thread count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _CachedSampler:
    """State of one cached sampling run: per-layer input caches and per-row biases.

    Buffers (per layer l, kernel k_l, input features f_l, p = channels), all channels-last:
      vbuf[l]  (n, k_l//2 + 1, W + 2 (k_l//2), f_l)  the layer's vertical input on the rows
               its kernel covers, the newest last, zero-padded exactly as `GatedLayer.forward`
               pads it (zeros above row 0); each new row shifts the others up (`_push_row`),
               so the cache is a few rows, not the image (35 MB of fresh memory per call for
               16 MNIST images, whose page faults cost about 8 ms, measured);
      hbuf[l]  (n, W + k_l//2, f_l)  the layer's horizontal input on the current row, so
               that a pixel's window is one contiguous (taps, features) block;
      hbias[l] (n, W, 2p)  horizontal pre-activation terms fixed for the row: conv bias +
               link from the row above + conditioning.
    Convolutions become matmuls on these windows (one per layer and row for the vertical
    stack, one per layer and pixel for the horizontal one). The per-pixel step writes into
    preallocated buffers through views made once, and uses exact rewrites to need few and
    cheap kernels: tanh(a) = 1 - 2 sigmoid(-2 a), so with pre-activations computed as
    [-2 a, b] (the a half of the weights scaled by -2, exact) one in-place sigmoid serves both
    gate halves (sigmoid is about 4 times faster than tanh on this CPU, measured) and one
    addcmul gives the gate, sigmoid(b) - 2 sigmoid(b) sigmoid(-2 a); a constant 1 appended to
    the gate output carries those convs' biases inside their matmuls; and the skip 1x1 convs
    of all layers are one matmul on all layers' gate buffers side by side. The link from the
    vertical stack is written straight into the next row's hbias by one matmul per layer.

    Threads: the per-pixel matmuls (n x 128 by 128 x 128) are too small to share, so the
    horizontal stack runs on one thread; the vertical stack's per-row matmuls (n W x 384 by
    384 x 128) are large enough to split across the caller's threads.
    """

    def __init__(self, model: PixelCNNDecoder, n: int, c: Tensor | None) -> None:
        self.m, self.n = model, n
        ref = model.head2.weight
        self.device, self.dtype = ref.device, ref.dtype
        self.C, self.H, self.W = model.image_shape
        p = self.p = model.config.channels
        layers = model.layers
        self.L = len(layers)
        self.kind = model.config.conditioning
        self.bias, self.cmap = model._conditioning(c)
        new = lambda *shape: torch.zeros(*shape, device=self.device, dtype=self.dtype)  # noqa: E731
        # Pre-activations are computed as [-2 a, b]; scaling by powers of two is exact.
        self.pre_scale = torch.cat([torch.full((p,), -2.0), torch.ones(p)]).to(self.device, self.dtype)
        width = p + 1  # one layer's gate buffer: [gate, 1]
        self.gates = new(n, self.L * width)
        self.gates[:, width - 1 :: width] = 1.0

        def after_gate(conv, part: slice) -> Tensor:
            """Part of a 1x1 conv on the gate output, as a matrix acting on [gate, 1]."""
            w = conv.masked_weight()[part, :, 0, 0].t()
            return torch.cat([w, conv.bias[part][None]]).contiguous()

        self.vbuf, self.vmat, self.linkmat, self.hbuf, self.hbias, self.hmat = [], [], [], [], [], []
        self.pre, self.gate_out, self.gate_in, self.res = [], [], [], []
        for i, layer in enumerate(layers):
            f_in, k = layer.v_conv.in_channels, layer.kernel
            self.vbuf.append(new(n, layer.v_rows, self.W + 2 * (k // 2), f_in))
            # The vertical stack uses the same rewrite as the horizontal one; the link undoes
            # the scaling of a.
            self.vmat.append((rearrange(layer.v_conv.weight, "o f a b -> (a b f) o") * self.pre_scale).contiguous())
            self.linkmat.append((layer.link.weight[:, :, 0, 0].t() / self.pre_scale[:, None] * self.pre_scale).contiguous())
            self.hbuf.append(new(n, self.W + layer.h_cols - 1, f_in))
            self.hbias.append(new(n, self.W, 2 * p))
            # (2p, f, 1, t) -> (t f, 2p): one matmul with the flattened (taps, features) window.
            self.hmat.append((rearrange(layer.h_conv.masked_weight(), "o f 1 t -> (t f) o") * self.pre_scale).contiguous())
            g = self.gates[:, i * width : (i + 1) * width]
            self.gate_in.append(g)
            self.gate_out.append(g[:, :p])
            self.pre.append(new(n, 2 * p))
            self.res.append(after_gate(layer.out, slice(0, p)))
        self.skipmat = torch.cat([after_gate(layer.out, slice(p, 2 * p)) for layer in layers]).contiguous()
        self.skip_sum = new(n, p)
        self.hidden = new(n, p)
        self.params = new(n, self.C * model.n_params)
        self.head1 = (model.head1.bias, model.head1.masked_weight()[:, :, 0, 0].t().contiguous())
        self.head2 = (model.head2.bias, model.head2.masked_weight()[:, :, 0, 0].t().contiguous())
        if self.kind == "location_dependent":
            self.projmat = [(proj.bias, proj.weight[:, :, 0, 0].t().contiguous()) for proj in model.cond_proj]
            self._rows: dict[int, tuple[list[Tensor], list[Tensor]]] = {}  # the last row's terms, asked for again
        else:
            # Row-independent terms, fixed for the whole run: (n W, 2p) per layer.
            self.vconst = [self._fixed(layer.v_conv.bias, i, 0) * self.pre_scale for i, layer in enumerate(layers)]
            self.hconst = [self._fixed(layer.h_conv.bias + layer.link.bias, i, 1) * self.pre_scale for i, layer in enumerate(layers)]
            self.hconst0 = [self._fixed(layer.h_conv.bias, i, 1) * self.pre_scale for i, layer in enumerate(layers)]
        # Pixel j's work per layer, as argument tuples made once (views into the buffers):
        # (row bias, window, weights, pre-activation and its halves, gate output, gate with its
        # 1, residual weights, this layer's input slot, next layer's input slot or None).
        self.plan = []
        for j in range(self.W):
            steps = []
            for i, layer in enumerate(layers):
                window = self.hbuf[i][:, j : j + layer.h_cols].reshape(n, -1)
                nxt = self.hbuf[i + 1][:, j + layers[i + 1].h_cols - 1] if i + 1 < self.L else None
                here = None if layer.first else self.hbuf[i][:, j + layer.h_cols - 1]
                pre = self.pre[i]
                steps.append(
                    (
                        self.hbias[i][:, j],
                        window,
                        self.hmat[i],
                        pre,
                        pre[:, :p],
                        pre[:, p:],
                        self.gate_out[i],
                        self.gate_in[i],
                        self.res[i],
                        here,
                        nxt,
                    )
                )
            self.plan.append(steps)

    def _fixed(self, bias: Tensor, i: int, half: int) -> Tensor:
        """bias + layer i's conditioning of stack `half` (0 vertical, 1 horizontal), as (n W, 2p)."""
        b = bias.expand(self.n, self.W, -1)
        if self.bias is not None:
            b = b + self.bias[:, i, None, :].chunk(2, dim=-1)[half]
        return b.reshape(self.n * self.W, -1).contiguous()

    def _row_const(self, row: int, link: bool = True) -> tuple[list[Tensor], list[Tensor]]:
        """Each layer's vertical and horizontal constant terms on one row, (n W, 2p) each;
        the horizontal ones include the link's bias unless `link` is false (row 0 has no link)."""
        if self.kind != "location_dependent":
            return self.vconst, self.hconst if link else self.hconst0
        if link and row in self._rows:  # each row is asked for twice: vertical terms, then horizontal
            return self._rows.pop(row)
        vs, hs = [], []
        for i, layer in enumerate(self.m.layers):
            b, w = self.projmat[i]
            cond_v, cond_h = torch.addmm(b, rearrange(self.cmap[:, :, row], "n f w -> (n w) f"), w).chunk(2, dim=-1)
            vs.append((cond_v + layer.v_conv.bias) * self.pre_scale)
            hs.append((cond_h + layer.h_conv.bias + layer.link.bias if link else cond_h + layer.h_conv.bias) * self.pre_scale)
        if link:
            self._rows = {row: (vs, hs)}
        return vs, hs

    def _vertical_row(self, row: int) -> None:
        """Run the vertical stack once on finished row `row`: the next layers' vertical caches
        and each layer's horizontal constant terms for row + 1 (link included)."""
        n, W = self.n, self.W
        vconst, hconst = self._row_const(row)[0], self._row_const(row + 1)[1]  # hbias is for row + 1
        for i, layer in enumerate(self.m.layers):
            rows = self.vbuf[i]  # (n, k//2 + 1, W + pad, f): rows row - k//2 .. row
            windows = rearrange(rows.unfold(2, layer.kernel, 1), "n a w f b -> (n w) (a b f)")
            v_pre = torch.addmm(vconst[i], windows, self.vmat[i])  # [-2 a, b]
            torch.addmm(hconst[i], v_pre, self.linkmat[i], out=self.hbias[i].view(n * W, -1))
            if i + 1 < self.L:
                nxt = self.m.layers[i + 1]
                half = nxt.kernel // 2
                s = v_pre.sigmoid_().view(n, W, -1)
                s_b = s[..., self.p :]
                torch.addcmul(s_b, s_b, s[..., : self.p], value=-2.0, out=self._push_row(i + 1)[:, half : half + W])  # gate

    def _push_row(self, i: int) -> Tensor:
        """Shift layer i's vertical cache up by one row; return the last row (n, W + pad, f),
        now free for the newest row (its padding columns stay zero)."""
        buf = self.vbuf[i]
        for a in range(buf.shape[1] - 1):
            buf[:, a].copy_(buf[:, a + 1])
        return buf[:, -1]

    def _pixel(self, j: int) -> Tensor:
        """Horizontal stack + head at column j of the current row: parameters (n, C K)."""
        for bias, window, hmat, pre, pre_a, pre_b, gate_out, gate_in, res, here, nxt in self.plan[j]:
            torch.addmm(bias, window, hmat, out=pre)  # [-2 a, b]
            pre.sigmoid_()
            torch.addcmul(pre_b, pre_b, pre_a, value=-2.0, out=gate_out)  # sigmoid(b) (1 - 2 sigmoid(-2 a)) = gate
            if nxt is not None:
                if here is None:
                    torch.mm(gate_in, res, out=nxt)
                else:
                    torch.addmm(here, gate_in, res, out=nxt)  # residual connection
        skip = torch.mm(self.gates, self.skipmat, out=self.skip_sum)
        torch.addmm(self.head1[0], skip.relu_(), self.head1[1], out=self.hidden)
        return torch.addmm(self.head2[0], self.hidden.relu_(), self.head2[1], out=self.params)

    def run(self, draws: SubpixelDraws, return_params: bool):
        m, n, C = self.m, self.n, self.C
        x = torch.zeros(n, C, self.H, self.W, device=self.device, dtype=self.dtype)
        used = torch.zeros(n, C, m.n_params, self.H, self.W, device=self.device, dtype=self.dtype) if return_params else None
        first = m.layers[0]
        h_off, half = first.h_cols - 1, first.kernel // 2
        minus_one = torch.tensor(-1.0, device=self.device, dtype=self.dtype)
        by_channel = self.params.view(n, C, m.n_params)
        inputs = [[self.hbuf[0][:, h_off + j, ch] for ch in range(C)] for j in range(self.W)]
        value = torch.zeros(n, device=self.device, dtype=self.dtype)
        threads = torch.get_num_threads()
        # Row 0 has no row above: its horizontal terms are the constants alone.
        for i, const in enumerate(self._row_const(0, link=False)[1]):
            self.hbias[i].view(n * self.W, -1).copy_(const)
        for row in range(self.H):
            if self.kind == "input_concat":
                self.hbuf[0][:, h_off:, C:] = rearrange(self.cmap[:, :, row], "n f w -> n w f")
            x_row = x[:, :, row]
            with _threads(1):
                for j in range(self.W):
                    for ch in range(C):
                        self._pixel(j)
                        params = by_channel[:, ch]
                        if used is not None:
                            used[:, ch, :, row, j] = params
                        draws.draw(params, row, j, ch, out=value)
                        x_row[:, ch, j] = value
                        torch.add(minus_one, value, alpha=2, out=inputs[j][ch])  # the input 2x - 1
            if row + 1 < self.H:
                # The row is complete: cache it for the vertical stack and run that stack once.
                newest = self._push_row(0)[:, half : half + self.W]
                newest[..., :C] = rearrange(2 * x_row - 1, "n c w -> n w c")
                if self.kind == "input_concat":
                    newest[..., C:] = rearrange(self.cmap[:, :, row], "n f w -> n w f")
                with _threads(threads):
                    self._vertical_row(row)
        return (x, used) if return_params else x


@hookimpl
def gentk_register_decoders(register):
    register("pixelcnn", PixelCNNDecoder)
