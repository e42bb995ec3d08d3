"""`recsys explain --user U --movie M`: score movies for a user with the latest export,
print the history movies that drove each score, and draw the attention heatmap."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model.explain import attribution, heatmap_png
from model.signature import MovieInputs, UserInput, as_tensors, build_request
from pipeline.config import Config
from pipeline.home import Home, table_path


class ExplainError(ValueError):
    pass


def explain(cfg: Config, user_id: int, movie_ids: list[int], out: Path | None = None) -> dict[str, Any]:
    from model.evaluate import saved_model_fn
    from model.export import exported_versions, model_base

    home = Home(cfg.home)
    version = home.current_version()
    base = model_base(home)
    versions = exported_versions(home)
    if version is None or not versions:
        raise ExplainError("needs a batch version and an exported model: run `recsys batch`, `train`, `export` first")
    uf = pd.read_parquet(table_path(home, version, "user_features"), filters=[("user_id", "==", user_id)])
    if uf.empty:
        raise ExplainError(f"user {user_id} is not in batch version {version}")
    mf = pd.read_parquet(table_path(home, version, "movie_features")).set_index("movie_id")
    unknown = [m for m in movie_ids if m not in mf.index]
    if unknown:
        raise ExplainError(f"unknown movie id(s): {', '.join(map(str, unknown))}")
    row = uf.iloc[0]
    history = [(int(m), float(r)) for m, r, _ in json.loads(row["history"])][-cfg.samples.history_len:]
    user = UserInput(user_id=user_id, age_bucket=int(row["age_bucket"]) if pd.notna(row["age_bucket"]) else 0,
                     gender=row["gender"] or "", occupation=row["occupation"] or "", history=history)
    sel = mf.loc[movie_ids]
    movies = MovieInputs(movie_ids=movie_ids, genres=list(sel["genres"]), years=[int(y) if pd.notna(y) else None for y in sel["year"]],
                         title_tokens=list(sel["title_tokens"]), popularity=sel["popularity"].fillna(0).tolist(),
                         mean_rating=sel["mean_rating"].fillna(0).tolist(), bayes_rating=sel["bayes_rating"].fillna(0).tolist())
    request = build_request(user, movies, cfg.samples.history_len, cfg.features.title_max_tokens)
    request["user_n_ratings"] = np.array([row["n_ratings"]], np.float32)
    request["user_mean_rating"] = np.array([row["mean_rating"]], np.float32)
    result = saved_model_fn(base / str(versions[0]))(**as_tensors(request))
    att = np.asarray(result["attention"])[0]            # [N, H]
    hist_ids = [m for m, _ in history]
    titles = {int(m): t for m, t in mf["title"].items()}
    h = att.shape[1]
    cols = [""] * (h - len(hist_ids)) + [titles.get(m, str(m)) for m in hist_ids]
    png = out or home.root / "explain" / f"user-{user_id}.png"
    heatmap_png(png, att, [titles.get(m, str(m)) for m in movie_ids], cols,
                f"user {user_id}: target attention over the last {len(hist_ids)} rated movies (export v{versions[0]})")
    return {"png": str(png), "titles": titles,
            "scores": {m: float(np.asarray(result["score"])[0, i]) for i, m in enumerate(movie_ids)},
            "ratings": {m: float(np.asarray(result["rating"])[0, i]) for i, m in enumerate(movie_ids)},
            "drivers": {m: attribution(att[i], hist_ids) for i, m in enumerate(movie_ids)}}
