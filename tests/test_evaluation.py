import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from songrec_jax import baselines, evaluation, splits, synthetic
from songrec_jax.data import from_pairs
from songrec_jax.errors import InputError

N_SONGS = 30
INPUT_LEN = 12


@pytest.fixture(scope="module")
def data():
    return synthetic.generate(60, N_SONGS, 4, key=0, median_songs=8, min_songs=3)


def wavy_scorer(inputs):
    """Scores that depend on the inputs: sin(song * (1 + sum of input ids))."""
    inputs = jnp.asarray(inputs)
    total = jnp.where(inputs >= 0, inputs, 0).sum(1, keepdims=True)
    return jnp.sin(jnp.arange(N_SONGS) * (1.0 + total) * 0.37).astype(jnp.float32)


def reference(scores, split, k, kind):
    """One user at a time: rank unseen songs, compare with the held-out ones."""
    out = []
    for i in range(split.n_users):
        s = np.array(scores[i], np.float64)
        s[split.input_songs(i)] = -np.inf
        ranked = np.argsort(-s, kind="stable")[:k]
        relevant = set(split.target_songs(i).tolist())
        if not relevant:
            out.append(np.nan)
            continue
        hits = np.array([song in relevant for song in ranked], float)
        if kind == "NDCG":
            ideal = np.ones(min(k, len(relevant)))
            discount = 1 / np.log2(np.arange(k) + 2)
            out.append((hits * discount).sum() / (ideal * discount[: len(ideal)]).sum())
        elif kind == "Recall":
            out.append(hits.sum() / min(k, len(relevant)))
        else:
            precision = np.cumsum(hits) / np.arange(1, k + 1)
            out.append((hits * precision).sum() / min(k, len(relevant)))
    return np.array(out)


@pytest.mark.parametrize("protocol", evaluation.PROTOCOLS)
def test_metrics_match_a_numpy_loop(data, protocol):
    names = ("NDCG@10", "Recall@5", "MAP@10", "NDCG@100")
    users = np.arange(20, 60)
    table = evaluation.evaluate(
        {"wavy": wavy_scorer},
        data,
        users,
        protocol=protocol,
        input_len=INPUT_LEN,
        key=1,
        metric_names=names,
        batch_size=16,
    )
    split = evaluation.make_split(
        data, users, protocol=protocol, input_len=INPUT_LEN, key=1
    )
    scores = np.asarray(wavy_scorer(split.inputs))
    for name in names:
        kind, k = evaluation.parse_metric(name)
        expected = reference(scores, split, min(k, N_SONGS), kind)
        np.testing.assert_allclose(table.values["wavy"][name], expected, rtol=1e-5)
        row = table.rows["wavy"][name]
        assert row.n == np.count_nonzero(~np.isnan(expected))
        assert row.mean == pytest.approx(np.nanmean(expected), rel=1e-5)
        se = np.nanstd(expected, ddof=1) / np.sqrt(row.n)
        assert row.stderr == pytest.approx(se, rel=1e-5)


def test_seen_songs_are_never_recommended(data):
    """A scorer that loves the seen songs ranks like one that ignores them."""
    popularity = baselines.popularity_scorer(data)

    def seen_lover(inputs):
        return popularity(inputs) + 1e4 * baselines.multi_hot(
            jnp.asarray(inputs), N_SONGS
        )

    tables = [
        evaluation.evaluate(
            {"m": scorer},
            data,
            np.arange(60),
            input_len=INPUT_LEN,
            key=3,
            batch_size=64,
        )
        for scorer in (popularity, seen_lover)
    ]
    for name in evaluation.DEFAULT_METRICS:
        np.testing.assert_array_equal(
            tables[0].values["m"][name], tables[1].values["m"][name]
        )


def test_protocols_evaluate_the_documented_users():
    lengths = {"a": 1, "b": 2, "c": 4, "d": 5, "e": 9}
    users = [u for u, n in lengths.items() for _ in range(n)]
    songs = [f"s{i}" for u, n in lengths.items() for i in range(n)]
    small = from_pairs(users, songs)
    everyone = np.arange(small.n_users)
    kept = {}
    for protocol in evaluation.PROTOCOLS:
        split = evaluation.make_split(
            small, everyone, protocol=protocol, input_len=3, key=0
        )
        kept[protocol] = small.user_ids[split.users].tolist()
        table = evaluation.evaluate(
            {"pop": baselines.popularity_scorer(small)},
            small,
            everyone,
            protocol=protocol,
            input_len=3,
            key=0,
            metric_names=("Recall@2",),
        )
        assert table.n_users == len(kept[protocol])
        assert table.rows["pop"]["Recall@2"].n == len(kept[protocol])
    assert kept["input_target"] == ["b", "c", "d", "e"]
    assert kept["strong"] == ["d", "e"]
    # Strong generalisation holds out 20%: 1 of 5 songs, 1 of 9 (ceil 80% in).
    split = evaluation.make_split(
        small, everyone, protocol="strong", input_len=9, key=0
    )
    assert split.target_lengths().tolist() == [1, 1]
    assert split.input_lengths().tolist() == [4, 8]


def test_table_formats_and_round_trips(data):
    table = evaluation.evaluate(
        {"popularity": baselines.popularity_scorer(data), "wavy": wavy_scorer},
        data,
        np.arange(60),
        protocol="strong",
        input_len=INPUT_LEN,
        key=0,
    )
    text = table.format()
    lines = text.splitlines()
    assert lines[0].split(" | ")[0].strip() == "model"
    assert [c.strip() for c in lines[0].split("|")[1:]] == list(
        evaluation.DEFAULT_METRICS
    )
    assert len({line.index("|") for line in lines if "|" in line}) == 1  # aligned
    v = table.rows["wavy"]["NDCG@100"]
    assert f"{v.mean:.3f} ± {v.stderr:.3f}" in lines[3]
    back = evaluation.EvaluationTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert back.format() == text and back.protocol == "strong"


def test_bad_arguments_raise(data):
    with pytest.raises(InputError, match="protocol='weak'"):
        evaluation.evaluate(
            {"w": wavy_scorer}, data, [0, 1], protocol="weak", input_len=4, key=0
        )
    with pytest.raises(InputError, match="'NDCG@0'"):
        evaluation.parse_metric("NDCG@0")
    narrow = lambda inputs: jnp.zeros((len(inputs), N_SONGS - 1))
    split = splits.input_target_split(data, [0, 1], 4, key=0)
    with pytest.raises(InputError, match="scorer 'narrow'"):
        evaluation.evaluate_split({"narrow": narrow}, split, n_songs=N_SONGS)


def test_evaluate_model_adds_the_baselines(data, caplog):
    from songrec_jax import models
    from songrec_jax.config import ModelConfig

    config = ModelConfig(kind="mlp", n_songs=N_SONGS, input_len=INPUT_LEN, dims=(8,))
    params = models.init(config, key=jax.random.key(0))
    table = evaluation.evaluate_model(
        params, config, data, np.arange(50, 60), key=0, metric_names=("NDCG@10",)
    )
    assert list(table.rows) == ["mlp", "popularity", "ease"]
    with caplog.at_level("WARNING"):
        table = evaluation.evaluate_model(
            params,
            config,
            data,
            np.arange(50, 60),
            key=0,
            max_memory_gb=1e-9,
            metric_names=("NDCG@10",),
        )
    assert list(table.rows) == ["mlp", "popularity"]
    assert "EASE skipped" in caplog.text


# Steering ------------------------------------------------------------------


@pytest.fixture(scope="module")
def steering_setup(data):
    from songrec_jax import latent, models
    from songrec_jax.config import ModelConfig

    config = ModelConfig(kind="vae", n_songs=N_SONGS, input_len=INPUT_LEN, dims=(8,))
    params = models.init(
        config,
        key=jax.random.key(0),
        song_popularity=data.song_popularity() / data.n_users,
    )
    train = splits.input_target_split(data, np.arange(30), INPUT_LEN, key=0)
    tag_latents = latent.compute_tag_latents(
        params, config, data, train.inputs, latent.dominant_tags_of_split(data, train)
    )
    test = evaluation.make_split(
        data, np.arange(30, 60), protocol="input_target", input_len=INPUT_LEN, key=1
    )
    results = evaluation.steering_study(
        params,
        config,
        data,
        test,
        tag_latents,
        alphas=(0.0, 1.0, 4.0),
        k=10,
        min_users=4,
        batch_size=8,
    )
    return params, config, test, tag_latents, results


def test_steering_results_have_the_documented_structure(steering_setup, tmp_path):
    from songrec_jax import plotting

    *_, tag_latents, results = steering_setup
    assert results["alphas"] == [0.0, 1.0, 4.0] and results["k"] == 10
    assert results["reli"] == evaluation.DEFAULT_RELI
    assert list(results["methods"]) == ["postfilter", "latent", "both"]
    sizes = {**results["class_sizes"], **results["skipped_classes"]}
    assert sum(sizes.values()) == results["n_users"]
    assert results["n_users"] + sum(results["skipped_users"].values()) == 30
    assert all(n >= 4 for n in results["class_sizes"].values())
    assert all(n < 4 for n in results["skipped_classes"].values())
    for res in results["methods"].values():
        assert set(res["per_class"]) == set(results["class_sizes"])
        for curves in [res["average"], *res["per_class"].values()]:
            for name in evaluation.STEERING_METRICS:
                assert len(curves[name]) == len(curves[name + "_se"]) == 3
        share = np.array(res["average"]["tag_share"])
        counts = [
            np.array(res["average"][f"{w}_count"]) for w in ("heldout", "tag", "other")
        ]
        np.testing.assert_allclose(share, counts[1] / 10, rtol=1e-6)
        assert np.all(counts[1] + counts[2] <= 10 + 1e-6)
        assert np.all(
            (np.array(res["average"]["graded_ndcg"]) >= 0)
            & (np.array(res["average"]["graded_ndcg"]) <= 1)
        )
    first_class = next(iter(results["class_sizes"]))
    plotting.plot_steering(
        results,
        tmp_path / "steering.png",
        metric=["tag_share", "ndcg"],
        classes=[first_class],
    )
    assert (tmp_path / "steering.png").stat().st_size > 0


def test_unsteered_rows_equal_plain_recommendations(data, steering_setup):
    from songrec_jax import latent, metrics, recommend

    params, config, test, tag_latents, results = steering_setup
    dominant = latent.dominant_tags_of_split(data, test)
    users = np.flatnonzero((dominant >= 0) & tag_latents.has_mean[dominant])
    top = recommend.recommend(params, config, test.inputs[users], k=10).indices
    heldout = test.targets_dense(users, N_SONGS) > 0
    ndcg, tag_count = [], []
    for i, u in enumerate(users):
        tag = data.tag_names[dominant[u]]
        tag_count.append(recommend.tag_song_mask(data, tag)[top[i]].sum())
        hits = heldout[i][top[i]].astype(float)
        ideal = (1 / np.log2(np.arange(min(10, heldout[i].sum())) + 2)).sum()
        ndcg.append((hits / np.log2(np.arange(10) + 2)).sum() / ideal)
    z = latent.user_latents(params, config, test.inputs[users])
    distance = np.linalg.norm(z - tag_latents.means[dominant[users]], axis=1)
    for method, res in results["methods"].items():
        average = res["average"]
        assert average["ndcg"][0] == pytest.approx(np.mean(ndcg), rel=1e-5), method
        assert average["tag_count"][0] == pytest.approx(np.mean(tag_count)), method
        assert average["euclidean"][0] == pytest.approx(np.mean(distance), rel=1e-5)
        for name in evaluation.STEERING_METRICS:  # alpha = 0 is the same for all
            assert (
                average[name][0] == results["methods"]["postfilter"]["average"][name][0]
            )
    assert metrics.mean_and_stderr(ndcg).n == len(users)


def test_postfilter_raises_the_tag_share(steering_setup):
    *_, results = steering_setup
    for method in ("postfilter", "both"):
        share = results["methods"][method]["average"]["tag_share"]
        assert share[0] <= share[1] <= share[2] and share[2] > share[0]


def test_distances_are_those_of_the_decoded_latent_vector(data, steering_setup):
    from songrec_jax import latent, recommend

    params, config, test, tag_latents, results = steering_setup
    dominant = latent.dominant_tags_of_split(data, test)
    users = np.flatnonzero(dominant >= 0)
    expected = []
    for alpha in results["alphas"]:
        distances = []
        for u in users:
            tag = str(data.tag_names[dominant[u]])
            z = recommend.steered_latents(
                params,
                config,
                test.inputs[u : u + 1],
                tags={tag: 1.0},
                alpha=alpha,
                data=data,
                tag_latents=tag_latents,
            )[0]
            mean, std = tag_latents.tag(tag)
            distances.append(np.linalg.norm((z - mean) / np.maximum(std, 1e-6)))
        expected.append(np.mean(distances))
    latent_ = results["methods"]["latent"]["average"]["mahalanobis"]
    np.testing.assert_allclose(latent_, expected, rtol=1e-4)
    assert latent_[2] != latent_[0]
    unsteered = results["methods"]["postfilter"]["average"]["mahalanobis"]
    assert unsteered == [latent_[0]] * 3


def test_steering_json_round_trip(tmp_path, steering_setup):
    *_, results = steering_setup
    results = {**results, "extra": [1.0, float("nan")]}
    path = evaluation.save_steering(results, tmp_path / "sub" / "steering.json")
    json.loads(path.read_text())  # strict JSON: NaN written as null
    back = evaluation.load_steering(path)
    assert back.keys() == results.keys()
    assert back["extra"][0] == 1.0 and np.isnan(back["extra"][1])
    assert back["methods"] == results["methods"]
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_headline_on_a_hand_made_result():
    def method(share, ndcg):
        return {"average": {"tag_share": share, "ndcg": ndcg}}

    results = {
        "alphas": [0.0, 0.5, 1.0, 2.0],
        "methods": {
            "postfilter": method([0.1, 0.15, 0.2, 0.5], [0.4, 0.38, 0.3, 0.1]),
            "latent": method([0.1, 0.12, 0.15, 0.19], [0.4, 0.4, 0.4, 0.4]),
            "both": method([0.0, 0.0, 0.3, 0.6], [0.2, 0.2, 0.1, 0.05]),
        },
    }
    headline = evaluation.steering_headline(results)
    assert headline["postfilter"]["alpha"] == 1.0
    assert headline["postfilter"]["ndcg"] == 0.3
    assert headline["postfilter"]["ndcg_fraction"] == pytest.approx(0.75)
    assert headline["latent"]["alpha"] is None
    assert headline["latent"]["ndcg_fraction"] is None
    assert headline["both"]["alpha"] == 1.0  # a share of 0 doubles once it rises
    assert "never doubles" in evaluation.format_headline(headline)
    with pytest.raises(InputError, match="must include 0"):
        evaluation.steering_headline({**results, "alphas": [0.5, 1, 2, 3]})


def test_random_targets_avoid_each_users_dominant_tag(data, steering_setup):
    params, config, test, tag_latents, _ = steering_setup
    kwargs = dict(
        alphas=(0.0, 4.0),
        k=10,
        min_users=1,
        batch_size=8,
        methods=("postfilter",),
        target="random",
    )
    results = evaluation.steering_study(
        params, config, data, test, tag_latents, key=3, **kwargs
    )
    again = evaluation.steering_study(
        params, config, data, test, tag_latents, key=3, **kwargs
    )
    assert results == again and results["target"] == "random"
    assert sum(results["class_sizes"].values()) == results["n_users"]
    has_mean = np.array([True, False, True, True, True])
    dominant = np.random.default_rng(0).choice([0, 2, 3, 4], 400)
    drawn = evaluation._other_tags(dominant, has_mean, 0)
    assert set(drawn) == {0, 2, 3, 4} and not np.any(drawn == dominant)
    share = results["methods"]["postfilter"]["average"]["tag_share"]
    assert share[1] > share[0]
    with pytest.raises(InputError, match="needs key="):
        evaluation.steering_study(
            params, config, data, test, tag_latents, target="random"
        )
    with pytest.raises(InputError, match="target='liked'"):
        evaluation.steering_study(
            params, config, data, test, tag_latents, target="liked"
        )
