"""The deterministic gate grid: ops x schemes x group sizes x BLOCK_K relation x layouts x
dtypes x bias, for every selected kernel — small shapes at tile boundaries (M=1, M not a multiple
of BLOCK_M, N and K tails), all three relations of BLOCK_K to group_size."""
from __future__ import annotations

import itertools

from qkcheck.cases.case import Case


def block_k_for(relation: str, group_size: int, k: int) -> int | None:
    """BLOCK_K smaller than, equal to, or larger than the group (None when impossible)."""
    g = k if group_size == -1 else group_size
    bk = {"lt": g // 2, "eq": g, "gt": g * 2}[relation]
    if bk < 16 or bk > 256 or (relation == "gt" and g >= k):
        return None
    return bk


def relation_of(group_size: int, k: int, block_k: int | None) -> str:
    """'BLOCK_K<G', 'BLOCK_K=G' or 'BLOCK_K>G' (the report's coverage axis)."""
    if block_k is None:
        return "default"
    g = k if group_size == -1 else group_size
    return "BLOCK_K<G" if block_k < g else "BLOCK_K=G" if block_k == g else "BLOCK_K>G"


def _w4a16(adapter) -> list[Case]:
    cases = []
    shapes = [(1, 64, 256), (33, 40, 512)]
    for (m, n, k), g, rel, layout, zp, bias in itertools.product(
        shapes, (32, 64, 128, -1), ("lt", "eq", "gt"), adapter.layouts or ("gptq",), (False, True), (False, True)
    ):
        bk = block_k_for(rel, g, k)
        if bk is None or bk not in adapter.tunables.get("block_k", (bk,)):
            continue
        idx = len(cases)
        act = "bfloat16" if idx % 7 == 3 else "float16"
        out = ("float16", "float32", "bfloat16")[idx % 3] if act == "float16" else "bfloat16"
        cfg = {"block_m": 16, "block_n": 32, "block_k": bk}
        if idx % 5 == 0 and "split_k" in adapter.tunables:
            cfg["split_k"] = 2
        regime = ("exact", "exact", "adversarial", "realistic")[idx % 4]
        cases.append(Case.make(
            "w4a16_gemm", shape={"m": m, "n": n, "k": k},
            params={"group_size": g, "zero_points": zp, "layout": layout, "act_dtype": act, "out_dtype": out, "bias": bias},
            config=cfg, regime=regime, seed=idx,
        ))
    # the kernel's own default tile choice, at decode and prefill sizes
    for m, g in ((1, 32), (16, 32), (64, 64)):
        cases.append(Case.make(
            "w4a16_gemm", shape={"m": m, "n": 64, "k": 512},
            params={"group_size": g, "zero_points": True, "layout": (adapter.layouts or ("gptq",))[0],
                    "act_dtype": "float16", "out_dtype": "float16", "bias": False},
            regime="exact", seed=m,
        ))
    return cases


GRIDS = {"w4a16_gemm": _w4a16}


def _with_families() -> None:
    from qkcheck.cases import families

    GRIDS.update(families.collect("GRIDS"))


_with_families()


def grid(adapter) -> list[Case]:
    make = GRIDS.get(adapter.op)
    return make(adapter) if make else []
