"""Tests of songrec_jax.streaming."""

import json

import jax
import numpy as np
import pytest

from songrec_jax import models, recommend, sharding, streaming
from songrec_jax.config import ModelConfig
from songrec_jax.errors import DataFormatError, InputError

CONFIG = ModelConfig(kind="mlp", n_songs=30, input_len=5, dims=(8,))
PARAMS = models.init(CONFIG, key=jax.random.key(0))
INPUTS = np.random.default_rng(0).integers(-1, 30, (23, 5)).astype(np.int32)
EXPECTED = recommend.recommend(PARAMS, CONFIG, INPUTS, k=4, batch_size=4)


def assert_same(got: recommend.Recommendations) -> None:
    np.testing.assert_array_equal(got.indices, EXPECTED.indices)
    np.testing.assert_allclose(got.scores, EXPECTED.scores, rtol=1e-6)


@pytest.mark.parametrize("source", ["array", "npy", "iterable"])
def test_streamed_results_equal_recommend(tmp_path, source):
    inputs = {
        "array": INPUTS,
        "npy": tmp_path / "users.npy",
        "iterable": (INPUTS[i : i + 7] for i in range(0, 23, 7)),
    }[source]
    np.save(tmp_path / "users.npy", INPUTS)
    manifest = streaming.stream_recommend(
        PARAMS, CONFIG, inputs, tmp_path / "out", k=4, chunk_size=5, batch_size=4
    )
    assert manifest["complete"] and manifest["n_users"] == 23
    assert sum(manifest["chunks"]) == 23 and max(manifest["chunks"]) <= 5
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    assert_same(streaming.read_recommendations(tmp_path / "out"))


def test_resume_scores_only_the_missing_chunks(tmp_path, monkeypatch):
    out = tmp_path / "out"
    streaming.stream_recommend(
        PARAMS, CONFIG, INPUTS, out, k=4, chunk_size=10, batch_size=4
    )
    (out / "scores-00002.npy").unlink()  # as if interrupted in the last chunk
    calls = []
    original = recommend.recommend

    def counting(params, config, inputs, **kwargs):
        calls.append(len(inputs))
        return original(params, config, inputs, **kwargs)

    monkeypatch.setattr(recommend, "recommend", counting)
    streaming.stream_recommend(
        PARAMS, CONFIG, INPUTS, out, k=4, chunk_size=10, batch_size=4, resume=True
    )
    assert calls == [3]
    assert_same(streaming.read_recommendations(out))


def test_stream_on_a_mesh_equals_recommend(tmp_path):
    mesh = sharding.make_mesh()
    config = sharding.padded_config(CONFIG, mesh)
    streaming.stream_recommend(
        PARAMS, config, INPUTS, tmp_path, k=4, chunk_size=8, batch_size=4, mesh=mesh
    )
    assert_same(streaming.read_recommendations(tmp_path, mmap=True))
    with pytest.raises(InputError, match="tags"):
        streaming.stream_recommend(
            PARAMS, config, INPUTS, tmp_path, k=4, mesh=mesh, tags={"rock": 1.0}
        )


def test_single_chunk_reads_back_memory_mapped(tmp_path):
    streaming.stream_recommend(PARAMS, CONFIG, INPUTS, tmp_path, k=4, batch_size=4)
    got = streaming.read_recommendations(tmp_path, mmap=True)
    assert isinstance(got.indices, np.memmap)
    assert_same(got)


def test_npy_chunks_reads_rows_in_order_and_rejects_bad_files(tmp_path):
    np.save(tmp_path / "users.npy", INPUTS)
    chunks = list(streaming.npy_chunks(tmp_path / "users.npy", 10))
    assert [len(c) for c in chunks] == [10, 10, 3]
    np.testing.assert_array_equal(np.concatenate(chunks), INPUTS)

    np.save(tmp_path / "flat.npy", INPUTS.ravel())
    with pytest.raises(DataFormatError, match="2-D"):
        list(streaming.npy_chunks(tmp_path / "flat.npy", 10))
    data = (tmp_path / "users.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(data[:-8])
    with pytest.raises(DataFormatError, match="ends after"):
        list(streaming.npy_chunks(tmp_path / "short.npy", 10))
    (tmp_path / "text.npy").write_text("user\tsong\n")
    with pytest.raises(DataFormatError, match=".npy"):
        list(streaming.npy_chunks(tmp_path / "text.npy", 10))


def test_incomplete_output_and_bad_sizes_raise(tmp_path):
    (tmp_path / "manifest.json").write_text(
        json.dumps({"n_users": 0, "k": 4, "chunks": [], "complete": False})
    )
    with pytest.raises(DataFormatError, match="resume=True"):
        streaming.read_recommendations(tmp_path)
    with pytest.raises(DataFormatError, match="manifest"):
        streaming.read_recommendations(tmp_path / "missing")
    with pytest.raises(InputError, match="chunk_size=0"):
        streaming.stream_recommend(PARAMS, CONFIG, INPUTS, tmp_path, chunk_size=0)
