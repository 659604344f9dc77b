"""Shared fixtures: small configs, and the real Last.fm data when available."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture
def lastfm_dir() -> Path:
    """The real Last.fm HetRec 2011 folder named by SONGREC_LASTFM_DIR."""
    value = os.environ.get("SONGREC_LASTFM_DIR")
    if not value:
        pytest.skip(
            "SONGREC_LASTFM_DIR is not set: the real Last.fm data is not "
            "available on this machine"
        )
    path = Path(value)
    if not (path / "user_artists.dat").is_file():
        pytest.skip(f"SONGREC_LASTFM_DIR={value} holds no user_artists.dat")
    return path
