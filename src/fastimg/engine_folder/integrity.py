"""Which files of an engine folder the runtime opens, and proof that each is the one listed.

Every file the runtime may open -- graphs, their backend variants, the external weight files
the graphs name, the tokenizer, TensorRT plans -- must be listed in the manifest with its size
and SHA-256, must lie inside the engine folder (symbolic links followed), and must match.

Hashing gigabytes on every start would cost seconds, so a file whose size, modification time
and inode match a previous successful check is trusted (with the external data it names, found
when it was hashed); `full=True` re-hashes everything.
"""

import hashlib
import json
import os
import posixpath
from collections import deque
from pathlib import Path

from ..atomic import write_atomically
from ..errors import EngineError, ManifestError

STAMPS = "verified-files.json"
# In an ONNX file, each external-data entry of a tensor is a key/value pair whose key is
# "location" (protobuf: field 1, 8 bytes "location", then field 2 with the value).
_LOCATION = b"\x0a\x08location\x12"
_CHUNK = 1 << 24


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    return _hash_and_scan(path, scan=False)[0]


def _hash_and_scan(path: Path, scan: bool) -> tuple[str, list[str]]:
    """SHA-256 of a file and, for ONNX graphs (`scan`), the external data locations it names."""
    digest, found, tail = hashlib.sha256(), [], b""
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            if scan:
                window = tail + chunk
                found += _locations(window, complete=False)
                tail = window[-(len(_LOCATION) + 4 + 4096) :]
    if scan:
        found += _locations(tail, complete=True)
    return digest.hexdigest(), sorted(set(found))


def _locations(window: bytes, complete: bool) -> list[str]:
    """Locations whose tag starts in `window`; near its end only when the window is the last."""
    found, start = [], 0
    limit = len(window) if complete else len(window) - (len(_LOCATION) + 4 + 4096)
    while (at := window.find(_LOCATION, start)) != -1 and at < max(limit, 0):
        length, shift, pos = 0, 0, at + len(_LOCATION)
        while pos < len(window) and shift < 28:
            byte = window[pos]
            length |= (byte & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if not byte & 0x80:
                break
        value = window[pos : pos + length]
        if length > 4096:  # no exporter writes such a name: make it fail the listing check
            found.append(f"<a location of {length} bytes>")
        elif len(value) == length:
            found.append(value.decode("utf-8", errors="replace"))
        start = at + 1
    return found


def cache_dir() -> Path:
    """fastimg's per-user cache folder ($FASTIMG_CACHE_DIR, else $XDG_CACHE_HOME/fastimg)."""
    if os.environ.get("FASTIMG_CACHE_DIR"):
        return Path(os.environ["FASTIMG_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fastimg"


def _signature(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _load_stamps() -> dict:
    try:
        data = json.loads((cache_dir() / STAMPS).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, RecursionError):
        return {}


def _save_stamps(stamps: dict) -> None:
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / STAMPS, lambda f: f.write(json.dumps(stamps).encode()))
    except OSError:
        pass  # an unwritable cache only means hashing again next time


def confine(folder: Path, rel: str, what: str, fix: str) -> Path:
    """The file `rel` of the engine folder, symbolic links followed; a ManifestError when it
    lies outside the folder."""
    root = folder.resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root) or path == root:
        raise ManifestError(
            f"{what} {rel!r} points outside the engine folder {folder} (to {path}): refusing "
            f"to open it; {fix}"
        )
    return path


def verify_files(
    folder: Path, listed: dict[str, dict], opened: dict[str, str], fix: str, full: bool = False
) -> list[str]:
    """Check every file in `opened` (relative path -> what it is), and the external data the
    graphs among them name, against its `listed` entry: inside the folder, present, of the
    listed size and SHA-256. Returns the relative paths verified."""
    stamps, changed = _load_stamps(), False
    queue, verified = deque(opened.items()), []
    for rel in listed:
        confine(folder, rel, "the listed file", fix)
    while queue:
        rel, what = queue.popleft()
        if rel in verified:
            continue
        entry = listed.get(rel)
        if entry is None:
            raise ManifestError(
                f"{what} {rel!r} is not listed in the manifest's files with its size and "
                f"SHA-256, so it cannot be verified: {fix}"
            )
        path = confine(folder, rel, what, fix)
        if not path.is_file():
            raise EngineError(f"engine file {folder / rel} ({what}) is missing: {fix}")
        if path.stat().st_size != entry["bytes"]:
            raise EngineError(
                f"engine file {folder / rel} is {path.stat().st_size} bytes, the manifest says "
                f"{entry['bytes']}: it is truncated or changed; {fix}"
            )
        key = str(path)
        stamp = stamps.get(key)
        signature = _signature(path)
        if full or not _current(stamp, signature, entry["sha256"]):
            digest, refs = _hash_and_scan(path, scan=rel.endswith(".onnx"))
            if digest != entry["sha256"]:
                stamps.pop(key, None)
                _save_stamps(stamps)
                raise EngineError(
                    f"engine file {folder / rel} does not match the SHA-256 in its manifest: it "
                    f"is damaged or was changed after export; {fix}"
                )
            stamp = stamps[key] = {"signature": signature, "sha256": digest, "refs": refs}
            changed = True
        verified.append(rel)
        for location in stamp.get("refs", []):
            ref = posixpath.normpath(posixpath.join(posixpath.dirname(rel), location))
            if ref.startswith("../") or ref == ".." or posixpath.isabs(location):
                raise ManifestError(
                    f"{rel} names external data {location!r} outside the engine folder: "
                    f"refusing to load it; {fix}"
                )
            queue.append((ref, f"the external data of {rel}"))
    if changed:
        _save_stamps(stamps)
    return verified


def _current(stamp, signature: list[int], sha256: str) -> bool:
    return (
        isinstance(stamp, dict)
        and stamp.get("signature") == signature
        and stamp.get("sha256") == sha256
        and isinstance(stamp.get("refs"), list)
    )
