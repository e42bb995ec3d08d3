"""Redis memory of one published version, per user and per movie (capacity planning).

    python -m bench.redis_memory --home H        # a home with a `recsys batch` publish

Samples up to ``--sample`` keys of every kind under the current version, asks Redis
``MEMORY USAGE`` for each (key, value and per-key overhead, as Redis accounts it) and
sums the kinds a user and a movie own; also reports ``INFO memory`` and the version's
key count. Prints a table and writes ``bench/results/redis-memory-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import random
from typing import Any

import redis

from bench.machine import describe, write_result
from pipeline import keys as K
from pipeline.config import load_config
from pipeline.redis_server import redis_for_home

# Key kinds of one version (pipeline/KEYS.md) by owner.
USER_KINDS = ("user:", "hist:", "seen:", "ulist:als:")
MOVIE_KINDS = ("movie:", "ilist:similar:", "ilist:next:")


def measure(client: redis.Redis, prefix: str, sample: int = 500, seed: int = 3) -> dict[str, Any]:
    keys = K.Keys(prefix)
    version = client.get(keys.current())
    if not version:
        raise SystemExit(f"nothing published under prefix {prefix!r}: run `recsys batch` first")
    version = version.decode()
    base = keys.version_prefix(version)
    by_kind: dict[str, list[bytes]] = {}
    total_keys = 0
    for key in client.scan_iter(match=base + "*", count=2000):
        total_keys += 1
        rest = key.decode()[len(base):]
        kind = next((k for k in USER_KINDS + MOVIE_KINDS if rest.startswith(k)), rest.split(":", 1)[0] + ":")
        by_kind.setdefault(kind, []).append(key)
    rng = random.Random(seed)
    kinds = {}
    for kind, names in sorted(by_kind.items()):
        chosen = rng.sample(names, min(sample, len(names)))
        sizes = [client.memory_usage(k, samples=0) or 0 for k in chosen]
        kinds[kind] = {"keys": len(names), "mean_bytes": round(sum(sizes) / len(sizes), 1),
                       "total_bytes_est": round(sum(sizes) / len(sizes) * len(names))}
    info = client.info("memory")
    manifest = K.decode_fields(client.hgetall(keys.manifest(version)))
    users = manifest["counts"]["users"]
    movies = manifest["counts"]["movies"]
    per_user = sum(kinds[k]["total_bytes_est"] for k in USER_KINDS if k in kinds) / max(users, 1)
    per_movie = sum(kinds[k]["total_bytes_est"] for k in MOVIE_KINDS if k in kinds) / max(movies, 1)
    shared = sum(v["total_bytes_est"] for k, v in kinds.items() if k not in USER_KINDS + MOVIE_KINDS)
    return {"version": version, "users": users, "movies": movies, "keys": total_keys, "kinds": kinds,
            "per_user_bytes": round(per_user), "per_movie_bytes": round(per_movie), "shared_bytes": shared,
            "used_memory": info["used_memory"], "used_memory_dataset": info.get("used_memory_dataset")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True, help="a home with a published batch version")
    parser.add_argument("--sample", type=int, default=500, help="keys sampled per kind")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    cfg = load_config(home=args.home)
    with redis_for_home(cfg) as url:
        client = redis.Redis.from_url(url)
        result = measure(client, cfg.redis.key_prefix, args.sample)
        client.close()
    print(f"version {result['version']}: {result['users']} users, {result['movies']} movies, {result['keys']} keys")
    print(f"{'kind':<16}{'keys':>8}{'mean bytes':>12}{'total MiB':>11}")
    for kind, k in result["kinds"].items():
        print(f"{kind:<16}{k['keys']:>8}{k['mean_bytes']:>12}{k['total_bytes_est'] / 2**20:>11.2f}")
    print(f"per user {result['per_user_bytes']} B, per movie {result['per_movie_bytes']} B, "
          f"shared lists {result['shared_bytes'] / 2**20:.2f} MiB; used_memory {result['used_memory'] / 2**20:.1f} MiB")
    result["machine"] = describe()
    print(f"written {write_result(result, args.out, 'redis-memory')}")
    print(json.dumps({k: result[k] for k in ("per_user_bytes", "per_movie_bytes")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
