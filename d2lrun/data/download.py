"""Download a file from a data hub with its SHA-1 checked; a file that does not match is not
kept."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from d2lrun.errors import UsageError


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, path: Path, sha1: str, timeout: float = 30) -> Path:
    """path, fetched from url when it is not there yet; the SHA-1 must match before it is kept."""
    if path.exists() and sha1_of(path) == sha1:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
        got = sha1_of(tmp)
        if got != sha1:
            raise UsageError(
                f"{url} downloaded with SHA-1 {got}, not {sha1}; the file was not kept. "
                f"Fix: place a good copy of {path.name} in {path.parent}."
            )
        os.replace(tmp, path)
    except OSError as e:
        reason = getattr(e, "reason", None) or e.strerror or e
        raise UsageError(
            f"{path.name} is not in {path.parent} and downloading {url} failed ({reason}). "
            f"Fix: place the file there, or set dataset.root=<folder that has it>."
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path
