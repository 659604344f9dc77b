"""Hostile inputs for every reader.

Each test writes a valid data set in its published layout, damages one file
at random (truncation, random bytes, wrong delimiters, byte-order marks,
mixed line endings, latin-1 or UTF-16 text, missing or extra columns, odd
numbers, duplicated or dropped lines) and reads it twice: with the reader,
and with a plain line-by-line reference written here from the documented
rules. Either both accept it and agree on every listen, tag and name, or
both reject it and the reader's `DataFormatError` names the file (and the
line, where the reference knows it).
"""

from __future__ import annotations

import math
import re
import sqlite3
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from songrec_jax import readers
from songrec_jax.errors import DataFormatError
from songrec_jax.readers import read_lastfm_hetrec, read_movielens, read_msd, read_tsv

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
MAX_COUNT = 2**31 - 1
NUMBER = re.compile(rb"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
MISMATCH = re.compile(rb"ERROR: <([^\s<>]+) ([^\s<>]+)>")
NAMES = ["rock", "pop", "café", "naïve", "Ärzte", "hip hop", "drum'n'bass"]


class Bad(Exception):
    """The reference rejects the data: `file` (and `line`) must be named."""

    def __init__(self, file: str, line: int | None = None):
        super().__init__(file, line)
        self.file, self.line = file, line


# The reference -----------------------------------------------------------------


def reference_lines(raw: bytes, file: str) -> list[bytes]:
    """The lines of a file: UTF-8 BOM dropped, one CR before each LF removed."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff") or raw[:4] == b"\x00\x00\xfe\xff":
        raise Bad(file, 1)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return [line[:-1] if line.endswith(b"\r") else line for line in raw.split(b"\n")]


def reference_value(kind, field: bytes):
    """The value of one field, or raises ValueError."""
    if kind == "int":
        if not (1 <= len(field) <= 18 and field.isdigit()):
            raise ValueError
        return int(field)
    if kind in ("count", "number"):
        if not NUMBER.fullmatch(field):
            raise ValueError
        value = float(field)
        if kind == "count" and not (math.isfinite(value) and 0 < value <= MAX_COUNT):
            raise ValueError
        if not (math.isfinite(value) and value >= 0):
            raise ValueError
        return value
    if kind == "key" and (not field or field != field.strip()):
        raise ValueError
    return field


def reference_table(raw, file, delimiter, kinds, *, header=False, strip=False):
    """([(line, values)], whether the data lines are UTF-8) of one table."""
    rows, utf8, pending = [], True, header
    for number, line in enumerate(reference_lines(raw, file), start=1):
        if pending:
            if line.strip():
                fields = line.split(delimiter)
                if len(fields) != len(kinds) or re.match(rb"\s*\d", fields[0]):
                    raise Bad(file, number)
                pending = False
            continue
        if b"\x00" in line or b"\r" in line:
            raise Bad(file, number)
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            utf8 = False
        if not line.strip():
            continue
        fields = line.split(delimiter)
        if strip:
            fields = [f.strip() for f in fields]
        if len(fields) != len(kinds):
            raise Bad(file, number)
        try:
            values = [
                None if k is None else reference_value(k, f)
                for k, f in zip(kinds, fields, strict=True)
            ]
        except ValueError:
            raise Bad(file, number) from None
        rows.append((number, values))
    if pending:
        raise Bad(file)
    return rows, utf8


def text(raw: bytes, utf8: bool) -> str:
    return raw.decode("utf-8" if utf8 else "latin-1")


def first_repeat(rows, column: int, file: str) -> None:
    seen = set()
    for number, values in rows:
        if values[column] in seen:
            raise Bad(file, number)
        seen.add(values[column])


def outcome(listens: dict, tags: dict, names: dict) -> tuple[dict, dict, dict]:
    """Drops tags and names of songs without listens."""
    songs = {song for _, song in listens}
    tags = {s: t for s, t in tags.items() if s in songs and t}
    return listens, tags, {s: names.get(s) or s for s in songs}


# Comparing ---------------------------------------------------------------------


def observed(data) -> tuple[dict, dict, dict]:
    users = data.user_ids[data.user_rows()].tolist()
    songs = data.song_ids[data.indices].tolist()
    listens = dict(
        zip(zip(users, songs, strict=True), data.counts.tolist(), strict=True)
    )
    tags = {}
    for s in range(data.n_songs):
        if len(data.song_tags(s)):
            tags[str(data.song_ids[s])] = set(
                data.tag_names[data.song_tags(s)].tolist()
            )
    names = dict(zip(data.song_ids.tolist(), data.song_names.tolist(), strict=True))
    return listens, tags, names


def check(read, reference) -> bool:
    """Reader and reference agree; returns whether the data was accepted."""
    try:
        expected = reference()
    except Bad as bad:
        event("rejected")
        with pytest.raises(DataFormatError) as caught:
            read()
        assert bad.file in str(caught.value)
        if bad.line is not None:
            assert caught.value.line == bad.line, str(caught.value)
        return False
    event("accepted")
    listens, tags, names = observed(read())
    want_listens, want_tags, want_names = expected
    assert listens.keys() == want_listens.keys()
    got = np.array([listens[k] for k in want_listens])
    np.testing.assert_allclose(got, list(want_listens.values()), rtol=1e-6)
    assert tags == want_tags
    assert names == want_names
    return True


# Damage ------------------------------------------------------------------------

ODD_FIELDS = [
    b"-3",
    b"0",
    b"1e400",
    b"nan",
    b"inf",
    b"99999999999999999999",
    b"1.5",
    b" 5",
    b"5 ",
    b"+5",
    "٣".encode(),
    b"1_000",
    b"",
    b"abc",
    b"3e2",
    b"2147483648",
    b".5",
    b"\xe9t\xe9",
    "été".encode(),
    b"7",
]
SNIPPETS = [
    b"\r",
    b"\x00",
    b"\t",
    b",",
    b"\n",
    b" ",
    b"\xe9",
    b"\xc3\xa9",
    b"::",
    b"|",
    b"<SEP>",
    b"\r\n",
    b"\n\n",
    b"\xef\xbb\xbf",
]
DAMAGE = [
    "truncate",
    "cut",
    "insert",
    "duplicate",
    "drop",
    "blank",
    "cr",
    "field",
    "drop_field",
    "extra_field",
    "delimiter",
    "bom",
    "utf16",
    "crlf",
]
BENIGN = ["duplicate", "blank", "cr", "crlf"]


def damage(data, raw: bytes, delimiter: bytes, kinds=DAMAGE) -> bytes:
    """`raw` with one to three random kinds of damage."""
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(kinds))
        lines = raw.split(b"\n")
        i = data.draw(st.integers(0, len(lines) - 1))
        fields = lines[i].split(delimiter)
        j = data.draw(st.integers(0, len(fields) - 1))
        if kind == "truncate":
            raw = raw[: data.draw(st.integers(0, len(raw)))]
        elif kind == "cut":
            start = data.draw(st.integers(0, len(raw)))
            raw = raw[:start] + raw[start + data.draw(st.integers(1, 8)) :]
        elif kind == "insert":
            at = data.draw(st.integers(0, len(raw)))
            snippet = data.draw(st.sampled_from(SNIPPETS) | st.binary(max_size=3))
            raw = raw[:at] + snippet + raw[at:]
        elif kind == "bom":
            raw = b"\xef\xbb\xbf" + raw
        elif kind == "utf16":
            raw = raw.decode("latin-1").encode("utf-16")
        elif kind == "crlf":
            raw = re.sub(rb"\r?\n", b"\r\n", raw)
        else:
            if kind == "duplicate":
                lines.insert(i, lines[i])
            elif kind == "drop":
                del lines[i]
            elif kind == "blank":
                lines.insert(i, data.draw(st.sampled_from([b"", b"  ", b"\t", b" \r"])))
            elif kind == "cr":
                lines[i] = lines[i].removesuffix(b"\r") + b"\r"
            elif kind == "field":
                fields[j] = data.draw(st.sampled_from(ODD_FIELDS))
            elif kind == "drop_field":
                del fields[j]
            elif kind == "extra_field":
                fields.insert(j, data.draw(st.sampled_from(ODD_FIELDS)))
            elif kind == "delimiter":
                other = data.draw(
                    st.sampled_from([b",", b" ", b";", b"\t", b"::", b"|"])
                )
                fields = [delimiter.join(fields).replace(delimiter, other, 1)]
            if kind in ("field", "drop_field", "extra_field", "delimiter"):
                lines[i] = delimiter.join(fields)
            raw = b"\n".join(lines)
    return raw


def table_bytes(rows, delimiter=b"\t", header=None, encoding="utf-8") -> bytes:
    lines = [] if header is None else [header.encode()]
    lines += [delimiter.join(str(v).encode(encoding) for v in row) for row in rows]
    return b"\n".join(lines) + b"\n"


def write_all(folder: Path, files: dict[str, bytes]) -> None:
    for name, raw in files.items():
        (folder / name).write_bytes(raw)


chunk_sizes = st.sampled_from([3, 16, 1 << 24])
ids = st.integers(1, 8)


def small_chunks(data):
    """Sets a drawn chunk size; returns a function restoring the old one."""
    old = readers._CHUNK_BYTES
    readers._CHUNK_BYTES = data.draw(chunk_sizes)
    return lambda: setattr(readers, "_CHUNK_BYTES", old)


# Last.fm HetRec ----------------------------------------------------------------

HETREC_HEADERS = {
    "user_artists.dat": "userID\tartistID\tweight",
    "tags.dat": "tagID\ttagValue",
    "user_taggedartists.dat": "userID\tartistID\ttagID\tday\tmonth\tyear",
    "artists.dat": "id\tname\turl\tpictureURL",
}


@st.composite
def hetrec_files(draw) -> dict[str, bytes]:
    listens = draw(
        st.lists(st.tuples(ids, ids, st.integers(1, 10**6)), min_size=1, max_size=12)
    )
    tag_ids = draw(st.lists(st.integers(1, 6), min_size=1, max_size=5, unique=True))
    tags = [(t, draw(st.sampled_from(NAMES))) for t in tag_ids]
    assigned = draw(
        st.lists(
            st.tuples(
                ids,
                st.integers(1, 10),
                st.sampled_from(tag_ids),
                st.just(1),
                st.just(4),
                st.just(2009),
            ),
            max_size=12,
        )
    )
    artists = draw(st.lists(st.integers(1, 10), max_size=8, unique=True))
    names = [(a, draw(st.sampled_from(NAMES + [""])), "http://x", "") for a in artists]
    encoding = draw(st.sampled_from(["latin-1", "utf-8"]))
    return {
        "user_artists.dat": table_bytes(
            listens, header=HETREC_HEADERS["user_artists.dat"]
        ),
        "tags.dat": table_bytes(tags, header="tagID\ttagValue", encoding=encoding),
        "user_taggedartists.dat": table_bytes(
            assigned, header=HETREC_HEADERS["user_taggedartists.dat"]
        ),
        "artists.dat": table_bytes(names, header=HETREC_HEADERS["artists.dat"]),
    }


def reference_hetrec(files: dict[str, bytes]):
    def table(name, kinds):
        return reference_table(files[name], name, b"\t", kinds, header=True)

    listens, _ = table("user_artists.dat", ("int", "int", "count"))
    if not listens:
        raise Bad("user_artists.dat")
    tags, utf8 = table("tags.dat", ("int", "key"))
    first_repeat(tags, 0, "tags.dat")
    value = {tag_id: text(name, utf8) for _, (tag_id, name) in tags}
    assigned, _ = table(
        "user_taggedartists.dat", ("int", "int", "int", None, None, None)
    )
    for number, row in assigned:
        if row[2] not in value:
            raise Bad("user_taggedartists.dat", number)
    artists, utf8 = table("artists.dat", ("int", "text", None, None))
    first_repeat(artists, 0, "artists.dat")

    counts = defaultdict(float)
    for _, (user, artist, count) in listens:
        counts[str(user), str(artist)] += count
    song_tags = defaultdict(set)
    for _, (_, artist, tag_id, *_) in assigned:
        song_tags[str(artist)].add(value[tag_id])
    names = {str(row[0]): text(row[1], utf8) for _, row in artists}
    return outcome(dict(counts), song_tags, names)


@SETTINGS
@given(files=hetrec_files(), data=st.data())
def test_hetrec_damaged(files, data):
    name = data.draw(st.sampled_from(sorted(files)))
    files[name] = damage(data, files[name], b"\t")
    restore = small_chunks(data)
    try:
        with tempfile.TemporaryDirectory() as folder:
            write_all(Path(folder), files)
            check(lambda: read_lastfm_hetrec(folder), lambda: reference_hetrec(files))
    finally:
        restore()


@SETTINGS
@given(files=hetrec_files(), data=st.data())
def test_hetrec_benign_changes_are_read(files, data):
    for name in ("user_artists.dat", "user_taggedartists.dat"):
        header, body = files[name].split(b"\n", 1)
        body = damage(data, body, b"\t", kinds=BENIGN)
        bom = b"\xef\xbb\xbf" if data.draw(st.booleans()) else b""
        files[name] = bom + header + b"\n" + body
    with tempfile.TemporaryDirectory() as folder:
        write_all(Path(folder), files)
        assert check(
            lambda: read_lastfm_hetrec(folder), lambda: reference_hetrec(files)
        )


# Million Song Dataset ----------------------------------------------------------

SONGS = ["SOA", "SOB", "SOC", "SOD", "SOÉ"]
TRACKS = ["TRA", "TRB", "TRC", "TRD", "TRE", "TRF"]
DB_TAGS = {
    "TRA": [("rock", 100), ("pop", 20)],
    "TRB": [(" indie ", 50)],
    "TRC": [("rock", 0)],
    "TRE": [("", 90), ("jazz", 70)],
    "TRZ": [("rock", 100)],
}


@st.composite
def msd_files(draw) -> dict[str, bytes]:
    users = st.sampled_from(["u1", "u2", "ü3", "4"])
    triplets = draw(
        st.lists(
            st.tuples(users, st.sampled_from(SONGS), st.integers(1, 500)),
            min_size=1,
            max_size=12,
        )
    )
    tracks = draw(st.lists(st.sampled_from(TRACKS), max_size=6, unique=True))
    rows = [
        (
            t,
            draw(st.sampled_from(SONGS)),
            draw(st.sampled_from(NAMES)),
            draw(st.sampled_from(NAMES)),
        )
        for t in tracks
    ]
    bad = draw(
        st.lists(st.tuples(st.sampled_from(SONGS), st.sampled_from(TRACKS)), max_size=2)
    )
    return {
        "train_triplets.txt": table_bytes(triplets),
        "unique_tracks.txt": table_bytes(rows, b"<SEP>"),
        "sid_mismatches.txt": b"".join(
            b"ERROR: <%s %s> a - b != c - d\n" % (s.encode(), t.encode())
            for s, t in bad
        ),
    }


def write_db(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE tids (tid TEXT)")
    db.execute("CREATE TABLE tags (tag TEXT)")
    db.execute("CREATE TABLE tid_tag (tid INT, tag INT, val FLOAT)")
    tag_names = sorted({tag for pairs in DB_TAGS.values() for tag, _ in pairs})
    for tid, (track, pairs) in enumerate(DB_TAGS.items(), start=1):
        db.execute("INSERT INTO tids VALUES (?)", (track,))
        for tag, val in pairs:
            db.execute(
                "INSERT INTO tid_tag VALUES (?, ?, ?)",
                (tid, tag_names.index(tag) + 1, val),
            )
    db.executemany("INSERT INTO tags VALUES (?)", [(t,) for t in tag_names])
    db.commit()
    db.close()


def reference_msd(files: dict[str, bytes], min_tag_value: float):
    name = "train_triplets.txt"
    triplets, utf8 = reference_table(files[name], name, b"\t", ("key", "key", "count"))
    if not triplets:
        raise Bad(name)
    bad_songs, bad_tracks = set(), set()
    for number, line in enumerate(
        reference_lines(files["sid_mismatches.txt"], "sid_mismatches.txt"), start=1
    ):
        if line.strip():
            match = MISMATCH.match(line)
            if match is None:
                raise Bad("sid_mismatches.txt", number)
            bad_songs.add(match[1].decode("latin-1"))
            bad_tracks.add(match[2].decode("latin-1"))
    counts = defaultdict(float)
    for _, (user, song, count) in triplets:
        if text(song, utf8) not in bad_songs:
            counts[text(user, utf8), text(song, utf8)] += count

    rows, utf8 = reference_table(
        files["unique_tracks.txt"],
        "unique_tracks.txt",
        b"<SEP>",
        ("key", "key", "text", "text"),
    )
    song_of, names = {}, {}
    for number, (track, song, artist, title) in rows:
        track, song = text(track, utf8), text(song, utf8)
        if song_of.setdefault(track, song) != song:
            raise Bad("unique_tracks.txt", number)
        if track not in bad_tracks:
            names.setdefault(song, f"{text(artist, utf8)} - {text(title, utf8)}")
    if not counts:  # every listen was of a mismatched song
        raise Bad(name)
    song_tags = defaultdict(set)
    for track, pairs in DB_TAGS.items():
        if track in song_of and track not in bad_tracks:
            song_tags[song_of[track]] |= {
                tag.strip()
                for tag, val in pairs
                if val >= min_tag_value and tag.strip()
            }
    return outcome(dict(counts), song_tags, names)


@SETTINGS
@given(files=msd_files(), data=st.data())
def test_msd_damaged(files, data):
    name = data.draw(st.sampled_from(sorted(files)))
    delimiter = b"<SEP>" if name == "unique_tracks.txt" else b"\t"
    files[name] = damage(data, files[name], delimiter)
    min_tag_value = data.draw(st.sampled_from([0, 50]))
    restore = small_chunks(data)
    try:
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            write_all(folder, files)
            write_db(folder / "lastfm_tags.db")
            check(
                lambda: read_msd(
                    folder / "train_triplets.txt",
                    folder / "lastfm_tags.db",
                    folder / "unique_tracks.txt",
                    mismatches=folder / "sid_mismatches.txt",
                    min_tag_value=min_tag_value,
                    top_tags=0,
                ),
                lambda: reference_msd(files, min_tag_value),
            )
    finally:
        restore()


# MovieLens ---------------------------------------------------------------------


@st.composite
def movielens_files(draw, layout: str) -> dict[str, bytes]:
    ratings = draw(
        st.lists(
            st.tuples(ids, ids, st.sampled_from([1, 3, 4, 4.5, 5]), st.just(978300760)),
            min_size=1,
            max_size=12,
        )
    )
    movies = draw(st.lists(st.integers(1, 10), max_size=8, unique=True))
    genres = st.lists(
        st.sampled_from(["Action", "Comedy", "Sci-Fi", "Drama"]),
        max_size=3,
        unique=True,
    )
    titles = st.sampled_from(["Amélie (2001)", "Heat (1995)", ""])
    if layout == "1m":
        rows = [(m, draw(titles), "|".join(draw(genres))) for m in movies]
        return {
            "ratings.dat": table_bytes(ratings, b"::"),
            "movies.dat": table_bytes(rows, b"::", encoding="latin-1"),
        }
    rows = [
        (m, draw(titles), "01-Jan-1995", "", "http://imdb")
        + tuple(draw(st.lists(st.integers(0, 1), min_size=19, max_size=19)))
        for m in movies
    ]
    return {
        "u.data": table_bytes([r[:2] + (int(r[2]),) + r[3:] for r in ratings]),
        "u.item": table_bytes(rows, b"|", encoding="latin-1"),
    }


def reference_movielens(files: dict[str, bytes], min_rating: float):
    movies, genres = {}, defaultdict(set)
    if "movies.dat" in files:
        name, delimiter = "ratings.dat", b"::"
        rows, utf8 = reference_table(
            files["movies.dat"], "movies.dat", b"::", ("int", "text", "text")
        )
        first_repeat(rows, 0, "movies.dat")
        for number, (movie, title, listed) in rows:
            movies[str(movie)] = text(title, utf8)
            if text(listed, utf8) in ("", "(no genres listed)"):
                continue
            for genre in text(listed, utf8).split("|"):
                if not genre.strip():
                    raise Bad("movies.dat", number)
                genres[str(movie)].add(genre)
    else:
        name, delimiter = "u.data", b"\t"
        kinds = ("int", "text", None, None, None) + ("int",) * 19
        rows, utf8 = reference_table(files["u.item"], "u.item", b"|", kinds)
        first_repeat(rows, 0, "u.item")
        for number, values in rows:
            if any(flag > 1 for flag in values[5:]):
                raise Bad("u.item", number)
            movies[str(values[0])] = text(values[1], utf8)
            genres[str(values[0])] = {
                g
                for g, flag in zip(readers.ML100K_GENRES, values[5:], strict=True)
                if flag
            }
    ratings, _ = reference_table(
        files[name], name, delimiter, ("int", "int", "number", None)
    )
    if not ratings:
        raise Bad(name)
    listens = {(str(u), str(m)): 1.0 for _, (u, m, r, _) in ratings if r >= min_rating}
    if not listens:
        raise Bad(name)
    return outcome(listens, genres, movies)


@SETTINGS
@given(data=st.data(), layout=st.sampled_from(["1m", "100k"]))
def test_movielens_damaged(data, layout):
    files = data.draw(movielens_files(layout))
    name = data.draw(st.sampled_from(sorted(files)))
    delimiter = {"u.data": b"\t", "u.item": b"|"}.get(name, b"::")
    files[name] = damage(data, files[name], delimiter)
    min_rating = data.draw(st.sampled_from([0.0, 4.0]))
    with tempfile.TemporaryDirectory() as folder:
        write_all(Path(folder), files)
        check(
            lambda: read_movielens(folder, min_rating=min_rating),
            lambda: reference_movielens(files, min_rating),
        )


# Generic delimited files -------------------------------------------------------


@st.composite
def tsv_files(draw) -> dict[str, bytes]:
    sep = draw(st.sampled_from([b"\t", b","]))
    with_count, header = draw(st.booleans()), draw(st.booleans())
    users, items = (
        st.sampled_from(["u1", "u2", "zoë"]),
        st.sampled_from(["a", "b", "ç"]),
    )
    counts = st.sampled_from([1, 2, 0.5, 1000]) if with_count else st.nothing()
    rows = draw(
        st.lists(
            st.tuples(users, items, counts) if with_count else st.tuples(users, items),
            min_size=1,
            max_size=10,
        )
    )
    tags = draw(
        st.lists(st.tuples(items | st.just("zz"), st.sampled_from(NAMES)), max_size=6)
    )
    encoding = draw(st.sampled_from(["utf-8", "latin-1"]))
    head = "user,item,plays" if with_count else "user,item"
    return {
        "listens.tsv": table_bytes(
            rows, sep, head.replace(",", sep.decode()) if header else None, encoding
        ),
        "tags.tsv": table_bytes(
            tags, sep, f"item{sep.decode()}tag" if header else None, encoding
        ),
        "header": b"yes" if header and not with_count else b"",
    }


def reference_sniff(raw: bytes, file: str, n_columns) -> tuple[bytes, list[bytes]]:
    """The delimiter and fields of the first non-blank line."""
    for number, line in enumerate(reference_lines(raw, file), start=1):
        if line.strip():
            sep = b"\t" if b"\t" in line else b"," if b"," in line else None
            if sep is None or len(line.split(sep)) not in n_columns:
                raise Bad(file, number)
            return sep, line.split(sep)
    raise Bad(file)


def reference_tsv(files: dict[str, bytes], header: bool | None):
    sep, fields = reference_sniff(files["listens.tsv"], "listens.tsv", (2, 3))
    kinds = ("key", "key", "count")[: len(fields)]
    if header is None:
        header = len(fields) == 3 and not NUMBER.fullmatch(fields[2].strip())
    rows, utf8 = reference_table(
        files["listens.tsv"], "listens.tsv", sep, kinds, header=header, strip=True
    )
    if not rows:
        raise Bad("listens.tsv")
    counts = defaultdict(float)
    for _, (user, item, *count) in rows:
        counts[text(user, utf8), text(item, utf8)] += count[0] if count else 1.0
    sep, fields = reference_sniff(files["tags.tsv"], "tags.tsv", (2,))
    rows, utf8 = reference_table(
        files["tags.tsv"], "tags.tsv", sep, ("key", "key"), header=header, strip=True
    )
    tags = defaultdict(set)
    for _, (item, tag) in rows:
        tags[text(item, utf8)].add(text(tag, utf8))
    return outcome(dict(counts), tags, {})


@SETTINGS
@given(files=tsv_files(), data=st.data())
def test_tsv_damaged(files, data):
    header = True if files.pop("header") else None
    name = data.draw(st.sampled_from(sorted(files)))
    sep = b"\t" if b"\t" in files["listens.tsv"] else b","
    files[name] = damage(data, files[name], sep)
    restore = small_chunks(data)
    try:
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            write_all(folder, files)
            check(
                lambda: read_tsv(
                    folder / "listens.tsv", folder / "tags.tsv", header=header
                ),
                lambda: reference_tsv(files, header),
            )
    finally:
        restore()


# Random bytes ------------------------------------------------------------------


@SETTINGS
@given(raw=st.binary(max_size=200), data=st.data())
def test_random_bytes_are_rejected_or_read_consistently(raw, data):
    reader = data.draw(st.sampled_from(["hetrec", "msd", "movielens", "tsv"]))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if reader == "hetrec":
            files = data.draw(hetrec_files())
            files[data.draw(st.sampled_from(sorted(files)))] = raw
            write_all(folder, files)
            check(lambda: read_lastfm_hetrec(folder), lambda: reference_hetrec(files))
        elif reader == "msd":
            files = data.draw(msd_files())
            target = data.draw(st.sampled_from(sorted(files) + ["lastfm_tags.db"]))
            write_all(folder, files)
            write_db(folder / "lastfm_tags.db")
            (folder / target).write_bytes(raw)
            files[target] = raw
            read = lambda: read_msd(  # noqa: E731
                folder / "train_triplets.txt",
                folder / "lastfm_tags.db",
                folder / "unique_tracks.txt",
                mismatches=folder / "sid_mismatches.txt",
            )
            if target == "lastfm_tags.db":
                with pytest.raises(DataFormatError, match="lastfm_tags.db"):
                    read()
            else:
                check(read, lambda: reference_msd(files, 0))
        elif reader == "movielens":
            files = data.draw(
                movielens_files(data.draw(st.sampled_from(["1m", "100k"])))
            )
            files[data.draw(st.sampled_from(sorted(files)))] = raw
            write_all(folder, files)
            check(lambda: read_movielens(folder), lambda: reference_movielens(files, 4))
        else:
            files = data.draw(tsv_files())
            header = True if files.pop("header") else None
            files[data.draw(st.sampled_from(sorted(files)))] = raw
            write_all(folder, files)
            check(
                lambda: read_tsv(
                    folder / "listens.tsv", folder / "tags.tsv", header=header
                ),
                lambda: reference_tsv(files, header),
            )


def test_missing_files_are_named(tmp_path):
    for read, name in [
        (lambda: read_lastfm_hetrec(tmp_path), "user_artists.dat"),
        (lambda: read_movielens(tmp_path), str(tmp_path)),
        (lambda: read_tsv(tmp_path / "none.tsv"), "none.tsv"),
        (
            lambda: read_msd(tmp_path / "t.txt", tmp_path / "d.db", tmp_path / "u.txt"),
            "t.txt",
        ),
    ]:
        with pytest.raises(DataFormatError, match=re.escape(name)):
            read()
