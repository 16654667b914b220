"""The artifact store `GATEWAY_MODEL_STORE` names: a local directory or an `s3://` bucket."""

from __future__ import annotations

from pathlib import Path

from registry.model_cache import ModelCache
from registry.sealing import Keyring
from registry.store import ArtifactStore, Store


def is_object_storage(location: str | Path) -> bool:
    return str(location).startswith("s3://")


def open_store(location: str | Path, keyring: Keyring, *, cache_dir: str | Path = "model-cache",
               cache_bytes: int = 10 * 1024 ** 3, plaintext_cache: bool = False) -> Store:
    """The store at `location`; with object storage, behind this replica's cache."""
    if is_object_storage(location):
        from registry.object_store import S3Store

        cache = ModelCache(cache_dir, cache_bytes, plaintext=plaintext_cache)
        return S3Store(str(location), cache, keyring)
    return ArtifactStore(location, keyring)
