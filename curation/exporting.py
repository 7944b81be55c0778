"""The dataset export's former single module: its public names, now in `curation.export`.

Kept so that code written against `curation.exporting` (and the help text of
`ExportSnapshot.filters`) still resolves; new code imports from `curation.export`."""

from curation.export import (
    FORMATS,
    ExportError,
    ExportFilters,
    ExportResult,
    build_export,
    bundle_export,
    parse_formats,
    pseudonym,
    remove_loose_files,
    sha256_file,
)

__all__ = [
    "FORMATS",
    "ExportError",
    "ExportFilters",
    "ExportResult",
    "build_export",
    "bundle_export",
    "parse_formats",
    "pseudonym",
    "remove_loose_files",
    "sha256_file",
]
