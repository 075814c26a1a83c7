"""Small helpers shared by the package: atomic writes and hashing.

Every file or folder the project writes (checkpoints, caches, result tables) goes through these, so that a
reader never sees a half-written one: the content is written beside the target and moved into place with
``os.replace``, which is atomic on POSIX file systems.
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; on success move it onto ``path`` atomically.

    Works for a file or a folder. On an exception the temporary is removed and ``path`` is untouched.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".tmp-", dir=parent)
    target = os.path.join(tmp, "out")
    try:
        yield target
        if os.path.isdir(path) and not os.path.islink(path):
            # os.replace cannot overwrite a non-empty folder: move the old one aside first
            old = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".old-", dir=parent)
            os.replace(path, os.path.join(old, "x"))
            os.replace(target, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def stable_hash(obj, length=16):
    """A short hash of a JSON-serialisable object, stable across runs and machines (for cache keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:length]
