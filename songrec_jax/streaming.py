"""Recommendations for more users than fit in memory, written as they come.

`stream_recommend` reads users' padded inputs one chunk at a time (from a
`.npy` file, an array, or any iterable of arrays), ranks each chunk with
`recommend.recommend` (or `sharding.sharded_top_k` on a mesh) and writes
the result to disk before reading the next chunk. Peak memory is the model
plus one chunk, whatever the number of users. The output folder holds

* `indices-00000.npy`, `scores-00000.npy`, ...: int32 / float32
  `[rows, k]` of each chunk, in the order of the users;
* `manifest.json`: `n_users`, `k`, the rows of each chunk, and
  `complete: true` once every chunk is written.

Each file is written under a temporary name and renamed when complete, so
an interrupted run leaves only whole chunks; `resume=True` skips them.
`read_recommendations` loads a folder back (memory-mapped if asked).
"""

from __future__ import annotations

import json
import logging
import numbers
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from songrec_jax import models, recommend
from songrec_jax.config import Config, ModelConfig
from songrec_jax.errors import DataFormatError, InputError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
Inputs = str | os.PathLike | np.ndarray | Iterable[np.ndarray]


def _check_positive(name: str, value) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name}={value!r} must be an integer >= 1")
    return int(value)


def npy_chunks(path: str | os.PathLike, chunk_size: int) -> Iterator[np.ndarray]:
    """The rows of a 2-D `.npy` file, `chunk_size` at a time.

    The file is read with plain reads, not memory-mapped, so pages already
    scored do not stay in the process's resident memory.

    Args:
      path: a `.npy` file of a C-ordered 2-D array.
      chunk_size: rows per chunk, >= 1.

    Yields:
      Arrays `[rows, columns]` of the file's dtype; the last may be shorter.

    Raises:
      DataFormatError: not a `.npy` file of a C-ordered 2-D array.
    """
    chunk_size = _check_positive("chunk_size", chunk_size)
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except ValueError as e:
            raise DataFormatError(f"not a readable .npy file: {e}", path=path) from e
        if len(shape) != 2 or fortran or dtype.hasobject:
            raise DataFormatError(
                f"holds a {'Fortran-ordered ' if fortran else ''}{dtype} array of "
                f"shape {shape}; expected a C-ordered 2-D integer array [n_users, "
                "input_len]",
                path=path,
            )
        n, width = shape
        for start in range(0, n, chunk_size):
            rows = min(chunk_size, n - start)
            block = np.fromfile(f, dtype=dtype, count=rows * width)
            if block.size != rows * width:
                raise DataFormatError(
                    f"ends after {start + block.size // width} of {n} rows", path=path
                )
            yield block.reshape(rows, width)


def _chunks(inputs: Inputs, chunk_size: int) -> Iterator[np.ndarray]:
    if isinstance(inputs, (str, os.PathLike)):
        yield from npy_chunks(inputs, chunk_size)
    elif isinstance(inputs, np.ndarray):
        for start in range(0, len(inputs), chunk_size):
            yield inputs[start : start + chunk_size]
    else:
        for block in inputs:
            block = np.asarray(block)
            for start in range(0, len(block), chunk_size):
                yield block[start : start + chunk_size]


def _save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _write_manifest(directory: Path, manifest: dict) -> None:
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, directory / MANIFEST)


def _load(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)


def _chunk_done(directory: Path, index: int, rows: int, k: int) -> bool:
    try:
        shapes = [
            _load(directory / f"{name}-{index:05d}.npy", mmap_mode="r").shape
            for name in ("indices", "scores")
        ]
    except (OSError, ValueError):
        return False
    return shapes == [(rows, k), (rows, k)]


def stream_recommend(
    params: models.Params,
    config: Config | ModelConfig,
    inputs: Inputs,
    out_dir: str | os.PathLike,
    *,
    k: int = 100,
    chunk_size: int = 65_536,
    batch_size: int = 256,
    exclude_seen: bool = True,
    mesh: Any = None,
    resume: bool = False,
    progress: bool = False,
    **options: Any,
) -> dict:
    """Ranks the songs of any number of users, chunk by chunk, to disk.

    Args:
      params: model parameters.
      config: a `Config` (its loss picks sigmoid or softmax scores) or a
        `ModelConfig`; padded for `mesh` when one is given.
      inputs: the users' padded inputs, int `[n_users, input_len]` (-1
        pads): a `.npy` file (read in chunks), an array (memory-mapped
        ones are fine), or an iterable of such arrays.
      out_dir: the output folder (created; see the module docstring).
      k: songs per user.
      chunk_size: users per written chunk; memory grows with it.
      batch_size: users per compiled call inside a chunk; the largest
        temporary arrays are `batch_size * n_outputs` floats.
      exclude_seen: never recommend a user's input songs.
      mesh: a `sharding.make_mesh` mesh to score on several devices with
        `sharding.sharded_top_k`; None scores on one device with
        `recommend.recommend`. On several hosts, either give every
        process the same inputs and a mesh (process 0 writes), or give
        each process its own share (`sharding.process_users`), no mesh,
        and its own `out_dir`.
      resume: keep the chunks an earlier, interrupted run completed
        (their inputs are still read, but not scored).
      progress: show a progress bar over chunks.
      **options: further keywords of `recommend.recommend` (steering:
        `tags`, `alpha`, `method`, `data`, `tag_latents`, `factor`;
        `probabilities`). With a mesh only `probabilities` is accepted.

    Returns:
      The manifest written to `out_dir/manifest.json`.

    Raises:
      InputError: bad `k`, sizes, inputs or options.
    """
    k = _check_positive("k", k)
    chunk_size = _check_positive("chunk_size", chunk_size)
    batch_size = _check_positive("batch_size", batch_size)
    if mesh is not None and set(options) - {"probabilities"}:
        raise InputError(
            f"options {sorted(set(options) - {'probabilities'})} are "
            "not available with a mesh; accepted: probabilities"
        )
    # On a mesh spanning several processes each gets every result; one writes.
    writes = mesh is None or jax.process_index() == 0
    directory = Path(out_dir)
    manifest = {"n_users": 0, "k": k, "chunks": [], "complete": False}
    if writes:
        directory.mkdir(parents=True, exist_ok=True)
        _write_manifest(directory, manifest)

    if mesh is not None:
        from songrec_jax import sharding

        params = sharding.shard_params(params, mesh)  # once, not per chunk

    def rank(block):
        if mesh is None:
            return recommend.recommend(
                params,
                config,
                block,
                k=k,
                exclude_seen=exclude_seen,
                batch_size=batch_size,
                **options,
            )
        return sharding.sharded_top_k(
            params,
            config,
            block,
            k,
            mesh,
            exclude_seen=exclude_seen,
            batch_size=batch_size,
            **options,
        )

    bar = tqdm(desc="stream_recommend", unit="users", disable=not progress)
    for index, block in enumerate(_chunks(inputs, chunk_size)):
        rows = len(block)
        if not (resume and _chunk_done(directory, index, rows, k)):
            result = rank(block)
            if writes:
                _save(directory / f"indices-{index:05d}.npy", result.indices)
                _save(directory / f"scores-{index:05d}.npy", result.scores)
        manifest["chunks"].append(rows)
        manifest["n_users"] += rows
        if writes:
            _write_manifest(directory, manifest)
        bar.update(rows)
    bar.close()
    manifest["complete"] = True
    if writes:
        _write_manifest(directory, manifest)
    log.info(
        "wrote recommendations of %d users in %d chunks to %s",
        manifest["n_users"],
        len(manifest["chunks"]),
        directory,
    )
    return manifest


def read_recommendations(
    out_dir: str | os.PathLike, *, mmap: bool = False
) -> recommend.Recommendations:
    """Loads the output of `stream_recommend` back as one pair of arrays.

    Args:
      out_dir: the folder `stream_recommend` wrote.
      mmap: with a single chunk, return memory-mapped arrays instead of
        reading them (several chunks are always concatenated in memory).

    Raises:
      DataFormatError: the folder holds no complete output.
    """
    directory = Path(out_dir)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataFormatError(f"no readable {MANIFEST}: {e}", path=directory) from e
    if not manifest.get("complete"):
        raise DataFormatError(
            "the output is incomplete (stream_recommend was "
            "interrupted; run it again with resume=True)",
            path=directory,
        )
    mode = "r" if mmap and len(manifest["chunks"]) == 1 else None
    parts = {
        name: [
            _load(directory / f"{name}-{i:05d}.npy", mmap_mode=mode)
            for i in range(len(manifest["chunks"]))
        ]
        for name in ("indices", "scores")
    }
    if not manifest["chunks"]:
        k = manifest["k"]
        return recommend.Recommendations(
            np.empty((0, k), np.int32), np.empty((0, k), np.float32)
        )
    if mode:
        return recommend.Recommendations(parts["indices"][0], parts["scores"][0])
    return recommend.Recommendations(
        np.concatenate(parts["indices"]), np.concatenate(parts["scores"])
    )
