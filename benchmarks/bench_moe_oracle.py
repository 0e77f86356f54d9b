"""Fused-MoE oracle speed, side by side with the bare float64 expert GEMMs it cannot avoid.

    python benchmarks/bench_moe_oracle.py [--repeats 3] [--tokens 256] [--hidden 2048]
        [--intermediate 1024] [--experts 64] [--top-k 8] [--json]

The bare work: for each of the experts, ``[t_e, H] @ [H, 2I]`` and ``[t_e, I] @ [I, H]`` in
float64 on the t_e tokens routed to it (routing taken from the reference). Prints the medians
and their ratio (goal: the reference within 2x of the bare GEMMs). Exit status 1 past the goal.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qkcheck.oracle.ops.moe import fused_moe, route  # noqa: E402

GOAL = 2.0


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (median is reported)")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    for name in ("repeats", "tokens", "hidden", "intermediate", "experts", "top_k"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.top_k > args.experts:
        parser.error(f"--top-k={args.top_k} must be <= --experts={args.experts}")

    T, H, I, E, k = args.tokens, args.hidden, args.intermediate, args.experts, args.top_k
    rng = np.random.default_rng(0)
    w13 = rng.standard_normal((E, H, 2 * I)) / np.sqrt(H)
    w2 = rng.standard_normal((E, I, H)) / np.sqrt(I)
    problem = dict(x=rng.standard_normal((T, H)), router_logits=rng.standard_normal((T, E)), scoring="softmax",
                   top_k=k, renormalize=True, w13=w13, w2=w2, activation="silu")
    ids = route(problem).topk_ids
    rows = [np.flatnonzero((ids == e).any(axis=1)) for e in range(E)]
    x = problem["x"]

    def bare():
        for e in range(E):
            xe = x[rows[e]]
            xe @ w13[e]
            xe[:, :I] @ w2[e]

    t_ref = _median_seconds(lambda: fused_moe(problem), args.repeats)
    t_bare = _median_seconds(bare, args.repeats)
    ratio = t_ref / t_bare
    result = dict(tokens=T, hidden=H, intermediate=I, experts=E, top_k=k, reference_s=t_ref, bare_gemms_s=t_bare,
                  ratio=ratio, goal=GOAL, numpy=np.__version__, machine=platform.machine())
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"fused_moe reference  T={T} H={H} I={I} E={E} top-{k}: {t_ref:.3f} s (median of {args.repeats})")
        print(f"bare float64 expert GEMMs ({E} x 2 matmuls):       {t_bare:.3f} s")
        print(f"ratio reference / bare: {ratio:.2f}x (goal <= {GOAL:.0f}x) {'ok' if ratio <= GOAL else 'MISSED'}")
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
