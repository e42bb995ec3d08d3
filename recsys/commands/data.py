"""`recsys data synth|inspect`: synthetic data and dataset validation."""

from __future__ import annotations

import argparse
from pathlib import Path

from recsys.commands.ui import config_from, console, print_table, progress_bar
from pipeline.config import Config
from pipeline.home import Home


def cmd_data_synth(args: argparse.Namespace) -> int:
    from pipeline import synth

    knobs = {k: getattr(args, k) for k in ("users", "movies", "ratings", "seed") if getattr(args, k) is not None}
    cfg = config_from(args, {"synth": knobs} if knobs else None)
    target = Path(args.out) if args.out else Home(cfg.home).synthetic_data
    with progress_bar() as progress:
        task = progress.add_task("synthesising", total=100)
        summary = synth.generate(cfg.synth, target, overwrite=args.overwrite,
                                 progress=lambda stage, frac: progress.update(task, description=stage, completed=int(frac * 100)))
        progress.update(task, completed=100)
    print_table(f"synthetic MovieLens (ML-1M layout) in {target}", ["statistic", "value"],
                 [[k, v] for k, v in summary.as_dict().items()])
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from pipeline import movielens as ml

    layout = ml.detect_layout(Path(args.dir))
    rows = []
    for table in ("ratings", "movies", "users", "tags"):
        src = layout.source(table)
        if src is None:
            rows.append([table, "-", "absent", "-"])
            continue
        df, bad = ml.read_table(layout, table, on_bad_rows=args.on_bad_rows)
        rows.append([table, src.path.name, len(df), bad])
    print_table(f"{layout.name} dataset at {layout.root}", ["table", "file", "rows", "skipped bad rows"], rows)
    return 0


def ensure_default_data(cfg: Config) -> Path:
    """The home's synthetic dataset, generated on first use."""
    from pipeline import synth

    target = Home(cfg.home).synthetic_data
    if not (target / "ratings.dat").exists():
        console.print(f"[yellow]no --data given: generating synthetic MovieLens data into {target}")
        with progress_bar() as progress:
            task = progress.add_task("synthesising", total=100)
            synth.generate(cfg.synth, target, overwrite=True,
                           progress=lambda stage, frac: progress.update(task, description=stage, completed=int(frac * 100)))
    return target
