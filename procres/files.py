"""How procres writes and reads its files: atomically, as standard JSON, with errors that name the file.

Every file is written atomically: a temporary file in the same folder, flush, ``os.fsync``,
``os.replace`` onto the final name, then an fsync of the folder so that the rename itself is
durable.  A kill at any moment leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path

from procres.errors import UserError

__all__ = ["atomic_save", "atomic_write_text", "json_text", "append_jsonl", "read_json", "write_tmp", "fsync_dir",
           "read_torch", "failure_reason"]


def write_tmp(obj, path: Path) -> Path:
    """``torch.save(obj)`` to ``path.tmp``, flushed and fsynced; returns the temporary path."""
    import torch  # here only: reading run files (figures, reports) needs no torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def atomic_save(obj, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    os.replace(write_tmp(obj, path), path)
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def json_text(obj, *, indent: int | None = None) -> str:
    """``obj`` as standard JSON (RFC 8259): NaN and infinities become ``null`` (Python's ``json``
    writes ``NaN`` / ``Infinity``, which other JSON parsers refuse); other numbers go through
    ``int`` or ``float`` (numpy and 0-d torch numbers)."""
    def clean(v):
        if v is None or isinstance(v, (str, bool)):
            return v
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, numbers.Integral):
            return int(v)
        v = float(v)
        return v if math.isfinite(v) else None

    return json.dumps(clean(obj), indent=indent, allow_nan=False)


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line and fsync it (a torn last line is repaired by the resume's rewrite)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path) -> dict:
    """Read one JSON file; a missing or malformed file raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None


def failure_reason(err: BaseException) -> str:
    """Why reading a file failed, in one line: the exception's type and first line (tarfile's and
    others' messages run over several).  torch's message for a file ``torch.load(weights_only=True)``
    will not unpickle advises ``weights_only=False`` (arbitrary code execution): procres never does
    that, so only the unpickler's reason is kept."""
    text = str(err).strip()
    if "Weights only load failed" in text:
        reason = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
        detail = reason[0].strip() if reason and "WeightsUnpickler" in text else ""
        return ("corrupt, or holding objects other than tensors and plain containers, which procres does not "
                f"unpickle{f' ({detail})' if detail else ''}")
    line = text.splitlines()[0].rstrip(" :") if text else ""
    return f"{type(err).__name__}: {line[:200]}" if line else type(err).__name__


def read_torch(path):
    """``torch.load(path, map_location="cpu", weights_only=True)``; a UserError naming the file and
    :func:`failure_reason`'s reason when it cannot be read (truncated, corrupt, foreign pickle)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, unpickling error: a bad file, not a crash
        raise UserError(f"{path}: not a readable torch file ({failure_reason(err)})") from None
