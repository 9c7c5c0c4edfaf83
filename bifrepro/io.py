"""Atomic file writes: a result file is either the old one or the complete new one, never half.

Every writer goes to a temporary file in the destination folder, flushes it to disk and then
``os.replace``-s it over the destination (atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_path",
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_csv",
    "atomic_save_figure",
    "atomic_torch_save",
    "staged_directory",
    "recover_staged_directory",
    "round_significant",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left untouched.
    ``suffix`` (default: the destination's) matters for writers that infer the format from it.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{dest.name}.",
        suffix=(suffix if suffix is not None else dest.suffix) + ".tmp",
        dir=dest.parent,
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _atomic_open(path: str | os.PathLike[str], mode: str) -> Iterator[IO[Any]]:
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with _atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with _atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_json(obj: Any, path: str | os.PathLike[str], indent: int = 2) -> Path:
    """Serialise ``obj`` as JSON (sorted keys) to ``path`` atomically."""
    return atomic_write_text(
        path, json.dumps(obj, indent=indent, sort_keys=True, default=str) + "\n"
    )


def atomic_write_csv(df: Any, path: str | os.PathLike[str], index: bool = False) -> Path:
    """Write a pandas DataFrame to CSV atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=index)
    return Path(path)


def atomic_save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 150) -> Path:
    """Save a matplotlib figure atomically (format from the destination's suffix)."""
    dest = Path(path)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=dest.suffix.lstrip(".") or "png")
    return dest


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def _staging_names(final: Path) -> tuple[Path, Path]:
    """The staging and the swapped-out folder of ``final`` (hidden siblings)."""
    return final.with_name(f".{final.name}.staging"), final.with_name(f".{final.name}.old")


def recover_staged_directory(final: str | os.PathLike[str]) -> None:
    """Finish or undo a swap interrupted by a crash, so ``final`` holds exactly one result set.

    If the process died between moving the old folder aside and moving the new one in, the old
    set is put back; stale staging folders of dead writers are removed.
    """
    final = Path(final)
    staging, old = _staging_names(final)
    if old.exists():
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)
    if staging.exists():
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``final`` as one set of files.

    An experiment writes all its figures and tables into the staging folder. When the block
    ends without an exception, sub-folders of the old ``final`` that the new set does not contain
    (outputs of other runs, e.g. ``results/lds/calibrated``) and log files (``*.log``, e.g. the
    log Hydra is writing into its job folder in a multirun) are moved into the new set, and the
    new set is swapped in with two renames. Old figures and tables the new set lacks are dropped. On an exception (a diverged sampler, Ctrl-C,
    SIGTERM) the staging folder is removed and ``final`` is left exactly as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_staged_directory(final)
    staging, old = _staging_names(final)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():
        for child in final.iterdir():
            keep = child.is_dir() or child.suffix == ".log"
            if keep and not (staging / child.name).exists():
                os.replace(child, staging / child.name)
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def round_significant(df: Any, digits: int = 6) -> Any:
    """A copy of a pandas DataFrame with float columns rounded to ``digits`` significant digits
    (small, diff-friendly CSVs; NaN and inf stay as they are)."""
    import math

    out = df.copy()
    for col in out.columns:
        if str(out[col].dtype).startswith("float"):
            out[col] = [float(f"{x:.{digits}g}") if math.isfinite(x) else x for x in out[col]]
    return out
