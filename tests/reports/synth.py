"""Result records for report tests, built the way the runner builds them.

Failing records carry a genuine ``Divergence`` from ``oracle.compare.compare`` (never a
hand-written dict): the actual output has an error band on the columns ``n mod 64 >= 32``.
"""
from __future__ import annotations

import time

import numpy as np

from qkcheck.oracle.compare import compare

CHECKS = ("signature", "contract", "numerics", "inputs_unchanged", "determinism", "fake_vs_real", "backend")
DIAGNOSIS_SENTENCE = ("the first scale group of each BLOCK_K=128 tile is applied to the whole tile "
                      "(group_size=32): k-rows past the first group of every tile use the wrong scale")
SKIP_REASON = ("Triton interpreter: bf16 arithmetic is wrong (probe bf16_arithmetic); "
               "bf16 compute cases run only compiled")


def case_dict(*, m=32, n=256, k=256, group_size=32, layout="gptq", zero_points=False, act_dtype="float16",
              config=None, seed=0, why="") -> dict:
    d = {"schema": 1, "op": "w4a16_gemm", "shape": {"k": k, "m": m, "n": n},
         "params": {"act_dtype": act_dtype, "bias": False, "group_size": group_size, "layout": layout,
                    "out_dtype": "float16", "zero_points": zero_points},
         "config": dict(config or {}), "regime": "exact", "seed": seed}
    if why:
        d["why"] = why
    return d


def case_id(case: dict, kernel: str) -> str:
    p, s, c = case["params"], case["shape"], case["config"]
    cfg = "".join(f"{k[6:] if k.startswith('block_') else k}{v}" for k, v in sorted(c.items())) or "default"
    return (f"{case['op']}-k{s['k']}m{s['m']}n{s['n']}-g{p['group_size']}-{p['layout']}-{p['act_dtype']}"
            f"-{'asym' if p['zero_points'] else 'sym'}-{cfg}-s{case['seed']}")


def record(case: dict, kernel: str = "bundled:w4a16_gemm", status: str = "pass") -> dict:
    return {"case": case, "case_id": case_id(case, kernel), "kernel": kernel, "op": case["op"],
            "status": status, "device": "cpu",
            "checks": [{"name": c, "outcome": "skip" if status == "skip" else "pass", "detail": ""} for c in CHECKS],
            "backends": ["native"], "divergence": None, "diagnosis": [], "k_profile": None,
            "skip_reason": SKIP_REASON if status == "skip" else None,
            "timings": {"materialize": 0.01, "oracle": 0.002, "pack": 0.01, "kernel": 0.5, "checks": 0.005,
                        "total": 0.53}, "replay": ""}


def banded_divergence(m: int = 32, n: int = 256, seed: int = 0) -> dict:
    """A real Divergence: error of 4..40 output ULPs on columns n mod 64 >= 32, exact regime."""
    rng = np.random.default_rng(seed)
    expected = rng.integers(-64, 64, size=(m, n)).astype(np.float64)
    actual = expected.copy()
    band = (np.arange(n) % 64) >= 32
    actual[:, band] += rng.integers(4, 40, size=(m, int(band.sum())))
    div = compare(actual, expected, 0.0, unit=1.0)
    assert div is not None
    return div.to_dict()


def failing_record(case: dict, kernel: str = "zoo:scale_group_spanning", *, diagnosed: bool = True) -> dict:
    rec = record(case, kernel, "fail")
    div = banded_divergence(case["shape"]["m"], case["shape"]["n"], case["seed"])
    rec["divergence"] = div
    for c in rec["checks"]:
        if c["name"] == "numerics":
            c["outcome"], c["detail"] = "fail", f"Mismatched elements: {div['count']} / {div['total']}"
    rec["diagnosis"] = [{"hypothesis": "first_group_scale_per_tile", "sentence": DIAGNOSIS_SENTENCE}] if diagnosed else []
    g, k = case["params"]["group_size"], case["shape"]["k"]
    bk = case["config"].get("block_k", 128)
    groups = k // g
    rec["k_profile"] = {"group_size": g, "groups": groups, "block_k": bk,
                        "max_ratio": [0.0 if (i * g) % bk == 0 else 8.0 + i for i in range(groups)]}
    rec["replay"] = f"qkcheck replay out/failures/{rec['case_id']}.json --kernels {kernel}"
    return rec


def run_info(**extra) -> dict:
    now = time.time()
    info = {"device": "cpu", "platform": "cpu", "native_fp8": "float8_e4m3fn", "started": now - 12.5,
            "finished": now, "kernels": ["bundled", "zoo:scale_group_spanning"], "shard": None,
            "versions": {"torch": "2.x", "triton": "3.x"},
            "probes": {"bf16_arithmetic": {"defective": True, "detail": "1.5 * 2.0 + 1.5 in bf16: expected 4.5, got 1.5"},
                       "fp8_conversion": {"defective": False, "detail": ""}}}
    info.update(extra)
    return info


def many_records(total: int, *, failures: int, skips: int) -> list[dict]:
    """``total`` records over a grid of schemes and tile configs; the first ``failures`` fail."""
    records = []
    groups, layouts, acts = (32, 64, 128, -1), ("gptq", "awq", "nibble"), ("float16", "bfloat16")
    configs = ({}, {"block_m": 16, "block_n": 32, "block_k": 32}, {"block_m": 16, "block_n": 32, "block_k": 64},
               {"block_m": 32, "block_n": 64, "block_k": 128})
    for i in range(total):
        case = case_dict(group_size=groups[i % 4], layout=layouts[(i // 4) % 3], act_dtype=acts[(i // 12) % 2],
                         zero_points=bool((i // 24) % 2), config=configs[(i // 48) % 4], seed=i)
        if i < failures:
            records.append(failing_record(case))
        elif i < failures + skips:
            records.append(record(case, status="skip"))
        else:
            records.append(record(case))
    return records
