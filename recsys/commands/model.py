"""`recsys train|export|explain`: the ranking model's commands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from recsys.commands.ui import config_from, out, print_table
from pipeline.home import Home


def _model_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    model: dict[str, Any] = {}
    for flag in ("epochs", "batch_size", "max_train_examples", "patience", "train_budget_s"):
        if getattr(args, flag, None) is not None:
            model[flag] = getattr(args, flag)
    if getattr(args, "ablate", None):
        model["ablate"] = [a.strip() for a in args.ablate.split(",") if a.strip()]
    return {"model": model} if model else {}


def cmd_train(args: argparse.Namespace) -> int:
    from model.train import train

    cfg = config_from(args, _model_overrides(args))
    from model.ranker import BlockConfig

    BlockConfig().ablate(list(cfg.model.ablate))  # unknown block names fail before any data is read
    summary = train(cfg, version=args.version, run_name=args.run, verbose=1 if out.is_terminal else 2)
    best = summary["best_epoch"]
    print_table(f"trained {summary['run']} ({summary['device']})", ["", "value"], [
        ["batch version / split", f"{summary['batch_version']} / {summary['split']}"],
        ["examples train / val", f"{summary['train_examples']:,} / {summary['val_examples']:,}"],
        ["epochs run", summary["epochs_run"]], ["train seconds", summary["train_seconds"]],
        ["best val_loss / val_auc / val_rating_mse",
         f"{best.get('val_loss')} / {best.get('val_auc')} / {best.get('val_rating_mse')}"],
        ["ablated blocks", ", ".join(summary["ablate"]) or "none"],
        *([["sequence model epochs / seconds", f"{summary['sequence']['epochs_run']} / {summary['sequence']['train_seconds']}"],
           ["sequence model best validation HR@10 / NDCG@10",
            f"{summary['sequence']['best']['val_hr@10']} / {summary['sequence']['best']['val_ndcg@10']}"],
           ["score mix (sequence share)", summary["sequence"]["mix"]]] if "sequence" in summary else [])])
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from model.export import export
    from model.train import latest_run, runs_dir

    cfg = config_from(args)
    home = Home(cfg.home)
    run = runs_dir(home) / args.run if args.run else latest_run(home)
    path = export(home, run)
    out.print(f"exported {run.name} -> {path} (TF Serving layout; model name '{path.parent.name}', version {path.name})")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from model.explain_cli import explain

    cfg = config_from(args)
    result = explain(cfg, args.user, [int(m) for m in args.movie.split(",")], Path(args.out) if args.out else None)
    for movie, drivers in result["drivers"].items():
        out.print(f"[bold]{result['titles'].get(movie, movie)}[/]: score {result['scores'][movie]:.3f}, "
                  f"predicted rating {result['ratings'][movie]:.2f}")
        for m, w in drivers:
            out.print(f"   because you watched {result['titles'].get(m, m)}  (attention {w:.2f})")
    out.print(f"heatmap: {result['png']}")
    return 0
