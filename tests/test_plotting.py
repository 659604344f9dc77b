"""Tests of songrec_jax.plotting: files, pictures that follow the data, projections."""

from pathlib import Path

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.collections import PolyCollection
from matplotlib.image import imread

from songrec_jax import plotting
from songrec_jax.errors import InputError, UnknownTagError
from songrec_jax.training import History

N_TAGS, LATENT = 12, 5
FAST = settings(max_examples=25, deadline=None)


@pytest.fixture(autouse=True, scope="module")
def low_dpi():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plotting, "DPI", 50)  # Small PNGs keep the tests fast.
        yield


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """A folder for the figures that several tests look at."""
    return tmp_path_factory.mktemp("figures")


def pixels(stem: Path) -> np.ndarray:
    """Checks that `stem`.png and `stem`.pdf were written; the PNG's pixels."""
    png, pdf = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    return imread(png)


def differ(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape != b.shape or not np.array_equal(a, b)


def tag_stats(seed: int = 0, n_tags: int = N_TAGS):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3.0, size=(n_tags, LATENT))
    stds = rng.uniform(0.2, 0.6, size=(n_tags, LATENT))
    return means, stds, [f"tag{i}" for i in range(n_tags)]


def legend_labels(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


# --- Files ---


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fig", ["fig.png", "fig.pdf"]),
        ("fig.png", ["fig.png", "fig.pdf"]),
        ("fig.pdf", ["fig.png", "fig.pdf"]),
        ("run.v2", ["run.v2.png", "run.v2.pdf"]),
        ("sub/dir/fig.svg", ["sub/dir/fig.png", "sub/dir/fig.pdf", "sub/dir/fig.svg"]),
    ],
)
def test_save_figure_writes_png_and_pdf(tmp_path, name, expected):
    fig = plotting.Figure(figsize=(1.0, 1.0))
    fig.add_subplot().plot([0, 1], [1, 0])
    written = plotting.save_figure(fig, tmp_path / name)
    assert written == [tmp_path / e for e in expected]
    assert all(p.stat().st_size > 0 for p in written)


# --- Training history ---


def history_runs(kl: float = 0.5, shift: float = 0.0, ndcg: bool = True):
    runs, epoch = [], 0
    for lr, n_epochs in ((1e-3, 5), (5e-4, 3)):
        run = []
        for i in range(n_epochs):
            epoch += 1
            val = {"recon": 3.0 / epoch + shift, "kl": kl, "total": 3.0 / epoch + kl}
            if ndcg:
                val["ndcg"] = 0.1 + 0.01 * epoch
            run.append(
                {
                    "epoch": epoch,
                    "lr": lr,
                    "patience": 2,
                    "improved": i < 3,
                    "train": {
                        "recon": 2.0 / epoch,
                        "kl": kl,
                        "total": 2.0 / epoch + kl,
                    },
                    "val": val,
                }
            )
        runs.append(run)
    return runs


@pytest.fixture(scope="module")
def vae_history(out):
    """A VAE's history plot and its pixels."""
    fig = plotting.plot_history(
        {"runs": history_runs()}, out / "history", title="vae, validation split"
    )
    return fig, pixels(out / "history")


def test_plot_history_vae_has_recon_kl_total_and_ndcg_panels(vae_history):
    fig, _ = vae_history
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "reconstruction loss",
        "KL divergence",
        "total loss",
        "validation NDCG",
    ]
    assert fig.get_suptitle() == "vae, validation split"


def test_plot_history_marks_epochs_without_improvement(vae_history):
    fig, _ = vae_history
    crosses = [len(c.get_offsets()) for c in fig.axes[2].collections]
    assert sorted(crosses) == [0, 2]  # Run 0: epochs 4 and 5; run 1: none.


def test_plot_history_accepts_a_history_like_its_dict(tmp_path, vae_history):
    plotting.plot_history(
        History(history_runs()), tmp_path / "h", title="vae, validation split"
    )
    assert not differ(pixels(tmp_path / "h"), vae_history[1])


def test_plot_history_pixels_follow_the_losses(tmp_path, vae_history):
    plotting.plot_history(
        {"runs": history_runs(shift=1.0)}, tmp_path / "h", title="vae, validation split"
    )
    assert differ(pixels(tmp_path / "h"), vae_history[1])


def test_plot_history_without_kl_shows_the_total_only(tmp_path):
    fig = plotting.plot_history({"runs": history_runs(kl=0.0)}, tmp_path / "a")
    assert [ax.get_ylabel() for ax in fig.axes] == ["total loss", "validation NDCG"]
    fig = plotting.plot_history(
        {"runs": history_runs(kl=0.0, ndcg=False)}, tmp_path / "b"
    )
    assert [ax.get_ylabel() for ax in fig.axes] == ["total loss"]


@pytest.mark.parametrize("history", [{"runs": [[]]}, {"epochs": []}, [1, 2]])
def test_plot_history_rejects_empty_or_foreign_input(tmp_path, history):
    with pytest.raises(InputError):
        plotting.plot_history(history, tmp_path / "h")


# --- Projection ---


def test_pca_matches_numpy_principal_components():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(40, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.3, 0.1])
    points = points @ np.linalg.qr(rng.normal(size=(6, 6)))[0]
    coords, projection = plotting.project_2d(points)

    centred = points - points.mean(axis=0)
    eigvals, eigvecs = np.linalg.eigh(np.cov(centred, rowvar=False))
    reference = centred @ eigvecs[:, ::-1][:, :2]
    signs = np.sign(np.sum(coords * reference, axis=0))
    np.testing.assert_allclose(coords * signs, reference, atol=1e-9)
    np.testing.assert_allclose(
        projection.explained_variance_ratio,
        eigvals[::-1][:2] / eigvals.sum(),
        rtol=1e-9,
    )


@FAST
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(2, 20), st.integers(3, 6)),
        elements=st.floats(-10, 10),
    )
)
def test_pca_invariants(points):
    coords, projection = plotting.project_2d(points)
    components = projection.components
    np.testing.assert_allclose(components @ components.T, np.eye(2), atol=1e-9)
    largest = components[[0, 1], np.argmax(np.abs(components), axis=1)]
    assert np.all(largest >= 0)  # The sign convention.
    np.testing.assert_allclose(coords.mean(axis=0), 0.0, atol=1e-8)
    variance = coords.var(axis=0)
    assert variance[0] >= variance[1] - 1e-8 * (1.0 + variance[0])
    np.testing.assert_allclose(projection.transform(points), coords)


def test_project_2d_keeps_two_dims_and_pads_one():
    points = np.array([[1.0, 2.0], [3.0, -4.0], [0.5, 0.0]])
    for method in ("pca", "tsne"):
        coords, _ = plotting.project_2d(points, method=method, key=0)
        np.testing.assert_array_equal(coords, points)
    coords, projection = plotting.project_2d(points[:, :1])
    np.testing.assert_array_equal(coords, [[1.0, 0.0], [3.0, 0.0], [0.5, 0.0]])
    np.testing.assert_array_equal(projection.transform([7.0]), [7.0, 0.0])


def test_project_2d_fit_on_spans_the_plane_with_other_points():
    rng = np.random.default_rng(1)
    users, extra = rng.normal(size=(30, 4)), rng.normal(size=(3, 4))
    fitted, projection = plotting.project_2d(users)
    coords, _ = plotting.project_2d(extra, fit_on=users)
    np.testing.assert_allclose(coords, projection.transform(extra))
    np.testing.assert_allclose(projection.transform(users), fitted)


def test_tsne_embeds_a_small_input_reproducibly():
    rng = np.random.default_rng(2)
    points = np.concatenate([rng.normal(size=(12, 5)), rng.normal(size=(12, 5)) + 8])
    coords, projection = plotting.project_2d(points, method="tsne", key=3, max_iter=250)
    again, _ = plotting.project_2d(points, method="tsne", key=3, max_iter=250)
    assert coords.shape == (24, 2) and np.isfinite(coords).all()
    np.testing.assert_array_equal(coords, again)
    with pytest.raises(InputError, match="jointly"):
        projection.transform(points[:2])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "tsne"},  # No key.
        {"method": "tsne", "key": 0, "fit_on": np.zeros((3, 4))},
        {"method": "umap"},
        {"fit_on": np.zeros((3, 5))},  # Wrong dimension.
    ],
)
def test_project_2d_rejects_bad_arguments(kwargs):
    with pytest.raises(InputError):
        plotting.project_2d(np.ones((6, 4)), **kwargs)


def test_project_2d_rejects_non_finite_points():
    with pytest.raises(InputError, match="non-finite"):
        plotting.project_2d(np.full((3, 4), np.nan))


# --- Samples around tag means ---


@pytest.fixture(scope="module")
def z_rand(out):
    """Samples around 12 tag means (key 0) and the plot's pixels."""
    means, stds, names = tag_stats()
    fig = plotting.plot_z_rand(
        means, stds, names, out / "z_rand", key=0, title="vae, test split"
    )
    return fig, pixels(out / "z_rand")


def test_plot_z_rand_is_deterministic_and_follows_the_key(out, tmp_path, z_rand):
    means, stds, names = tag_stats()
    for name, key in (("same", 0), ("other", 1)):
        plotting.plot_z_rand(
            means, stds, names, tmp_path / name, key=key, title="vae, test split"
        )
    for suffix in (".png", ".pdf"):
        same = (tmp_path / ("same" + suffix)).read_bytes()
        assert same == (out / ("z_rand" + suffix)).read_bytes()
    assert differ(pixels(tmp_path / "other"), z_rand[1])


def test_plot_z_rand_pixels_follow_the_means(tmp_path, z_rand):
    means, stds, names = tag_stats()
    plotting.plot_z_rand(
        means * 2.0, stds, names, tmp_path / "z", key=0, title="vae, test split"
    )
    assert differ(pixels(tmp_path / "z"), z_rand[1])


def test_plot_z_rand_skips_tags_without_a_mean(tmp_path):
    means, stds, names = tag_stats()
    means[3] = np.nan
    fig = plotting.plot_z_rand(means, stds, names, tmp_path / "z", key=0)
    assert legend_labels(fig) == [n for n in names if n != "tag3"]


def test_plot_z_rand_raises_for_unknown_or_empty_tags(tmp_path):
    means, stds, names = tag_stats()
    means[3] = np.nan
    with pytest.raises(UnknownTagError, match="unknown tag 'jazz'"):
        plotting.plot_z_rand(
            means, stds, names, tmp_path / "z", key=0, classes=["tag1", "jazz"]
        )
    with pytest.raises(UnknownTagError, match="'tag3' has no latent mean"):
        plotting.plot_z_rand(
            means, stds, names, tmp_path / "z", key=0, classes=["tag3"]
        )
    with pytest.raises(InputError, match="not both"):
        plotting.plot_z_rand(
            means, stds, names, tmp_path / "z", key=0, classes=["tag1"], n_classes=2
        )


@pytest.fixture(scope="module")
def two_tags(out):
    """Samples around two tags chosen by name."""
    means, stds, names = tag_stats()
    return plotting.plot_z_rand(
        means, stds, names, out / "two_tags", key=0, classes=["tag5", "tag2"]
    )


def test_plot_z_rand_draws_the_chosen_tags(tmp_path, two_tags):
    assert legend_labels(two_tags) == ["tag5", "tag2"]
    means, stds, names = tag_stats()
    fig = plotting.plot_z_rand(means, stds, names, tmp_path / "z", key=4, n_classes=4)
    chosen = legend_labels(fig)
    assert len(set(chosen)) == 4 and set(chosen) <= set(names)


def test_legend_goes_outside_the_axes_with_many_tags(z_rand, two_tags):
    for fig, outside in ((z_rand[0], True), (two_tags, False)):
        ax = fig.axes[0]
        legend_box = ax.get_legend().get_window_extent()
        assert (legend_box.x0 >= ax.get_window_extent().x1) == outside


def test_plot_z_rand_draws_the_user_and_the_steering_arrow(tmp_path):
    means, stds, names = tag_stats()
    fig = plotting.plot_z_rand(
        means,
        stds,
        names,
        tmp_path / "z",
        key=0,
        z_user=means[0],
        z_steered=means[1],
    )
    assert legend_labels(fig)[-2:] == ["user", "steered user"]
    arrows = [t for t in fig.axes[0].texts if getattr(t, "arrow_patch", None)]
    assert len(arrows) == 1
    pixels(tmp_path / "z")


# --- Users by dominant tag ---


def users(n: int = 120, seed: int = 0):
    rng = np.random.default_rng(seed)
    means, _, names = tag_stats(seed)
    dominant = rng.integers(-1, N_TAGS, size=n)
    latents = np.where(dominant[:, None] >= 0, means[dominant], 0.0)
    return latents + rng.normal(size=(n, LATENT)), dominant, means, names


def plot_users(dominant, path):
    latents, _, means, names = users()
    return plotting.plot_z_users(
        latents,
        dominant,
        names,
        path,
        key=0,
        means=means,
        max_users=50,
        title="vae, test split",
    )


@pytest.fixture(scope="module")
def z_users(out):
    """120 users drawn 50 at a time, with tag means, and the plot's pixels."""
    fig = plot_users(users()[1], out / "z_users")
    return fig, pixels(out / "z_users")


def test_plot_z_users_subsamples_and_greys_untagged_users(z_users):
    ax = z_users[0].axes[0]
    groups = [c for c in ax.collections if not c.get_label().startswith("_")]
    assert sum(len(c.get_offsets()) for c in groups) == 50
    assert legend_labels(z_users[0])[0] == "no dominant tag"
    assert ax.get_title() == "vae, test split"


def test_plot_z_users_pixels_follow_the_dominant_tags(tmp_path, z_users):
    plot_users(np.roll(users()[1], 1), tmp_path / "u")
    assert differ(pixels(tmp_path / "u"), z_users[1])


def test_plot_z_users_embeds_means_and_user_jointly_with_tsne(tmp_path):
    latents, dominant, means, names = users(n=30)
    means[dominant[0]] = np.nan  # Its users are drawn, its mean is not.
    fig = plotting.plot_z_users(
        latents,
        dominant,
        names,
        tmp_path / "u",
        key=0,
        means=means,
        method="tsne",
        z_user=latents[1],
        z_steered=means[dominant[1]],
    )
    assert fig.axes[0].get_xlabel() == "t-SNE 1"
    pixels(tmp_path / "u")


@pytest.mark.parametrize(
    "dominant", [np.full(10, N_TAGS), np.full(10, -2), np.zeros(9, int), np.zeros(10)]
)
def test_plot_z_users_rejects_bad_dominant_tags(tmp_path, dominant):
    _, _, names = tag_stats()
    with pytest.raises(InputError):
        plotting.plot_z_users(
            np.ones((10, LATENT)), dominant, names, tmp_path / "u", key=0
        )


# --- Clusters ---


CLUSTERS = [
    [("rock", 40, 0.4), ("pop", 20, 0.2)],
    [("jazz", 30, 0.5), ("rock", 6, 0.1), ("blues", 3, 0.05)],
]


def test_plot_clusters_stacks_shares(tmp_path):
    fig = plotting.plot_clusters(CLUSTERS, tmp_path / "a", title="vae clusters")
    assert legend_labels(fig) == ["rock", "pop", "jazz", "blues", "other or no tag"]
    changed = [CLUSTERS[0], [("jazz", 30, 0.9)]]
    plotting.plot_clusters(changed, tmp_path / "b", title="vae clusters")
    assert differ(pixels(tmp_path / "a"), pixels(tmp_path / "b"))


def test_plot_clusters_draws_panels_for_overlapping_shares(tmp_path):
    overlapping = {"loud": [("rock", 8, 0.8), ("metal", 6, 0.6)], "calm": CLUSTERS[1]}
    fig = plotting.plot_clusters(overlapping, tmp_path / "c")
    assert [ax.get_title() for ax in fig.axes] == ["loud", "calm"]
    pixels(tmp_path / "c")
    with pytest.raises(InputError, match="kind='bars'"):
        plotting.plot_clusters(overlapping, tmp_path / "c", kind="stacked")


@pytest.mark.parametrize("clusters", [[], [[("rock", 1, 1.5)]], [[("rock", 1)]]])
def test_plot_clusters_rejects_bad_input(tmp_path, clusters):
    with pytest.raises(InputError):
        plotting.plot_clusters(clusters, tmp_path / "c")


# --- Steering ---


def steering_results(scale: float = 1.0):
    alphas = [0.0, 0.5, 1.0, 2.0]
    rising = [scale * a / 2 for a in alphas]
    falling = [0.3 - 0.1 * a for a in alphas]
    per_class = {"jazz": {"tag_share": rising[::-1], "ndcg": falling}}
    return {
        "alphas": alphas,
        "methods": {
            "postfilter": {
                "average": {
                    "tag_share": rising,
                    "tag_share_se": [0.02] * 4,
                    "ndcg": falling,
                },
                "per_class": per_class,
            },
            "latent": {
                "alphas": [0.0, 1.0],
                "average": {"tag_share": [0.1, 0.4], "ndcg": [0.3, 0.2]},
            },
        },
    }


@pytest.fixture(scope="module")
def steering(out):
    """Steering curves of two metrics and their pixels."""
    fig = plotting.plot_steering(
        steering_results(),
        out / "steering",
        metric=["tag_share", "ndcg"],
        title="vae, test",
    )
    return fig, pixels(out / "steering")


def test_plot_steering_draws_a_row_per_metric_and_a_panel_per_class(steering):
    fig = steering[0]
    assert [ax.get_title() for ax in fig.axes[:2]] == ["average", "jazz"]
    assert [ax.get_ylabel() for ax in fig.axes[::2]] == ["tag_share", "ndcg"]
    assert len(fig.axes) == 4
    bands = [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1  # The standard errors of postfilter's tag_share.
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["postfilter", "latent"]


def test_plot_steering_average_panel_alone(tmp_path):
    fig = plotting.plot_steering(steering_results(), tmp_path / "s", classes=[])
    assert [ax.get_title() for ax in fig.axes] == ["average"]


def test_plot_steering_pixels_follow_the_results(tmp_path, steering):
    plotting.plot_steering(
        steering_results(scale=2.0),
        tmp_path / "s",
        metric=["tag_share", "ndcg"],
        title="vae, test",
    )
    assert differ(pixels(tmp_path / "s"), steering[1])


def test_plot_steering_rejects_unknown_metrics_and_classes(tmp_path):
    with pytest.raises(InputError, match="'recall'"):
        plotting.plot_steering(steering_results(), tmp_path / "s", metric="recall")
    with pytest.raises(UnknownTagError, match="'blues'"):
        plotting.plot_steering(steering_results(), tmp_path / "s", classes=["blues"])
    with pytest.raises(InputError):
        plotting.plot_steering({"alphas": [0.0]}, tmp_path / "s")
