"""Tests of songrec_jax.splits: user splits, inputs, targets and batches."""

import logging
import math

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from songrec_jax import splits
from songrec_jax.data import ListeningData, from_pairs
from songrec_jax.errors import InputError

FAST = settings(max_examples=30, deadline=None)


def make_data(histories: list, n_songs: int) -> ListeningData:
    """Listening data whose user u listened to the songs in histories[u]."""
    songs = [np.unique(np.asarray(sorted(h), np.int64)) for h in histories]
    lengths = [len(s) for s in songs]
    return ListeningData(
        indptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        indices=np.concatenate([np.zeros(0, np.int64), *songs]).astype(np.int32),
        counts=np.ones(sum(lengths), np.float32),
        tag_indptr=np.zeros(n_songs + 1, np.int64),
        tag_indices=np.zeros(0, np.int32),
        user_ids=np.array([f"u{i}" for i in range(len(histories))]),
        song_ids=np.array([f"s{i}" for i in range(n_songs)]),
        song_names=np.array([f"s{i}" for i in range(n_songs)]),
        tag_names=np.array([], dtype=str),
    )


@st.composite
def listening_data(draw, max_users: int = 12, max_songs: int = 40):
    n_songs = draw(st.integers(2, max_songs))
    song = st.integers(0, n_songs - 1)
    histories = draw(
        st.lists(st.sets(song, max_size=n_songs), min_size=1, max_size=max_users)
    )
    return make_data(histories, n_songs)


def random_data(n_users: int = 50, n_songs: int = 60, seed: int = 0) -> ListeningData:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 40, n_users)
    return make_data([rng.choice(n_songs, n, replace=False) for n in lengths], n_songs)


def row_sets(split: splits.UserSplit, row: int) -> tuple[set, set]:
    return set(split.input_songs(row).tolist()), set(split.target_songs(row).tolist())


# split_users -------------------------------------------------------------------


@FAST
@given(
    n_users=st.integers(1, 500),
    val_fraction=st.floats(0, 0.45),
    test_fraction=st.floats(0, 0.45),
    seed=st.integers(0, 2**32 - 1),
)
def test_split_users_partitions_all_users(n_users, val_fraction, test_fraction, seed):
    train, val, test = splits.split_users(
        n_users, val_fraction=val_fraction, test_fraction=test_fraction, key=seed
    )
    together = np.concatenate([train, val, test])
    np.testing.assert_array_equal(np.sort(together), np.arange(n_users))
    assert all(
        a.dtype == np.int64 and np.all(np.diff(a) > 0) for a in (train, val, test)
    )
    assert len(train) >= 1
    expected = [
        max(1, math.floor(n_users * f + 0.5)) if f > 0 else 0
        for f in (val_fraction, test_fraction)
    ]
    if n_users - sum(expected) >= 1:
        assert [len(val), len(test)] == expected
    else:
        assert len(val) <= expected[0] and len(test) <= expected[1]


def test_split_users_sizes_round_to_nearest():
    sizes = [len(a) for a in splits.split_users(1000, key=0)]
    assert sizes == [800, 100, 100]
    sizes = [len(a) for a in splits.split_users(25, test_fraction=0.02, key=0)]
    assert sizes == [21, 3, 1]  # 2.5 and 0.5 round up
    assert [len(a) for a in splits.split_users(3, key=0)] == [1, 1, 1]
    assert [len(a) for a in splits.split_users(2, key=0)] == [1, 1, 0]
    assert [len(a) for a in splits.split_users(1, key=0)] == [1, 0, 0]


def test_split_users_is_deterministic_per_key():
    a = splits.split_users(200, key=7)
    b = splits.split_users(200, key=7)
    c = splits.split_users(200, key=8)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"n_users": 0}, "n_users=0"),
        ({"n_users": True}, "n_users=True"),
        ({"val_fraction": -0.1}, "val_fraction=-0.1"),
        ({"test_fraction": 1.0}, "test_fraction=1.0"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "0.5 \\+ 0.5"),
    ],
)
def test_split_users_rejects_bad_arguments(kwargs, fragment):
    args = {"n_users": 10, **kwargs}
    with pytest.raises(InputError, match=fragment):
        splits.split_users(args.pop("n_users"), **args, key=0)


# to_input ------------------------------------------------------------------------


@FAST
@given(
    history=st.lists(st.integers(0, 99), max_size=60),
    input_len=st.integers(1, 30),
    seed=st.integers(0, 2**32 - 1),
)
def test_to_input_is_a_padded_sorted_subset(history, input_len, seed):
    out = splits.to_input(history, input_len, key=seed, n_songs=100)
    assert out.shape == (input_len,) and out.dtype == np.int32
    distinct = sorted(set(history))
    n_real = min(len(distinct), input_len)
    songs = out[:n_real]
    assert np.all(out[n_real:] == -1)
    assert np.all(np.diff(songs) > 0)
    assert set(songs.tolist()) <= set(distinct)
    if len(distinct) <= input_len:
        np.testing.assert_array_equal(songs, distinct)


def test_to_input_subsample_depends_only_on_key():
    history = list(range(50))
    a = splits.to_input(history, 10, key=3)
    np.testing.assert_array_equal(a, splits.to_input(history, 10, key=3))
    assert not np.array_equal(a, splits.to_input(history, 10, key=4))


def test_to_input_accepts_arrays_sets_whole_floats_and_empty_histories():
    expected = np.array([1, 3, -1, -1], np.int32)
    for history in (
        [3, 1, 3],
        (1.0, 3.0),
        {1, 3},
        np.array([3, 1], np.uint8),
        np.array([3.0, 1.0]),
        jnp.array([1, 3]),
    ):
        np.testing.assert_array_equal(splits.to_input(history, 4, n_songs=4), expected)
    np.testing.assert_array_equal(splits.to_input([], 3), [-1, -1, -1])


@pytest.mark.parametrize(
    "history, fragment",
    [
        ([1, 2.5], "2.5 at position 1 is not a whole number"),
        ([True, 2], "True at position 0 is a boolean"),
        ([1, "3"], "'3' at position 1 is not a whole number"),
        ([float("nan")], "nan at position 0"),
        ([float("inf")], "inf at position 0"),
        ([4, -1], "-1 at position 1 is out of range"),
        ([10], "10 at position 0 is out of range"),
        (np.array([0.5]), "0.5 at position 0"),
        (np.array([True, False]), "dtype bool"),
        (np.array(["1"]), "dtype <U1"),
        (np.array([[1, 2]]), "shape \\(1, 2\\)"),
        ("123", "string '123'"),
        (7, "got 7"),
    ],
)
def test_to_input_rejects_bad_song_indexes(history, fragment):
    with pytest.raises(InputError, match=fragment) as error:
        splits.to_input(history, 5, key=0, n_songs=10)
    assert "accepted: whole numbers >= 0 and < 10" in str(error.value)


def test_to_input_needs_a_key_only_to_subsample():
    np.testing.assert_array_equal(splits.to_input([2, 0], 2), [0, 2])
    with pytest.raises(InputError, match="key="):
        splits.to_input([0, 1, 2], 2)
    with pytest.raises(InputError, match="input_len=0"):
        splits.to_input([0], 0)


# input_target_split --------------------------------------------------------------


@FAST
@given(
    data=listening_data(),
    input_len=st.integers(1, 12),
    target=st.sampled_from(["rest", "window"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_input_target_split_partitions_each_history(data, input_len, target, seed):
    users = np.arange(data.n_users)[::-1]
    split = splits.input_target_split(data, users, input_len, key=seed, target=target)
    lengths = np.diff(data.indptr)
    np.testing.assert_array_equal(split.users, users[lengths[users] >= 2])
    assert split.inputs.shape == (split.n_users, input_len)
    for row, user in enumerate(split.users):
        history = set(data.user_songs(user).tolist())
        inputs, targets = row_sets(split, row)
        n = len(history)
        n_input = min(input_len, max(1, math.floor(0.8 * n)))
        assert len(inputs) == n_input and inputs <= history
        assert np.all(np.diff(split.input_songs(row)) > 0)
        assert not inputs & targets
        if target == "rest":
            assert inputs | targets == history
        else:
            assert targets <= history and len(targets) == min(input_len, n - n_input)
        assert np.all(np.diff(split.target_songs(row)) > 0)


def test_input_target_split_is_deterministic_per_key():
    data = random_data()
    users = np.arange(data.n_users)
    a = splits.input_target_split(data, users, 10, key=1)
    b = splits.input_target_split(data, users, 10, key=1)
    c = splits.input_target_split(data, users, 10, key=2)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    np.testing.assert_array_equal(a.target_indices, b.target_indices)
    assert not np.array_equal(a.inputs, c.inputs)


def test_input_target_split_logs_skipped_users(caplog):
    data = make_data([[0], [0, 1], [], [1, 2, 3]], n_songs=4)
    with caplog.at_level(logging.INFO, logger="songrec_jax.splits"):
        split = splits.input_target_split(data, [0, 1, 2, 3], 5, key=0)
    np.testing.assert_array_equal(split.users, [1, 3])
    assert "skipped 2 of 4 users with fewer than 2 songs" in caplog.text


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"users": [0, 9]}, "user 9 at position 1 is out of range"),
        ({"users": [1, 1]}, "repeated: \\[1\\]"),
        ({"target": "most"}, "target='most'"),
        ({"input_len": 0}, "input_len=0"),
        ({"max_input_fraction": 1.0}, "max_input_fraction=1.0"),
    ],
)
def test_input_target_split_rejects_bad_arguments(kwargs, fragment):
    args = {"users": [0, 1], "input_len": 5, **kwargs}
    with pytest.raises(InputError, match=fragment):
        splits.input_target_split(random_data(n_users=3), key=0, **args)


# fold_in_split -------------------------------------------------------------------


@FAST
@given(
    data=listening_data(max_songs=60),
    input_len=st.integers(1, 50),
    min_items=st.integers(2, 8),
    seed=st.integers(0, 2**32 - 1),
)
def test_fold_in_split_holds_out_a_fifth(data, input_len, min_items, seed):
    users = np.arange(data.n_users)
    split = splits.fold_in_split(data, users, input_len, key=seed, min_items=min_items)
    lengths = np.diff(data.indptr)
    np.testing.assert_array_equal(split.users, users[lengths >= min_items])
    for row, user in enumerate(split.users):
        history = set(data.user_songs(user).tolist())
        inputs, targets = row_sets(split, row)
        n_fold_in = min(n - 1, max(1, math.ceil(0.8 * n))) if (n := len(history)) else 0
        assert len(targets) == n - n_fold_in >= 1
        assert len(inputs) == min(n_fold_in, input_len)
        assert inputs <= history and targets <= history and not inputs & targets
        if n_fold_in <= input_len:
            assert inputs | targets == history


def test_fold_in_split_matches_the_usual_counts():
    data = make_data([range(5), range(6), range(10), range(4), range(30)], 40)
    split = splits.fold_in_split(data, range(5), 20, key=0)
    np.testing.assert_array_equal(split.users, [0, 1, 2, 4])
    np.testing.assert_array_equal(split.input_lengths(), [4, 5, 8, 20])
    np.testing.assert_array_equal(split.target_lengths(), [1, 1, 2, 6])


def test_fold_in_split_rejects_bad_arguments():
    data = random_data(n_users=3)
    with pytest.raises(InputError, match="min_items=1"):
        splits.fold_in_split(data, [0], 5, key=0, min_items=1)
    with pytest.raises(InputError, match="fold_in_fraction=0"):
        splits.fold_in_split(data, [0], 5, key=0, fold_in_fraction=0)


# UserSplit and batches ---------------------------------------------------------


def test_targets_dense_matches_a_loop():
    split = splits.input_target_split(random_data(), np.arange(50), 8, key=0)
    rows = np.array([3, 0, 3, split.n_users - 1])
    dense = split.targets_dense(rows, 70)
    expected = np.zeros((4, 70), np.float32)
    for i, row in enumerate(rows):
        expected[i, split.target_songs(row)] = 1
    np.testing.assert_array_equal(dense, expected)
    with pytest.raises(InputError, match="width=5 is too small"):
        split.targets_dense(rows, 5)


def test_user_split_rejects_inconsistent_arrays():
    with pytest.raises(InputError, match="target_indptr"):
        splits.UserSplit(
            users=np.arange(2),
            inputs=np.full((2, 3), -1, np.int32),
            target_indptr=np.array([0, 2]),
            target_indices=np.array([1, 2], np.int32),
        )


def batch_rows(batch) -> list:
    """The real rows of a batch as hashable (inputs, targets) pairs."""
    real = batch["weights"] == 1
    return [
        (tuple(i), tuple(np.flatnonzero(t)))
        for i, t in zip(batch["inputs"][real], batch["targets"][real], strict=True)
    ]


@FAST
@given(
    data=listening_data(max_users=30),
    batch_size=st.integers(1, 8),
    extra_outputs=st.integers(0, 5),
    seed=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)
def test_batches_cover_each_user_once_with_fixed_shapes(
    data, batch_size, extra_outputs, seed
):
    split = splits.input_target_split(data, np.arange(data.n_users), 6, key=0)
    n_outputs = data.n_songs + extra_outputs
    batches = list(splits.batches(split, batch_size, n_outputs, key=seed))
    assert len(batches) == splits.n_batches(split, batch_size)
    seen = []
    for batch in batches:
        assert batch["inputs"].shape == (batch_size, 6)
        assert batch["inputs"].dtype == np.int32
        assert batch["targets"].shape == (batch_size, n_outputs)
        assert batch["targets"].dtype == np.float32
        assert batch["weights"].dtype == np.float32
        padding = batch["weights"] == 0
        assert np.all(batch["inputs"][padding] == -1)
        assert np.all(batch["targets"][padding] == 0)
        assert np.all(batch["targets"][:, data.n_songs :] == 0)
        seen += batch_rows(batch)
    everyone = [
        (tuple(split.inputs[r]), tuple(split.target_songs(r)))
        for r in range(split.n_users)
    ]
    assert sorted(seen) == sorted(everyone)


def test_batches_pad_the_last_batch_or_drop_it():
    split = splits.input_target_split(random_data(), np.arange(50), 8, key=0)
    n = split.n_users
    weights = [b["weights"] for b in splits.batches(split, 16, 60)]
    assert len(weights) == -(-n // 16) == splits.n_batches(split, 16)
    assert weights[-1].sum() == n - 16 * (len(weights) - 1) < 16
    assert all(w.sum() == 16 for w in weights[:-1])
    kept = list(splits.batches(split, 16, 60, drop_remainder=True))
    assert len(kept) == n // 16 == splits.n_batches(split, 16, drop_remainder=True)
    assert all(b["weights"].sum() == 16 for b in kept)


def test_batches_shuffle_deterministically_per_key():
    split = splits.input_target_split(random_data(), np.arange(50), 8, key=0)
    first = lambda key: next(splits.batches(split, 16, 60, key=key))["inputs"]
    np.testing.assert_array_equal(first(1), first(1))
    assert not np.array_equal(first(1), first(2))
    np.testing.assert_array_equal(first(None), split.inputs[:16])


def test_batches_reject_too_few_outputs_and_empty_splits_yield_nothing():
    split = splits.input_target_split(random_data(), np.arange(50), 8, key=0)
    with pytest.raises(InputError, match="n_outputs=10 is too small"):
        splits.batches(split, 4, 10)
    with pytest.raises(InputError, match="batch_size=0"):
        splits.batches(split, 0, 60)
    empty = splits.input_target_split(make_data([[1]], 3), [0], 4, key=0)
    assert empty.n_users == 0
    assert list(splits.batches(empty, 4, 3)) == []


def test_autoencoding_split_targets_every_song_and_inputs_what_fits():
    data = from_pairs([0, 0, 0, 1, 2, 2], [0, 1, 2, 3, 4, 5])
    split = splits.input_target_split(data, [0, 1, 2], 2, key=0, target="all")
    assert split.users.tolist() == [0, 1, 2]  # a single song is enough
    assert split.input_lengths().tolist() == [2, 1, 2]
    for row, songs in enumerate([[0, 1, 2], [3], [4, 5]]):
        assert split.target_songs(row).tolist() == songs
        assert set(split.input_songs(row)) <= set(songs)


def test_lazy_targets_build_exactly_the_block_asked_for():
    data = random_data(n_users=12)
    split = splits.input_target_split(data, np.arange(12), 4, key=0)
    dense = next(splits.batches(split, 16, data.n_songs + 3, key=1))
    lazy = next(splits.batches(split, 16, data.n_songs + 3, key=1, lazy_targets=True))
    np.testing.assert_array_equal(lazy["inputs"], dense["inputs"])
    targets = lazy["targets"]
    assert isinstance(targets, splits.DenseTargets)
    assert targets.shape == dense["targets"].shape and len(targets) == 16
    np.testing.assert_array_equal(np.asarray(targets), dense["targets"])
    for rows, cols in [(slice(0, 8), slice(0, 5)), (slice(8, 16), slice(3, None))]:
        np.testing.assert_array_equal(targets[rows, cols], dense["targets"][rows, cols])
    assert not targets[12:].any()  # padding rows
