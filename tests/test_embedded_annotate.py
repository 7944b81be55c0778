"""The annotation hot path on the embedded SQLite default that `make run` starts: the hand-out and
the submit take the queue's ORM path there (annotation/queue/portable.py) and the counts are
hand-written SQL (annotation/rows.py), so they are run here once on SQLite as well, through the
real views."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import settings_probe

FLOW = """
import json, django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
call_command("load_demo", verbosity=0)
from django.contrib.auth import get_user_model
from django.test import Client
from annotation.models import AnnotatorStats, Assignment, Judgment, Membership
alice = get_user_model().objects.get(username="alice")
project = Membership.objects.select_related("project").get(user=alice, project__slug="demo-chat-quality").project
c = Client(HTTP_HX_REQUEST="true")
c.force_login(alice)
page = c.get(f"/p/{project.slug}/annotate")
first = Assignment.objects.get(annotator=alice, state="leased")
again = c.get(f"/p/{project.slug}/annotate")  # the live lease again, not a second one
left = {"helpfulness": 5, "correctness": 4, "verbosity": 3}
right = {"helpfulness": 1, "correctness": 2, "verbosity": 3}
answer = {"pairwise": {"choice": "A", "strength": 2}, "rubric": [left, right]}
sub = c.post(f"/a/{first.uuid}/submit", {"payload": json.dumps(answer), "time_ms": "1500"})
twice = c.post(f"/a/{first.uuid}/submit", {"payload": json.dumps(answer), "time_ms": "1500"})
second = Assignment.objects.get(annotator=alice, state="leased")
skip = c.post(f"/a/{second.uuid}/skip", {"reason": "unclear"})
assert sub.status_code == 200, (sub.status_code, sub.content[:300])
judgment = Judgment.objects.get(assignment=first)
stats = AnnotatorStats.objects.get(project=project, user=alice)
print(json.dumps({
    "status": [page.status_code, again.status_code, sub.status_code, twice.status_code, skip.status_code],
    "same_lease": str(first.uuid) in again.content.decode(),
    "leases": Assignment.objects.filter(annotator=alice).count(),
    "judgments": Judgment.objects.filter(assignment__annotator=alice).count(),
    "stored_choice": judgment.payload["pairwise"]["choice"],
    "order": judgment.response_order,
    "left_stored_at": judgment.payload["rubric"].index(left),
    "stats": [stats.judged, stats.judged_today, stats.skipped_today],
    "shows_count": 'data-testid="my-count">1<' in skip.content.decode(),
}))
"""


def test_hand_out_submit_and_skip_on_the_embedded_sqlite_default(tmp_path: Path) -> None:
    result = settings_probe(
        FLOW,
        drop=("DATABASE_URL", "SECRET_KEY", "CELERY_BROKER_URL"),
        DEBUG="1",
        VAR_DIR=str(tmp_path),
        SESSION_COOKIE_SECURE="0",
        CSRF_COOKIE_SECURE="0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["status"] == [200, 200, 200, 200, 200]
    assert out["same_lease"]
    assert out["leases"] == 3 and out["judgments"] == 1  # submitted, skipped, the next; one judgment
    assert out["stored_choice"] == "AB"[out["order"][0]]  # "A" on screen mapped to the stored order
    assert out["left_stored_at"] == out["order"][0]
    assert out["stats"] == [1, 1, 1]
    assert out["shows_count"]
