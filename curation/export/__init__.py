"""Dataset export: filters, one streaming pass over a project, files per format and split.

One module per job: `filters` (what a snapshot takes), `query` (reading the project a page at a
time), `context` (an item as loaded, the pass's context), `formats` (the rows of each format),
`files` (JSONL and Parquet per format and split), `stats` (agreement and labeler counts), `build`
(the pass), `card` (README.md and SHA256SUMS), `deflate` (the JSONL deflated for the bundle during
the pass) and `bundle` (the zip).

`build_export` walks the project's items in id order (keyset pages of `chunk_items`), reads the
judgments of each page with one SQL statement as columns (the export's one raw-SQL fast path,
`query._JUDGMENTS_SQL`), decides per page which judgments the label source keeps and each item's
pairwise consensus (numpy), then per item whether it is in the dataset (curation state, flags,
agreement, strength). Formats with a row or a few per item (`pairs`, `listwise`, `rubric`,
`spans`) are written item by item; `raw`, a row per judgment, is written a page at a time as Arrow
columns. Every file streams (`files.SplitFiles`): Arrow arrays become Parquet row groups of at most
`ROW_GROUP_ROWS` rows and, from the same arrays, JSONL, cut into the same chunks whichever way the
rows came, so memory stays flat however large the project is.

Only judgments, curation actions and flags made at or before the snapshot's `cutoff` count, and
rows come out in a fixed order, so building the same filters and cutoff again gives
byte-identical JSONL and equal Parquet tables.

Formats (one folder each, one file per split and file type, e.g. `pairs/train.parquet`):
- `pairs`: TRL's preference format `prompt`, `chosen`, `rejected` (conversational message lists
  when the project has chat prompts), plus `margin`, `strength`, `agreement`, ...; written twice,
  as `pairs` and as `pairs_plain` (plain text, the dialogue as the app's default reward model reads
  it, for models without a chat template), both split `train` / `test` as the app splits training
  runs, `margin` as the app's objective has it (`formats.Pairs`)
- `listwise`: the responses of a ranking item in consensus order, with their mean ranks
- `rubric`: one row per response, one column per rubric aspect (mean score)
- `spans`: one row per response, its text and the span marks `{start, end, category, labeler}`
- `raw`: one row per judgment, with a pseudonymous labeler id (for pluralistic reward models)
"""

from annotation.pseudonym import pseudonym
from curation.export.build import build_export
from curation.export.bundle import bundle_export, remove_loose_files
from curation.export.context import ExportResult
from curation.export.files import sha256_file
from curation.export.filters import FORMATS, ExportError, ExportFilters, parse_formats

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
