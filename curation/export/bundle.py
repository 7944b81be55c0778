"""The zip bundle of a finished export, and the loose files' removal once zipped."""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from curation.export.deflate import SIDE_DIR, ZIP_LEVEL, deflated_files
from curation.export.files import sha256_file


class _Deflated:
    """Stands in for a zip entry's compressor when its bytes were deflated during the pass."""

    def flush(self) -> bytes:
        return b""


def bundle_export(out_dir: Path, name: str, stamp: datetime) -> tuple[Path, str, int]:
    """Zip README.md, SHA256SUMS and the data files under a top folder `name/` into `out_dir/name.zip`.

    Entries are in sorted order with `stamp` as their time, so the same files give the same zip.
    A JSONL file deflated during the pass (`deflate.py`) is copied as it is; the side files are
    removed. Returns (path, sha256, bytes)."""
    side = out_dir / SIDE_DIR
    done = deflated_files(out_dir)
    members = sorted(p for p in out_dir.rglob("*") if p.is_file() and p.suffix != ".zip" and not p.is_relative_to(side))
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
                # ZipFile.open(info, "w") reads the level from this private attribute (not in typeshed).
                info._compresslevel = ZIP_LEVEL  # type: ignore[attr-defined]
            info.external_attr = 0o644 << 16
            size = path.stat().st_size
            info.file_size = size
            pre = done.get(rel)
            if pre is not None and pre["size"] == size and info.compress_type == zipfile.ZIP_DEFLATED:
                _write_deflated(zf, info, side / f"{rel}.deflate", pre)
                continue
            with path.open("rb") as src, zf.open(info, "w", force_zip64=size > 2**30) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    shutil.rmtree(side, ignore_errors=True)
    return bundle, sha256_file(bundle), bundle.stat().st_size


def _write_deflated(zf: zipfile.ZipFile, info: zipfile.ZipInfo, data: Path, pre: dict[str, int]) -> None:
    """Write an entry whose deflated bytes exist already: `ZipFile.open(info, "w")` writes the
    header and, on close, the sizes and CRC it counted; here the counts are the deflater's and
    the bytes go straight to the archive (CPython's `_ZipWriteFile`, the one place this module
    reaches into zipfile)."""
    with zf.open(info, "w", force_zip64=pre["size"] > 2**30) as dst:
        dst._compressor = _Deflated()  # type: ignore[attr-defined]
        with data.open("rb") as src:
            shutil.copyfileobj(src, dst._fileobj, 1 << 20)  # type: ignore[attr-defined]
        dst._crc = pre["crc"]  # type: ignore[attr-defined]
        dst._file_size = pre["size"]  # type: ignore[attr-defined]
        dst._compress_size = pre["deflated"]  # type: ignore[attr-defined]


def remove_loose_files(out_dir: Path, keep: Iterable[str] = ("README.md", "SHA256SUMS")) -> None:
    """After bundling, keep only the bundle, the card and the checksums on disk."""
    for path in sorted(out_dir.rglob("*"), reverse=True):
        rel = path.relative_to(out_dir).as_posix()
        if path.is_file() and path.suffix != ".zip" and rel not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            os.rmdir(path)
