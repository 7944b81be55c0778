"""The zip bundle of a finished export, and the loose files' removal once zipped."""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from curation.export.files import sha256_file

ZIP_LEVEL = 1  # JSONL deflates to about a fifth even at level 1, three times faster than the default 6


def bundle_export(out_dir: Path, name: str, stamp: datetime) -> tuple[Path, str, int]:
    """Zip README.md, SHA256SUMS and the data files under a top folder `name/` into `out_dir/name.zip`.

    Entries are in sorted order with `stamp` as their time, so the same files give the same zip.
    Returns (path, sha256, bytes)."""
    members = sorted(p for p in out_dir.rglob("*") if p.is_file() and p.suffix != ".zip")
    bundle = out_dir / f"{name}.zip"
    when = stamp.astimezone(UTC).timetuple()[:6]
    when = (max(1980, when[0]), *when[1:])
    with zipfile.ZipFile(bundle, "w", allowZip64=True) as zf:
        for path in members:
            rel = path.relative_to(out_dir).as_posix()
            info = zipfile.ZipInfo(f"{name}/{rel}", date_time=when)
            if path.suffix == ".parquet":  # already compressed (zstd)
                info.compress_type = zipfile.ZIP_STORED
            else:
                info.compress_type = zipfile.ZIP_DEFLATED
                info._compresslevel = ZIP_LEVEL  # ZipFile.open(info, "w") reads the level from here
            info.external_attr = 0o644 << 16
            size = path.stat().st_size
            info.file_size = size
            with path.open("rb") as src, zf.open(info, "w", force_zip64=size > 2**30) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return bundle, sha256_file(bundle), bundle.stat().st_size


def remove_loose_files(out_dir: Path, keep: Iterable[str] = ("README.md", "SHA256SUMS")) -> None:
    """After bundling, keep only the bundle, the card and the checksums on disk."""
    for path in sorted(out_dir.rglob("*"), reverse=True):
        rel = path.relative_to(out_dir).as_posix()
        if path.is_file() and path.suffix != ".zip" and rel not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            os.rmdir(path)
