"""The docker-compose stack, read as data (docker itself is not needed): its services, health
checks, shared volumes, the GPU worker's device reservation and queue, and an `.env.example` that
documents every variable the settings read."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.conf import settings

from annotation.management.commands.check_worker import Command as CheckWorker
from tests.conftest import ROOT

APP_SERVICES = ("migrate", "web", "worker", "gpu-worker", "beat")
LONG_RUNNING = ("postgres", "redis", "web", "worker", "gpu-worker", "beat")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _option(command: list[str], *names: str) -> str | None:
    """The value of a command-line option given as `--name value`, `--name=value` or `-n value`."""
    for i, arg in enumerate(command):
        for name in names:
            if arg == name:
                return command[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def _env_example() -> dict[str, tuple[str, bool]]:
    """NAME -> (value, set): `NAME=value` lines, set or commented out (`# NAME=value`)."""
    found: dict[str, tuple[str, bool]] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        m = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            found.setdefault(m.group(2), (m.group(3), not m.group(1)))
        else:
            assert not line.strip() or line.startswith("#"), f".env.example: not a comment or NAME=value: {line!r}"
    return found


def test_the_stack_has_every_service_restarting_and_healthy(services: dict[str, Any]) -> None:
    assert set(services) == {"postgres", "redis", *APP_SERVICES}
    for name in LONG_RUNNING:
        service = services[name]
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"], name
        assert service["healthcheck"]["retries"] >= 3, name
    assert services["migrate"]["restart"] == "no"
    for name in ("web", "worker", "gpu-worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["postgres"] == depends["redis"] == {"condition": "service_healthy"}, name


def test_web_is_gunicorn_checked_through_healthz(services: dict[str, Any]) -> None:
    web = services["web"]
    assert web["command"][:2] == ["gunicorn", "config.wsgi:application"]
    assert "--workers" in web["environment"]["GUNICORN_CMD_ARGS"]
    test = " ".join(web["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/healthz" in test and "ALLOWED_HOSTS" in test
    assert "middleware.WhiteNoiseMiddleware" in " ".join(settings.MIDDLEWARE)


def _worker(services: dict[str, Any], name: str) -> tuple[list[str], set[str], str]:
    command = services[name]["command"]
    assert command[:4] == ["celery", "-A", "config", "worker"], name
    return command, set(_option(command, "-Q").split(",")), _option(command, "-n")


def _health_args(service: dict[str, Any]) -> list[str]:
    kind, line = service["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    words = shlex.split(line.replace("$$", "$"))
    assert words[:3] == ["python", "manage.py", "check_worker"]
    return words[3:]


@pytest.mark.parametrize("name", ["worker", "gpu-worker"])
def test_each_worker_checks_its_own_node_and_queues(services: dict[str, Any], name: str) -> None:
    command, queues, node = _worker(services, name)
    options = CheckWorker().create_parser("manage.py", "check_worker").parse_args(_health_args(services[name]))
    assert set(options.queue) == queues
    assert node.endswith("@%h") and options.node == [node.replace("%h", "$HOSTNAME")]
    assert int(_option(command, "--max-tasks-per-child")) >= 1
    grace = services[name]["stop_grace_period"]
    assert grace.endswith("m") and int(grace[:-1]) >= 2  # time for a warm shutdown to finish tasks


def test_the_workers_cover_every_queue_and_the_gpu_worker_gets_a_gpu(services: dict[str, Any]) -> None:
    _, cpu_queues, _ = _worker(services, "worker")
    gpu_command, gpu_queues, _ = _worker(services, "gpu-worker")
    assert cpu_queues == {"default", "ai"} and gpu_queues == {"gpu"}
    assert cpu_queues | gpu_queues == {q.name for q in settings.CELERY_TASK_QUEUES}
    assert _option(gpu_command, "--concurrency") == "1"
    assert _option(gpu_command, "--max-tasks-per-child") == "1"  # GPU memory back after each run
    (device,) = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert device.get("count") or device.get("device_ids")


def test_beat_runs_once_with_a_persistent_schedule(compose: dict[str, Any], services: dict[str, Any]) -> None:
    beats = [name for name, s in services.items() if "beat" in (s.get("command") or [])]
    assert beats == ["beat"]
    command = services["beat"]["command"]
    schedule = Path(_option(command, "--schedule"))
    volume, mount = services["beat"]["volumes"][0].split(":")
    assert schedule.parent == Path(mount) and volume in compose["volumes"]
    assert str(schedule.parent) in services["beat"]["healthcheck"]["test"][1]


def test_web_and_workers_share_media_exports_and_cache(compose: dict[str, Any], services: dict[str, Any]) -> None:
    env = _env_example()
    var_dir = Path("/app/var")
    wanted = {
        Path(env["MEDIA_ROOT"][0]): "media",  # uploads to import, reward-model artifacts
        var_dir / "exports": "exports",  # curation.models.exports_root(): built by a worker, downloaded from web
        var_dir / "cache": "cache",
    }
    for name in ("web", "worker", "gpu-worker"):
        mounts = {Path(v.split(":")[1]): v.split(":")[0] for v in services[name]["volumes"]}
        for path, volume in wanted.items():
            assert mounts.get(path) == volume, (name, path)
    for volume in ("pgdata", "redisdata", *wanted.values()):
        assert volume in compose["volumes"]
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "--appendonly" in services["redis"]["command"] and "noeviction" in services["redis"]["command"]


def _settings_variables() -> set[str]:
    source = (ROOT / "config" / "settings.py").read_text()
    pattern = r"""(?:\benv(?:\.\w+)?|\benv_bool|Env\(\)\.\w+)\(\s*["']([A-Z][A-Z0-9_]*)["']"""
    return set(re.findall(pattern, source))


def test_env_example_documents_every_setting_read_from_the_environment() -> None:
    names = _settings_variables()
    assert {"DATABASE_URL", "CELERY_BROKER_URL", "SECRET_KEY", "VAR_DIR", "HEALTH_REQUIRED_QUEUES"} <= names
    documented = _env_example()
    assert sorted(names - set(documented)) == []
    for name in ("SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL", "POSTGRES_PASSWORD"):
        assert documented[name][1], f"{name} is set in .env.example"
    assert documented["DATABASE_URL"][0].endswith("@postgres:5432/prefloop")
    assert documented["CELERY_BROKER_URL"][0].startswith("redis://redis:6379/")


def test_env_example_documents_every_compose_variable(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", text))
    assert {"POSTGRES_PASSWORD", "GPU_WORKER_DEVICE", "GUNICORN_CMD_ARGS"} <= used
    assert sorted(used - set(_env_example())) == []


def test_the_image_keeps_static_files_and_secrets_right() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "STATIC_ROOT=/app/staticfiles" in dockerfile  # outside var/, where volumes are mounted
    assert "STATIC_MANIFEST=1 python manage.py collectstatic" in dockerfile  # what DEBUG=0 serves
    assert "USER app" in dockerfile
    assert ".env" in (ROOT / ".dockerignore").read_text().split()  # no secrets baked into the image
