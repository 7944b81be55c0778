"""Routing on the shared HH-RLHF pairs: simulated AI labelers beside a real one's stored labels.

    nice .venv/bin/python bench/route/run.py [--seeds 20] [--folds 2] [--skip-simulated] [--fresh]

1. Simulated labelers (`models_srv.simulation`): `rm` (a cheap reward model trained on a fifth of
   the pairs) and `biased_judge` (an LLM judge's failure modes, made up), as `simulate_routing
   --data` runs them.
2. A real labeler's stored labels (`models_srv.simulation_stored`): the 1,600 pairs are imported
   into a project (their HH labels become its imported labels, the truth here); the items are dealt
   into `--folds` folds by a hash of their id; for each fold a reward model is trained through the
   app (`training_start` + `training_run`, the default config: `top` mode, MiniLM, 1 epoch) on the
   other folds' labels, and a reward-model judge of that version (`rm-judge-K`) labels the fold, as
   an AI labeling run does. Every item is thus labeled by a model that never saw its label. Then
   the stored judgments are routed: `simulate_routing --project hh-route --ai-labeler
   rm-judge-0+rm-judge-1 --truth imported`. No reward model rescored the items, so the router's
   reward-model features are empty and cannot leak the labels.
3. `bench/route/results.csv` and `bench/route/plot.png` hold all three labelers' figures; the
   tables are printed and written to `bench/route/out/tables.txt`, every per-seed figure to
   `bench/route/out/results.json` (`--replot` redraws the plot and tables from it).

The database is SQLite under `bench/route/out/` and is kept between runs (the embeddings cache,
the imported project and its AI labels): a second run only simulates. `--fresh` starts over.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
sys.path.insert(0, str(ROOT / "bench"))

from common import HH  # noqa: E402

SLUG = "hh-route"


def setup_django(fresh: bool) -> None:
    sys.path.insert(0, str(ROOT))
    OUT.mkdir(exist_ok=True)
    db = OUT / "route.sqlite3"
    if fresh and db.exists():
        db.unlink()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{db}")
    os.environ.setdefault("VAR_DIR", str(OUT / "var"))
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def say(msg: str, started: float) -> None:
    print(f"[{time.monotonic() - started:6.0f}s] {msg}", flush=True)


def fold_of(external_id: str, folds: int) -> int:
    return hashlib.sha256(f"route-fold:{external_id}".encode()).digest()[0] % folds


def stored_project(folds: int, started: float):
    """The imported project with one reward-model judge per fold, each labeling only its fold."""
    from annotation.importing import import_items
    from annotation.models import Item, Judgment, Project
    from annotation.services import ProjectSpec, project_create
    from models_srv.labeling import labeler_create, run_execute, run_start
    from models_srv.services import training_run, training_start

    project = Project.objects.filter(slug=SLUG).first()
    if project is None:
        spec = ProjectSpec.parse(
            {
                "slug": SLUG,
                "name": "HH routing bench",
                "schema": {"pairwise": {"strengths": ["better", "much better"], "allow_tie": True}},
            }
        )
        project = project_create(spec=spec, created_by=None)
        with HH.open("rb") as fh:
            result = import_items(project=project, fileobj=fh)
        say(f"imported {result.items_created} items, {result.judgments_created} labels", started)
    items = list(Item.objects.filter(project=project).order_by("id"))
    fold = {it.id: fold_of(it.external_id, folds) for it in items}
    for k in range(folds):
        name = f"rm-judge-{k}"
        mine = [i for i, f in fold.items() if f == k]
        if Judgment.objects.filter(labeler__project=project, labeler__name=name).count() >= len(mine):
            continue
        # The fold is held out (split eval): the model trains on the other folds' labels only.
        Item.objects.filter(project=project).update(split="train")
        Item.objects.filter(id__in=mine).update(split="eval")
        version = training_start(
            project=project, config={"label_source": "imported", "eval_fraction": 0.1}, enqueue=False
        )
        version = training_run(version_id=version.id)
        acc = (version.metrics or {}).get("pairwise", {}).get("accuracy")
        say(f"fold {k}: reward model v{version.version} trained ({version.status}), held-out accuracy {acc}", started)
        labeler = labeler_create(project=project, kind="reward_model", name=name, config={"version": str(version.uuid)})
        run = run_start(project=project, labeler=labeler, item_ids=mine, enqueue=False)
        run = run_execute(run_id=run.id)
        say(f"fold {k}: {name} labeled {len(mine)} items ({run.status} {run.error})", started)
    Item.objects.filter(project=project).update(split="train")
    return project


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--budgets", default="0,10,25,50,100")
    parser.add_argument("--skip-simulated", action="store_true", help="only the stored labels")
    parser.add_argument("--fresh", action="store_true", help="start from an empty database")
    parser.add_argument("--replot", action="store_true", help="redraw from out/results.json, simulate nothing")
    args = parser.parse_args()
    if args.replot:
        setup_django(fresh=False)  # the simulation modules import the app's models
        from models_srv.simulation_report import result_from_dict

        report(list(map(result_from_dict, json.loads((OUT / "results.json").read_text()))))
        return
    if not HH.exists():
        raise SystemExit(f"{HH} is absent: this benchmark reads the shared HH-RLHF pairs")
    started = time.monotonic()
    setup_django(args.fresh)
    from django.conf import settings

    from models_srv.engine import TrainConfig
    from models_srv.simulation import JUDGES, embed_pairs, load_pairs, simulate
    from models_srv.simulation_report import result_to_dict
    from models_srv.simulation_stored import load_stored_labels, simulate_stored

    budgets = [float(b) / 100 for b in args.budgets.split(",")]
    seeds = range(args.seeds)
    config = TrainConfig(max_length=128)
    results = []
    if not args.skip_simulated:
        pairs = load_pairs(HH)
        chosen, rejected = embed_pairs(pairs, config, Path(settings.VAR_DIR) / "cache")
        say(f"{len(pairs)} pairs embedded", started)
        for judge in JUDGES:
            results.append(simulate(pairs, chosen, rejected, judge=judge, budgets=budgets, seeds=seeds))
            say(f"simulated {judge}", started)
    project = stored_project(args.folds, started)
    names = [f"rm-judge-{k}" for k in range(args.folds)]
    data = load_stored_labels(project=project, ai_labelers=names, truth="imported", config=config)
    say(f"{len(data)} items with a human and an AI label, embedded", started)
    results.append(simulate_stored(data, budgets=budgets, seeds=seeds))
    say("simulated the stored labels", started)
    (OUT / "results.json").write_text(json.dumps([result_to_dict(res) for res in results], indent=1))
    report(results)
    say(f"wrote {HERE / 'results.csv'}, {HERE / 'plot.png'}, {OUT / 'tables.txt'} and results.json", started)


def report(results: list) -> None:
    from models_srv.simulation_report import format_table, plot, write_csv

    write_csv(results, HERE / "results.csv")
    plot(results, HERE / "plot.png")
    tables = "\n".join(format_table(res) for res in results)
    (OUT / "tables.txt").write_text(tables + "\n")
    print(tables)


if __name__ == "__main__":
    main()
