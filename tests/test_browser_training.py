"""Training from the browser: a real worker runs it, htmx polling shows step, loss and ETA, and the
curator cancels it."""

from __future__ import annotations

import time

import pytest

from annotation.importing import import_items
from models_srv import forms
from models_srv.models import RewardModelVersion
from tests.conftest import jsonl, login
from tests.test_reward_training import TINY, synthetic_pairs

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_progress_is_polled_and_the_run_cancelled(
    celery_worker_process, page, make_project, make_user, monkeypatch
) -> None:
    # The form trains a tiny config-built backbone here so the CPU run stays short; all else is real.
    original = forms.TrainForm.config
    monkeypatch.setattr(forms.TrainForm, "config", lambda self: {**original(self), "from_config": TINY})
    curator = make_user("cur", can_create=True)
    project = make_project("browser-train", curator=curator)
    import_items(project=project, fileobj=jsonl(synthetic_pairs(200)))
    login(page, "cur", "cur-pw-123")
    page.goto(f"/p/{project.slug}/models/")
    page.click("#train-card summary")
    page.select_option("#id_mode", "full")
    page.fill("#id_epochs", "200")
    page.fill("#id_max_length", "32")
    page.click("#train-btn")
    row = "tr[data-version='1']"
    page.wait_for_function(
        f'() => {{ const r = document.querySelector("{row}"); return r && /training \\d+\\/\\d+/.test(r.innerText)'
        " && /loss [0-9.]+/.test(r.innerText) && /ETA [0-9]+ s/.test(r.innerText); }",
        timeout=90_000,
    )
    page.locator(row).locator("button", has_text="Cancel").click()
    version = RewardModelVersion.objects.get()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and version.status != "cancelled":
        time.sleep(0.3)
        version.refresh_from_db()
    assert version.status == "cancelled"
    page.wait_for_selector(f"{row} .badge.cancelled")
    assert not version.is_current and version.artifact_path == ""
