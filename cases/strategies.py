"""Hypothesis strategies that draw valid cases for a kernel adapter, shrinking toward small,
readable cases: shapes at tile boundaries +-1, M=1, M not a multiple of BLOCK_M, square N==K,
BLOCK_K smaller than / equal to / larger than the group, every layout the adapter declares."""
from __future__ import annotations

from hypothesis import strategies as st

from qkcheck.cases.case import REGIMES, Case
from qkcheck.cases.ops import OP_SPECS


def _near(base: int, step: int) -> st.SearchStrategy[int]:
    """Multiples of ``step`` near tile boundaries (16, 32, 64, ...) +- one step; small first."""
    return st.sampled_from(sorted({max(step, b + d) for b in (base, 16, 32, 64, 128) for d in (-step, 0, step)
                                   if (b + d) % step == 0}))


@st.composite
def _w4a16(draw, adapter) -> Case:
    spec = OP_SPECS["w4a16_gemm"]
    tun = {k: tuple(v) for k, v in spec.tunables.items()}
    tun.update({k: tuple(v) for k, v in adapter.tunables.items()})
    layout = draw(st.sampled_from(tuple(adapter.layouts or spec.params["layout"])))
    group_size = draw(st.sampled_from((32, 64, 128, -1)))
    g = 32 if group_size == -1 else group_size
    relation = draw(st.sampled_from(("gt", "eq", "lt")))
    # BLOCK_K larger than the group only means a tile spanning groups when K has two or more
    # (with one group the tile is merely wider than K): "gt" draws at least two
    groups = draw(st.integers(2 if relation == "gt" and group_size != -1 else 1, 4 if g >= 64 else 6))
    k = g * groups
    g_eff = k if group_size == -1 else g
    bk = {"lt": g_eff // 2, "eq": g_eff, "gt": g_eff * 2}[relation]
    bk = min(max(bk, 16), max(tun["block_k"]))
    m = draw(st.one_of(st.just(1), st.integers(1, 40)))
    square = draw(st.booleans())
    n = k if square and k <= 256 else draw(st.sampled_from((16, 24, 32, 40, 64)))
    if layout == "awq" and n % 8:
        n = 8 * max(1, n // 8)
    config = {
        "block_m": draw(st.sampled_from(tuple(b for b in tun["block_m"] if b <= 64))),
        "block_n": draw(st.sampled_from(tuple(b for b in tun["block_n"] if b <= 64))),
        "block_k": bk if bk in tun["block_k"] else min(tun["block_k"]),
    }
    split = draw(st.sampled_from(tun.get("split_k", (1,))))
    if split != 1:
        config["split_k"] = split
    act = draw(st.sampled_from(tuple(spec.params["act_dtype"])))
    params = {
        "group_size": group_size,
        "zero_points": draw(st.booleans()),
        "layout": layout,
        "act_dtype": act,
        "out_dtype": draw(st.sampled_from(tuple(spec.params["out_dtype"]))),
        "bias": draw(st.booleans()),
    }
    regime = draw(st.sampled_from(tuple(REGIMES)))
    seed = draw(st.integers(0, 2**16))
    return Case.make("w4a16_gemm", shape={"m": m, "n": n, "k": k}, params=params, config=config,
                     regime=regime, seed=seed)


STRATEGIES = {"w4a16_gemm": _w4a16}


def _with_families() -> None:
    from qkcheck.cases import families

    STRATEGIES.update(families.collect("STRATEGIES"))


_with_families()


def from_adapter(adapter) -> st.SearchStrategy[Case]:
    """Cases ``adapter`` can run, over its op's whole declared space."""
    try:
        return STRATEGIES[adapter.op](adapter)
    except KeyError:
        raise ValueError(f"no case strategy for op {adapter.op!r} (have: {', '.join(STRATEGIES)})") from None
