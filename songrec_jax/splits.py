"""Splits of users and songs, model inputs, and fixed-shape batches.

A model sees each user as a fixed-length vector of song indexes padded
with -1 (its *input*) and learns to score the user's other songs (its
*targets*). This module builds both from `ListeningData`:

* `split_users` divides the users into train, validation and test sets.
* `input_target_split` is the protocol for users seen in training: a
  random part of each history is the input, the rest is the target.
* `fold_in_split` is the strong-generalisation protocol for held-out users
  (Liang et al., "Variational Autoencoders for Collaborative Filtering",
  WWW 2018): 80% of each history is folded in, 20% is to be predicted.
* `to_input` turns one history (e.g. a new user's) into a model input.
* `batches` yields fixed-shape NumPy batches, so a jitted step compiles once.

Histories are sets: inputs hold distinct songs in ascending order, then
-1 padding. All randomness comes from the keyword-only `key`, and the same
key always gives the same split. The splitters draw a new input/target
partition for every key, so a trainer may call them once per epoch with a
fresh key as data augmentation.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import reprlib
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np

from songrec_jax.data import ListeningData
from songrec_jax.errors import InputError
from songrec_jax.rng import numpy_rng

logger = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]
PAD = -1  # the input value of an empty slot
TARGETS = ("rest", "window", "all")


@dataclasses.dataclass(frozen=True, eq=False)
class UserSplit:
    """Model inputs and target songs of a set of users.

    Row i describes user `users[i]` of the `ListeningData` it came from.

    Attributes:
      users: int64 [n_users], rows of the listening data.
      inputs: int32 [n_users, input_len], distinct song indexes in
        ascending order, then -1 padding.
      target_indptr: int64 [n_users + 1], row pointers of the targets.
      target_indices: int32 [n_targets], the songs to predict for row i are
        `target_indices[target_indptr[i]:target_indptr[i + 1]]`, ascending;
        they never overlap the row's inputs, except in the autoencoding
        split of `input_target_split(..., target="all")`.
    """

    users: np.ndarray
    inputs: np.ndarray
    target_indptr: np.ndarray
    target_indices: np.ndarray

    def __post_init__(self):
        n = len(self.users)
        problems = []
        if self.inputs.ndim != 2 or len(self.inputs) != n:
            problems.append(f"inputs must have shape [{n}, input_len]")
        if self.target_indptr.shape != (n + 1,) or self.target_indptr[0] != 0:
            problems.append(f"target_indptr must have {n + 1} entries starting at 0")
        elif np.any(np.diff(self.target_indptr) < 0) or (
            self.target_indptr[-1] != len(self.target_indices)
        ):
            problems.append("target_indptr must be non-decreasing and end at nnz")
        if len(self.target_indices) and self.target_indices.min() < 0:
            problems.append("target song indexes must be >= 0")
        if problems:
            raise InputError("inconsistent UserSplit: " + "; ".join(problems))

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def input_len(self) -> int:
        return self.inputs.shape[1]

    @property
    def n_targets(self) -> int:
        """Number of (user, target song) pairs."""
        return len(self.target_indices)

    def input_lengths(self) -> np.ndarray:
        """int64 [n_users]: number of songs (non-padding slots) in each input."""
        return np.count_nonzero(self.inputs != PAD, axis=1)

    def target_lengths(self) -> np.ndarray:
        """int64 [n_users]: number of target songs of each user."""
        return np.diff(self.target_indptr)

    def input_songs(self, row: int) -> np.ndarray:
        """int32 [k]: the songs of row `row`'s input, without padding."""
        songs = self.inputs[row]
        return songs[songs != PAD]

    def target_songs(self, row: int) -> np.ndarray:
        """int32 [k]: the target songs of row `row`, ascending."""
        return self.target_indices[
            self.target_indptr[row] : self.target_indptr[row + 1]
        ]

    def max_song(self) -> int:
        """The largest song index in inputs or targets (-1 when there is none)."""
        largest = int(self.inputs.max(initial=PAD))
        return max(largest, int(self.target_indices.max(initial=PAD)))

    def targets_dense(self, rows: Sequence[int] | np.ndarray, width: int) -> np.ndarray:
        """Multi-hot targets of some rows.

        Args:
          rows: row numbers in [0, n_users), any order, repeats allowed.
          width: number of columns, at least `max_song() + 1`.

        Returns:
          float32 [len(rows), width]: 1 where the song is a target, else 0.
        """
        rows = _as_indexes(rows, "row", self.n_users)
        _check_width("width", width, self)
        out = np.zeros((len(rows), width), np.float32)
        _fill_multi_hot(out, self.target_indptr, self.target_indices, rows)
        return out


def split_users(
    n_users: int,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    key,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Divides users 0..n_users-1 at random into train, validation and test.

    The held-out sizes are `n_users * fraction` rounded half up, raised to 1
    when the fraction is positive and rounded to 0; the training set always
    keeps at least one user (validation is raised first, and test is
    shrunk first when the users run out).

    Args:
      n_users: number of users, >= 1.
      val_fraction: share of users for validation, in [0, 1).
      test_fraction: share of users for testing, in [0, 1); the two
        fractions must sum to less than 1.
      key: JAX PRNG key or integer seed.

    Returns:
      (train, val, test): disjoint int64 arrays of user indexes, each
      sorted ascending, that together cover every user.
    """
    _check_int("n_users", n_users, 1)
    for name, value in (
        ("val_fraction", val_fraction),
        ("test_fraction", test_fraction),
    ):
        _check_fraction(name, value, allow_zero=True)
    if val_fraction + test_fraction >= 1:
        raise InputError(
            f"val_fraction + test_fraction = {val_fraction} + {test_fraction} "
            "must be < 1 so that some users are left for training"
        )

    sizes = [math.floor(n_users * f + 0.5) for f in (val_fraction, test_fraction)]
    for i, fraction in enumerate((val_fraction, test_fraction)):
        if fraction > 0 and sizes[i] == 0 and n_users - sum(sizes) >= 2:
            sizes[i] = 1
    for i in (1, 0):
        sizes[i] -= max(0, min(sizes[i], sum(sizes) - (n_users - 1)))
    n_val, n_test = sizes

    order = numpy_rng(key).permutation(n_users)
    val = np.sort(order[:n_val])
    test = np.sort(order[n_val : n_val + n_test])
    train = np.sort(order[n_val + n_test :])
    return train.astype(np.int64), val.astype(np.int64), test.astype(np.int64)


def to_input(
    song_indexes: Sequence[int] | np.ndarray,
    input_len: int,
    *,
    key=None,
    n_songs: int | None = None,
) -> np.ndarray:
    """One history as a model input: distinct songs, ascending, -1 padded.

    Duplicate songs count once. A history with more than `input_len`
    distinct songs is reduced to a uniformly random subset of `input_len`
    of them, which needs `key`. An empty history (a user who has listened
    to nothing yet) gives an input of only padding.

    Args:
      song_indexes: 1-D sequence or array of song indexes: integers >= 0
        (whole-valued floats such as 3.0 are accepted; booleans, strings,
        fractions and -1 padding are not).
      input_len: length of the input, >= 1.
      key: JAX PRNG key or integer seed; required only to subsample.
      n_songs: when given, every index must be < n_songs.

    Returns:
      int32 [input_len].
    """
    _check_int("input_len", input_len, 1)
    if n_songs is not None:
        _check_int("n_songs", n_songs, 1)
    songs = np.unique(_as_indexes(song_indexes, "song index", n_songs))
    if len(songs) > input_len:
        if key is None:
            raise InputError(
                f"the history has {len(songs)} distinct songs, more than "
                f"input_len={input_len}; pass key= to choose a random subset"
            )
        songs = np.sort(numpy_rng(key).choice(songs, input_len, replace=False))
    out = np.full(input_len, PAD, np.int32)
    out[: len(songs)] = songs
    return out


def input_target_split(
    data: ListeningData,
    users: Sequence[int] | np.ndarray,
    input_len: int,
    *,
    key,
    target: Literal["rest", "window", "all"] = "rest",
    max_input_fraction: float = 0.8,
) -> UserSplit:
    """Inputs and targets for users seen in training.

    A user with n >= 2 songs gets a uniformly random input of
    `min(input_len, max(1, floor(max_input_fraction * n)))` songs, which
    leaves at least one target. The target is every other song ("rest"),
    or a uniformly random `min(input_len, n - n_input)` of them ("window").
    Users with fewer than 2 songs have nothing to predict and are skipped;
    how many is logged, and `UserSplit.users` lists those kept.

    `target="all"` is the autoencoding of Mult-VAE instead: the input is a
    uniformly random `min(input_len, n)` of the user's songs (all of them
    when they fit) and the target is every song of the user, the input
    included. Only users without songs are skipped. It is meant for
    training, usually with input dropout (`ModelConfig.input_dropout`) so
    that the model must predict songs it was not shown.

    Args:
      data: the listening data.
      users: distinct rows of `data`, in the order the split should keep.
      input_len: length of each input, >= 1.
      key: JAX PRNG key or integer seed.
      target: "rest", "window" or "all".
      max_input_fraction: the largest share of a history used as input,
        in (0, 1); unused with "all".

    Returns:
      The split, one row per kept user.
    """
    if target not in TARGETS:
        raise InputError(f"target={target!r} is not one of {list(TARGETS)}")
    _check_int("input_len", input_len, 1)
    _check_fraction("max_input_fraction", max_input_fraction, allow_zero=False)
    users = _as_users(data, users)

    lengths = np.diff(data.indptr)[users]
    if target == "all":
        users = _keep_users(users, lengths >= 1, "no songs")
        n = np.diff(data.indptr)[users]
        n_input = np.minimum(input_len, n)
        return _split(data, users, input_len, numpy_rng(key), n_input, 0 * n, n)
    users = _keep_users(users, lengths >= 2, "fewer than 2 songs")
    n = np.diff(data.indptr)[users]
    n_input = np.floor(max_input_fraction * n + 1e-9).astype(np.int64)
    n_input = np.minimum(input_len, np.clip(n_input, 1, n - 1))
    n_target = n - n_input if target == "rest" else np.minimum(input_len, n - n_input)
    return _split(data, users, input_len, numpy_rng(key), n_input, n_input, n_target)


def fold_in_split(
    data: ListeningData,
    users: Sequence[int] | np.ndarray,
    input_len: int,
    *,
    key,
    fold_in_fraction: float = 0.8,
    min_items: int = 5,
) -> UserSplit:
    """Inputs and targets for held-out users (strong generalisation).

    A user with n >= `min_items` songs has `ceil(fold_in_fraction * n)`
    songs (at least 1, at most n - 1) folded in, chosen uniformly at
    random, and the other songs are the targets: with the defaults, a user
    with 5 songs folds in 4 and holds out 1, as in Mult-VAE. When more than
    `input_len` songs are folded in, the input is a random `input_len` of
    them; the rest of the fold-in songs are neither input nor target.
    Users with fewer than `min_items` songs are skipped; how many is logged.

    Args:
      data: the listening data.
      users: distinct rows of `data`, in the order the split should keep.
      input_len: length of each input, >= 1.
      key: JAX PRNG key or integer seed.
      fold_in_fraction: share of each history that is folded in, in (0, 1).
      min_items: fewest songs a user needs to be evaluated, >= 2.

    Returns:
      The split, one row per kept user.
    """
    _check_int("input_len", input_len, 1)
    _check_fraction("fold_in_fraction", fold_in_fraction, allow_zero=False)
    _check_int("min_items", min_items, 2)
    users = _as_users(data, users)

    lengths = np.diff(data.indptr)[users]
    users = _keep_users(users, lengths >= min_items, f"fewer than {min_items} songs")
    n = np.diff(data.indptr)[users]
    n_fold_in = np.ceil(fold_in_fraction * n - 1e-9).astype(np.int64)
    n_fold_in = np.clip(n_fold_in, 1, n - 1)
    n_input = np.minimum(n_fold_in, input_len)
    return _split(
        data, users, input_len, numpy_rng(key), n_input, n_fold_in, n - n_fold_in
    )


def n_batches(split: UserSplit, batch_size: int, drop_remainder: bool = False) -> int:
    """How many batches `batches` yields for one pass over the split."""
    _check_int("batch_size", batch_size, 1)
    if drop_remainder:
        return split.n_users // batch_size
    return -(-split.n_users // batch_size)


class DenseTargets:
    """The multi-hot targets of a batch, built only for the slices asked for.

    It stands for the float32 array `[len(rows), width]` of
    `UserSplit.targets_dense(rows, width)` (a row of -1 is a padding row:
    all zeros), but builds each block `targets[rows_slice, cols_slice]`
    when indexed. On a mesh spanning several hosts each process thus
    builds only the rows and songs its own devices hold
    (`sharding.shard_batch`), never the whole batch.
    """

    def __init__(self, split: UserSplit, rows: np.ndarray, width: int):
        self.split, self.rows, self.width = split, np.asarray(rows), int(width)
        self.shape = (len(self.rows), self.width)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> np.ndarray:
        """`targets[rows_slice, cols_slice]` (slices with step 1, as JAX asks)."""
        index = index if isinstance(index, tuple) else (index,)
        index = index + (slice(None),) * (2 - len(index))
        rows = self.rows[index[0]]
        start, stop, step = index[1].indices(self.width)
        if step != 1:
            raise InputError(f"DenseTargets takes column slices of step 1, not {step}")
        out = np.zeros((len(rows), max(stop - start, 0)), np.float32)
        real = np.flatnonzero(rows >= 0)
        starts = self.split.target_indptr[rows[real]]
        lengths = np.diff(self.split.target_indptr)[rows[real]]
        offsets = np.cumsum(lengths) - lengths
        positions = np.repeat(starts - offsets, lengths) + np.arange(lengths.sum())
        songs = self.split.target_indices[positions]
        row_of = np.repeat(real, lengths)
        inside = (songs >= start) & (songs < stop)
        out[row_of[inside], songs[inside] - start] = 1.0
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)


def batches(
    split: UserSplit,
    batch_size: int,
    n_outputs: int,
    *,
    key=None,
    drop_remainder: bool = False,
    lazy_targets: bool = False,
    min_batches: int = 0,
) -> Iterator[Batch]:
    """One pass over the split in batches of fixed shape.

    Every user appears exactly once per pass (or not at all, when it falls
    in a dropped remainder). The last, partial batch is padded with rows of
    -1 inputs, zero targets and weight 0, so every batch has the same shape
    and a jitted step compiles once.

    Args:
      split: the users to batch.
      batch_size: rows per batch, >= 1.
      n_outputs: width of the targets, at least `split.max_song() + 1`;
        may exceed the number of songs (columns beyond it stay 0).
      key: if given, users come in a random order, the same for the same
        key; if None, in the split's order.
      drop_remainder: skip the last partial batch instead of padding it.
      lazy_targets: yield the targets as `DenseTargets`, built by slices
        when indexed, instead of a dense array.
      min_batches: yield at least this many batches, the extra ones all
        padding (processes that batch different users must take the same
        number of steps).

    Yields:
      dicts with "inputs" int32 [batch_size, input_len] (-1 padded),
      "targets" float32 [batch_size, n_outputs] (multi-hot), and
      "weights" float32 [batch_size] (1 for a user, 0 for a padding row).
    """
    total = max(n_batches(split, batch_size, drop_remainder), min_batches)
    _check_width("n_outputs", n_outputs, split)
    order = np.arange(split.n_users)
    if key is not None:
        order = numpy_rng(key).permutation(split.n_users)
    return _batch_iterator(split, order, batch_size, n_outputs, total, lazy_targets)


def _batch_iterator(
    split, order, batch_size, n_outputs, total, lazy_targets
) -> Iterator[Batch]:
    for b in range(total):
        rows = order[b * batch_size : (b + 1) * batch_size]
        inputs = np.full((batch_size, split.input_len), PAD, np.int32)
        inputs[: len(rows)] = split.inputs[rows]
        if lazy_targets:
            padded = np.full(batch_size, -1, np.int64)
            padded[: len(rows)] = rows
            targets = DenseTargets(split, padded, n_outputs)
        else:
            targets = np.zeros((batch_size, n_outputs), np.float32)
            _fill_multi_hot(targets, split.target_indptr, split.target_indices, rows)
        weights = np.zeros(batch_size, np.float32)
        weights[: len(rows)] = 1.0
        yield {"inputs": inputs, "targets": targets, "weights": weights}


# Helpers ------------------------------------------------------------------------


def _split(data, users, input_len, rng, n_input, target_from, n_target) -> UserSplit:
    """Ranks each user's songs at random: ranks < n_input are the input and
    ranks in [target_from, target_from + n_target) the targets."""
    n = np.diff(data.indptr)[users]
    rows = np.repeat(np.arange(len(users)), n)
    row_start = np.cumsum(n) - n
    positions = np.repeat(data.indptr[users] - row_start, n) + np.arange(n.sum())
    songs = data.indices[positions]

    order = np.lexsort((rng.random(len(songs)), rows))
    rank = np.empty(len(songs), np.int64)
    rank[order] = np.arange(len(songs)) - row_start[rows[order]]
    is_input = rank < n_input[rows]
    is_target = (rank >= target_from[rows]) & (rank < (target_from + n_target)[rows])

    # Rows are grouped and songs ascend within each, so masks keep that order.
    input_rows = rows[is_input]
    column = np.arange(len(input_rows)) - (np.cumsum(n_input) - n_input)[input_rows]
    inputs = np.full((len(users), input_len), PAD, np.int32)
    inputs[input_rows, column] = songs[is_input]
    target_counts = np.bincount(rows[is_target], minlength=len(users))
    return UserSplit(
        users=users,
        inputs=inputs,
        target_indptr=np.concatenate([[0], np.cumsum(target_counts)]).astype(np.int64),
        target_indices=songs[is_target].astype(np.int32),
    )


def _fill_multi_hot(out: np.ndarray, indptr, indices, rows: np.ndarray) -> None:
    """Sets out[i, s] = 1 for every song s of CSR row rows[i]."""
    starts, lengths = indptr[rows], np.diff(indptr)[rows]
    offsets = np.cumsum(lengths) - lengths
    positions = np.repeat(starts - offsets, lengths) + np.arange(lengths.sum())
    out[np.repeat(np.arange(len(rows)), lengths), indices[positions]] = 1.0


def _keep_users(users: np.ndarray, keep: np.ndarray, reason: str) -> np.ndarray:
    if not keep.all():
        logger.info(
            "skipped %d of %d users with %s", np.count_nonzero(~keep), len(keep), reason
        )
    return users[keep]


def _as_users(data: ListeningData, users) -> np.ndarray:
    users = _as_indexes(users, "user", data.n_users)
    if len(np.unique(users)) != len(users):
        values, counts = np.unique(users, return_counts=True)
        raise InputError(
            f"users must be distinct; repeated: {values[counts > 1][:5].tolist()}"
        )
    return users


def _as_indexes(values, what: str, upper: int | None) -> np.ndarray:
    """int64 [n] from a 1-D collection of whole numbers in [0, upper)."""
    accepted = "accepted: whole numbers >= 0"
    accepted += "" if upper is None else f" and < {upper}"
    if isinstance(values, (str, bytes)):
        raise InputError(
            f"expected a 1-D collection of {what} values, got the "
            f"string {reprlib.repr(values)}; {accepted}"
        )
    if not isinstance(values, np.ndarray) and not hasattr(values, "__array__"):
        try:
            values = list(values)
        except TypeError:
            raise InputError(
                f"expected a 1-D collection of {what} values, got "
                f"{reprlib.repr(values)}; {accepted}"
            ) from None
        array = np.empty(len(values), np.int64)
        for i, value in enumerate(values):
            array[i] = _whole_number(value, i, what, accepted)
    else:
        array = np.asarray(values)
        if array.ndim != 1:
            raise InputError(
                f"expected a 1-D collection of {what} values, got an "
                f"array of shape {array.shape}; {accepted}"
            )
        if array.dtype.kind == "O":
            return _as_indexes(array.tolist(), what, upper)
        if array.dtype.kind == "f":
            whole = np.isfinite(array) & (np.abs(array) < 2.0**53)
            whole &= array == np.round(np.where(whole, array, 0))
            if not whole.all():
                i = int(np.argmin(whole))
                raise InputError(
                    f"{what} {array[i].item()!r} at position {i} is not a whole "
                    f"number; {accepted}"
                )
        elif array.dtype.kind not in "iu":
            raise InputError(f"{what} values have dtype {array.dtype}; {accepted}")
        array = array.astype(np.int64)
    bad = array < 0
    if upper is not None:
        bad |= array >= upper
    if bad.any():
        i = int(np.argmax(bad))
        hint = " (-1 only pads model inputs)" if array[i] == PAD else ""
        raise InputError(
            f"{what} {int(array[i])} at position {i} is out of range{hint}; {accepted}"
        )
    return array


def _whole_number(value, position: int, what: str, accepted: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise InputError(
            f"{what} {value!r} at position {position} is a boolean; {accepted}"
        )
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isfinite(value) and abs(value) < 2.0**53 and value.is_integer():
            return int(value)
    raise InputError(
        f"{what} {value!r} at position {position} is not a whole number; {accepted}"
    )


def _check_int(name: str, value, minimum: int) -> None:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < minimum:
        raise InputError(f"{name}={value!r} must be an integer >= {minimum}")


def _check_fraction(name: str, value, *, allow_zero: bool) -> None:
    ok = isinstance(value, (int, float, np.integer, np.floating))
    ok = ok and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (0 <= value if allow_zero else 0 < value) and value < 1
    if not ok:
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise InputError(f"{name}={value!r} must be a number in {interval}")


def _check_width(name: str, value, split: UserSplit) -> None:
    _check_int(name, value, 1)
    if value <= split.max_song():
        raise InputError(
            f"{name}={value} is too small: the split holds song {split.max_song()}, "
            f"so {name} must be >= {split.max_song() + 1}"
        )
