"""Figures: training curves, latent-space maps, clusters and steering curves.

Every function draws on a fresh `matplotlib.figure.Figure` (never pyplot's
global list of figures, so nothing leaks, nothing needs closing and no GUI
backend is touched), writes it with `save_figure` and returns it, so a
notebook shows it inline.

Output files: `save_figure(fig, path)` always writes a PNG and a PDF side by
side. When `path` ends in `.png` or `.pdf` that file is written and the
other format goes next to it with the other suffix; when it ends in another
format matplotlib can write (`.svg`, `.jpg`, ...) that file is written as
well as the PNG and PDF; any other suffix (`run.v2`) is kept as part of the
name (`run.v2.png`, `run.v2.pdf`). Parent folders are created. The files
carry no date, so the same figure always gives the same bytes.

Latent maps place `[n, d]` latent vectors in a plane with `project_2d`
(PCA or t-SNE). Tag means, a user's latent vector and its steered version
are placed in the same plane: PCA fits the plane on the plotted users or
samples and projects everything else onto it; t-SNE has no such map, so
every point is embedded in one joint fit.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from songrec_jax.errors import InputError, UnknownTagError
from songrec_jax.rng import numpy_rng

log = logging.getLogger(__name__)

PathLike = str | Path

DPI = 150
LEGEND_INSIDE_MAX = 8  # Legends with more entries go outside the axes.
LEGEND_MAX = 40  # Further entries are summarised as "+ N more".
UNTAGGED_COLOR = "0.7"
REST_COLOR = "0.92"  # The share of a cluster outside its top tags.
TSNE_EXACT_MAX = 500  # Exact t-SNE up to this many points, Barnes-Hut above.
MARKERS = ("o", "s", "^", "D", "v", "P")  # Cycled when colours run out.

# Artist styles shared by the latent maps.
POINTS = {"linewidths": 0, "alpha": 0.6}
MEAN_MARKER = {"s": 140, "edgecolors": "black", "linewidths": 1.2, "zorder": 3}
MEAN_LABEL = {"xytext": (5, 5), "textcoords": "offset points", "fontsize": "small"}
STAR = {"marker": "*", "s": 320, "edgecolors": "black", "linewidths": 1.0, "zorder": 5}
ARROW = {"arrowstyle": "-|>", "color": "black", "lw": 1.5, "shrinkA": 8, "shrinkB": 8}


# --- Files, colours, legends -------------------------------------------------


def save_figure(fig: Figure, path: PathLike) -> list[Path]:
    """Writes `fig` as PNG and PDF (see the module docstring for the names).

    Args:
      fig: the figure.
      path: the file to write; its suffix picks the names as described above.

    Returns:
      The paths written, PNG first.
    """
    path = Path(path)
    fmt = path.suffix.lower()[1:]
    if fmt not in fig.canvas.get_supported_filetypes():
        path, fmt = path.with_name(path.name + ".png"), "png"
    png = path if fmt == "png" else path.with_suffix(".png")
    pdf = path if fmt == "pdf" else path.with_suffix(".pdf")
    targets = [png, pdf] + ([] if fmt in ("png", "pdf") else [path])
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        fmt = target.suffix.lower()[1:]
        metadata = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}.get(fmt)
        fig.savefig(target, dpi=DPI, bbox_inches="tight", metadata=metadata)
    log.info("wrote %s", ", ".join(str(t) for t in targets))
    return targets


def class_colors(n: int) -> list[tuple[float, ...]]:
    """`n` distinct qualitative colours: tab10, tab20, then tab20/b/c cycled."""
    if n <= 10:
        return list(colormaps["tab10"].colors[:n])
    if n <= 20:
        return list(colormaps["tab20"].colors[:n])
    pool = [c for name in ("tab20", "tab20b", "tab20c") for c in colormaps[name].colors]
    return [pool[i % len(pool)] for i in range(n)]


def _class_marker(i: int, n: int) -> str:
    """The marker of class `i` of `n`: changes each time the colours repeat."""
    return MARKERS[(i // 60) % len(MARKERS)] if n > 60 else "o"


def _add_legend(ax: Axes, *, outside: bool = False, **kwargs) -> None:
    """The axes' legend: inside when short, outside on the right when long."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    if len(handles) > LEGEND_MAX:
        more = len(handles) - LEGEND_MAX + 1
        handles = handles[: LEGEND_MAX - 1] + [Line2D([], [], linestyle="none")]
        labels = labels[: LEGEND_MAX - 1] + [f"+ {more} more"]
    if outside or len(handles) > LEGEND_INSIDE_MAX:
        kwargs.update(
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0,
            ncol=math.ceil(len(handles) / 20),
        )
    legend = ax.legend(handles, labels, fontsize="small", **kwargs)
    for handle in legend.legend_handles:  # Scatter markers at one legible size.
        if isinstance(handle, PathCollection):
            handle.set_sizes([40.0])
            handle.set_alpha(1.0)


# --- Projection to the plane --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Projection:
    """How `project_2d` placed `[n, d]` points in the plane.

    A linear projection (`method` "pca" or "identity") maps any further
    point with `transform`. A t-SNE embedding has no such map: embed extra
    points jointly instead (stack them under the others before calling
    `project_2d`, and split the coordinates afterwards).

    Attributes:
      method: "pca"; "identity" (d <= 2: the coordinates are kept, and a
        single coordinate is padded with a zero second one); or "tsne".
      mean: float64 [d], subtracted before projecting (linear methods only).
      components: float64 [2, d], the unit axes of the plane as rows
        (linear methods only).
      explained_variance_ratio: float64 [2], the share of the fitted points'
        variance along each axis (PCA only).
    """

    method: str
    mean: np.ndarray | None = None
    components: np.ndarray | None = None
    explained_variance_ratio: np.ndarray | None = None

    def transform(self, points: Any) -> np.ndarray:
        """Projects float [n, d] (or one [d]) points to float64 [n, 2] (or [2])."""
        if self.components is None:
            raise InputError(
                f"a {self.method!r} embedding cannot place new points; embed them "
                "jointly: stack them with the others before calling project_2d"
            )
        x = np.asarray(points, dtype=np.float64)
        single = x.ndim == 1
        x = _as_points(x[None] if single else x, "points", dim=self.mean.shape[0])
        coords = (x - self.mean) @ self.components.T
        return coords[0] if single else coords

    @property
    def axis_labels(self) -> tuple[str, str]:
        """Labels of the plane's two axes."""
        if self.method == "pca":
            ratio = self.explained_variance_ratio
            return tuple(
                f"PC {i + 1} ({100 * ratio[i]:.0f}% of variance)" for i in range(2)
            )
        if self.method == "tsne":
            return "t-SNE 1", "t-SNE 2"
        second = "z[1]" if self.components.shape[1] > 1 else ""  # d == 1: padding.
        return "z[0]", second


def _as_points(
    points: Any, name: str, *, dim: int | None = None, allow_nan: bool = False
) -> np.ndarray:
    """`points` as float64 [n, d], checked."""
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 1:
        raise InputError(f"{name} has shape {x.shape}; expected [n, d] with d >= 1")
    if dim is not None and x.shape[1] != dim:
        raise InputError(f"{name} has {x.shape[1]} dimensions; expected {dim}")
    if not allow_nan and not np.isfinite(x).all():
        raise InputError(
            f"{name} holds {np.sum(~np.isfinite(x))} non-finite values; "
            "expected finite latent vectors"
        )
    return x


def _fit_pca(x: np.ndarray) -> Projection:
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = min(2, vt.shape[0])
    components = np.zeros((2, x.shape[1]))
    components[:k] = vt[:k]
    # Sign convention: the largest-magnitude loading of each axis is positive.
    largest = components[np.arange(2), np.argmax(np.abs(components), axis=1)]
    components *= np.where(largest < 0, -1.0, 1.0)[:, None]
    variance = s**2
    ratio = np.zeros(2)
    if variance.sum() > 0:
        ratio[:k] = variance[:k] / variance.sum()
    return Projection("pca", mean, components, ratio)


def _tsne(x: np.ndarray, *, key: Any, perplexity: float, max_iter: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    n = x.shape[0]
    if key is None:
        raise InputError("method='tsne' needs a key (a JAX key or an integer seed)")
    if n < 3:
        raise InputError(f"t-SNE needs at least 3 points, got {n}; use method='pca'")
    # The customary bound (n - 1) / 3 keeps 3 * perplexity neighbours available.
    perplexity = min(float(perplexity), max((n - 1) / 3, 1.0))
    seed = int(numpy_rng(key).integers(2**31 - 1))
    tsne = TSNE(
        n_components=2,
        method="exact" if n <= TSNE_EXACT_MAX else "barnes_hut",
        perplexity=perplexity,
        init="pca",
        learning_rate="auto",
        random_state=seed,
        max_iter=max_iter,
    )
    return tsne.fit_transform(x).astype(np.float64)


def project_2d(
    points: Any,
    *,
    method: str = "pca",
    key: Any = None,
    fit_on: Any = None,
    perplexity: float = 30.0,
    max_iter: int = 1000,
) -> tuple[np.ndarray, Projection]:
    """Places latent vectors in a plane for plotting.

    PCA centres the points and projects them on their top two principal
    axes, computed with a NumPy SVD; each axis is signed so that its
    largest-magnitude loading is positive, so the result is deterministic.
    t-SNE (van der Maaten and Hinton, 2008) uses `sklearn.manifold.TSNE`
    with PCA initialisation and a seed drawn from `key`; its perplexity is
    clipped to (n - 1) / 3 for small inputs. Up to `TSNE_EXACT_MAX` points
    it computes exact gradients (faster there); above, the Barnes-Hut
    approximation. Points with d <= 2 are kept as they are (d == 1 gains a
    zero second coordinate) with either method.

    Args:
      points: float [n, d], finite.
      method: "pca" or "tsne".
      key: a JAX key or an integer seed; needed by t-SNE only.
      fit_on: float [m, d], PCA only: the points whose principal axes span
        the plane (default: `points`). t-SNE has no out-of-sample map:
        stack every point to show into `points` instead.
      perplexity: the t-SNE perplexity before clipping.
      max_iter: the number of t-SNE iterations (at least 250).

    Returns:
      `(coords, projection)`: float64 [n, 2] coordinates of `points`, and the
      `Projection`, whose `transform` places further points in the same
      plane (linear methods only).
    """
    if method not in ("pca", "tsne"):
        raise InputError(f"method={method!r}; expected 'pca' or 'tsne'")
    x = _as_points(points, "points")
    d = x.shape[1]
    if fit_on is not None and method == "tsne":
        raise InputError(
            "fit_on works with method='pca' only; t-SNE embeds extra "
            "points jointly: stack them into `points`"
        )
    fit = x if fit_on is None else _as_points(fit_on, "fit_on", dim=d)
    if d <= 2:
        projection = Projection("identity", np.zeros(d), np.eye(2, d))
    elif method == "pca":
        if fit.shape[0] == 0:
            raise InputError("PCA needs at least one point to fit on, got none")
        projection = _fit_pca(fit)
    else:
        return _tsne(x, key=key, perplexity=perplexity, max_iter=max_iter), Projection(
            "tsne"
        )
    return projection.transform(x), projection


def _project_groups(
    groups: list[np.ndarray], *, method: str, key: Any
) -> tuple[list[np.ndarray], Projection]:
    """Coordinates of each group; PCA fits on `groups[0]`, t-SNE on all jointly."""
    stacked = np.concatenate(groups)
    fit_on = groups[0] if method == "pca" else None
    coords, projection = project_2d(stacked, method=method, key=key, fit_on=fit_on)
    bounds = np.cumsum([len(g) for g in groups])[:-1]
    return np.split(coords, bounds), projection


def _optional_vector(v: Any, name: str, d: int) -> np.ndarray:
    """An optional latent vector [d] (or [1, d]) as float64 [0 or 1, d]."""
    if v is None:
        return np.zeros((0, d))
    return _as_points(np.reshape(np.asarray(v, np.float64), (1, -1)), name, dim=d)


def _draw_user(ax: Axes, user: np.ndarray, steered: np.ndarray) -> None:
    """A star at the user's vector, another at the steered one, an arrow between."""
    if len(user):
        ax.scatter(*user[0], color="gold", label="user", **STAR)
    if len(steered):
        ax.scatter(*steered[0], color="crimson", label="steered user", **STAR)
    if len(user) and len(steered):
        ax.annotate("", xy=steered[0], xytext=user[0], arrowprops=ARROW, zorder=4)


def _draw_means(
    ax: Axes,
    coords: np.ndarray,
    names: Sequence[str],
    colors: Sequence,
    markers: Sequence[str],
) -> None:
    """Tag means as large outlined markers, labelled with the tag's name."""
    markers = np.asarray(markers)
    for marker in dict.fromkeys(markers.tolist()):  # One collection per marker.
        same = markers == marker
        same_colors = [c for c, m in zip(colors, same, strict=True) if m]
        ax.scatter(*coords[same].T, marker=marker, c=same_colors, **MEAN_MARKER)
    for xy, name in zip(coords, names, strict=True):
        ax.annotate(name, xy, zorder=4, **MEAN_LABEL)


# --- Latent maps ----------------------------------------------------------------


def _tag_names(tag_names: Sequence[str], n_tags: int) -> list[str]:
    names = [str(name) for name in tag_names]
    if len(names) != n_tags:
        raise InputError(
            f"{len(names)} tag names for {n_tags} tags; expected one "
            "name per row of the means"
        )
    return names


def _choose_tags(
    valid: np.ndarray, names: list[str], *, classes, n_classes, rng: np.random.Generator
) -> np.ndarray:
    """Indices of the tags to draw, among those with a finite mean (`valid`)."""
    if classes is not None and n_classes is not None:
        raise InputError("give classes (tag names) or n_classes, not both")
    if classes is not None:
        index: dict[str, int] = {}
        for i, name in enumerate(names):
            index.setdefault(name, i)
        chosen = []
        for name in [classes] if isinstance(classes, str) else classes:
            if name not in index:
                known = ", ".join(repr(n) for n in names[:5])
                raise UnknownTagError(
                    f"unknown tag {name!r}; the {len(names)} known tags include {known}"
                )
            if not valid[index[name]]:
                raise UnknownTagError(
                    f"tag {name!r} has no latent mean or spread (no user "
                    f"carries it); {int(valid.sum())} tags have one"
                )
            if index[name] not in chosen:
                chosen.append(index[name])
        return np.asarray(chosen, dtype=np.int64)
    candidates = np.flatnonzero(valid)
    if n_classes is None:
        return candidates
    if n_classes < 1:
        raise InputError(f"n_classes={n_classes}; expected at least 1")
    if n_classes > len(candidates):
        log.info(
            "n_classes=%d but only %d tags have a latent mean; drawing all",
            n_classes,
            len(candidates),
        )
    size = min(n_classes, len(candidates))
    return np.sort(rng.choice(candidates, size=size, replace=False))


def plot_z_rand(
    means: Any,
    stds: Any,
    tag_names: Sequence[str],
    path: PathLike,
    *,
    key: Any,
    n_std: int = 10,
    n_classes: int | None = None,
    classes: Sequence[str] | None = None,
    z_user: Any = None,
    z_steered: Any = None,
    method: str = "pca",
    legend: bool = True,
    title: str = "",
) -> Figure:
    """Samples around each tag's latent mean, in a plane, coloured by tag.

    For each drawn tag `t`, `n_std` points `means[t] + stds[t] * eps` with
    `eps ~ N(0, I)` show where the tag's users lie. A tag's samples depend on
    `key` and the tag's index alone, not on which other tags are drawn. PCA
    fits the plane on the samples; tag means, the user and the steered user
    are projected onto it (t-SNE embeds all of them jointly).

    Args:
      means: float [T, d], each tag's mean latent vector; a row holding NaN
        (a tag no user carries) is skipped.
      stds: float [T, d], each tag's per-dimension standard deviation.
      tag_names: the T tag names.
      path: where to write the figure (PNG and PDF, see `save_figure`).
      key: a JAX key or an integer seed; picks the tags and the samples.
      n_std: samples per tag.
      n_classes: draw this many tags chosen at random (all when larger than
        the number of tags with a mean).
      classes: draw these tags, by name; an unknown name, or a tag without a
        mean, raises `UnknownTagError`. Default (and no `n_classes`): every
        tag with a mean.
      z_user: float [d], a user's latent vector, drawn as a gold star.
      z_steered: float [d], the user's steered vector, drawn as a red star
        with an arrow from `z_user`.
      method: "pca" or "tsne".
      legend: whether to draw the legend of tags (outside when > 8 entries).
      title: the axes title, e.g. the model and split; a description when empty.

    Returns:
      The figure.
    """
    means = _as_points(means, "means", allow_nan=True)
    stds = _as_points(stds, "stds", allow_nan=True)
    if stds.shape != means.shape:
        raise InputError(
            f"stds has shape {stds.shape}; expected {means.shape} like means"
        )
    names = _tag_names(tag_names, means.shape[0])
    if n_std < 1:
        raise InputError(f"n_std={n_std}; expected at least 1 sample per tag")
    choice_rng, sample_rng, tsne_rng = numpy_rng(key).spawn(3)
    valid = np.isfinite(means).all(axis=1) & np.isfinite(stds).all(axis=1)
    chosen = _choose_tags(
        valid, names, classes=classes, n_classes=n_classes, rng=choice_rng
    )
    if len(chosen) == 0:
        raise InputError("no tag has a finite latent mean; nothing to plot")

    d = means.shape[1]
    seed = int(sample_rng.integers(2**63))
    noise = [
        np.random.default_rng([seed, t]).standard_normal((n_std, d)) for t in chosen
    ]
    samples = np.concatenate(
        [means[t] + stds[t] * e for t, e in zip(chosen, noise, strict=True)]
    )
    user = _optional_vector(z_user, "z_user", d)
    steered = _optional_vector(z_steered, "z_steered", d)
    groups = [samples, means[chosen], user, steered]
    (sample_xy, mean_xy, user_xy, steered_xy), projection = _project_groups(
        groups, method=method, key=tsne_rng
    )

    fig = Figure(figsize=(7.5, 6.0), layout="constrained")
    ax = fig.add_subplot()
    colors = class_colors(len(chosen))
    markers = [_class_marker(i, len(chosen)) for i in range(len(chosen))]
    for i, t in enumerate(chosen):
        xy = sample_xy[i * n_std : (i + 1) * n_std]
        ax.scatter(
            *xy.T, s=12, color=colors[i], marker=markers[i], label=names[t], **POINTS
        )
    _draw_means(ax, mean_xy, [names[t] for t in chosen], colors, markers)
    _draw_user(ax, user_xy, steered_xy)
    ax.set_xlabel(projection.axis_labels[0])
    ax.set_ylabel(projection.axis_labels[1])
    ax.set_title(
        title or f"{n_std} latent samples around each of {len(chosen)} tag means"
    )
    if legend:
        _add_legend(ax)
    save_figure(fig, path)
    return fig


def plot_z_users(
    latents: Any,
    dominant: Any,
    tag_names: Sequence[str],
    path: PathLike,
    *,
    means: Any = None,
    max_users: int = 2000,
    key: Any,
    method: str = "pca",
    z_user: Any = None,
    z_steered: Any = None,
    legend: bool = True,
    title: str = "",
) -> Figure:
    """Users' latent vectors in a plane, coloured by their dominant tag.

    Users whose dominant tag is -1 (none) are drawn as small grey points
    under the others and take part in fitting the plane. Tags are coloured
    and listed in the legend by decreasing number of drawn users. PCA fits
    the plane on the drawn users; tag means, the user and the steered user
    are projected onto it (t-SNE embeds all of them jointly).

    Args:
      latents: float [n, d], the users' latent vectors.
      dominant: int [n], each user's dominant tag index in [0, T), or -1.
      tag_names: the T tag names.
      path: where to write the figure (PNG and PDF, see `save_figure`).
      means: float [T, d], optional tag means, drawn as large labelled
        markers for the tags that colour at least one drawn user (rows
        holding NaN are skipped).
      max_users: at most this many users, a random subset chosen with `key`.
      key: a JAX key or an integer seed; picks the subset and seeds t-SNE.
      method: "pca" or "tsne".
      z_user: float [d], a user's latent vector, drawn as a gold star.
      z_steered: float [d], the user's steered vector, drawn as a red star
        with an arrow from `z_user`.
      legend: whether to draw the legend of tags (outside when > 8 entries).
      title: the axes title, e.g. the model and split; a description when empty.

    Returns:
      The figure.
    """
    latents = _as_points(latents, "latents")
    n, d = latents.shape
    names = [str(name) for name in tag_names]
    dominant = np.asarray(dominant)
    if dominant.shape != (n,) or not np.issubdtype(dominant.dtype, np.integer):
        raise InputError(
            f"dominant has shape {dominant.shape} and dtype "
            f"{dominant.dtype}; expected int [{n}], one tag per user"
        )
    if n and (dominant.min() < -1 or dominant.max() >= len(names)):
        raise InputError(
            f"dominant holds values in [{dominant.min()}, "
            f"{dominant.max()}]; expected -1 or a tag index in "
            f"[0, {len(names)})"
        )
    if n == 0:
        raise InputError("latents holds no users; nothing to plot")
    if max_users < 1:
        raise InputError(f"max_users={max_users}; expected at least 1")
    subset_rng, tsne_rng = numpy_rng(key).spawn(2)
    if n > max_users:
        keep = np.sort(subset_rng.choice(n, size=max_users, replace=False))
        latents, dominant = latents[keep], dominant[keep]

    tags, counts = np.unique(dominant[dominant >= 0], return_counts=True)
    tags = tags[np.argsort(-counts, kind="stable")]
    mean_tags = np.zeros(0, np.int64)
    if means is not None:
        means = _as_points(means, "means", dim=d, allow_nan=True)
        _tag_names(names, means.shape[0])
        mean_tags = tags[np.isfinite(means[tags]).all(axis=1)]
    mean_rows = means[mean_tags] if len(mean_tags) else np.zeros((0, d))
    user = _optional_vector(z_user, "z_user", d)
    steered = _optional_vector(z_steered, "z_steered", d)
    groups = [latents, mean_rows, user, steered]
    (user_xy, mean_xy, one_user_xy, steered_xy), projection = _project_groups(
        groups, method=method, key=tsne_rng
    )

    fig = Figure(figsize=(7.5, 6.0), layout="constrained")
    ax = fig.add_subplot()
    untagged = dominant < 0
    if untagged.any():
        ax.scatter(
            *user_xy[untagged].T,
            s=6,
            color=UNTAGGED_COLOR,
            label="no dominant tag",
            **POINTS,
        )
    colors = class_colors(len(tags))
    markers = [_class_marker(i, len(tags)) for i in range(len(tags))]
    for i, t in enumerate(tags):
        xy = user_xy[dominant == t]
        ax.scatter(
            *xy.T, s=10, color=colors[i], marker=markers[i], label=names[t], **POINTS
        )
    order = {t: i for i, t in enumerate(tags)}
    _draw_means(
        ax,
        mean_xy,
        [names[t] for t in mean_tags],
        [colors[order[t]] for t in mean_tags],
        [markers[order[t]] for t in mean_tags],
    )
    _draw_user(ax, one_user_xy, steered_xy)
    ax.set_xlabel(projection.axis_labels[0])
    ax.set_ylabel(projection.axis_labels[1])
    ax.set_title(title or f"latent vectors of {len(latents)} users by dominant tag")
    if legend:
        _add_legend(ax)
    save_figure(fig, path)
    return fig


# --- Training history -------------------------------------------------------------


def _history_runs(history: Any) -> list[list[dict]]:
    runs = (
        history.get("runs")
        if isinstance(history, Mapping)
        else getattr(history, "runs", None)
    )
    if not isinstance(runs, list) or not all(isinstance(r, list) for r in runs):
        raise InputError(
            f"history={str(history)[:80]!r}; expected a training "
            "History or its dict form {'runs': [[record, ...], ...]}"
        )
    runs = [run for run in runs if run]
    if not runs:
        raise InputError("the history holds no epochs; nothing to plot")
    for rec in (rec for run in runs for rec in run):
        if not isinstance(rec, Mapping) or "epoch" not in rec:
            raise InputError(f"history record {str(rec)[:80]!r} has no 'epoch'")
    return runs


def _part(records: list[dict], split: str, name: str) -> np.ndarray:
    """A loss part per record (NaN where missing)."""
    return np.asarray([float(r.get(split, {}).get(name, np.nan)) for r in records])


def plot_history(history: Any, path: PathLike, *, title: str = "") -> Figure:
    """Training and validation losses against epoch.

    One panel per loss part: reconstruction, KL and total for a VAE (a run
    with a nonzero KL term), the total alone otherwise; plus validation
    NDCG when the records hold it. Each run between learning-rate restarts
    has its own colour (train solid, validation dashed), a dotted vertical
    line marks each restart, and a cross marks each epoch that did not
    improve the validation score (and so used up one epoch of patience).

    Args:
      history: a `training.History`, or its dict form `{"runs": [[record,
        ...], ...]}`; a record is `{"epoch", "lr", "patience", "improved",
        "train": {"recon", "kl", "total"}, "val": {..., "ndcg"}}`.
      path: where to write the figure (PNG and PDF, see `save_figure`).
      title: the figure title, e.g. the model's name.

    Returns:
      The figure.
    """
    runs = _history_runs(history)
    records = [r for run in runs for r in run]
    kl = np.concatenate([_part(records, s, "kl") for s in ("train", "val")])
    is_vae = bool(np.any(np.isfinite(kl) & (kl != 0)))
    panels = (
        [("recon", "reconstruction loss"), ("kl", "KL divergence")] if is_vae else []
    )
    panels.append(("total", "total loss"))
    has_ndcg = bool(np.isfinite(_part(records, "val", "ndcg")).any())
    if has_ndcg:
        panels.append(("ndcg", "validation NDCG"))

    ncols = 2 if len(panels) == 4 else len(panels)
    nrows = len(panels) // ncols
    fig = Figure(figsize=(3.8 * ncols + 1.8, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = colormaps["tab10"].colors
    for ax, (part, label) in zip(axes, panels, strict=True):
        for r, run in enumerate(runs):
            epochs = np.asarray([rec["epoch"] for rec in run], dtype=np.float64)
            color = colors[r % len(colors)]
            if r > 0:
                ax.axvline(epochs[0] - 0.5, color="0.6", linestyle=":", lw=1)
            if part != "ndcg":
                ax.plot(epochs, _part(run, "train", part), color=color, lw=1.5)
            val = _part(run, "val", part)
            ax.plot(epochs, val, color=color, lw=1.5, linestyle="--")
            stalled = np.asarray([not rec.get("improved", True) for rec in run])
            ax.scatter(
                epochs[stalled], val[stalled], marker="x", color=color, s=30, zorder=3
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)

    handles = [
        Line2D([], [], color="0.3", label="train"),
        Line2D([], [], color="0.3", linestyle="--", label="validation"),
        Line2D(
            [], [], color="0.3", marker="x", linestyle="none", label="no improvement"
        ),
    ]
    for r, run in enumerate(runs):
        label = f"run {r} (lr {run[0].get('lr', float('nan')):.3g})"
        handles.append(Line2D([], [], color=colors[r % len(colors)], lw=3, label=label))
    fig.legend(handles=handles, loc="outside right upper", fontsize="small")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
    return fig


# --- Clusters -------------------------------------------------------------------


def plot_clusters(
    cluster_top_tags: Sequence | Mapping,
    path: PathLike,
    *,
    kind: str = "auto",
    title: str = "",
) -> Figure:
    """The top tags of each cluster of users, with their shares.

    "stacked": one horizontal bar per cluster split into its top tags (a
    tag keeps its colour across clusters) and a grey rest (users with other
    tags or none), for shares that add up to at most 1 (e.g. the shares of
    users by dominant tag from `latent.cluster_top_tags`).
    "bars": one panel per cluster with a bar per tag, for shares that
    overlap (e.g. the share of users carrying each tag). "auto" stacks
    when every cluster's shares add up to at most 1.

    Args:
      cluster_top_tags: per cluster, a list of `(tag, count, share)` with
        `share` in [0, 1]; a list (clusters named "cluster 0", ...) or a
        mapping from cluster name to that list.
      path: where to write the figure (PNG and PDF, see `save_figure`).
      kind: "auto", "stacked" or "bars".
      title: the figure title.

    Returns:
      The figure.
    """
    if isinstance(cluster_top_tags, Mapping):
        labels = [str(k) for k in cluster_top_tags]
        clusters = list(cluster_top_tags.values())
    else:
        clusters = list(cluster_top_tags)
        labels = [f"cluster {i}" for i in range(len(clusters))]
    if not clusters:
        raise InputError("cluster_top_tags is empty; nothing to plot")
    if kind not in ("auto", "stacked", "bars"):
        raise InputError(f"kind={kind!r}; expected 'auto', 'stacked' or 'bars'")
    rows = []
    for label, top in zip(labels, clusters, strict=True):
        try:
            rows.append([(str(tag), float(share)) for tag, _, share in top])
        except (TypeError, ValueError) as e:
            raise InputError(
                f"{label}: {str(top)[:80]!r}; expected a list of (tag, count, share)"
            ) from e
        if any(not 0.0 <= share <= 1.0 for _, share in rows[-1]):
            raise InputError(
                f"{label} has shares {[s for _, s in rows[-1]]}; "
                "expected values in [0, 1]"
            )
    fits = all(sum(s for _, s in row) <= 1.0 + 1e-6 for row in rows)
    if kind == "stacked" and not fits:
        raise InputError(
            "a cluster's shares add up to more than 1, so they cannot "
            "be stacked; use kind='bars'"
        )
    tags = list(dict.fromkeys(tag for row in rows for tag, _ in row))
    color = dict(zip(tags, class_colors(len(tags)), strict=True))

    if kind == "bars" or (kind == "auto" and not fits):
        ncols = min(4, len(rows))
        nrows = math.ceil(len(rows) / ncols)
        height = max(len(row) for row in rows) * 0.25 + 1.0
        fig = Figure(figsize=(3.4 * ncols, height * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True).ravel()
        for ax, label, row in zip(axes, labels, rows, strict=False):
            names = [tag for tag, _ in row]
            shares = [share for _, share in row]
            ax.barh(np.arange(len(row)), shares, color=[color[t] for t in names])
            ax.set_yticks(np.arange(len(row)), names, fontsize="small")
            ax.invert_yaxis()
            ax.set_xlim(0.0, 1.0)
            ax.set_title(label, fontsize="medium")
            ax.set_xlabel("share of the cluster")
        for ax in axes[len(rows) :]:
            ax.set_visible(False)
    else:
        fig = Figure(figsize=(8.0, 0.45 * len(rows) + 1.4), layout="constrained")
        ax = fig.add_subplot()
        seen: set[str] = set()
        for i, row in enumerate(rows):
            left = 0.0
            for tag, share in row:
                label = None if tag in seen else tag
                ax.barh(
                    i,
                    share,
                    left=left,
                    color=color[tag],
                    edgecolor="white",
                    label=label,
                )
                if share >= 0.08:  # Wide enough to name.
                    ax.text(
                        left + share / 2,
                        i,
                        tag,
                        ha="center",
                        va="center",
                        fontsize="x-small",
                        clip_on=True,
                    )
                seen.add(tag)
                left += share
            ax.barh(i, max(1.0 - left, 0.0), left=left, color=REST_COLOR)
        # An empty bar puts the rest last in the legend.
        ax.barh(0, 0.0, color=REST_COLOR, label="other or no tag")
        ax.set_yticks(np.arange(len(rows)), labels)
        ax.invert_yaxis()
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("share of the cluster")
        _add_legend(ax, outside=True)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
    return fig


# --- Steering -------------------------------------------------------------------


def plot_steering(
    results: Mapping,
    path: PathLike,
    *,
    metric: str | Sequence[str] = "tag_share",
    classes: Sequence[str] | None = None,
    title: str = "",
) -> Figure:
    """Steering curves: each metric against the steering strength alpha.

    One row of panels per metric; in each row an "average" panel and one
    panel per class, and in each panel one line per method. A metric's
    standard errors, when given, are drawn as a band of +- 1 SE.

    `results` is structured as follows (A = number of alphas)::

        {
          "alphas": [a_0, ..., a_{A-1}],      # steering strengths
          "methods": {
            "<method>": {                       # e.g. "postfilter", "latent"
              "alphas": [...],                  # optional: this method's own
                                                #   alphas (default: the above)
              "average": {                      # mean over classes (and users)
                "<metric>": [A floats],         # e.g. "tag_share", "ndcg"
                "<metric>_se": [A floats],      # optional standard errors
              },
              "per_class": {                    # optional
                "<tag>": {"<metric>": [A floats], "<metric>_se": [A floats]},
              },
            },
          },
        }

    A NaN value leaves a gap in its line; a method without a metric, or
    without a class, is left out of that panel.

    Args:
      results: the steering results, structured as above.
      path: where to write the figure (PNG and PDF, see `save_figure`).
      metric: a metric name, or several (one row each).
      classes: the classes to give panels, in order; default: every class
        of any method, in order of first appearance; `[]` for the average
        panel alone. An unknown class raises `UnknownTagError`.
      title: the figure title, e.g. the model and split.

    Returns:
      The figure.
    """
    metrics = [metric] if isinstance(metric, str) else list(metric)
    methods = results.get("methods") if isinstance(results, Mapping) else None
    if not isinstance(methods, Mapping) or not methods or not metrics:
        raise InputError(
            "results must be {'alphas': [...], 'methods': {name: "
            "{'average': {metric: [...]}, 'per_class': {...}}}} with at "
            "least one method, and metric at least one name"
        )
    known = list(
        dict.fromkeys(
            tag for res in methods.values() for tag in res.get("per_class", {})
        )
    )
    if classes is None:
        classes = known
    for tag in classes:
        if tag not in known:
            raise UnknownTagError(
                f"no steering results for class {tag!r}; classes "
                f"with results: {known[:10]}"
            )
    panels = ["average", *classes]

    fig = Figure(
        figsize=(3.3 * len(panels) + 1.8, 2.8 * len(metrics) + 0.4),
        layout="constrained",
    )
    axes = fig.subplots(len(metrics), len(panels), squeeze=False, sharex=True)
    colors = class_colors(len(methods))
    for row, name in enumerate(metrics):
        drawn = False
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            for k, (method, res) in enumerate(methods.items()):
                curves = (
                    res.get("average")
                    if panel == "average"
                    else res.get("per_class", {}).get(panel)
                )
                if not curves or name not in curves:
                    continue
                alphas = np.asarray(res.get("alphas", results.get("alphas")), float)
                values = np.asarray(curves[name], dtype=np.float64)
                se = np.asarray(curves.get(name + "_se", np.zeros_like(values)), float)
                if alphas.ndim != 1 or not values.shape == se.shape == alphas.shape:
                    raise InputError(
                        f"{method}/{panel}/{name} has values of shape {values.shape} "
                        f"and standard errors of shape {se.shape} for alphas of "
                        f"shape {alphas.shape}; expected one of each per alpha"
                    )
                ax.plot(alphas, values, color=colors[k], marker="o", ms=3, lw=1.5)
                if name + "_se" in curves:
                    ax.fill_between(
                        alphas,
                        values - se,
                        values + se,
                        color=colors[k],
                        alpha=0.2,
                        linewidth=0,
                    )
                drawn = True
            if row == 0:
                ax.set_title(panel)
            if col == 0:
                ax.set_ylabel(name)
            if row == len(metrics) - 1:
                ax.set_xlabel("steering strength alpha")
        if not drawn:
            available = sorted(
                {m for res in methods.values() for m in res.get("average", {})}
            )
            raise InputError(
                f"metric {name!r} is in no method's results; available: {available}"
            )

    handles = [
        Line2D([], [], color=colors[k], marker="o", ms=3, label=method)
        for k, method in enumerate(methods)
    ]
    fig.legend(handles=handles, loc="outside right upper", fontsize="small")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
    return fig
