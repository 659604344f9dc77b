import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from songrec_jax.data import ListeningData, from_pairs, load_data, save_data
from songrec_jax.errors import DataFormatError, InputError, UnknownTagError


def small():
    return from_pairs(
        ["u1", "u1", "u2", "u2", "u2", "u3", "u1"],
        ["a", "b", "b", "c", "d", "a", "a"],
        [1, 2, 3, 4, 5, 6, 7],
        tag_song_ids=["a", "a", "b", "c", "zzz", "a"],
        tag_names=["rock", "pop", "rock", "jazz", "rock", "rock"],
        song_names={"a": "Song A"},
    )


def test_from_pairs_builds_sorted_unique_csr_and_sums_duplicates():
    data = small()
    assert (data.n_users, data.n_songs, data.n_listens) == (3, 4, 6)
    assert list(data.user_ids) == ["u1", "u2", "u3"]
    assert list(data.song_ids) == ["a", "b", "c", "d"]
    assert data.user_songs(0).tolist() == [0, 1]
    assert data.counts[:2].tolist() == [8.0, 2.0]  # u1 listened to "a" twice
    # Tags by decreasing use: rock (a, b), then jazz and pop (one song each).
    assert list(data.tag_names) == ["rock", "jazz", "pop"]
    assert [data.tag_names[t] for t in data.song_tags(0)] == ["rock", "pop"]
    assert data.song_tags(3).tolist() == []
    assert data.song_names[0] == "Song A" and data.song_names[1] == "b"
    assert data.summary()["tags"] == 3


def test_filters_drop_rare_songs_then_users():
    data = from_pairs(
        ["u1", "u1", "u2", "u3"], ["a", "b", "a", "c"], min_song_listens=2
    )
    assert list(data.song_ids) == ["a"] and list(data.user_ids) == ["u1", "u2"]
    data = from_pairs(["u1", "u1", "u2"], ["a", "b", "a"], min_user_listens=2)
    assert list(data.user_ids) == ["u1"]


def test_top_tags_keeps_the_most_used():
    data = from_pairs(
        ["u"] * 3,
        ["a", "b", "c"],
        tag_song_ids=["a", "b", "c", "a"],
        tag_names=["x", "x", "x", "y"],
        top_tags=1,
    )
    assert list(data.tag_names) == ["x"] and len(data.tag_indices) == 3


@pytest.mark.parametrize("counts", [[1, -1], [1, float("nan")], [0, 1]])
def test_bad_counts_raise(counts):
    with pytest.raises(InputError, match="play counts"):
        from_pairs(["u", "v"], ["a", "b"], counts)


def test_inconsistent_arrays_are_rejected():
    data = small()
    with pytest.raises(InputError, match="song indices"):
        ListeningData(**{**data.__dict__, "indices": data.indices + 10})


def test_unknown_tag_names_the_tag():
    with pytest.raises(UnknownTagError, match="'blues'"):
        small().tag_index("blues")
    assert small().tag_index("jazz") == 1


def test_subset_users_keeps_rows():
    data = small().subset_users([2, 0])
    assert list(data.user_ids) == ["u3", "u1"]
    assert data.user_songs(1).tolist() == [0, 1]


def test_npz_round_trip_is_exact(tmp_path):
    data = small()
    save_data(data, tmp_path / "d.npz")
    loaded = load_data(tmp_path / "d.npz")
    for name in (
        "indptr",
        "indices",
        "counts",
        "tag_indptr",
        "tag_indices",
        "user_ids",
        "song_ids",
        "song_names",
        "tag_names",
    ):
        a, b = getattr(data, name), getattr(loaded, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name


def test_load_rejects_garbage_and_pickles(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(DataFormatError, match="x.npz"):
        load_data(tmp_path / "x.npz")
    np.savez(tmp_path / "p.npz", format_version=1, indptr=np.array([object()]))
    with pytest.raises(DataFormatError):
        load_data(tmp_path / "p.npz")
    with pytest.raises(DataFormatError, match="no such file"):
        load_data(tmp_path / "missing.npz")


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 6), st.integers(0, 9), st.integers(1, 50)),
        min_size=1,
        max_size=40,
    )
)
def test_from_pairs_counts_match_a_dictionary(listens):
    users, songs, counts = zip(*listens, strict=True)
    data = from_pairs([f"u{u}" for u in users], [f"s{s}" for s in songs], counts)
    expected: dict[tuple[str, str], int] = {}
    for u, s, c in listens:
        expected[f"u{u}", f"s{s}"] = expected.get((f"u{u}", f"s{s}"), 0) + c
    got = {
        (data.user_ids[r], data.song_ids[s]): c
        for r, s, c in zip(data.user_rows(), data.indices, data.counts, strict=True)
    }
    assert got == expected
