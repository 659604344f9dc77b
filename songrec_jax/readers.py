"""Readers of published listening data sets.

Each reader parses one published file layout and builds `ListeningData`
with `data.from_pairs`, so every source is filtered the same way
(`min_user_listens`, `min_song_listens`, `top_tags`):

* `read_lastfm_hetrec`: the HetRec 2011 Last.fm data, artists as songs.
* `read_msd`: Taste Profile play counts of the Million Song Dataset with
  the Last.fm tags of its tracks.
* `read_movielens`: MovieLens 1M (`ratings.dat`) or 100K (`u.data`),
  genres as tags.
* `read_tsv`: any pair of delimited files, (user, item[, count]) and
  (item, tag).
* `load_source`: the reader a `DataConfig` names.

Rules shared by every reader:

* Text is UTF-8, with or without a byte-order mark. A file that is not
  valid UTF-8 is decoded as latin-1 as a whole (the published encoding of
  HetRec's `tags.dat` and of MovieLens), and the fallback is logged.
  UTF-16 and UTF-32 files, and files holding NUL bytes, are rejected.
* Lines end in LF or CRLF, mixed freely; a carriage return anywhere else
  is an error. Blank lines (empty or whitespace only) are skipped.
* Every line has exactly the layout's number of columns. A missing or an
  extra column is an error: it means a wrong delimiter or a damaged line,
  and accepting it could shift values silently.
* Integer ids are 1 to 18 decimal digits and nothing else. Other
  identifiers (user and song ids of the Taste Profile, tag names) must be
  non-empty and carry no surrounding whitespace; `read_tsv` strips the
  whitespace around every field first.
* Play counts are decimal numbers (optionally with an exponent) that are
  > 0 and <= `MAX_COUNT`; anything else is an error, never a skipped row.
* Duplicate listens (same user and song) have their counts summed; a tag
  assigned to a song several times counts once.
* Tag assignments of songs nobody listened to are dropped, since those
  songs have no row in the data (the number dropped is logged). Songs
  listened to but absent from a name or tag file are kept, unnamed or
  untagged. A reference that cannot be resolved inside one data set (a
  tag id missing from the tag list) is an error.
* A layout with a header line must start with it (after blank lines); a
  first line that begins with an integer is taken as a missing header and
  rejected, because reading it as a header would drop a row silently.

Every malformed input raises `DataFormatError` naming the file, the
1-based line where known, and the problem; so does data that the filters
empty entirely (naming the listens file). Files are parsed in chunks with
NumPy, so the 48-million-line Taste Profile file is streamed; a chunk with
anything unusual in it is re-read line by line to report the exact line.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from songrec_jax.config import DataConfig
from songrec_jax.data import ListeningData, from_pairs, load_data
from songrec_jax.errors import DataFormatError, InputError

if TYPE_CHECKING:
    import jax

logger = logging.getLogger(__name__)

PathLike = str | Path

MAX_COUNT = 2**31 - 1
"""The largest accepted play count; larger values are taken as corrupt."""

ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
"""Genre names of the MovieLens 100K `u.item` flag columns, in order."""

MSD_FILES = {
    "triplets": "train_triplets.txt",
    "tags_db": "lastfm_tags.db",
    "unique_tracks": "unique_tracks.txt",
    "mismatches": "sid_mismatches.txt",
}
"""File names `load_source` expects in an MSD folder (mismatches optional)."""

_CHUNK_BYTES = 1 << 24  # bytes read at a time
_MAX_LINE_BYTES = 1 << 26  # a longer line means the file is not a table
_INT = re.compile(rb"[0-9]{1,18}")
_NUMBER = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MISMATCH = re.compile(rb"ERROR: <([^\s<>]+) ([^\s<>]+)>")


def _byte_table(allowed: bytes) -> np.ndarray:
    table = np.zeros(256, bool)
    table[list(allowed)] = True
    return table


_IS_DIGIT = _byte_table(b"0123456789\x00")  # NUL: padding of NumPy bytes
_IS_DECIMAL = _byte_table(b"0123456789.\x00")
_IS_SPACE = _byte_table(b" \t\n\r\x0b\x0c")  # what bytes.strip() removes

# Column kinds: "int" (integer id), "count" (play count), "number" (finite,
# >= 0), "key" (identifier), "text" (anything); None: present, not parsed.
_DTYPES = {
    "int": np.int64,
    "count": np.float64,
    "number": np.float64,
    "key": np.bytes_,
    "text": np.bytes_,
}


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How the lines of one delimited file are split and typed."""

    delimiter: bytes
    columns: tuple[tuple[str, str | None], ...]
    header: bool = False
    strip: bool = False

    def describe(self) -> str:
        sep = "tab" if self.delimiter == b"\t" else repr(self.delimiter.decode())
        names = ", ".join(name for name, _ in self.columns)
        return f"{len(self.columns)} {sep}-separated columns ({names})"


def _layout(delimiter: str, columns: str, *, header=False, strip=False) -> _Layout:
    """A layout from "name:kind, ..." column specs; kind "-": not parsed."""
    specs = [column.strip().rsplit(":", 1) for column in columns.split(",")]
    kinds = tuple((name, None if kind == "-" else kind) for name, kind in specs)
    return _Layout(delimiter.encode(), kinds, header, strip)


def _show(raw: bytes) -> str:
    text = raw[:40].decode("utf-8", "replace")
    return repr(text + ("..." if len(raw) > 40 else ""))


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yields (number of its first line, whole lines joined by LF) per chunk.

    A UTF-8 byte-order mark is dropped and CRLF becomes LF; the last line
    needs no line end.
    """
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise DataFormatError("required file is missing", path=path) from None
    except IsADirectoryError:
        raise DataFormatError("is a folder, expected a file", path=path) from None
    except OSError as e:
        raise DataFormatError(f"cannot be read: {e.strerror}", path=path) from None
    with f:
        rest = f.read(4)
        if rest.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")):
            raise DataFormatError(
                "is UTF-16 or UTF-32 encoded; save it as UTF-8", path=path, line=1
            )
        rest = rest.removeprefix(b"\xef\xbb\xbf")
        line = 1
        while block := f.read(_CHUNK_BYTES):
            rest += block
            cut = rest.rfind(b"\n")
            if cut < 0:
                if len(rest) > _MAX_LINE_BYTES:
                    raise DataFormatError(
                        f"has a line longer than {_MAX_LINE_BYTES} "
                        "bytes: not a text table",
                        path=path,
                        line=line,
                    )
                continue
            text, rest = rest[: cut + 1].replace(b"\r\n", b"\n"), rest[cut + 1 :]
            yield line, text[:-1]
            line += text.count(b"\n")
        if rest:  # the last line, unless the file ends with a line feed
            yield line, rest.replace(b"\r\n", b"\n").removesuffix(b"\r")


def _parse_field(kind: str, raw: bytes):
    """One field's value; raises ValueError saying what is wrong."""
    if kind == "int":
        if not _INT.fullmatch(raw):
            raise ValueError(f"{_show(raw)} is not an integer id (1 to 18 digits)")
        return int(raw)
    if kind in ("count", "number"):
        if not _NUMBER.fullmatch(raw):
            raise ValueError(f"{_show(raw)} is not a decimal number")
        value = float(raw)
        if kind == "count" and not (0 < value <= MAX_COUNT):
            raise ValueError(f"play count {_show(raw)} must be > 0 and <= {MAX_COUNT}")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{_show(raw)} must be a finite number >= 0")
        return value
    if kind == "key":
        if not raw:
            raise ValueError("is empty")
        if raw != raw.strip():
            raise ValueError(f"{_show(raw)} has leading or trailing whitespace")
    return raw


def _fast_column(values: list[bytes], kind: str) -> np.ndarray | None:
    """`values` parsed as `kind` all at once, or None if any needs a closer look.

    Accepts a subset of what `_parse_field` accepts, with the same values.
    """
    arr = np.array(values, dtype=np.bytes_)
    if kind == "text":
        return arr
    u8 = arr.view(np.uint8).reshape(len(arr), arr.dtype.itemsize)
    if not u8[:, 0].all():  # an empty field
        return None
    if kind == "int":
        ok = arr.dtype.itemsize <= 18 and _IS_DIGIT[u8].all()
        return arr.astype(np.int64) if ok else None
    if kind in ("count", "number"):
        if not _IS_DECIMAL[u8].all():
            return None
        try:
            value = arr.astype(np.float64)
        except ValueError:
            return None
        ok = np.isfinite(value)
        if kind == "count":
            ok &= (value > 0) & (value <= MAX_COUNT)
        return value if ok.all() else None
    last = u8[np.arange(len(arr)), np.strings.str_len(arr) - 1]
    return None if _IS_SPACE[u8[:, 0]].any() or _IS_SPACE[last].any() else arr


class _Scan:
    """Iterates over a delimited file, yielding its columns chunk by chunk.

    Each chunk is a list with one array per column (None for unparsed
    columns): int64 for "int", float64 for "count" and "number", raw bytes
    for "key" and "text" (decoded later, once the whole file's encoding is
    known). After the iteration `utf8` says whether the file is UTF-8.
    """

    def __init__(self, path: Path, layout: _Layout):
        self.path, self.layout = path, layout
        self.n_rows = 0
        self.first_line = 1  # the first line after the header
        self.skipped: list[int] = []  # blank lines from `first_line` on
        self.utf8 = True
        self._check_utf8 = any(k in ("key", "text") for _, k in layout.columns)

    def line(self, row: int) -> int:
        """The 1-based line of data row `row` (0-based)."""
        line = self.first_line + row
        for blank in self.skipped:
            if blank > line:
                break
            line += 1
        return line

    def __iter__(self) -> Iterator[list[np.ndarray | None]]:
        need_header = self.layout.header
        for line, text in _lines(self.path):
            if need_header:
                line, text, need_header = self._take_header(line, text)
                self.first_line = line
                if text is None:
                    continue
            columns = self._parse_fast(text) or self._parse_slow(text, line)
            if self._check_utf8 and self.utf8:
                try:
                    text.decode("utf-8")
                except UnicodeDecodeError:
                    self.utf8 = False
            self.n_rows += len(next(c for c in columns if c is not None))
            yield columns
        if need_header:
            expected = self.layout.describe()
            raise self._fail(None, f"is empty; expected a header line and {expected}")

    def _fail(self, line: int | None, message: str) -> DataFormatError:
        return DataFormatError(message, path=self.path, line=line)

    def _take_header(self, line: int, text: bytes) -> tuple[int, bytes | None, bool]:
        """Checks the header if the chunk has it.

        Returns the line after what was consumed, the rest of the chunk (None
        if nothing is left) and whether the header is still to come.
        """
        while True:
            head, newline, text = text.partition(b"\n")
            if head.strip():
                fields = head.split(self.layout.delimiter)
                expected = self.layout.describe()
                if len(fields) != len(self.layout.columns):
                    raise self._fail(
                        line,
                        f"the header line has {len(fields)} "
                        f"columns; expected {expected}",
                    )
                if re.match(rb"\s*[0-9]", fields[0]):
                    raise self._fail(
                        line,
                        f"the file must start with a header "
                        f"line naming its {expected}, but "
                        f"{_show(head)} is data",
                    )
                return line + 1, text if newline else None, False
            line += 1
            if not newline:
                return line, None, True

    def _parse_fast(self, text: bytes) -> list[np.ndarray | None] | None:
        """The chunk's columns if every line is plainly valid, else None."""
        layout = self.layout
        n, delimiter = len(layout.columns), layout.delimiter
        if not text or b"\r" in text or b"\x00" in text:
            return None
        if len(delimiter) > 1:  # one byte per delimiter keeps the split exact
            if b"\x01" in text:
                return None
            text, delimiter = text.replace(delimiter, b"\x01"), b"\x01"
        arr = np.frombuffer(text, np.uint8)
        at_delimiter = np.flatnonzero(arr == delimiter[0])
        before_line_end = np.searchsorted(at_delimiter, np.flatnonzero(arr == 10))
        per_line = np.diff(before_line_end, prepend=0, append=len(at_delimiter))
        if not (per_line == n - 1).all():
            return None
        fields = text.replace(b"\n", delimiter).split(delimiter)
        if layout.strip:
            fields = [f.strip() for f in fields]
        columns = []
        for i, (_, kind) in enumerate(layout.columns):
            column = None if kind is None else _fast_column(fields[i::n], kind)
            if kind is not None and column is None:
                return None
            columns.append(column)
        return columns

    def _parse_slow(self, text: bytes, line: int) -> list[np.ndarray | None]:
        """The chunk's columns, line by line; raises at the first bad line."""
        layout = self.layout
        values: list[list] = [[] for _ in layout.columns]
        for lineno, raw in enumerate(text.split(b"\n"), start=line):
            if b"\x00" in raw:
                raise self._fail(lineno, "holds a NUL byte: binary or UTF-16 data?")
            if b"\r" in raw:
                raise self._fail(
                    lineno,
                    "holds a carriage return that does not end "
                    "the line; lines must end in LF or CRLF",
                )
            if not raw.strip():
                self.skipped.append(lineno)
                continue
            fields = raw.split(layout.delimiter)
            if layout.strip:
                fields = [f.strip() for f in fields]
            if len(fields) != len(layout.columns):
                raise self._fail(
                    lineno, f"has {len(fields)} columns; expected {layout.describe()}"
                )
            for i, (name, kind) in enumerate(layout.columns):
                try:
                    if kind is not None:
                        values[i].append(_parse_field(kind, fields[i]))
                except ValueError as e:
                    raise self._fail(lineno, f"column {i + 1} ({name}): {e}") from None
        return [
            None if kind is None else np.array(v, dtype=_DTYPES[kind])
            for v, (_, kind) in zip(values, layout.columns, strict=True)
        ]


@dataclasses.dataclass
class _Table:
    """A whole delimited file: named columns plus the row -> line mapping."""

    path: Path
    columns: dict[str, np.ndarray]
    scan: _Scan

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    @property
    def n_rows(self) -> int:
        return self.scan.n_rows

    def line(self, row: int) -> int:
        return self.scan.line(row)

    def strings(self, name: str) -> np.ndarray:
        """A "key" or "text" column decoded with the file's encoding."""
        return _decode(self.columns[name].tolist(), utf8=self.scan.utf8)

    def fail(self, row: int, message: str) -> DataFormatError:
        return DataFormatError(message, path=self.path, line=self.line(row))


def _read_table(path: Path, layout: _Layout) -> _Table:
    scan = _Scan(path, layout)
    chunks = list(scan)
    if not scan.utf8:
        logger.info("%s is not valid UTF-8; decoding it as latin-1", path)
    columns = {}
    for i, (name, kind) in enumerate(layout.columns):
        if kind is not None:
            parts = [np.zeros(0, _DTYPES[kind])] + [chunk[i] for chunk in chunks]
            columns[name] = np.concatenate(parts)
    return _Table(path, columns, scan)


def _decode(values: list[bytes], *, utf8: bool) -> np.ndarray:
    codec = "utf-8" if utf8 else "latin-1"
    return np.array([v.decode(codec) for v in values], dtype=str)


def _index_of(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """int64: the position of each value in the unique `keys`, -1 if absent."""
    if len(keys) == 0:
        return np.full(len(values), -1, np.int64)
    order = np.argsort(keys, kind="stable")
    pos = np.minimum(np.searchsorted(keys, values, sorter=order), len(keys) - 1)
    found = order[pos]
    return np.where(keys[found] == values, found, -1).astype(np.int64)


def _take(values: np.ndarray, index: np.ndarray, fill) -> np.ndarray:
    """`values[index]`, with `fill` where `index` is -1."""
    if len(values) == 0:
        return np.full(len(index), fill)
    return np.where(index >= 0, values[np.maximum(index, 0)], fill)


def _first_repeat(values: np.ndarray) -> int | None:
    """The first row whose value already appeared above it, if any."""
    order = np.argsort(values, kind="stable")
    repeats = np.flatnonzero(values[order][1:] == values[order][:-1]) + 1
    return int(order[repeats].min()) if len(repeats) else None


def _folder(directory: PathLike) -> Path:
    path = Path(directory)
    if not path.is_dir():
        problem = "is a file, expected a folder" if path.exists() else "no such folder"
        raise DataFormatError(problem, path=path)
    return path


def _require_rows(path: Path, n_rows: int, what: str) -> None:
    if n_rows == 0:
        raise DataFormatError(f"holds no {what}: the data would be empty", path=path)


def _filters(min_user_listens: int, min_song_listens: int, top_tags: int) -> dict:
    filters = dict(
        min_user_listens=min_user_listens,
        min_song_listens=min_song_listens,
        top_tags=top_tags,
    )
    for name, value in filters.items():
        is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        if not (is_int and value >= 0):
            raise InputError(f"{name}={value!r} must be an integer >= 0")
    return filters


def _check_number(name: str, value) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        raise InputError(f"{name}={value!r} must be a finite number")


def _as_strings(codes: np.ndarray) -> np.ndarray:
    """Non-negative int codes as the narrowest fixed-width strings."""
    width = len(str(int(codes.max()))) if len(codes) else 1
    return codes.astype(f"U{width}")


def _build(
    path: Path,
    users: tuple[np.ndarray, np.ndarray],
    songs: tuple[np.ndarray, np.ndarray],
    counts: np.ndarray | None,
    *,
    tag_songs: np.ndarray,
    tag_names: np.ndarray,
    song_names: np.ndarray | None,
    filters: dict,
    tags_path: Path | None = None,
) -> ListeningData:
    """`from_pairs` on integer codes, with the original identifiers put back.

    Args:
      path: the listens file, named by errors.
      users, songs: (codes [n_listens], identifiers [n_keys]) each; code
        `c` stands for identifier `keys[c]`.
      counts: float64 [n_listens] play counts, or None for 1 each.
      tag_songs: int [n_assignments] song code of each tag assignment, -1
        for songs with no listens (dropped).
      tag_names: str [n_assignments] the tag of each assignment.
      song_names: str [n_song_keys] names ("" for none), or None.
      filters: `from_pairs` filter arguments.
      tags_path: the file the tags come from, named in the log.
    """
    user_codes, user_keys = users
    song_codes, song_keys = songs
    unknown = tag_songs < 0
    if unknown.any():
        tag_codes = np.unique(tag_names, return_inverse=True)[1]
        n_all = int(tag_codes.max()) + 1
        n_only = n_all - len(np.unique(tag_codes[~unknown]))
        logger.info(
            "%s: dropped %d tag assignments of songs nobody listened to; "
            "%d of the %d distinct tags assigned are used only by them",
            tags_path,
            int(unknown.sum()),
            n_only,
            n_all,
        )
    try:
        data = from_pairs(
            _as_strings(user_codes),
            _as_strings(song_codes),
            counts,
            tag_song_ids=_as_strings(tag_songs[~unknown]),
            tag_names=tag_names[~unknown],
            keep_tags=np.unique(tag_names[unknown]),
            **filters,
        )
    except InputError as e:
        raise DataFormatError(str(e), path=path) from None
    song_index = data.song_ids.astype(np.int64)
    song_ids = np.asarray(song_keys).astype(str)[song_index]
    names = song_ids
    if song_names is not None:
        named = np.asarray(song_names).astype(str)[song_index]
        names = np.where(named != "", named, song_ids)
    user_ids = np.asarray(user_keys).astype(str)[data.user_ids.astype(np.int64)]
    return dataclasses.replace(
        data, user_ids=user_ids, song_ids=song_ids, song_names=names
    )


# Last.fm HetRec 2011 -------------------------------------------------------


def read_lastfm_hetrec(
    directory: PathLike,
    *,
    min_user_listens: int = 1,
    min_song_listens: int = 1,
    top_tags: int = 0,
) -> ListeningData:
    """Reads the HetRec 2011 Last.fm data set; artists play the part of songs.

    The folder holds tab-separated files with one header line each:
    `user_artists.dat` (userID, artistID, weight: the play count),
    `user_taggedartists.dat` (userID, artistID, tagID, day, month, year),
    `tags.dat` (tagID, tagValue; published in latin-1) and, optionally,
    `artists.dat` (id, name, url, pictureURL) for artist names.

    An artist carries a tag if any user assigned it, once however many did.
    Tags are identified by their value: tag ids with equal values are one
    tag. Rules for ids found in one file and not another:

    * a tagID of `user_taggedartists.dat` missing from `tags.dat`: error;
    * tag assignments of artists without listens: dropped (the release
      holds 390 such artists, absent from `artists.dat` as well); the 31
      tags used only by them stay in the tag vocabulary, carried by no
      song, so the vocabulary is every tag users applied;
    * artists without an `artists.dat` entry (or with an empty name) are
      named by their id; `artists.dat` entries without listens are ignored;
    * a tagID or artist id listed twice in its own file: error.

    On the published release this gives 1,892 users, 17,632 artists,
    92,834 listens and 9,749 tags (`summary()["tags"]`, every distinct tag
    of `user_taggedartists.dat`), 9,718 of which tag a listened artist
    (`summary()["tags_on_songs"]`).

    Args:
      directory: the folder of the `.dat` files.
      min_user_listens, min_song_listens, top_tags: see `data.from_pairs`.

    Returns:
      The listening data, with the artists' names as song names.

    Raises:
      DataFormatError: a file is missing or malformed (file, line, problem).
    """
    folder = _folder(directory)
    filters = _filters(min_user_listens, min_song_listens, top_tags)
    listens = _read_table(
        folder / "user_artists.dat",
        _layout("\t", "userID:int, artistID:int, weight:count", header=True),
    )
    _require_rows(listens.path, listens.n_rows, "user-artist play counts")
    tags = _read_table(
        folder / "tags.dat", _layout("\t", "tagID:int, tagValue:key", header=True)
    )
    if (row := _first_repeat(tags["tagID"])) is not None:
        raise tags.fail(row, f"tagID {tags['tagID'][row]} is listed twice")
    assigned = _read_table(
        folder / "user_taggedartists.dat",
        _layout(
            "\t",
            "userID:int, artistID:int, tagID:int, day:-, month:-, year:-",
            header=True,
        ),
    )
    tag_row = _index_of(tags["tagID"], assigned["tagID"])
    if (tag_row < 0).any():
        row = int(np.argmax(tag_row < 0))
        raise assigned.fail(
            row, f"tagID {assigned['tagID'][row]} is not listed in {tags.path.name}"
        )
    tag_values = tags.strings("tagValue")
    if len(np.unique(tag_values)) < len(tag_values):
        logger.info(
            "%s: some tag values appear under several tagIDs; each value is one tag",
            tags.path,
        )

    user_keys, user_codes = np.unique(listens["userID"], return_inverse=True)
    song_keys, song_codes = np.unique(listens["artistID"], return_inverse=True)
    return _build(
        listens.path,
        (user_codes, user_keys),
        (song_codes, song_keys),
        listens["weight"],
        tag_songs=_index_of(song_keys, assigned["artistID"]),
        tag_names=tag_values[tag_row],
        filters=filters,
        tags_path=assigned.path,
        song_names=_artist_names(folder / "artists.dat", song_keys),
    )


def _artist_names(path: Path, artist_ids: np.ndarray) -> np.ndarray | None:
    """Names of the given artists from `artists.dat` ("" if unnamed)."""
    if not path.exists():
        logger.info("%s not found; artists are named by their ids", path)
        return None
    artists = _read_table(
        path, _layout("\t", "id:int, name:text, url:-, pictureURL:-", header=True)
    )
    if (row := _first_repeat(artists["id"])) is not None:
        raise artists.fail(row, f"artist id {artists['id'][row]} is listed twice")
    return _take(artists.strings("name"), _index_of(artists["id"], artist_ids), "")


# Million Song Dataset ------------------------------------------------------


class _Ids:
    """Numbers byte-string identifiers from 0 in order of first appearance."""

    def __init__(self):
        self.codes: dict[bytes, int] = {}

    def encode(self, values: np.ndarray) -> np.ndarray:
        unique, first, inverse = np.unique(
            values, return_index=True, return_inverse=True
        )
        keys, codes = unique.tolist(), np.empty(len(unique), np.int64)
        for j in np.argsort(first).tolist():
            codes[j] = self.codes.setdefault(keys[j], len(self.codes))
        return codes[inverse]


def read_msd(
    triplets: PathLike,
    tags_db: PathLike,
    unique_tracks: PathLike,
    *,
    mismatches: PathLike | None = None,
    min_tag_value: float = 0.0,
    top_tags: int = 1000,
    min_user_listens: int = 1,
    min_song_listens: int = 1,
) -> ListeningData:
    """Reads Taste Profile play counts with the Last.fm tags of their tracks.

    Files:

    * `triplets` (`train_triplets.txt`): `user<TAB>song_id<TAB>count` lines,
      no header; streamed, so its 48 million lines fit in memory as codes.
    * `unique_tracks` (`unique_tracks.txt`): lines
      `track_id<SEP>song_id<SEP>artist<SEP>title`, where `<SEP>` is those
      five characters. A track listed twice with different songs is an
      error. A song's name is "artist - title" of its first track.
    * `tags_db` (`lastfm_tags.db`): SQLite tables `tids(tid)`, `tags(tag)`
      and `tid_tag(tid, tag, val)`, whose `tid` and `tag` are ROWIDs of the
      first two. A ROWID that resolves to nothing is an error; whitespace
      around tag names is removed and empty names are ignored. A song
      carries the tags of all its tracks.
    * `mismatches` (`sid_mismatches.txt`, optional): lines
      `ERROR: <SONG_ID TRACK_ID> ...` naming songs matched to the wrong
      track; these songs and their listens are dropped, as the data's
      publisher recommends, and their track links ignored.

    Songs of the triplets missing from `unique_tracks` are kept, untagged
    and named by their id; tracks of songs without listens are ignored.

    Args:
      triplets, tags_db, unique_tracks, mismatches: the files above.
      min_tag_value: keep the (track, tag) pairs with `val` >= this; the
        Last.fm values run from 0 to 100 and the default keeps all.
      top_tags: size of the tag vocabulary (most used tags; 0 keeps all).
      min_user_listens, min_song_listens: see `data.from_pairs`.

    Returns:
      The listening data; song names are "artist - title".

    Raises:
      DataFormatError: a file is missing or malformed.
    """
    filters = _filters(min_user_listens, min_song_listens, top_tags)
    _check_number("min_tag_value", min_tag_value)
    triplets, tags_db, unique_tracks = map(Path, (triplets, tags_db, unique_tracks))
    for path in (triplets, tags_db, unique_tracks, mismatches):
        if path is not None and not Path(path).is_file():  # fail before streaming
            raise DataFormatError("required file is missing", path=path)

    scan = _Scan(triplets, _layout("\t", "user:key, song_id:key, count:count"))
    users, songs, parts = _Ids(), _Ids(), []
    for user, song, count in scan:
        parts.append((users.encode(user), songs.encode(song), count))
    _require_rows(triplets, scan.n_rows, "play counts")
    if not scan.utf8:
        logger.info("%s is not valid UTF-8; decoding it as latin-1", triplets)
    user_codes, song_codes, counts = map(np.concatenate, zip(*parts, strict=True))
    user_keys = _decode(list(users.codes), utf8=scan.utf8)
    song_keys = _decode(list(songs.codes), utf8=scan.utf8)

    bad_tracks: list[str] = []
    if mismatches is not None:
        bad_songs, bad_tracks = _read_mismatches(Path(mismatches))
        drop = np.isin(song_keys, bad_songs)
        keep = ~drop[song_codes]
        logger.info(
            "%s: dropped %d listens of %d mismatched songs",
            mismatches,
            int((~keep).sum()),
            int(drop.sum()),
        )
        user_codes, song_codes, counts = (
            a[keep] for a in (user_codes, song_codes, counts)
        )

    tracks = _read_table(
        unique_tracks,
        _layout("<SEP>", "track_id:key, song_id:key, artist:text, title:text"),
    )
    track_ids, track_songs = tracks.strings("track_id"), tracks.strings("song_id")
    _check_tracks(tracks, track_ids, track_songs)
    track_song = _index_of(song_keys, track_songs)
    track_song[np.isin(track_ids, bad_tracks)] = -1
    linked = np.flatnonzero(track_song >= 0)
    linked_songs, first = np.unique(track_song[linked], return_index=True)
    first_track = np.full(len(song_keys), -1, np.int64)
    first_track[linked_songs] = linked[first]
    titles = np.char.add(
        np.char.add(tracks.strings("artist"), " - "), tracks.strings("title")
    )

    tids, track_of_tid, tag_ids, tag_text, pairs = _read_tags_db(tags_db, min_tag_value)
    tid_song = _take(track_song, _index_of(track_ids, track_of_tid), -1)
    tag_songs = _take(tid_song, _index_of(tids, pairs[:, 0]), -1)
    tag_names = _take(tag_text, _index_of(tag_ids, pairs[:, 1]), "")
    named = tag_names != ""
    if not named.all():
        logger.warning(
            "%s: ignored %d assignments of empty tag names",
            tags_db,
            int((~named).sum()),
        )
    return _build(
        triplets,
        (user_codes, user_keys),
        (song_codes, song_keys),
        counts,
        tag_songs=tag_songs[named],
        tag_names=tag_names[named],
        filters=filters,
        song_names=_take(titles, first_track, ""),
        tags_path=tags_db,
    )


def _check_tracks(tracks: _Table, track_ids: np.ndarray, songs: np.ndarray) -> None:
    """Raises at the first row listing a known track with another song."""
    _, first, inverse = np.unique(track_ids, return_index=True, return_inverse=True)
    clash = songs != songs[first][inverse]
    if clash.any():
        row = int(np.argmax(clash))
        track, song = str(track_ids[row]), str(songs[row])
        raise tracks.fail(
            row, f"track {track!r} is listed again, with another song ({song!r})"
        )


def _read_mismatches(path: Path) -> tuple[list[str], list[str]]:
    """The (song ids, track ids) of a mismatch file."""
    songs, tracks = [], []
    for line, text in _lines(path):
        for lineno, raw in enumerate(text.split(b"\n"), start=line):
            if not raw.strip():
                continue
            match = _MISMATCH.match(raw)
            if match is None:
                raise DataFormatError(
                    f"expected 'ERROR: <SONG_ID TRACK_ID> ...', found {_show(raw)}",
                    path=path,
                    line=lineno,
                )
            songs.append(match[1].decode("latin-1"))
            tracks.append(match[2].decode("latin-1"))
    return songs, tracks


def _read_tags_db(path: Path, min_tag_value: float):
    """(tids ROWIDs, track ids, tags ROWIDs, tag names, (tid, tag) pairs)."""
    if not path.is_file():
        raise DataFormatError("required file is missing", path=path)
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise DataFormatError(f"cannot be opened as SQLite: {e}", path=path) from None
    try:
        with db:
            return _query_tags_db(db, path, min_tag_value)
    except sqlite3.Error as e:
        raise DataFormatError(f"cannot be read as SQLite: {e}", path=path) from None
    finally:
        db.close()


def _query_tags_db(db: sqlite3.Connection, path: Path, min_tag_value: float):
    tables = {"tids": {"tid"}, "tags": {"tag"}, "tid_tag": {"tid", "tag", "val"}}
    for table, needed in tables.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if not needed <= have:
            raise DataFormatError(
                f"table {table} with columns {sorted(needed)} is "
                f"missing (found columns {sorted(have)})",
                path=path,
            )

    def first(query: str, problem: str) -> None:
        row = db.execute(query + " LIMIT 1").fetchone()
        if row is not None:
            raise DataFormatError(problem.format(*row), path=path)

    first(
        "SELECT ROWID, tid FROM tids WHERE typeof(tid) != 'text'",
        "tids row {0}: tid {1!r} is not a track id string",
    )
    first(
        "SELECT ROWID, tag FROM tags WHERE typeof(tag) != 'text'",
        "tags row {0}: tag {1!r} is not a string",
    )
    first(
        "SELECT ROWID, tid, tag, val FROM tid_tag WHERE typeof(tid) != 'integer' "
        "OR typeof(tag) != 'integer' OR typeof(val) NOT IN ('integer', 'real')",
        "tid_tag row {0}: (tid, tag, val) = ({1!r}, {2!r}, {3!r}) must be two "
        "ROWIDs and a number",
    )
    first(
        "SELECT ROWID, tid FROM tid_tag WHERE tid NOT IN (SELECT ROWID FROM tids)",
        "tid_tag row {0}: tid {1} is not a ROWID of table tids",
    )
    first(
        "SELECT ROWID, tag FROM tid_tag WHERE tag NOT IN (SELECT ROWID FROM tags)",
        "tid_tag row {0}: tag {1} is not a ROWID of table tags",
    )

    tids = db.execute("SELECT ROWID, tid FROM tids").fetchall()
    tags = db.execute("SELECT ROWID, tag FROM tags").fetchall()
    cursor = db.execute("SELECT tid, tag FROM tid_tag WHERE val >= ?", (min_tag_value,))
    pairs = [np.zeros((0, 2), np.int64)]
    while batch := cursor.fetchmany(1 << 20):
        pairs.append(np.array(batch, dtype=np.int64))
    tid_rowids, track_ids = zip(*tids, strict=True) if tids else ((), ())
    tag_rowids, tag_names = zip(*tags, strict=True) if tags else ((), ())
    return (
        np.array(tid_rowids, np.int64),
        np.array(track_ids, str),
        np.array(tag_rowids, np.int64),
        np.array([t.strip() for t in tag_names], str),
        np.concatenate(pairs),
    )


# MovieLens -----------------------------------------------------------------


def read_movielens(
    directory: PathLike,
    *,
    min_rating: float = 4.0,
    min_user_listens: int = 1,
    min_song_listens: int = 1,
    top_tags: int = 0,
) -> ListeningData:
    """Reads MovieLens ratings as listens (movies as songs, genres as tags).

    Two published layouts, told apart by their file names:

    * MovieLens 1M (also 10M): `ratings.dat`
      (`UserID::MovieID::Rating::Timestamp`) and `movies.dat`
      (`MovieID::Title::Genre1|Genre2|...`), latin-1.
    * MovieLens 100K: `u.data` (tab-separated user, item, rating,
      timestamp), `u.item` (`|`-separated id, title, release date, video
      release date, IMDb URL, then one 0/1 flag per genre) and, optionally,
      `u.genre` (`name|index` lines) naming the flag columns; without it
      the standard 19 genres `ML100K_GENRES` are used.

    A (user, movie) pair with any rating >= `min_rating` is one listen with
    count 1. Negative ratings, duplicated movie ids in the movie file,
    empty genre names and flags other than 0/1 are errors; a movie
    without a movie-file entry is kept, untitled and untagged; the genre
    "(no genres listed)" is no tag. A folder holding both layouts is an
    error.

    Args:
      directory: the folder of either layout.
      min_rating: the lowest rating that counts as a listen.
      min_user_listens, min_song_listens, top_tags: see `data.from_pairs`.

    Returns:
      The listening data, with movie titles as song names.

    Raises:
      DataFormatError: a file is missing or malformed.
    """
    folder = _folder(directory)
    filters = _filters(min_user_listens, min_song_listens, top_tags)
    _check_number("min_rating", min_rating)
    has_1m, has_100k = (folder / "ratings.dat").exists(), (folder / "u.data").exists()
    if has_1m == has_100k:
        raise DataFormatError(
            f"holds {'both' if has_1m else 'neither'} ratings.dat "
            "(MovieLens 1M layout) and u.data (MovieLens 100K "
            "layout)",
            path=folder,
        )
    if has_1m:
        ratings_path, delimiter = folder / "ratings.dat", "::"
        movie_ids, titles, genres = _movies_1m(folder / "movies.dat")
    else:
        ratings_path, delimiter = folder / "u.data", "\t"
        movie_ids, titles, genres = _movies_100k(folder / "u.item", folder / "u.genre")
    ratings = _read_table(
        ratings_path,
        _layout(delimiter, "user:int, movie:int, rating:number, timestamp:-"),
    )
    _require_rows(ratings_path, ratings.n_rows, "ratings")
    liked = ratings["rating"] >= min_rating
    if not liked.any():
        raise DataFormatError(
            f"holds no rating >= min_rating={min_rating}", path=ratings_path
        )
    pairs = np.stack([ratings["user"][liked], ratings["movie"][liked]], axis=1)
    _, first = np.unique(pairs, axis=0, return_index=True)
    pairs = pairs[np.sort(first)]  # one listen per pair, in file order
    user_keys, user_codes = np.unique(pairs[:, 0], return_inverse=True)
    song_keys, song_codes = np.unique(pairs[:, 1], return_inverse=True)
    return _build(
        ratings_path,
        (user_codes, user_keys),
        (song_codes, song_keys),
        None,
        tag_songs=_index_of(song_keys, genres[0]),
        tag_names=genres[1],
        song_names=_take(titles, _index_of(movie_ids, song_keys), ""),
        filters=filters,
        tags_path=ratings_path.parent,
    )


def _movies_1m(path: Path):
    """(movie ids, titles, (movie id, genre) per assignment) of `movies.dat`."""
    movies = _read_table(path, _layout("::", "MovieID:int, Title:text, Genres:text"))
    ids = movies["MovieID"]
    if (row := _first_repeat(ids)) is not None:
        raise movies.fail(row, f"MovieID {ids[row]} is listed twice")
    tag_movies, tag_names = [], []
    for row, text in enumerate(movies.strings("Genres").tolist()):
        if text in ("", "(no genres listed)"):
            continue
        for genre in text.split("|"):
            if not genre.strip():
                raise movies.fail(
                    row, f"column 3 (Genres): {text!r} holds an empty genre name"
                )
            tag_movies.append(ids[row])
            tag_names.append(genre)
    genres = (np.array(tag_movies, np.int64), np.array(tag_names, str))
    return ids, movies.strings("Title"), genres


def _movies_100k(path: Path, genre_path: Path):
    """(movie ids, titles, (movie id, genre) per assignment) of `u.item`."""
    names = ML100K_GENRES
    if genre_path.exists():
        table = _read_table(genre_path, _layout("|", "genre:key, index:int"))
        index = table["index"]
        if sorted(index.tolist()) != list(range(len(index))):
            raise DataFormatError(
                f"genre indices {index.tolist()} must be 0 to "
                f"{len(index) - 1}, each once",
                path=genre_path,
            )
        names = tuple(table.strings("genre")[np.argsort(index)].tolist())
    fixed = _layout(
        "|",
        "movie id:int, movie title:text, release date:-, "
        "video release date:-, IMDb URL:-",
    )
    flag_columns = tuple((genre, "int") for genre in names)
    movies = _read_table(
        path, dataclasses.replace(fixed, columns=fixed.columns + flag_columns)
    )
    ids = movies["movie id"]
    if (row := _first_repeat(ids)) is not None:
        raise movies.fail(row, f"movie id {ids[row]} is listed twice")
    flags = np.zeros((len(ids), len(names)), np.int64)
    for j, genre in enumerate(names):
        flags[:, j] = movies[genre]
    if (flags > 1).any():
        row, j = np.argwhere(flags > 1)[0]
        raise movies.fail(
            int(row),
            f"column {j + 6} ({names[j]}): genre flag {flags[row, j]} must be 0 or 1",
        )
    rows, cols = np.nonzero(flags)
    return ids, movies.strings("movie title"), (ids[rows], np.array(names, str)[cols])


# Generic delimited files ---------------------------------------------------


def _sniff(path: Path) -> tuple[bytes, list[bytes], int]:
    """(delimiter, stripped fields, line number) of the first non-blank line."""
    for line, text in _lines(path):
        for lineno, raw in enumerate(text.split(b"\n"), start=line):
            if raw.strip():
                delimiter = b"\t" if b"\t" in raw else b"," if b"," in raw else None
                if delimiter is None:
                    raise DataFormatError(
                        f"the first line {_show(raw)} holds "
                        "neither a tab nor a comma; expected tab- "
                        "or comma-separated columns",
                        path=path,
                        line=lineno,
                    )
                return delimiter, [f.strip() for f in raw.split(delimiter)], lineno
    raise DataFormatError("is empty", path=path)


def read_tsv(
    listens_path: PathLike,
    tags_path: PathLike | None = None,
    *,
    header: bool | None = None,
    min_user_listens: int = 1,
    min_song_listens: int = 1,
    top_tags: int = 0,
) -> ListeningData:
    """Reads listens from (user, item[, count]) and tags from (item, tag) rows.

    Each file's delimiter is a tab if its first non-blank line holds one,
    else a comma; fields are not quoted, and the whitespace around each
    field is stripped. The listens file has 2 or 3 columns, as its first
    line, and every line alike; the count defaults to 1. The tags file has
    2 columns.

    With `header=None`, the listens file starts with a header line when its
    first line has a count column that is not a number, and the tags file
    has a header exactly when the listens file does. A header-less listens
    file without counts cannot be told from one with a header: pass
    `header=True` (it then applies to both files).

    Text is UTF-8 (a byte-order mark is allowed); a file that is not valid
    UTF-8 is decoded as latin-1. Tags of items nobody listened to are
    dropped.

    Args:
      listens_path: the (user, item[, count]) file.
      tags_path: the (item, tag) file, if any.
      header: whether both files start with a header line (None: detect).
      min_user_listens, min_song_listens, top_tags: see `data.from_pairs`.

    Returns:
      The listening data; items are the songs, named by their ids.

    Raises:
      DataFormatError: a file is missing or malformed.
    """
    filters = _filters(min_user_listens, min_song_listens, top_tags)
    listens_path = Path(listens_path)
    delimiter, fields, line = _sniff(listens_path)
    if len(fields) not in (2, 3):
        raise DataFormatError(
            f"has {len(fields)} columns; expected 2 (user, item) "
            "or 3 (user, item, count)",
            path=listens_path,
            line=line,
        )
    has_count = len(fields) == 3
    if header is None:
        header = has_count and _NUMBER.fullmatch(fields[2]) is None
    columns = "user:key, item:key" + ", count:count" * has_count
    listens = _read_table(
        listens_path, _layout(delimiter.decode(), columns, header=header, strip=True)
    )
    _require_rows(listens_path, listens.n_rows, "listens")
    user_keys, user_codes = np.unique(listens.strings("user"), return_inverse=True)
    song_keys, song_codes = np.unique(listens.strings("item"), return_inverse=True)

    tag_songs, tag_names = np.zeros(0, np.int64), np.zeros(0, str)
    if tags_path is not None:
        tags_path = Path(tags_path)
        delimiter, fields, line = _sniff(tags_path)
        if len(fields) != 2:
            raise DataFormatError(
                f"has {len(fields)} columns; expected 2 (item, tag)",
                path=tags_path,
                line=line,
            )
        tags = _read_table(
            tags_path,
            _layout(delimiter.decode(), "item:key, tag:key", header=header, strip=True),
        )
        tag_songs = _index_of(song_keys, tags.strings("item"))
        tag_names = tags.strings("tag")
    return _build(
        listens_path,
        (user_codes, user_keys),
        (song_codes, song_keys),
        listens["count"] if has_count else None,
        tag_songs=tag_songs,
        tag_names=tag_names,
        song_names=None,
        filters=filters,
        tags_path=tags_path,
    )


# Dispatch ------------------------------------------------------------------


def _refilter(data: ListeningData, filters: dict) -> ListeningData:
    """`data` with the filters applied (unchanged when they keep everything)."""
    if filters == {"min_user_listens": 1, "min_song_listens": 1, "top_tags": 0}:
        return data
    tag_rows = np.repeat(np.arange(data.n_songs), np.diff(data.tag_indptr))
    names = dict(zip(data.song_ids.tolist(), data.song_names.tolist(), strict=True))
    return from_pairs(
        data.user_ids[data.user_rows()],
        data.song_ids[data.indices],
        data.counts,
        tag_song_ids=data.song_ids[tag_rows],
        tag_names=data.tag_names[data.tag_indices],
        song_names=names,
        **filters,
    )


def _tsv_paths(path: str) -> tuple[Path, Path | None]:
    """`"LISTENS"` or `"LISTENS,TAGS"` as paths (an existing file wins)."""
    if "," in path and not Path(path).exists():
        listens, tags = path.rsplit(",", 1)
        return Path(listens.strip()), Path(tags.strip())
    return Path(path), None


def load_source(
    config: DataConfig, *, key: jax.Array | int | None = None
) -> ListeningData:
    """The data a `DataConfig` describes, filtered by its settings.

    `config.path` by source:

    * "synthetic": unused; `synthetic.generate` makes `n_users` users,
      `n_songs` songs and `n_tags` tags from `key` (seed 0 by default).
    * "lastfm-hetrec", "movielens": the data set's folder.
    * "msd": a folder holding the files named in `MSD_FILES`
      (`sid_mismatches.txt` is used when present).
    * "tsv": the listens file, or `"listens.tsv,tags.tsv"` to name a tags
      file as well (split at the last comma unless the whole path is an
      existing file).
    * "npz": a file written by `data.save_data`.

    Args:
      config: the source, path and filters.
      key: the PRNG key or integer seed of the synthetic data.

    Returns:
      The listening data with `min_user_listens`, `min_song_listens` and
      `top_tags` applied (and `min_rating` for MovieLens).

    Raises:
      DataFormatError: the files are missing or malformed.
    """
    filters = _filters(
        config.min_user_listens, config.min_song_listens, config.top_tags
    )
    if config.source == "synthetic":
        from songrec_jax.synthetic import generate

        data = generate(
            n_users=config.n_users,
            n_songs=config.n_songs,
            n_tags=config.n_tags,
            key=0 if key is None else key,
        )
        return _refilter(data, filters)
    if config.source == "lastfm-hetrec":
        return read_lastfm_hetrec(config.path, **filters)
    if config.source == "msd":
        folder = _folder(config.path)
        mismatches = folder / MSD_FILES["mismatches"]
        return read_msd(
            folder / MSD_FILES["triplets"],
            folder / MSD_FILES["tags_db"],
            folder / MSD_FILES["unique_tracks"],
            mismatches=mismatches if mismatches.exists() else None,
            **filters,
        )
    if config.source == "movielens":
        return read_movielens(config.path, min_rating=config.min_rating, **filters)
    if config.source == "tsv":
        return read_tsv(*_tsv_paths(config.path), **filters)
    try:
        return _refilter(load_data(config.path), filters)
    except InputError as e:
        raise DataFormatError(str(e), path=config.path) from None
