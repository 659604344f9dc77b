import dataclasses
import json
import math
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from songrec_jax import checkpointing, metrics, models, synthetic, training
from songrec_jax.config import Config, DataConfig, LossConfig, ModelConfig, TrainConfig
from songrec_jax.errors import CheckpointError, ConfigError, TrainingError

DATA = synthetic.generate(600, 300, 6, key=0)


def make_config(kind="vae", loss="ce", epochs=4, **train):
    return Config(
        model=ModelConfig(kind=kind, n_songs=DATA.n_songs, input_len=32, dims=(32, 8)),
        loss=LossConfig(name=loss, beta=0.2),
        train=TrainConfig(
            **{
                "learning_rate": 3e-3,
                "batch_size": 64,
                "epochs": epochs,
                "patience": 3,
                "restarts": 1,
                "seed": 0,
                **train,
            }
        ),
        data=DataConfig(n_users=600, n_songs=300, n_tags=6),
    )


def heldout_ndcg(scores, split):
    relevant = metrics.relevance_from_sparse(
        split.target_indptr, split.target_indices, DATA.n_songs
    )
    seen = np.asarray(training.input_mask(jnp.asarray(split.inputs), DATA.n_songs))
    top, _ = metrics.top_k(scores, 100, exclude=seen)
    return float(np.nanmean(metrics.ndcg_at_k(top, relevant)))


@pytest.mark.parametrize("kind", ["mlp", "vae"])
def test_training_lowers_validation_loss_and_beats_popularity(kind):
    config = make_config(kind, epochs=6)
    result = training.train(config, DATA, progress=False)
    val_losses = [r["val"]["total"] for r in result.history.records]
    assert min(val_losses[1:]) < val_losses[0]
    split = result.splits.val
    logits = models.forward(result.params, config, split.inputs)[0]
    popularity = DATA.subset_users(result.splits.train_users).song_popularity()
    pop_scores = np.broadcast_to(popularity.astype(np.float32), logits.shape)
    assert heldout_ndcg(logits, split) > heldout_ndcg(pop_scores, split) + 0.02


@pytest.mark.parametrize("loss", ["bce", "bce2", "focal", "focal2"])
def test_every_loss_trains_without_nan(loss):
    result = training.train(make_config(loss=loss, epochs=2), DATA, progress=False)
    for record in result.history.records:
        assert all(math.isfinite(v) for v in record["train"].values())
        assert all(math.isfinite(v) for v in record["val"].values())


def test_patience_restarts_and_lr_factor():
    config = make_config(
        epochs=8, patience=1, restarts=2, lr_factor=0.5, learning_rate=0.05
    )
    history = training.train(config, DATA, progress=False).history
    assert len(history.runs) >= 2
    lrs = [run[0]["lr"] for run in history.runs if run]
    assert lrs == [0.05 * 0.5**i for i in range(len(lrs))]
    # Every group but the last ends with patience exhausted.
    assert all(run[-1]["patience"] == 0 for run in history.runs[:-1])


def test_select_by_ndcg_keeps_the_best_ndcg_epoch(tmp_path):
    config = make_config(epochs=3, select_by="ndcg")
    result = training.train(config, DATA, directory=tmp_path, progress=False)
    best_epoch = max(result.history.records, key=lambda r: r["val"]["ndcg"])["epoch"]
    assert checkpointing.load_meta(tmp_path, "best")["step"] == best_epoch
    val = training.evaluate_split(result.params, config, result.splits.val, beta=0.2)
    assert val["ndcg"] == pytest.approx(
        best_epoch and max(r["val"]["ndcg"] for r in result.history.records), rel=1e-5
    )


def test_best_checkpoint_reproduces_returned_params(tmp_path):
    config = make_config(epochs=2)
    result = training.train(config, DATA, directory=tmp_path, progress=False)
    params, stored = checkpointing.load_params(tmp_path)
    assert stored == config
    x = result.splits.val.inputs[:8]
    np.testing.assert_array_equal(
        models.forward(params, config, x)[0],
        models.forward(result.params, config, x)[0],
    )
    history = training.History.from_dict(checkpointing.load_meta(tmp_path)["history"])
    assert len(history.records) >= 1


def test_same_seed_gives_identical_parameters():
    a = training.train(make_config(epochs=2), DATA, progress=False).params
    b = training.train(make_config(epochs=2), DATA, progress=False).params
    for x, y in zip(
        jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True
    ):
        np.testing.assert_array_equal(x, y)


RESUME_SCRIPT = textwrap.dedent("""
    import sys
    from songrec_jax import synthetic, training
    from songrec_jax.config import load_config
    config = load_config(sys.argv[1])
    data = synthetic.generate(600, 300, 6, key=0)
    stop_after = int(sys.argv[3])

    def stop(event, info):
        if event == "epoch" and info["epoch"] == stop_after:
            raise KeyboardInterrupt

    try:
        training.train(config, data, directory=sys.argv[2], progress=False,
                       resume=stop_after == 0, callback=stop if stop_after else None)
    except training.TrainingInterrupted as e:
        print("INTERRUPTED", e)
""")


def test_resume_in_another_process_equals_uninterrupted(tmp_path):
    from songrec_jax.config import save_config

    config = make_config(
        epochs=4,
        patience=1,
        restarts=1,
        learning_rate=0.02,
        target="all",
        resample=True,
    )
    save_config(config, tmp_path / "c.toml")
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT)
    run = lambda stop: subprocess.run(  # noqa: E731
        [
            sys.executable,
            str(script),
            str(tmp_path / "c.toml"),
            str(tmp_path / "ck"),
            str(stop),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    first = run(2)
    assert "INTERRUPTED" in first.stdout and "--resume" in first.stdout
    assert checkpointing.load_meta(tmp_path / "ck", "latest")["loop"]["epoch"] == 2
    run(0)
    resumed, _ = checkpointing.load_params(tmp_path / "ck", kind="latest")
    resumed_best, _ = checkpointing.load_params(tmp_path / "ck", kind="best")

    straight = training.train(
        config, DATA, directory=tmp_path / "straight", progress=False
    )
    expected, _ = checkpointing.load_params(tmp_path / "straight", kind="latest")
    for x, y in zip(
        jax.tree_util.tree_leaves(resumed),
        jax.tree_util.tree_leaves(expected),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(
        jax.tree_util.tree_leaves(resumed_best),
        jax.tree_util.tree_leaves(straight.params),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)
    history = checkpointing.load_meta(tmp_path / "ck", "latest")["history"]
    assert history == json.loads(json.dumps(straight.history.to_dict()))


def test_resampling_draws_new_training_inputs_each_epoch():
    config = make_config(target="all", resample=True)
    users = training.make_splits(DATA, config).train_users
    first = training.training_split(DATA, config, users, epoch=1)
    again = training.training_split(DATA, config, users, epoch=1)
    second = training.training_split(DATA, config, users, epoch=2)
    np.testing.assert_array_equal(first.inputs, again.inputs)
    assert not np.array_equal(first.inputs, second.inputs)
    np.testing.assert_array_equal(first.target_indices, second.target_indices)
    fixed = config.replace(train=dataclasses.replace(config.train, resample=False))
    np.testing.assert_array_equal(
        training.training_split(DATA, fixed, users, epoch=1).inputs,
        training.training_split(DATA, fixed, users, epoch=2).inputs,
    )
    val = training.make_splits(DATA, config).val  # validation predicts the rest
    for row in range(val.n_users):
        assert not set(val.input_songs(row)) & set(val.target_songs(row))


def test_resume_with_another_config_raises(tmp_path):
    training.train(make_config(epochs=1), DATA, directory=tmp_path, progress=False)
    other = make_config(epochs=1, learning_rate=0.01)
    with pytest.raises(CheckpointError, match="another config"):
        training.train(other, DATA, directory=tmp_path, resume=True, progress=False)


def test_non_finite_loss_stops_with_epoch_and_step(tmp_path, monkeypatch):
    original = training.make_train_step
    calls = {"n": 0}

    def poisoned(config, optimizer):
        step = original(config, optimizer)

        def wrapped(state, batch, key, beta):
            state, parts = step(state, batch, key, beta)
            calls["n"] += 1
            if calls["n"] == 12:  # inside the second epoch (8 batches each)
                parts = {k: v * jnp.nan for k, v in parts.items()}
            return state, parts

        return wrapped

    monkeypatch.setattr(training, "make_train_step", poisoned)
    config = make_config(epochs=3)
    with pytest.raises(TrainingError, match=r"epoch 2, step 12"):
        training.train(config, DATA, directory=tmp_path, progress=False)
    assert checkpointing.load_meta(tmp_path, "latest")["loop"]["epoch"] == 1
    checkpointing.load_params(tmp_path)


def test_mismatched_song_count_raises():
    config = make_config()
    bad = config.replace(model=dataclasses.replace(config.model, n_songs=10))
    with pytest.raises(ConfigError, match="config_for_data"):
        training.train(bad, DATA, progress=False)
    assert training.config_for_data(bad, DATA).model.n_songs == DATA.n_songs


def test_history_round_trip(tmp_path):
    history = training.History()
    history.add({"epoch": 1, "train": {"total": 2.0}, "val": {"total": 1.0}}, 3)
    history.restart()
    history.add({"epoch": 2, "train": {"total": 1.5}, "val": {"total": 1.2}}, 2)
    history.save(tmp_path / "h.json")
    loaded = training.History.load(tmp_path / "h.json")
    assert loaded.runs == history.runs and len(loaded.records) == 2
    with pytest.raises(CheckpointError):
        training.History.from_dict({"runs": 3})
