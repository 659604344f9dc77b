"""Tests of the file-format readers on small files in the published layouts."""

from __future__ import annotations

import logging
import re
import sqlite3
import sys
import types
from pathlib import Path

import pytest

from songrec_jax import readers
from songrec_jax.config import DataConfig
from songrec_jax.data import from_pairs, save_data
from songrec_jax.errors import DataFormatError, InputError
from songrec_jax.readers import (
    load_source,
    read_lastfm_hetrec,
    read_movielens,
    read_msd,
    read_tsv,
)


def write(path: Path, lines: list[str], *, encoding="utf-8", newline="\n") -> Path:
    path.write_bytes("".join(line + newline for line in lines).encode(encoding))
    return path


def listens_of(data) -> dict[tuple[str, str], float]:
    """{(user id, song id): count} of the data."""
    users = data.user_ids[data.user_rows()]
    songs = data.song_ids[data.indices]
    return {(u, s): float(c) for u, s, c in zip(users, songs, data.counts, strict=True)}


def tags_of(data) -> dict[str, set[str]]:
    """{song id: tag names} of the tagged songs."""
    return {
        str(data.song_ids[s]): {str(data.tag_names[t]) for t in data.song_tags(s)}
        for s in range(data.n_songs)
        if len(data.song_tags(s))
    }


def names_of(data) -> dict[str, str]:
    return dict(zip(data.song_ids.tolist(), data.song_names.tolist(), strict=True))


# Last.fm HetRec --------------------------------------------------------------


def make_hetrec(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    write(
        folder / "user_artists.dat",
        [
            "userID\tartistID\tweight",
            "2\t51\t100",
            "2\t52\t50",
            "3\t51\t10",
            "3\t53\t5",
            "4\t52\t7",
            "4\t51\t3",
        ],
        newline="\r\n",
    )
    write(
        folder / "tags.dat",
        ["tagID\ttagValue", "1\trock", "2\trock français", "3\tjazz", "4\tunused"],
        encoding="latin-1",
        newline="\r\n",
    )
    write(
        folder / "user_taggedartists.dat",
        [
            "userID\tartistID\ttagID\tday\tmonth\tyear",
            "2\t51\t1\t1\t4\t2009",  # rock on 51 ...
            "3\t51\t1\t1\t5\t2009",  # ... twice: counted once
            "2\t52\t2\t1\t4\t2009",
            "4\t52\t1\t1\t4\t2009",
            "2\t99\t3\t1\t4\t2009",
        ],  # artist 99 has no listens: jazz is dropped
        newline="\r\n",
    )
    write(
        folder / "artists.dat",
        [
            "id\tname\turl\tpictureURL",
            "51\tMötley Crüe\thttp://a\thttp://b",
            "52\tBjörk\thttp://c\t",
            "53\t\t\t",
            "54\tNobody\t\t",
        ],
    )
    return folder


def test_hetrec_counts_tags_and_names(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="songrec_jax.readers"):
        data = read_lastfm_hetrec(make_hetrec(tmp_path / "lastfm"))

    assert (data.n_users, data.n_songs, data.n_listens) == (3, 3, 6)
    assert data.user_ids.tolist() == ["2", "3", "4"]
    assert data.song_ids.tolist() == ["51", "52", "53"]
    assert listens_of(data) == {
        ("2", "51"): 100,
        ("2", "52"): 50,
        ("3", "51"): 10,
        ("3", "53"): 5,
        ("4", "52"): 7,
        ("4", "51"): 3,
    }
    assert tags_of(data) == {"51": {"rock"}, "52": {"rock", "rock français"}}
    # The tag assigned only to an artist nobody listened to stays in the
    # vocabulary, on no song.
    assert (data.summary()["tags"], data.summary()["tags_on_songs"]) == (3, 2)
    assert names_of(data) == {"51": "Mötley Crüe", "52": "Björk", "53": "53"}
    assert "dropped 1 tag assignments" in caplog.text
    assert "tags.dat is not valid UTF-8" in caplog.text


def test_hetrec_filters(tmp_path):
    folder = make_hetrec(tmp_path / "lastfm")

    data = read_lastfm_hetrec(folder, min_song_listens=2)
    assert data.song_ids.tolist() == ["51", "52"]
    assert data.n_listens == 5

    data = read_lastfm_hetrec(folder, min_user_listens=2, min_song_listens=2)
    assert data.user_ids.tolist() == ["2", "4"]

    data = read_lastfm_hetrec(folder, top_tags=1)
    assert data.tag_names.tolist() == ["rock"]
    assert tags_of(data) == {"51": {"rock"}, "52": {"rock"}}


def test_hetrec_without_artist_names(tmp_path):
    folder = make_hetrec(tmp_path / "lastfm")
    (folder / "artists.dat").unlink()
    assert read_lastfm_hetrec(folder).song_names.tolist() == ["51", "52", "53"]


def test_hetrec_merges_tag_values_listed_under_two_ids(tmp_path):
    folder = make_hetrec(tmp_path / "lastfm")
    write(folder / "tags.dat", ["tagID\ttagValue", "1\trock", "2\trock", "3\tjazz"])
    assert tags_of(read_lastfm_hetrec(folder)) == {"51": {"rock"}, "52": {"rock"}}


@pytest.mark.parametrize(
    "file, lines, message, line",
    [
        (
            "user_taggedartists.dat",
            ["userID\tartistID\ttagID\tday\tmonth\tyear", "2\t51\t77\t1\t4\t2009"],
            "tagID 77 is not listed in tags.dat",
            2,
        ),
        (
            "user_artists.dat",
            ["userID\tartistID\tweight", "2\t51\t-5"],
            "must be > 0",
            2,
        ),
        (
            "user_artists.dat",
            ["userID\tartistID\tweight", "2\t51\t1e400"],
            "must be > 0 and <= 2147483647",
            2,
        ),
        (
            "user_artists.dat",
            ["userID\tartistID\tweight", "2\t51\tnan"],
            "is not a decimal number",
            2,
        ),
        (
            "user_artists.dat",
            ["userID\tartistID\tweight", "", "2\tx51\t3"],
            "column 2 (artistID): 'x51' is not an integer id",
            3,
        ),
        (
            "user_artists.dat",
            ["userID\tartistID\tweight", "2\t51"],
            "has 2 columns; expected 3 tab-separated columns",
            2,
        ),
        (
            "user_artists.dat",
            ["userID\tartistID\tweight", "2\t51\t3\t4"],
            "has 4 columns",
            2,
        ),
        ("user_artists.dat", ["2\t51\t3", "2\t52\t3"], "is data", 1),
        ("user_artists.dat", ["userID\tartistID\tweight"], "holds no", None),
        ("user_artists.dat", [], "is empty", None),
        (
            "tags.dat",
            ["tagID\ttagValue", "1\trock", "1\tpop"],
            "tagID 1 is listed twice",
            3,
        ),
        ("tags.dat", ["tagID\ttagValue", "1\t"], "column 2 (tagValue): is empty", 2),
        (
            "artists.dat",
            ["id\tname\turl\tpictureURL", "51\ta\t\t", "51\tb\t\t"],
            "artist id 51 is listed twice",
            3,
        ),
    ],
)
def test_hetrec_errors_name_file_and_line(tmp_path, file, lines, message, line):
    folder = make_hetrec(tmp_path / "lastfm")
    write(folder / file, lines)
    with pytest.raises(DataFormatError, match=re.escape(message)) as caught:
        read_lastfm_hetrec(folder)
    assert caught.value.path == str(folder / file)
    assert caught.value.line == line


def test_hetrec_missing_file_and_folder(tmp_path):
    folder = make_hetrec(tmp_path / "lastfm")
    (folder / "tags.dat").unlink()
    with pytest.raises(DataFormatError, match="tags.dat: required file is missing"):
        read_lastfm_hetrec(folder)
    with pytest.raises(DataFormatError, match="no such folder"):
        read_lastfm_hetrec(tmp_path / "nowhere")


def test_stray_carriage_return_nul_and_utf16_are_rejected(tmp_path):
    folder = make_hetrec(tmp_path / "lastfm")
    listens = folder / "user_artists.dat"
    for raw, message in [
        (b"userID\tartistID\tweight\n2\t51\t3\r5\n", "carriage return"),
        (b"userID\tartistID\tweight\n2\t51\x00\t3\n", "NUL byte"),
        ("userID\tartistID\tweight\n2\t51\t3\n".encode("utf-16"), "UTF-16"),
    ]:
        listens.write_bytes(raw)
        with pytest.raises(DataFormatError, match=message):
            read_lastfm_hetrec(folder)


def test_filters_are_validated(tmp_path):
    with pytest.raises(InputError, match="min_song_listens=-1"):
        read_lastfm_hetrec(make_hetrec(tmp_path / "lastfm"), min_song_listens=-1)


def test_filtering_everything_away_names_the_file(tmp_path):
    folder = make_hetrec(tmp_path / "lastfm")
    with pytest.raises(DataFormatError, match="user_artists.dat: no user is left"):
        read_lastfm_hetrec(folder, min_song_listens=10)


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64])
def test_small_chunks_give_the_same_data(tmp_path, monkeypatch, chunk_bytes):
    folder = make_hetrec(tmp_path / "lastfm")
    expected = read_lastfm_hetrec(folder)
    monkeypatch.setattr(readers, "_CHUNK_BYTES", chunk_bytes)
    data = read_lastfm_hetrec(folder)
    assert listens_of(data) == listens_of(expected)
    assert tags_of(data) == tags_of(expected)
    assert names_of(data) == names_of(expected)

    write(
        folder / "user_artists.dat",
        ["userID\tartistID\tweight", "2\t5\t1", "", "2\t6\t1", "", "", "3\t5\t0"],
    )
    with pytest.raises(DataFormatError, match="must be > 0") as caught:
        read_lastfm_hetrec(folder)
    assert caught.value.line == 7


def test_real_lastfm_hetrec(lastfm_dir, caplog):
    with caplog.at_level(logging.INFO, logger="songrec_jax.readers"):
        data = read_lastfm_hetrec(lastfm_dir)
    summary = data.summary()
    assert (summary["users"], summary["songs"], summary["listens"]) == (
        1892,
        17632,
        92834,
    )
    # 9,749 distinct tags are assigned; 31 of them only to the 390 artists
    # that nobody listened to (and that artists.dat does not list either):
    # they stay in the vocabulary but tag no song.
    assert summary["tags"] == 9749
    assert summary["tags_on_songs"] == 9749 - 31
    assert "31 of the 9749 distinct tags" in caplog.text
    assert "español" in data.tag_names.tolist()  # tags.dat is latin-1
    assert "Duran Duran" in data.song_names.tolist()


# Million Song Dataset --------------------------------------------------------


def make_tags_db(path: Path, tids, tags, tid_tag) -> Path:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE tids (tid TEXT)")
    db.execute("CREATE TABLE tags (tag TEXT)")
    db.execute("CREATE TABLE tid_tag (tid INT, tag INT, val FLOAT)")
    db.executemany("INSERT INTO tids VALUES (?)", [(t,) for t in tids])
    db.executemany("INSERT INTO tags VALUES (?)", [(t,) for t in tags])
    db.executemany("INSERT INTO tid_tag VALUES (?, ?, ?)", tid_tag)
    db.commit()
    db.close()
    return path


def make_msd(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    write(
        folder / "train_triplets.txt",
        [
            "u1\tSOA\t3",
            "u1\tSOB\t1",
            "u2\tSOA\t2",
            "u2\tSOC\t5",
            "u3\tSOBAD\t9",
            "u3\tSOB\t4",
            "u4\tSOLONE\t1",
        ],
    )
    write(
        folder / "unique_tracks.txt",
        [
            "TRA1<SEP>SOA<SEP>Abba<SEP>Waterloo",
            "TRA2<SEP>SOA<SEP>Abba<SEP>Waterloo (live)",
            "TRB<SEP>SOB<SEP>Björk<SEP>Jóga",
            "TRC<SEP>SOC<SEP>Can<SEP>Vitamin C",
            "TRBAD<SEP>SOBAD<SEP>Wrong<SEP>Match",
            "TRX<SEP>SOX<SEP>Nobody<SEP>Listens",
        ],
    )
    make_tags_db(
        folder / "lastfm_tags.db",
        ["TRA1", "TRA2", "TRB", "TRC", "TRBAD", "TRX", "TRNOSONG"],
        ["pop", "live", "icelandic", "krautrock", "rare"],
        [
            (1, 1, 100),
            (2, 2, 50),
            (3, 3, 100),
            (3, 1, 10),
            (4, 4, 80),
            (4, 1, 0),
            (5, 1, 100),
            (6, 5, 100),
            (7, 5, 100),
        ],
    )
    write(
        folder / "sid_mismatches.txt",
        [
            "ERROR: <SOBAD TRBAD> Wrong - Match != Right - Song",
        ],
    )
    return folder


def msd_files(folder: Path) -> tuple[Path, Path, Path]:
    return (
        folder / "train_triplets.txt",
        folder / "lastfm_tags.db",
        folder / "unique_tracks.txt",
    )


def test_msd_joins_tags_through_tracks(tmp_path):
    folder = make_msd(tmp_path / "msd")
    data = read_msd(*msd_files(folder))

    assert (data.n_users, data.n_songs, data.n_listens) == (4, 5, 7)
    assert listens_of(data)[("u3", "SOBAD")] == 9
    assert tags_of(data) == {
        "SOA": {"pop", "live"},  # the union over the song's two tracks
        "SOB": {"icelandic", "pop"},
        "SOC": {"krautrock", "pop"},
        "SOBAD": {"pop"},
    }
    assert "rare" not in data.tag_names  # only on songs without listens
    assert names_of(data) == {
        "SOA": "Abba - Waterloo",
        "SOB": "Björk - Jóga",
        "SOC": "Can - Vitamin C",
        "SOBAD": "Wrong - Match",
        "SOLONE": "SOLONE",
    }


def test_msd_mismatches_threshold_and_top_tags(tmp_path):
    folder = make_msd(tmp_path / "msd")
    mismatches = folder / "sid_mismatches.txt"
    data = read_msd(*msd_files(folder), mismatches=mismatches)
    assert "SOBAD" not in data.song_ids
    assert data.user_ids.tolist() == ["u1", "u2", "u3", "u4"]
    assert data.n_listens == 6

    data = read_msd(*msd_files(folder), mismatches=mismatches, min_tag_value=50)
    assert tags_of(data) == {
        "SOA": {"pop", "live"},
        "SOB": {"icelandic"},
        "SOC": {"krautrock"},
    }

    data = read_msd(*msd_files(folder), mismatches=mismatches, top_tags=1)
    assert data.tag_names.tolist() == ["pop"]

    data = read_msd(*msd_files(folder), min_song_listens=2)
    assert sorted(data.song_ids.tolist()) == ["SOA", "SOB"]


def test_msd_streams_in_small_chunks(tmp_path, monkeypatch):
    folder = make_msd(tmp_path / "msd")
    expected = read_msd(*msd_files(folder))
    monkeypatch.setattr(readers, "_CHUNK_BYTES", 5)
    data = read_msd(*msd_files(folder))
    assert listens_of(data) == listens_of(expected)
    assert data.user_ids.tolist() == expected.user_ids.tolist()
    assert tags_of(data) == tags_of(expected)


def test_msd_database_errors(tmp_path):
    folder = make_msd(tmp_path / "msd")
    triplets, tags_db, tracks = msd_files(folder)
    bad = make_tags_db(tmp_path / "bad.db", ["TRA1"], ["pop"], [(1, 9, 100)])
    with pytest.raises(DataFormatError, match="tag 9 is not a ROWID of table tags"):
        read_msd(triplets, bad, tracks)

    bad = make_tags_db(tmp_path / "bad2.db", ["TRA1"], ["pop"], [(3, 1, 100)])
    with pytest.raises(DataFormatError, match="tid 3 is not a ROWID of table tids"):
        read_msd(triplets, bad, tracks)

    bad = make_tags_db(tmp_path / "bad3.db", ["TRA1"], ["pop"], [(1, 1, "high")])
    with pytest.raises(DataFormatError, match="must be two ROWIDs and a number"):
        read_msd(triplets, bad, tracks)

    not_db = write(tmp_path / "text.db", ["this is not SQLite"] * 100)
    with pytest.raises(DataFormatError, match="text.db: cannot be read as SQLite"):
        read_msd(triplets, not_db, tracks)

    empty = sqlite3.connect(tmp_path / "empty.db")
    empty.execute("CREATE TABLE tids (tid TEXT)")
    empty.close()
    with pytest.raises(DataFormatError, match="table tags with columns"):
        read_msd(triplets, tmp_path / "empty.db", tracks)

    with pytest.raises(DataFormatError, match="missing.db: required file is missing"):
        read_msd(triplets, tmp_path / "missing.db", tracks)


def test_msd_text_file_errors(tmp_path):
    folder = make_msd(tmp_path / "msd")
    triplets, tags_db, tracks = msd_files(folder)

    write(tmp_path / "mismatches.txt", ["ERROR: <SOA TRA1> x", "oops"])
    with pytest.raises(DataFormatError, match="expected 'ERROR: <SONG_ID TRACK_ID>"):
        read_msd(triplets, tags_db, tracks, mismatches=tmp_path / "mismatches.txt")

    write(tracks, ["TRA1<SEP>SOA<SEP>a<SEP>b", "TRA1<SEP>SOB<SEP>a<SEP>b"])
    with pytest.raises(DataFormatError, match="TRA1' is listed again") as caught:
        read_msd(triplets, tags_db, tracks)
    assert caught.value.line == 2

    write(tracks, ["TRA1<SEP>SOA<SEP>a"])
    with pytest.raises(DataFormatError, match="expected 4 '<SEP>'-separated"):
        read_msd(triplets, tags_db, tracks)

    write(triplets, ["u1\tSOA\t3", "u1 \tSOB\t1"])
    with pytest.raises(DataFormatError, match="leading or trailing whitespace"):
        read_msd(triplets, tags_db, tracks)


# MovieLens -------------------------------------------------------------------


def make_ml1m(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    write(
        folder / "ratings.dat",
        [
            "1::10::5::978300760",
            "1::20::3::978302109",
            "2::10::4::978301968",
            "2::30::4.5::978300275",
            "2::10::5::978824291",
            "3::20::1::978302268",
        ],
    )
    write(
        folder / "movies.dat",
        [
            "10::Amélie (2001)::Comedy|Romance",
            "20::Heat (1995)::Action|Crime",
            "30::Alien (1979)::Horror|Sci-Fi",
            "40::Unrated (2000)::Drama",
        ],
        encoding="latin-1",
    )
    return folder


def test_movielens_1m(tmp_path):
    data = read_movielens(make_ml1m(tmp_path / "ml-1m"))
    assert listens_of(data) == {("1", "10"): 1, ("2", "10"): 1, ("2", "30"): 1}
    assert tags_of(data) == {"10": {"Comedy", "Romance"}, "30": {"Horror", "Sci-Fi"}}
    assert names_of(data) == {"10": "Amélie (2001)", "30": "Alien (1979)"}

    data = read_movielens(tmp_path / "ml-1m", min_rating=3)
    assert data.n_listens == 4 and data.n_users == 2

    with pytest.raises(DataFormatError, match="no rating >= min_rating=6"):
        read_movielens(tmp_path / "ml-1m", min_rating=6)


def make_ml100k(folder: Path, *, genres: bool) -> Path:
    folder.mkdir(exist_ok=True)
    write(
        folder / "u.data",
        ["196\t242\t3\t881250949", "186\t302\t4\t891717742", "22\t242\t5\t878887116"],
    )
    flags = {242: [0] * 19, 302: [0] * 19}
    flags[242][5] = flags[242][8] = 1  # Comedy, Drama
    flags[302][16] = 1  # Thriller
    write(
        folder / "u.item",
        [
            f"{movie}|{title}|01-Jan-1997||http://imdb|"
            + "|".join(map(str, flags[movie]))
            for movie, title in [(242, "Kolya (1996)"), (302, "L.A. Confidential")]
        ],
        encoding="latin-1",
    )
    if genres:
        names = [f"genre{i}" for i in range(19)]
        write(folder / "u.genre", [f"{g}|{i}" for i, g in enumerate(names)] + [""])
    return folder


def test_movielens_100k(tmp_path):
    data = read_movielens(make_ml100k(tmp_path / "ml-100k", genres=False))
    assert listens_of(data) == {("186", "302"): 1, ("22", "242"): 1}
    assert tags_of(data) == {"242": {"Comedy", "Drama"}, "302": {"Thriller"}}
    assert names_of(data)["242"] == "Kolya (1996)"

    data = read_movielens(make_ml100k(tmp_path / "named", genres=True))
    assert tags_of(data) == {"242": {"genre5", "genre8"}, "302": {"genre16"}}


def test_movielens_errors(tmp_path):
    folder = make_ml100k(tmp_path / "ml-100k", genres=False)
    write(folder / "u.item", ["242|Kolya|d||u|" + "|".join(["2"] + ["0"] * 18)])
    with pytest.raises(DataFormatError, match="genre flag 2 must be 0 or 1"):
        read_movielens(folder)

    write(folder / "u.item", ["242|Kolya|d||u|0|1"])
    with pytest.raises(DataFormatError, match="u.item, line 1: has 7 columns"):
        read_movielens(folder)

    folder = make_ml1m(tmp_path / "ml-1m")
    write(folder / "ratings.dat", ["1::10::-4::978300760"])
    with pytest.raises(DataFormatError, match="must be a finite number >= 0"):
        read_movielens(folder)
    write(folder / "u.data", ["196\t242\t3\t881250949"])
    with pytest.raises(DataFormatError, match="holds both"):
        read_movielens(folder)
    with pytest.raises(DataFormatError, match="holds neither"):
        read_movielens(tmp_path)


# Generic delimited files -------------------------------------------------------


@pytest.mark.parametrize("sep", ["\t", ","])
@pytest.mark.parametrize("header", [False, True])
def test_tsv_delimiters_and_headers(tmp_path, sep, header):
    rows = [["u1", "s1", "2"], ["u1", "s2", "1"], ["u2", "s1", "3"], ["u1", "s1", "1"]]
    head = [sep.join(["user", "item", "plays"])] if header else []
    listens = write(tmp_path / "listens.txt", head + [sep.join(r) for r in rows])
    tag_head = [sep.join(["item", "tag"])] if header else []
    tags = write(
        tmp_path / "tags.txt",
        tag_head + [f"s1{sep}rock", f"s1{sep} rock ", f"s9{sep}jazz"],
    )

    data = read_tsv(listens, tags)
    assert listens_of(data) == {("u1", "s1"): 3, ("u1", "s2"): 1, ("u2", "s1"): 3}
    assert tags_of(data) == {"s1": {"rock"}}


def test_tsv_without_counts_bom_and_latin1(tmp_path):
    listens = tmp_path / "listens.csv"
    listens.write_bytes("\ufeffuser,item\nzoë,café\nzoë,tea\n".encode())
    data = read_tsv(listens, header=True)
    assert listens_of(data) == {("zoë", "café"): 1, ("zoë", "tea"): 1}

    listens.write_bytes("zoë\tcafé\n".encode("latin-1"))
    assert listens_of(read_tsv(listens)) == {("zoë", "café"): 1}


def test_tsv_errors(tmp_path):
    listens = write(tmp_path / "listens.tsv", ["u1 s1 3"])
    with pytest.raises(DataFormatError, match="neither a tab nor a comma"):
        read_tsv(listens)
    write(listens, ["u1,s1,3,4"])
    with pytest.raises(DataFormatError, match="expected 2 .* or 3"):
        read_tsv(listens)
    write(listens, ["u1,s1,3", "u2,s2"])
    with pytest.raises(DataFormatError, match="listens.tsv, line 2: has 2 columns"):
        read_tsv(listens)
    write(listens, ["u1,s1", "u2,,"])
    with pytest.raises(DataFormatError, match="line 2: has 3 columns"):
        read_tsv(listens)
    write(listens, ["", "  "])
    with pytest.raises(DataFormatError, match="is empty"):
        read_tsv(listens)
    write(listens, ["user\titem\tcount", ""])
    with pytest.raises(DataFormatError, match="holds no listens"):
        read_tsv(listens)


# Dispatch --------------------------------------------------------------------


def test_load_source_dispatches(tmp_path):
    folder = make_hetrec(tmp_path / "lastfm")
    data = load_source(
        DataConfig(source="lastfm-hetrec", path=str(folder), min_song_listens=2)
    )
    assert data.song_ids.tolist() == ["51", "52"]

    folder = make_ml1m(tmp_path / "ml")
    data = load_source(DataConfig(source="movielens", path=str(folder), min_rating=3))
    assert data.n_listens == 4

    folder = make_msd(tmp_path / "msd")
    data = load_source(DataConfig(source="msd", path=str(folder)))
    assert "SOBAD" not in data.song_ids  # sid_mismatches.txt is used

    listens = write(tmp_path / "l.tsv", ["u1\ts1", "u2\ts1", "u2\ts2"])
    tags = write(tmp_path / "t.tsv", ["s1\trock"])
    data = load_source(
        DataConfig(source="tsv", path=f"{listens},{tags}", min_song_listens=2)
    )
    assert data.song_ids.tolist() == ["s1"] and tags_of(data) == {"s1": {"rock"}}
    assert load_source(DataConfig(source="tsv", path=str(listens))).n_tags == 0

    save_data(read_tsv(listens, tags), tmp_path / "d.npz")
    data = load_source(
        DataConfig(source="npz", path=str(tmp_path / "d.npz"), min_song_listens=2)
    )
    assert listens_of(data) == {("u1", "s1"): 1, ("u2", "s1"): 1}
    assert tags_of(data) == {"s1": {"rock"}}


def test_load_source_synthetic_imports_the_generator_lazily(monkeypatch):
    calls = []

    def generate(n_users, n_songs, n_tags, *, key):
        calls.append((n_users, n_songs, n_tags, key))
        return from_pairs(
            ["a", "a", "b"], ["x", "y", "x"], tag_song_ids=["x"], tag_names=["t"]
        )

    module = types.ModuleType("songrec_jax.synthetic")
    module.generate = generate
    monkeypatch.setitem(sys.modules, "songrec_jax.synthetic", module)

    data = load_source(DataConfig(n_users=5, n_songs=6, n_tags=2))
    assert data.n_listens == 3 and calls == [(5, 6, 2, 0)]
    data = load_source(DataConfig(min_song_listens=2), key=7)
    assert data.song_ids.tolist() == ["x"] and calls[-1][-1] == 7


def test_load_source_missing_npz(tmp_path):
    with pytest.raises(DataFormatError, match="no such file"):
        load_source(DataConfig(source="npz", path=str(tmp_path / "none.npz")))
