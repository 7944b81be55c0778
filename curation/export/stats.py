"""Agreement figures and labeler counts, accumulated as items stream by (bounded memory)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any, Literal

from annotation.models import Labeler
from curation.export.context import ExportItem


class Agreement:
    """Percent agreement and Krippendorff's alpha from a coincidence matrix built unit by unit.

    The same statistic as `curation.metrics.krippendorff_alpha` (nominal or interval), but
    accumulated item by item, so the whole reliability matrix is never held in memory."""

    def __init__(self, level: Literal["nominal", "interval"]) -> None:
        self.level = level
        self.coincidence: dict[tuple[Any, Any], float] = defaultdict(float)
        self.agree_pairs = 0
        self.total_pairs = 0
        self.units = 0

    def add(self, values: Sequence[Any]) -> None:
        values = [v for v in values if v is not None]
        m = len(values)
        if m < 2:
            return
        self.units += 1
        counts = Counter(values)
        for c, nc in counts.items():
            for k, nk in counts.items():
                pairs = nc * (nc - 1) if c == k else nc * nk
                if pairs:
                    self.coincidence[(c, k)] += pairs / (m - 1)
        self.agree_pairs += sum(n * (n - 1) // 2 for n in counts.values())
        self.total_pairs += m * (m - 1) // 2

    def percent(self) -> float | None:
        return self.agree_pairs / self.total_pairs if self.total_pairs else None

    def alpha(self) -> float | None:
        marginals: dict[Any, float] = defaultdict(float)
        for (c, _k), v in self.coincidence.items():
            marginals[c] += v
        n = sum(marginals.values())
        if n < 2 or len(marginals) < 2:
            return None

        def delta(c: Any, k: Any) -> float:
            if self.level == "nominal":
                return 0.0 if c == k else 1.0
            return (float(c) - float(k)) ** 2

        observed = sum(v * delta(c, k) for (c, k), v in self.coincidence.items())
        expected = sum(marginals[c] * marginals[k] * delta(c, k) for c in marginals for k in marginals)
        if expected <= 0:
            return None
        return 1.0 - (n - 1) * observed / expected

    def summary(self) -> dict[str, Any]:
        return {
            "units": self.units,
            "percent_agreement": rounded(self.percent()),
            "krippendorff_alpha": rounded(self.alpha()),
        }


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def ai_labelers(counts: Counter[int]) -> list[dict[str, Any]]:
    """The AI labelers behind the exported judgments, by name (AI labelers are not people)."""
    out = []
    for labeler in Labeler.objects.filter(id__in=list(counts)).order_by("name", "version", "id"):
        config = labeler.config or {}
        model = config.get("model") or config.get("version") or config.get("strong") or ""
        out.append(
            {
                "name": labeler.name,
                "type": labeler.kind,
                "model": str(model),
                "version": labeler.version,
                "judgments": counts[labeler.id],
            }
        )
    return out


def add_rubric(item: ExportItem, acc: dict[str, Agreement]) -> None:
    rated = [j.payload["rubric"] for j in item.judgments if isinstance(j.payload.get("rubric"), list)]
    for i in range(len(item.texts)):
        for aspect, a in acc.items():
            a.add([r[i].get(aspect) for r in rated if i < len(r) and isinstance(r[i], dict)])
