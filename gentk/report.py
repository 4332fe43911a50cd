"""Side-by-side reports of a comparison study (markdown and HTML), with the paper's numbers.

A report is built once as a list of blocks (headings, paragraphs, tables, image rows) and
rendered twice, as ``report.md`` and ``report.html``, so the two never disagree. Every
metric is shown as mean +- sample standard deviation over seeds, with the published number
beside it where the paper has one (`PAPER`): Table 1 of Makhzani & Frey 2017, "PixelGAN
Autoencoders" (test error %, mean +- std), and the binarized-MNIST NLL baselines
(docs/results.md). Learning curves need matplotlib (the ``plots`` extra); without it the report
says so instead of drawing them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from gentk.metrics import mean_std


@attrs.frozen
class PaperNumber:
    """A published result: value (and std over runs, when given) and where it comes from."""

    value: float
    std: float | None
    source: str

    def text(self) -> str:
        return f"{self.value:g}" + (f" ± {self.std:g}" if self.std is not None else "")


_T1 = "Makhzani & Frey 2017, Table 1"
_PIXELGAN_T1 = {
    "pixelgan_mnist_unsup": ("cluster_error_aae", 5.27, 1.81, f"{_T1}, PixelGAN AE, MNIST unsupervised (30 clusters)"),
    "pixelgan_mnist_20": ("semisup_error", 12.08, 5.50, f"{_T1}, PixelGAN AE, MNIST 20 labels"),
    "pixelgan_mnist_50": ("semisup_error", 1.16, 0.17, f"{_T1}, PixelGAN AE, MNIST 50 labels"),
    "pixelgan_mnist_100": ("semisup_error", 1.08, 0.15, f"{_T1}, PixelGAN AE, MNIST 100 labels"),
    "pixelgan_svhn_500": ("semisup_error", 10.47, 1.80, f"{_T1}, PixelGAN AE, SVHN 500 labels"),
    "pixelgan_svhn_1000": ("semisup_error", 6.96, 0.55, f"{_T1}, PixelGAN AE, SVHN 1000 labels"),
    "pixelgan_norb_1000": ("semisup_error", 8.90, 1.0, f"{_T1}, PixelGAN AE, NORB 1000 labels"),
}

# (recipe name, metric key) -> the published number. A recipe named NAME_cpu (a CPU budget
# variant in recipes/paper/) is shown beside the full-scale number of NAME.
PAPER: dict[tuple[str, str], PaperNumber] = {
    **{(recipe, key): PaperNumber(v, s, src) for recipe, (key, v, s, src) in _PIXELGAN_T1.items()},
    ("pixelgan_categorical", "cluster_error_aae"): PaperNumber(5.27, 1.81, f"{_T1}, PixelGAN AE, MNIST unsupervised (30 clusters)"),
    ("pixelgan_semisup", "semisup_error"): PaperNumber(1.08, 0.15, f"{_T1}, PixelGAN AE, MNIST 100 labels"),
    ("aae_semisup", "semisup_error"): PaperNumber(1.90, 0.10, f"{_T1}, AAE, MNIST 100 labels (Makhzani et al. 2016, Table 2)"),
    ("aae_mnist_100", "semisup_error"): PaperNumber(1.90, 0.10, f"{_T1}, AAE, MNIST 100 labels (Makhzani et al. 2016, Table 2)"),
    ("aae_mnist_unsup", "cluster_error_aae"): PaperNumber(4.10, 1.13, f"{_T1}, AAE, MNIST unsupervised, 30 clusters (Makhzani et al. 2016, Table 3)"),
    ("pixelcnn", "nll"): PaperNumber(81.30, None, "PixelCNN on binarized MNIST, test NLL in nats (van den Oord et al. 2016)"),
    ("pixelvae", "iwae_nll"): PaperNumber(79.66, None, "PixelVAE on binarized MNIST, test NLL in nats (Gulrajani et al. 2017)"),
    ("vae", "iwae_nll"): PaperNumber(86.76, None, "VAE, one stochastic layer, test NLL in nats, k = 5000 (Burda et al. 2016, Table 1)"),
}

# Table 1's AAE row, for docs/results.md and readers of this module (the MNIST columns are
# reproduced by recipes/paper/aae_mnist_100.toml and aae_mnist_unsup.toml; SVHN is not).
AAE_TABLE1 = {"mnist_unsup_30": (4.10, 1.13), "mnist_100": (1.90, 0.10), "svhn_1000": (17.70, 0.30)}


def paper_number(recipe: str, key: str) -> PaperNumber | None:
    """The published number for a metric of a recipe, if there is one (see `PAPER`)."""
    return PAPER.get((recipe, key)) or PAPER.get((recipe.removesuffix("_cpu"), key))


# --------------------------------------------------------------------------- formatting


def format_value(mean: float, std: float | None = None) -> str:
    """A compact number: 4 significant digits, with '± std' when given."""

    def fmt(v: float) -> str:
        return f"{v:.4g}" if math.isfinite(v) else str(v)

    if std is not None and abs(std) < 1e-9 * max(1.0, abs(mean)):
        std = 0.0  # equal values give a std of rounding noise (1e-14): show 0
    return fmt(mean) + (f" ± {fmt(std)}" if std is not None else "")


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with aligned columns (for the terminal)."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- blocks and renderers


@attrs.frozen
class Heading:
    text: str
    level: int = 2


@attrs.frozen
class Paragraph:
    text: str  # plain text; `code` spans are kept as such in both renderings


@attrs.frozen
class Table:
    header: list[str]
    rows: list[list[str]]


@attrs.frozen
class Images:
    items: list[tuple[str, str]]  # (caption, path relative to the report)
    kind: str = "plot"  # "plot": a figure shown at the page's width; "grid": a sample grid of small images, enlarged with sharp pixels


Block = Heading | Paragraph | Table | Images


def render_markdown(blocks: Sequence[Block]) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, Paragraph):
            out.append(b.text)
        elif isinstance(b, Table):
            esc = [[c.replace("|", "\\|") for c in row] for row in [b.header, *b.rows]]
            out.append("\n".join(["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(b.header)] + ["| " + " | ".join(r) + " |" for r in esc[1:]]))
        elif isinstance(b, Images):
            out.append(
                "| "
                + " | ".join(c for c, _ in b.items)
                + " |\n|"
                + "---|" * len(b.items)
                + "\n| "
                + " | ".join(f"![{c}]({p})" for c, p in b.items)
                + " |"
            )
    return "\n\n".join(out) + "\n"


def _inline_html(text: str) -> str:
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(blocks: Sequence[Block], title: str) -> str:
    body = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{_inline_html(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            body.append(f"<p>{_inline_html(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline_html(c)}</th>" for c in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Images):
            # each image links to itself: a click opens it at full size
            cells = "".join(
                f'<figure><a href="{html.escape(p)}"><img src="{html.escape(p)}" '
                f'alt="{html.escape(c)}"></a><figcaption>{_inline_html(c)}</figcaption></figure>'
                for c, p in b.items
            )
            body.append(f'<div class="images {b.kind}">{cells}</div>')
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "th{background:#f4f4f4}.images{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}"
        ".plot img{max-width:100%;height:auto}"  # plots at the page's width, smoothly scaled
        ".grid img{image-rendering:pixelated;max-width:100%;height:auto}"  # saved 3x enlarged: shown as saved, sharp when narrowed
        "figcaption{font-size:90%;text-align:center}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{style}</style></head>\n<body>\n'
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# --------------------------------------------------------------------------- the study report


def metric_rows(results: Sequence[Any], recipes: Sequence[str]) -> list[list[str]]:
    """One row per metric key: mean ± std over seeds per recipe, the paper's number beside it.

    results: objects with ``recipe``, ``metrics`` ({key: float}, keys without the
    ``eval/<split>/`` prefix), ``wall_s``, ``steps_per_s`` and ``steps``.
    """
    keys: list[str] = []
    for r in results:
        keys += [k for k in r.metrics if k not in keys]
    rows = []
    for key in keys:
        row = [key]
        for recipe in recipes:
            values = [r.metrics[key] for r in results if r.recipe == recipe and key in r.metrics]
            cell = format_value(*mean_std(values)) if values else "—"
            paper = paper_number(recipe, key)
            if paper is not None:
                cell += f" (paper {paper.text()})"
            row.append(cell)
        rows.append(row)
    for label, attr in (("wall time (s)", "wall_s"), ("steps/s", "steps_per_s"), ("steps", "steps")):
        row = [label]
        for recipe in recipes:
            values = [getattr(r, attr) for r in results if r.recipe == recipe and getattr(r, attr) is not None]
            row.append(format_value(*mean_std(values)) if values else "—")
        rows.append(row)
    return rows


# The clocks a curve can be drawn against besides the step: the x axis's name -> the logged
# series of each run that gives it (`gentk.train.RunClock`), the axis label and the title's ending.
CLOCKS = {
    "minutes": ("time/minutes", "minutes of wall time (each run's own clock)", " against wall time"),
    "cpu_minutes": ("time/cpu_minutes", "CPU minutes (each run's training process, all its threads)", " against CPU time"),
}


def on_minutes(metrics: dict[str, Any], series: Any, clock: str = "minutes") -> Any | None:
    """A series (step, value) with its steps replaced by the run's minutes at those steps.

    clock: "minutes" of wall time or "cpu_minutes" of the training process's CPU time
    (`CLOCKS`), both logged with every scalar row and evaluation and counted over resumes,
    interpolated between logged steps; None for a run that logged no such clock (made before
    it existed). CPU minutes compare runs that shared the cores with other jobs, which wall
    minutes do not.
    """
    import numpy as np

    logged = metrics.get(CLOCKS[clock][0])
    if logged is None or not len(logged):
        return None
    out = np.empty(len(series), dtype=[("step", "f8"), ("value", "f8")])  # minutes are fractional
    out["step"] = np.interp(series["step"], logged["step"], logged["value"])
    out["value"] = series["value"]
    return out


# Held-out headline metrics in the order the report shows them (the evaluated split's
# prefix, eval/<split>/, is left out): the paper's errors, then likelihoods or bounds, then
# how well the discriminator is fooled. A run logs only those its recipe's metrics compute.
HEADLINE = (
    "semisup_error",
    "cluster_error_aae",
    "cluster_error_majority",
    "cluster_error_hungarian",
    "nll",
    "iwae_nll",
    "elbo_nll",
    "recon_nll",
    "d_fake",
)


def headline_series(series: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The held-out headline metrics (`HEADLINE`) that any run of `series` logged, in `HEADLINE`'s order.

    ``d_fake`` is a discriminator's mean output on encoded codes, one per adversarial latent
    (``eval/<split>/discriminator.<latent>/d_fake``); the others are metric keys.
    """

    def headline(name: str) -> bool:  # eval/<split>/<key>, or eval/<split>/discriminator.<latent>/d_fake (not a step's nll part)
        parts = name.split("/")
        return parts[0] == "eval" and (
            (len(parts) == 3 and parts[2] in HEADLINE) or (len(parts) == 4 and parts[2].startswith("discriminator.") and parts[3] == "d_fake")
        )

    logged = {name for runs in series.values() for metrics in runs for name in metrics if headline(name)}
    return sorted(logged, key=lambda n: (HEADLINE.index(n.rsplit("/", 1)[-1]), n))


def seed_band(runs: Sequence[dict[str, Any]], name: str, x: str = "step") -> tuple[Any, Any, Any, Any, int] | None:
    """One recipe's curve of `name` over its seeds: ``(x, mean, low, high, seeds)``, low and high the
    smallest and largest seed's value, at the steps every seed that logged `name` logged.

    x: "step", or a clock of `CLOCKS` ("minutes", "cpu_minutes"): each step at the seeds' mean
    minutes on that clock (`on_minutes`; seeds that logged no such clock are left out). None
    when no seed logged `name` (with the clock).
    """
    import numpy as np

    logged = [metrics for metrics in runs if name in metrics and len(metrics[name])]
    if x != "step":
        logged = [metrics for metrics in logged if on_minutes(metrics, metrics[name], x) is not None]
    if not logged:
        return None
    common = sorted(set.intersection(*(set(metrics[name]["step"].tolist()) for metrics in logged)))
    if not common:
        return None
    values, where = [], []
    for metrics in logged:
        curve = metrics[name][np.searchsorted(metrics[name]["step"], common)]  # a scalar is logged once per step
        values.append(curve["value"])
        where.append(curve["step"] if x == "step" else on_minutes(metrics, curve, x)["step"])
    values = np.stack(values)  # (seeds, steps)
    return np.mean(where, axis=0), values.mean(0), values.min(0), values.max(0), len(logged)


def axis_label(name: str) -> str:
    """The y-axis label of a logged scalar, with its unit."""
    last = name.rsplit("/", 1)[-1]
    if "error" in last:
        return "error, %"
    if last == "d_fake":
        return "D(encoded code): probability (0.5: fooled)"
    if last.endswith("_bpd"):
        return "bits per dimension"
    if last in ("nll", "iwae_nll", "elbo_nll", "recon_nll", "loss"):
        return "nats per image"
    return last


def plot_learning_curves(
    series: dict[str, list[dict[str, Any]]],
    path: Path,
    names: Sequence[str] = ("train/reconstruction/loss", "eval/validation/reconstruction/loss"),
    *,
    xs: Sequence[str] = ("step",),
) -> Path | None:
    """A grid of curves, a row per name in `names` and a column per x axis in `xs` (one x axis: the
    names side by side): a colour per recipe, its mean over seeds as a line and the band between
    its smallest and largest seed (`seed_band`).
    None without matplotlib, or when no run logged any of `names` (against minutes: with a clock).

    series: recipe -> list over seeds of {scalar name: array of (step, value)} (`gentk.rundir.read_metrics`).
    xs: "step", and/or clocks of `CLOCKS`: "minutes" of wall time, "cpu_minutes" of CPU time
    (`on_minutes`), which compare recipes at equal budget.
    """
    if any(x != "step" and x not in CLOCKS for x in xs):
        raise ValueError(f"xs holds 'step' and/or {' and/or '.join(map(repr, CLOCKS))}, not {list(xs)!r}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = [(name, x) for name in names for x in xs]
    columns = len(xs) if len(xs) > 1 else len(names)  # one x axis: the names side by side, as wide as the page
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = 0
    for ax, (name, x) in zip(axes.flat, panels):
        for i, (recipe, runs) in enumerate(series.items()):
            band = seed_band(runs, name, x)
            if band is None:
                continue
            where, mean, low, high, seeds = band
            color = colors[i % len(colors)]
            few = len(where) < 20  # a line through one or two points is invisible: mark them
            label = recipe + (f" (mean of {seeds} seeds, band: min to max)" if seeds > 1 else " (1 seed)")
            ax.plot(where, mean, color=color, lw=1.5, marker="o" if few else None, ms=4, label=label)
            if seeds > 1:
                ax.fill_between(where, low, high, color=color, alpha=0.2, lw=0)
            drawn += 1
        ax.set_title(name if x == "step" else name + CLOCKS[x][2])
        ax.set_xlabel("step" if x == "step" else CLOCKS[x][1])
        ax.set_ylabel(axis_label(name))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    if not drawn:
        plt.close(fig)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def study_blocks(
    meta: dict[str, Any],
    results: Sequence[Any],
    recipes: Sequence[str],
    *,
    curves: str | None,
    samples: dict[str, list[tuple[str, str]]],
    code_plots: list[tuple[str, str]],
    metric_curves: Sequence[tuple[str, str]] = (),
) -> list[Block]:
    """The report of a study as blocks (see `gentk.compare.compare` for `meta` and `results`)."""
    seeds = meta["seeds"]
    blocks: list[Block] = [
        Heading(f"Comparison: {meta['name']}", 1),
        Paragraph(f"Command: `{meta['command']}`"),
        Paragraph(
            f"Written {meta['time']} on {meta['machine']}. Seeds: {', '.join(map(str, seeds))}. "
            + (f"Profile of every recipe: `{meta['profile']}`. " if meta.get("profile") else "")
            + f"Overrides applied to every recipe: {', '.join(f'`{o}`' for o in meta['overrides']) or 'none'}."
            + "".join(f" For {r} only: `{o}`." for r, o in meta.get("overrides_for", []))
        ),
        Heading("Setup"),
        Table(
            ["recipe", "file", "data", "steps", "batch", "test examples", "runs"],
            [[s["name"], f"`{s['path']}`", s["data"], str(s["steps"]), str(s["batch_size"]), s["test_examples"], s["runs"]] for s in meta["setup"]],
        ),
    ]
    if meta.get("differences"):
        blocks.append(
            Paragraph(
                "Warning: the recipes do not share the same data and budget: "
                + "; ".join(meta["differences"])
                + ". Use --set to align them (e.g. `--set train.steps=N`) for a fair comparison."
            )
        )
    blocks += [
        Heading("Results"),
        Paragraph(
            f"Test split (as many examples as the setup table says), {meta['checkpoint']} checkpoint of each run; mean ± sample standard "
            f"deviation over {len(seeds)} seed(s) "
            "(± 0 for one seed). The paper's number, where it has one, is in parentheses; it was obtained at the paper's "
            "full scale, so a smaller budget is not expected to reach it. Errors are in %, likelihoods in nats per image "
            "(`_bpd`: bits per dimension). Metric definitions: docs/compare.md."
        ),
        Table(["metric", *recipes], metric_rows(results, recipes)),
        Heading("Learning curves"),
    ]
    if curves:
        blocks.append(
            Paragraph(
                "Each recipe's mean over its seeds as a line, and the band between its smallest and largest seed's value (one seed: "
                "the line alone), at the steps every seed logged. Against wall time, each step sits at the seeds' mean minutes of "
                "their own clocks, counted over resumes; runs that shared the cores ran slower than on an idle machine (the table "
                "of runs gives each run's load). Against CPU time (where the runs logged it), each step sits at the CPU minutes "
                "its training process had used, which the load of other jobs does not stretch: runs of one thread each compare "
                "there at equal compute. Click a plot to open it at full size."
            )
        )
        blocks.append(Images([("reconstruction loss (train, held-out) against steps", curves)]))
        for caption, path in metric_curves:
            blocks.append(Images([(f"{caption} against steps, minutes of wall time and (where logged) CPU minutes", path)]))
    else:
        blocks.append(
            Paragraph(
                'matplotlib is not installed, so this report has no learning curves: pip install "gentk[plots]" and run the same `gentk '
                "compare` again (finished runs are reused)."
            )
        )
    blocks.append(Heading("Samples"))
    if samples:
        blocks.append(
            Paragraph(
                "Each seed's samples from its latest weights, with beside them the mean images (the probability of 1, white, "
                "each pixel was drawn with, for a Bernoulli decoder), pixels enlarged 3 times. A model with a categorical latent "
                "has a row per category, ordered and labelled by its cluster's majority label on the validation images "
                "(the majority protocol of cluster_error), its category in parentheses; 'none': no validation image went to it. "
                "Click a grid to open it alone."
            )
        )
        for recipe, grids in samples.items():
            blocks += [Heading(recipe, 3), Images(grids, kind="grid")]
    else:
        blocks.append(Paragraph("No sample grids: the runs were made with eval.samples = 0."))
    if code_plots:
        blocks += [
            Heading("Code space"),
            Paragraph("Codes z ~ q(z|x) of test images coloured by label (top-2 PCA axes for codes of more than 2 dimensions)."),
            Images(code_plots),
        ]
    blocks += [
        Heading("Runs"),
        Paragraph(
            "Load: the machine's 1-minute load average (runnable processes) when the run started, and its mean and maximum over "
            "the run's logged steps, against the number of CPUs. A load above the CPU count means other jobs shared the cores, "
            "so that run's wall time and steps/s are slower than on an idle machine."
        ),
        Table(
            ["recipe", "seed", "run directory", "steps", "wall (s)", "steps/s", "load: start / mean / max (CPUs)", "reused"],
            [
                [
                    r.recipe,
                    str(r.seed),
                    f"`{r.run_dir}`",
                    str(r.steps),
                    format_value(r.wall_s),
                    format_value(r.steps_per_s) if r.steps_per_s is not None else "—",
                    load_text(r.load),
                    "yes" if r.reused else "no",
                ]
                for r in results
            ],
        ),
    ]
    return blocks


def load_text(load: dict[str, Any] | None) -> str:
    """'0.52 / 2.1 / 3.4 (2)': a run's load at its start, mean and max over its run, and the CPU count; '—' when unrecorded."""
    if load is None:
        return "—"
    parts = [load.get(k) for k in ("start", "mean", "max")]
    text = " / ".join("—" if v is None else f"{v:.2f}" for v in parts)
    return text + (f" ({load['cpus']})" if load.get("cpus") else "")


def write_report(study_dir: Path, blocks: Sequence[Block], title: str) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into `study_dir`."""
    md, page = study_dir / "report.md", study_dir / "report.html"
    md.write_text(render_markdown(blocks))
    page.write_text(render_html(blocks, title))
    return md, page
