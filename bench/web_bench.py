"""Web bench: server-side page render latency at N concurrent users (closed loop), p50 / p95 per page.

    python -m bench.web_bench --home var                 # a home with a batch publish (and an export)
    python -m bench.web_bench --home var --users 20 --seconds 30

Each simulated user is a thread with its own cookie jar, signed in through the demo mode
as a dataset user, that loops over the pages a visitor opens: home, a search, a movie
page (predicted rating, similar, also-liked), the personal page (Recommend with reasons,
history), pausing a random think time (exponential, mean ``--think`` seconds) after each
page as a person reading it would. Latency is the time to the last byte of the HTML
(posters are separate, cacheable SVG requests and not counted). ``--think 0`` sends
pages back to back: a saturation test, where latency is concurrency over throughput.
The client threads run on the same cores as the server. Writes bench/results/web-<time>.json.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import random
import re
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.machine import describe, write_result
from pipeline.config import load_config

console = Console()


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def _get(opener: Any, url: str) -> str:
    with opener.open(url, timeout=30) as resp:
        return resp.read().decode()


def _demo_sign_in(opener: Any, base: str) -> None:
    page = _get(opener, base + "/signin")
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    data = urllib.parse.urlencode({"csrf": token}).encode()
    opener.open(urllib.request.Request(base + "/demo", data=data), timeout=30).read()


def run(base: str, users: int, seconds: float, movie_ids: list[int], words: list[str],
        think: float = 0.0) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {"home": [], "search": [], "movie": [], "me": []}
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def user(seed: int) -> None:
        rng = random.Random(seed)
        opener = _opener()
        _demo_sign_in(opener, base)
        while time.monotonic() < end:
            for name, path in (("home", "/"), ("search", "/search?q=" + urllib.parse.quote(rng.choice(words))),
                               ("movie", f"/movie/{rng.choice(movie_ids)}"), ("me", "/me")):
                t = time.perf_counter()
                _get(opener, base + path)
                with lock:
                    timings[name].append(time.perf_counter() - t)
                if think:
                    time.sleep(rng.expovariate(1.0 / think))

    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="a home with a batch publish (an export makes it realistic)")
    parser.add_argument("--users", type=int, default=20, help="concurrent simulated users")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--think", type=float, default=1.0,
                        help="mean think time between a user's pages, seconds (exponential; 0 = back to back)")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)

    from serving.app import serving_stack, wait_for_model

    cfg = load_config(home=Path(args.home), overrides={"serving": {"bind": "127.0.0.1", "grpc_port": 0, "http_port": 0,
                                                                   "model_port": 0}})
    with serving_stack(cfg) as stack:
        try:
            model = wait_for_model(stack, timeout=60)
        except ValueError:
            model = None
        catalog = stack.gateway.versions.view().catalog
        popular = [m for m, _ in catalog.popular[:300]]
        words = sorted({w for m in popular for w in catalog.title(m).split() if len(w) > 4 and w.isalpha()})[:200]
        base = f"http://127.0.0.1:{stack.http_port}"
        console.print(f"web bench: {args.users} users for {args.seconds:.0f} s against {base} (model {model or 'none'})")
        run(base, 2, 3.0, popular, words)  # warm-up: catalog, title index, connections
        timings = run(base, args.users, args.seconds, popular, words, args.think)
    table = Table(title=f"page render at {args.users} concurrent users, think time {args.think:g} s")
    for col in ("page", "requests", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(col)
    pages: dict[str, Any] = {}
    for name, values in timings.items():
        ms = np.array(values) * 1000
        pages[name] = {"requests": len(values), "p50_ms": float(np.percentile(ms, 50)),
                       "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99))}
        table.add_row(name, str(len(values)), *(f"{pages[name][k]:.1f}" for k in ("p50_ms", "p95_ms", "p99_ms")))
    every = np.concatenate([np.array(v) for v in timings.values()]) * 1000
    overall = {"requests": int(every.size), "p50_ms": float(np.percentile(every, 50)),
               "p95_ms": float(np.percentile(every, 95))}
    table.add_row("all", str(overall["requests"]), f"{overall['p50_ms']:.1f}", f"{overall['p95_ms']:.1f}", "")
    console.print(table)
    path = write_result({"machine": describe(), "users": args.users, "seconds": args.seconds, "think_s": args.think,
                         "model_version": model,
                         "pages": pages, "all": overall}, args.out, "web")
    console.print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
