"""Files of Hugging Face dataset repositories, fetched the way the field fetches them: ``huggingface_hub``.

    mmlab data download tinystories-v2-train      # ~2.2 GB, into $MMLAB_DATA_DIR/hub (the hub's cache layout)
    mmlab train pretrain --data tinystories-v2-train --preset minimind-26m

Where a ``HubFile`` comes from, in order:
  1. the mirror: ``$MMLAB_DATA_MIRROR/hf/<repo_id>/<filename>`` (a copy on a shared drive, or in CI);
  2. ``huggingface_hub.hf_hub_download(repo_id, filename, repo_type="dataset", revision=<pinned commit>)``
     into ``$MMLAB_DATA_DIR/hub``: a file already there is used without a request; ``HF_ENDPOINT`` (a
     mirror of the hub, or the fake hub the tests start on 127.0.0.1) is honoured; ``MMLAB_OFFLINE`` or
     ``HF_HUB_OFFLINE`` forbid the download.

How it is verified: for a large (LFS) file the hub serves the sha256 of its content as the file's ETag,
and ``huggingface_hub`` stores the download under that name. We hash the file and compare, so a truncated
or tampered download is refused. The first verified copy is recorded in ``$MMLAB_DATA_DIR/hub-lock.json``
(repo, commit, size, sha256); every later use checks the size and modification time against the lock
and hashes the file again when either changed. ``mmlab data verify NAME`` always re-hashes.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from mmlab.data.registry import DataError, HubFile, cache_dir, mirror_dir, sha256_file

LOCK_FILE = "hub-lock.json"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def lock_path() -> Path:
    return cache_dir() / LOCK_FILE


def read_lock() -> dict[str, Any]:
    path = lock_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read the lock file ({e}); delete it to re-verify every hub file") from None
    return data if isinstance(data, dict) else {}


def _write_lock(lock: dict[str, Any]) -> None:
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{LOCK_FILE}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(lock, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _key(ds: HubFile) -> str:
    return f"{ds.repo_id}@{ds.revision}/{ds.filename}"


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("MMLAB_OFFLINE", "HF_HUB_OFFLINE"))


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise DataError("the hub corpora are fetched with huggingface_hub, which is not installed: "
                        "pip install 'minimind-lab[data]'") from None
    return huggingface_hub


def _download(ds: HubFile, force: bool) -> tuple[Path, str | None]:
    """hf_hub_download into our cache: (the file, the sha256 the hub published for it, when it did)."""
    hf_hub_download = _hub().hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = os.environ.get("HF_ENDPOINT") or None
    where = f"{ds.repo_id} @ {ds.revision[:12]} ({endpoint or 'huggingface.co'})"
    try:
        path = Path(hf_hub_download(ds.repo_id, ds.filename, repo_type="dataset", revision=ds.revision,
                                    cache_dir=cache_dir() / "hub", endpoint=endpoint, force_download=force))
    except RevisionNotFoundError:
        raise DataError(f"dataset {ds.name!r}: the pinned commit {ds.revision} is not in {ds.repo_id} on "
                        f"{endpoint or 'huggingface.co'} ({ds.revision_source})") from None
    except EntryNotFoundError as e:
        if not isinstance(e, LocalEntryNotFoundError):  # LocalEntryNotFoundError: the hub could not be reached
            raise DataError(f"dataset {ds.name!r}: {ds.filename} is not in {where}") from None
        raise _unreachable(ds, where, e) from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise _unreachable(ds, where, e) from None
    return path, _expected_from_blob(path)


def _unreachable(ds: HubFile, where: str, e: Exception) -> DataError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return DataError(f"cannot download dataset {ds.name!r} from {where}: {first}. Offline? Put the file at "
                     f"{_mirror_file(ds) or '$MMLAB_DATA_MIRROR/hf/' + ds.repo_id + '/' + ds.filename}")


def _mirror_file(ds: HubFile) -> Path | None:
    mirror = mirror_dir()
    return None if mirror is None else mirror / "hf" / ds.repo_id / ds.filename


def _verified(ds: HubFile, path: Path, expected: str | None, lock: dict[str, Any], rehash: bool) -> Path:
    """Check ``path`` against the hub's sha256 (when known) and the lock; record it in the lock."""
    key, stat = _key(ds), path.stat()
    entry = lock.get(key)
    if entry and not rehash and entry.get("size") == stat.st_size and entry.get("mtime") == stat.st_mtime \
            and entry.get("path") == str(path):
        return path  # unchanged since it was verified
    digest = sha256_file(path)
    if expected is not None and digest == expected:  # the hub's own hash: it also replaces an older lock entry
        entry = None
    if expected is not None and digest != expected:
        raise DataError(f"{path}: sha256 {digest[:16]}... does not match {expected[:16]}..., the sha256 the hub "
                        f"published for {ds.repo_id}/{ds.filename} @ {ds.revision[:12]} (truncated, tampered, or "
                        f"edited since?); delete it and run `mmlab data download {ds.name} --force`")
    if entry and entry.get("sha256") != digest:
        raise DataError(f"{path}: sha256 {digest[:16]}... differs from {entry['sha256'][:16]}..., recorded in "
                        f"{lock_path()} when {ds.name!r} was first verified: the file changed (if the new one is "
                        f"right, delete its entry from the lock file)")
    lock[key] = {"name": ds.name, "sha256": digest, "size": stat.st_size, "mtime": stat.st_mtime,
                 "path": str(path), "verified_against": "hub sha256" if expected else "first download"}
    _write_lock(lock)
    return path


def local_copy(ds: HubFile) -> Path | None:
    """The mirror's or the cache's copy of a hub file, unverified; None when it has not been fetched."""
    mirrored = _mirror_file(ds)
    if mirrored is not None and mirrored.is_file():
        return mirrored
    cached = _hub().try_to_load_from_cache(ds.repo_id, ds.filename, cache_dir=cache_dir() / "hub", revision=ds.revision,
                                    repo_type="dataset")
    return Path(cached) if isinstance(cached, str) else None


def hub_path(ds: HubFile, download: bool = True, force: bool = False, rehash: bool = False) -> Path:
    """A verified local copy of a hub file: the mirror's, the cache's, or a fresh download."""
    lock = read_lock()
    mirrored = _mirror_file(ds)
    if mirrored is not None and mirrored.is_file() and not force:
        return _verified(ds, mirrored, None, lock, rehash)
    if not download or _offline():
        local = local_copy(ds)
        if local is not None:
            return _verified(ds, local, _expected_from_blob(local), lock, rehash)
        why = "MMLAB_OFFLINE / HF_HUB_OFFLINE is set" if _offline() else "downloading was not allowed"
        raise DataError(f"dataset {ds.name!r} ({ds.approx_size}) is not in the hub cache ({cache_dir() / 'hub'}) or "
                        f"the mirror ({mirrored or 'MMLAB_DATA_MIRROR unset'}) and {why}; fetch it with "
                        f"`mmlab data download {ds.name}`")
    path, expected = _download(ds, force)
    return _verified(ds, path, expected, lock, rehash or force)


def _expected_from_blob(path: str | Path) -> str | None:
    """The sha256 the hub published for a cached file: the cache names a blob by its ETag, which for a large
    (LFS) file is the sha256 of its content (a small file's ETag is a git hash: nothing to compare)."""
    blob = Path(os.path.realpath(path)).name
    return blob if _SHA256.fullmatch(blob) else None
