"""Bad calls to public functions raise clear exceptions of the library."""

import jax
import numpy as np
import pytest

from songrec_jax import latent, models, recommend, splits, synthetic
from songrec_jax.config import Config, ModelConfig
from songrec_jax.errors import (
    CheckpointError,
    ConfigError,
    DataFormatError,
    InputError,
    ResourceError,
    SongrecError,
    TrainingError,
    UnknownTagError,
)

DATA = synthetic.generate(200, 60, 4, key=0)
CONFIG = Config(model=ModelConfig(kind="vae", n_songs=60, input_len=8, dims=(16, 4)))
PARAMS = models.init(CONFIG, key=jax.random.key(0))
X = np.full((3, 8), -1, np.int32)
X[:, :3] = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_every_library_error_is_a_songrec_error_and_a_builtin():
    for error, builtin in [
        (ConfigError, ValueError),
        (InputError, ValueError),
        (UnknownTagError, KeyError),
        (DataFormatError, ValueError),
        (CheckpointError, OSError),
        (TrainingError, RuntimeError),
        (ResourceError, MemoryError),
    ]:
        assert issubclass(error, SongrecError) and issubclass(error, builtin)
    assert str(UnknownTagError("unknown tag 'x'")) == "unknown tag 'x'"
    assert str(DataFormatError("bad", path="f.tsv", line=3)) == "f.tsv, line 3: bad"


@pytest.mark.parametrize(
    "inputs, fragment",
    [
        (X[:, :5], "shape"),
        (X.astype(np.float32), "dtype"),
        (np.where(X == 1, 60, X), "0..59"),
        (np.where(X == 1, -7, X), "-1 for padding"),
    ],
)
def test_recommend_rejects_bad_inputs(inputs, fragment):
    with pytest.raises(InputError, match=fragment):
        recommend.recommend(PARAMS, CONFIG, inputs, k=5)


def test_recommend_rejects_bad_k_and_steering():
    with pytest.raises(InputError, match="k="):
        recommend.recommend(PARAMS, CONFIG, X, k=61)
    tag = str(DATA.tag_names[0])
    with pytest.raises(UnknownTagError, match="'nope'"):
        recommend.recommend(
            PARAMS, CONFIG, X, k=5, tags={"nope": 1.0}, alpha=1.0, data=DATA
        )
    for weight in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match="weight"):
            recommend.recommend(
                PARAMS, CONFIG, X, k=5, tags={tag: weight}, alpha=1.0, data=DATA
            )
    with pytest.raises(InputError, match="alpha"):
        recommend.recommend(
            PARAMS, CONFIG, X, k=5, tags={tag: 1.0}, alpha=float("nan"), data=DATA
        )
    with pytest.raises(InputError, match="method"):
        recommend.recommend(
            PARAMS,
            CONFIG,
            X,
            k=5,
            tags={tag: 1.0},
            alpha=1.0,
            data=DATA,
            method="magic",
        )


def test_empty_history_is_refused_with_advice():
    with pytest.raises(InputError, match="empty"):
        recommend.recommend_one(PARAMS, CONFIG, [], k=5)


def test_non_finite_parameters_are_refused():
    broken = jax.tree_util.tree_map(lambda a: a, PARAMS)
    broken["params"]["output"]["bias"] = (
        broken["params"]["output"]["bias"].at[3].set(np.nan)
    )
    with pytest.raises(InputError, match="NaN or infinite"):
        recommend.recommend(broken, CONFIG, X, k=5)
    with pytest.raises(InputError, match="NaN or infinite"):
        latent.user_latents(broken, CONFIG, X)


def test_finite_parameters_are_checked_once_and_mutable_ones_every_time():
    from songrec_jax import models

    recommend.recommend(PARAMS, CONFIG, X, k=5)  # checked and remembered
    assert models._known_finite(jax.tree_util.tree_leaves(PARAMS))
    as_numpy = jax.tree_util.tree_map(np.array, PARAMS)
    recommend.recommend(as_numpy, CONFIG, X, k=5)
    as_numpy["params"]["output"]["kernel"][0, 0] = np.inf  # changed in place
    with pytest.raises(InputError, match="NaN or infinite"):
        recommend.recommend(as_numpy, CONFIG, X, k=5)


def test_parameters_of_another_config_are_refused():
    other = Config(model=ModelConfig(kind="vae", n_songs=60, input_len=8, dims=(16, 5)))
    with pytest.raises(InputError, match="do not match the model config"):
        recommend.recommend(PARAMS, other, X, k=5)


@pytest.mark.parametrize(
    "songs, fragment",
    [
        ([1, 2.5], "2.5"),
        ([1, -3], "-3"),
        ([1, 99], "99"),
        (["a"], "'a'"),
        ([True], "True"),
    ],
)
def test_to_input_names_the_bad_song(songs, fragment):
    with pytest.raises(InputError, match=fragment):
        splits.to_input(songs, 8, n_songs=60, key=0)


def test_tag_latents_without_users_are_unknown_for_steering():
    dominant = np.zeros(3, np.int64)  # every user has tag 0: other tags have no mean
    tl = latent.compute_tag_latents(PARAMS, CONFIG, DATA, X, dominant)
    empty = str(DATA.tag_names[1])
    with pytest.raises(UnknownTagError, match=empty):
        recommend.recommend(
            PARAMS,
            CONFIG,
            X,
            k=5,
            tags={empty: 1.0},
            alpha=1.0,
            method="latent",
            data=DATA,
            tag_latents=tl,
        )
