"""Listening histories and song tags in memory and on disk.

`ListeningData` keeps what users listened to and how songs are tagged as
two compressed sparse row (CSR) structures:

* user `u` listened to songs `indices[indptr[u]:indptr[u + 1]]`, each with
  a play count in `counts` at the same positions (songs sorted, unique);
* song `s` carries tags `tag_indices[tag_indptr[s]:tag_indptr[s + 1]]`.

Users, songs and tags are numbered from 0; their original identifiers are
kept in `user_ids`, `song_ids` and `tag_names` (and readable song titles
in `song_names`).

On disk the same arrays are stored in one `.npz` file (format version
`FORMAT_VERSION`, strings as fixed-width unicode, never pickled):
`format_version`, `indptr`, `indices`, `counts`, `tag_indptr`,
`tag_indices`, `user_ids`, `song_ids`, `song_names`, `tag_names`.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from songrec_jax.errors import DataFormatError, InputError, UnknownTagError

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True, eq=False)
class ListeningData:
    """Users' listening histories and the tags of songs, as CSR arrays.

    Attributes:
      indptr: int64 [n_users + 1], row pointers of the user -> song matrix.
      indices: int32 [n_listens], song indices, sorted and unique per user.
      counts: float32 [n_listens], play counts (> 0).
      tag_indptr: int64 [n_songs + 1], row pointers of song -> tag.
      tag_indices: int32 [n_song_tags], tag indices, sorted unique per song.
      user_ids: str [n_users], original user identifiers.
      song_ids: str [n_songs], original song identifiers.
      song_names: str [n_songs], readable song names (may equal song_ids).
      tag_names: str [n_tags], tag names, unique.
    """

    indptr: np.ndarray
    indices: np.ndarray
    counts: np.ndarray
    tag_indptr: np.ndarray
    tag_indices: np.ndarray
    user_ids: np.ndarray
    song_ids: np.ndarray
    song_names: np.ndarray
    tag_names: np.ndarray

    def __post_init__(self):
        n_users, n_songs = len(self.user_ids), len(self.song_ids)
        problems = []
        if self.indptr.shape != (n_users + 1,) or self.indptr[0] != 0:
            problems.append("indptr must have n_users + 1 entries starting at 0")
        elif np.any(np.diff(self.indptr) < 0) or self.indptr[-1] != len(self.indices):
            problems.append("indptr must be non-decreasing and end at len(indices)")
        if len(self.counts) != len(self.indices):
            problems.append("counts and indices differ in length")
        if len(self.indices) and (
            self.indices.min() < 0 or self.indices.max() >= n_songs
        ):
            problems.append(f"song indices must lie in [0, {n_songs})")
        if (
            self.tag_indptr.shape != (n_songs + 1,)
            or self.tag_indptr[0] != 0
            or (self.tag_indptr[-1] != len(self.tag_indices))
        ):
            problems.append(
                "tag_indptr must have n_songs + 1 entries from 0 to len(tag_indices)"
            )
        if len(self.tag_indices) and (
            self.tag_indices.min() < 0 or self.tag_indices.max() >= len(self.tag_names)
        ):
            problems.append(f"tag indices must lie in [0, {len(self.tag_names)})")
        if len(self.song_names) != n_songs:
            problems.append("song_names and song_ids differ in length")
        if len(set(self.tag_names.tolist())) != len(self.tag_names):
            problems.append("tag names must be unique")
        if problems:
            raise InputError("inconsistent ListeningData: " + "; ".join(problems))

    # Sizes ---------------------------------------------------------------

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_songs(self) -> int:
        return len(self.song_ids)

    @property
    def n_tags(self) -> int:
        return len(self.tag_names)

    @property
    def n_listens(self) -> int:
        return len(self.indices)

    # Access --------------------------------------------------------------

    def user_songs(self, user: int) -> np.ndarray:
        """Song indices of one user's history, sorted."""
        return self.indices[self.indptr[user] : self.indptr[user + 1]]

    def song_tags(self, song: int) -> np.ndarray:
        """Tag indices of one song, sorted."""
        return self.tag_indices[self.tag_indptr[song] : self.tag_indptr[song + 1]]

    def tag_index(self, name: str) -> int:
        """The index of a tag by name; raises UnknownTagError if absent."""
        lookup = self._tag_lookup()
        if name not in lookup:
            close = [t for t in lookup if name.lower() in t.lower()][:5]
            hint = f"; similar: {close}" if close else ""
            raise UnknownTagError(
                f"unknown tag {name!r}; the data has {self.n_tags} "
                f"tags, e.g. {list(self.tag_names[:5])}{hint}"
            )
        return lookup[name]

    def _tag_lookup(self) -> dict[str, int]:
        cache = self.__dict__.get("_tag_cache")
        if cache is None:
            cache = {str(t): i for i, t in enumerate(self.tag_names)}
            object.__setattr__(self, "_tag_cache", cache)
        return cache

    def song_tag_matrix(self) -> np.ndarray:
        """Dense bool [n_songs, n_tags]: whether song s carries tag t."""
        m = np.zeros((self.n_songs, self.n_tags), dtype=bool)
        rows = np.repeat(np.arange(self.n_songs), np.diff(self.tag_indptr))
        m[rows, self.tag_indices] = True
        return m

    def song_popularity(self) -> np.ndarray:
        """int64 [n_songs]: number of users who listened to each song."""
        return np.bincount(self.indices, minlength=self.n_songs)

    def user_rows(self) -> np.ndarray:
        """int64 [n_listens]: the user of each entry of `indices`."""
        return np.repeat(np.arange(self.n_users), np.diff(self.indptr))

    def subset_users(self, users: Sequence[int] | np.ndarray) -> ListeningData:
        """The same songs and tags with only the given users, in that order."""
        users = np.asarray(users, dtype=np.int64)
        starts, ends = self.indptr[users], self.indptr[users + 1]
        lengths = ends - starts
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        take = np.arange(lengths.sum(), dtype=np.int64) + np.repeat(
            starts - offsets, lengths
        )
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return dataclasses.replace(
            self,
            indptr=indptr,
            indices=self.indices[take],
            counts=self.counts[take],
            user_ids=self.user_ids[users],
        )

    def summary(self, top: int = 10) -> dict:
        """Sizes, density and the most used tags, as plain Python values.

        `tags` is the size of the tag vocabulary; `tags_on_songs` counts
        the tags that at least one song of the data carries.
        """
        tag_songs = np.bincount(self.tag_indices, minlength=self.n_tags)
        order = np.argsort(-tag_songs, kind="stable")[:top]
        lengths = np.diff(self.indptr)
        return {
            "users": self.n_users,
            "songs": self.n_songs,
            "listens": self.n_listens,
            "tags": self.n_tags,
            "tags_on_songs": int(np.count_nonzero(tag_songs)),
            "density": self.n_listens / max(1, self.n_users * self.n_songs),
            "songs_per_user_median": float(np.median(lengths)) if len(lengths) else 0.0,
            "tagged_songs": int(np.count_nonzero(np.diff(self.tag_indptr))),
            "top_tags": [
                [str(self.tag_names[t]), int(tag_songs[t])]
                for t in order
                if tag_songs[t] > 0
            ],
        }


def _csr(
    rows: np.ndarray, cols: np.ndarray, n_rows: int, values: np.ndarray | None = None
):
    """Sorted, de-duplicated CSR from (row, col[, value]); duplicates are summed."""
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    keep = np.ones(len(rows), bool)
    keep[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    group = np.cumsum(keep) - 1
    summed = None
    if values is not None:
        summed = np.zeros(int(keep.sum()), np.float64)
        np.add.at(summed, group, np.asarray(values, np.float64)[order])
    rows, cols = rows[keep], cols[keep]
    indptr = np.zeros(n_rows + 1, np.int64)
    np.add.at(indptr, rows + 1, 1)
    return np.cumsum(indptr), cols.astype(np.int32), summed


def from_pairs(
    user_ids: Iterable,
    song_ids: Iterable,
    counts: Iterable | None = None,
    *,
    tag_song_ids: Iterable = (),
    tag_names: Iterable = (),
    song_names: dict | None = None,
    min_user_listens: int = 1,
    min_song_listens: int = 1,
    top_tags: int = 0,
    keep_tags: Iterable = (),
) -> ListeningData:
    """Builds `ListeningData` from (user, song, count) and (song, tag) pairs.

    Duplicate (user, song) pairs have their counts summed; duplicate
    (song, tag) pairs count once. Tags of songs nobody listened to are
    dropped. Songs are kept in order of first appearance among the
    listens, users likewise, tags by decreasing use.

    Args:
      user_ids, song_ids: one entry per listen, any hashable identifiers.
      counts: play counts per listen (default 1); must be finite and > 0.
      tag_song_ids, tag_names: one entry per (song, tag) assignment.
      song_names: optional readable names by song id.
      min_user_listens: drop users with fewer distinct songs (applied after
        the song filter, once).
      min_song_listens: drop songs with fewer distinct listeners.
      top_tags: keep only this many most used tags (0 keeps all).
      keep_tags: tag names to keep in the vocabulary even though no kept
        song carries them (a source's tags that it assigns only to songs
        nobody listened to); they follow the used tags, alphabetically.
        Ignored when `top_tags` is set.

    Returns:
      The data, with users and songs renumbered from 0.
    """
    user_ids = np.asarray(
        list(user_ids) if not isinstance(user_ids, np.ndarray) else user_ids
    )
    song_ids = np.asarray(
        list(song_ids) if not isinstance(song_ids, np.ndarray) else song_ids
    )
    if len(user_ids) != len(song_ids):
        raise InputError(f"{len(user_ids)} user ids but {len(song_ids)} song ids")
    counts = (
        np.ones(len(user_ids))
        if counts is None
        else np.asarray(
            list(counts) if not isinstance(counts, np.ndarray) else counts,
            dtype=np.float64,
        )
    )
    if len(counts) != len(user_ids):
        raise InputError(f"{len(counts)} counts for {len(user_ids)} listens")
    bad = ~np.isfinite(counts) | (counts <= 0)
    if bad.any():
        raise InputError(
            f"play counts must be finite and > 0, got "
            f"{counts[bad][:3].tolist()} at listens "
            f"{np.flatnonzero(bad)[:3].tolist()}"
        )
    if len(user_ids) == 0:
        raise InputError("no listens given: the data would be empty")

    users, user_idx = np.unique(user_ids.astype(str), return_inverse=True)
    songs, song_idx = np.unique(song_ids.astype(str), return_inverse=True)
    # Renumber in order of first appearance, which keeps files' order.
    user_first = np.full(len(users), len(user_idx))
    np.minimum.at(user_first, user_idx, np.arange(len(user_idx)))
    song_first = np.full(len(songs), len(song_idx))
    np.minimum.at(song_first, song_idx, np.arange(len(song_idx)))
    user_rank = np.argsort(np.argsort(user_first, kind="stable"), kind="stable")
    song_rank = np.argsort(np.argsort(song_first, kind="stable"), kind="stable")
    users = users[np.argsort(user_rank)]
    songs = songs[np.argsort(song_rank)]
    user_idx, song_idx = user_rank[user_idx], song_rank[song_idx]

    indptr, indices, summed = _csr(user_idx, song_idx, len(users), counts)
    rows = np.repeat(np.arange(len(users)), np.diff(indptr))
    keep_song = np.bincount(indices, minlength=len(songs)) >= min_song_listens
    keep_user = np.bincount(rows[keep_song[indices]], minlength=len(users)) >= max(
        1, min_user_listens
    )
    keep = keep_song[indices] & keep_user[rows]
    song_map = np.full(len(songs), -1)
    kept_songs = np.flatnonzero(np.bincount(indices[keep], minlength=len(songs)))
    song_map[kept_songs] = np.arange(len(kept_songs))
    user_map = np.full(len(users), -1)
    kept_users = np.flatnonzero(
        keep_user & (np.bincount(rows[keep], minlength=len(users)) > 0)
    )
    user_map[kept_users] = np.arange(len(kept_users))
    if len(kept_users) == 0:
        raise InputError(
            f"no user is left after filtering (min_user_listens="
            f"{min_user_listens}, min_song_listens={min_song_listens})"
        )
    indptr, indices, summed = _csr(
        user_map[rows[keep]], song_map[indices[keep]], len(kept_users), summed[keep]
    )
    songs = songs[kept_songs]

    tag_song_ids = np.asarray(list(tag_song_ids)).astype(str)
    tag_names_in = np.asarray(list(tag_names)).astype(str)
    if len(tag_song_ids) != len(tag_names_in):
        raise InputError(
            f"{len(tag_song_ids)} tagged songs but {len(tag_names_in)} tag names"
        )
    song_pos = {s: i for i, s in enumerate(songs.tolist())}
    t_song = np.array([song_pos.get(s, -1) for s in tag_song_ids.tolist()], np.int64)
    known = t_song >= 0
    tags, t_idx = np.unique(tag_names_in[known], return_inverse=True)
    t_song = t_song[known]
    if len(t_song):
        pairs = np.unique(np.stack([t_song, t_idx]), axis=1)
        use = np.bincount(pairs[1], minlength=len(tags))
    else:
        pairs, use = np.zeros((2, 0), np.int64), np.zeros(len(tags), np.int64)
    order = np.lexsort((tags, -use))
    if top_tags:
        order = order[:top_tags]
    order = order[use[order] > 0]
    tag_map = np.full(len(tags), -1)
    tag_map[order] = np.arange(len(order))
    vocabulary = tags[order]
    if not top_tags:
        extra = np.setdiff1d(np.asarray(list(keep_tags)).astype(str), vocabulary)
        vocabulary = np.concatenate([vocabulary, extra])
    t_keep = tag_map[pairs[1]] >= 0
    tag_indptr, tag_indices, _ = _csr(
        pairs[0][t_keep], tag_map[pairs[1][t_keep]], len(songs)
    )
    names = (
        songs
        if song_names is None
        else np.array([str(song_names.get(s, s)) for s in songs.tolist()])
    )
    return ListeningData(
        indptr=indptr,
        indices=indices,
        counts=summed.astype(np.float32),
        tag_indptr=tag_indptr,
        tag_indices=tag_indices,
        user_ids=users[kept_users],
        song_ids=songs,
        song_names=names,
        tag_names=vocabulary,
    )


_ARRAYS = (
    "indptr",
    "indices",
    "counts",
    "tag_indptr",
    "tag_indices",
    "user_ids",
    "song_ids",
    "song_names",
    "tag_names",
)


def save_data(data: ListeningData, path: str | Path) -> None:
    """Writes the data as one `.npz` file, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    arrays = {name: getattr(data, name) for name in _ARRAYS}
    for name in ("user_ids", "song_ids", "song_names", "tag_names"):
        arrays[name] = np.asarray(arrays[name]).astype(str)
    with tmp.open("wb") as f:
        np.savez_compressed(f, format_version=np.int64(FORMAT_VERSION), **arrays)
    tmp.replace(path)


def load_data(path: str | Path) -> ListeningData:
    """Reads data written by `save_data`; never unpickles anything."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError("no such file", path=path)
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [n for n in ("format_version", *_ARRAYS) if n not in f.files]
            if missing:
                raise DataFormatError(
                    f"not a songrec_jax data file: missing arrays {missing}", path=path
                )
            version = int(f["format_version"])
            if version != FORMAT_VERSION:
                raise DataFormatError(
                    f"format version {version} is not supported "
                    f"(this library reads {FORMAT_VERSION})",
                    path=path,
                )
            arrays = {name: f[name] for name in _ARRAYS}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        if isinstance(e, DataFormatError):
            raise
        raise DataFormatError(f"cannot read as .npz: {e}", path=path) from None
    for name in ("user_ids", "song_ids", "song_names", "tag_names"):
        if arrays[name].dtype.kind != "U":
            raise DataFormatError(
                f"array {name!r} must hold strings, got dtype {arrays[name].dtype}",
                path=path,
            )
    for name, kind in (
        ("indptr", "i"),
        ("indices", "i"),
        ("tag_indptr", "i"),
        ("tag_indices", "i"),
        ("counts", "f"),
    ):
        if arrays[name].dtype.kind != kind or arrays[name].ndim != 1:
            raise DataFormatError(
                f"array {name!r} has dtype {arrays[name].dtype} "
                f"and shape {arrays[name].shape}; expected 1-D "
                f"{'integers' if kind == 'i' else 'floats'}",
                path=path,
            )
    arrays["indptr"] = arrays["indptr"].astype(np.int64)
    arrays["tag_indptr"] = arrays["tag_indptr"].astype(np.int64)
    arrays["indices"] = arrays["indices"].astype(np.int32)
    arrays["tag_indices"] = arrays["tag_indices"].astype(np.int32)
    arrays["counts"] = arrays["counts"].astype(np.float32)
    try:
        return ListeningData(**arrays)
    except InputError as e:
        raise DataFormatError(str(e), path=path) from None
