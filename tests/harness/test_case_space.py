"""An adapter's declared case space (params, tunables, dims, constraint, supports): the gate grid,
the fuzz strategies and shrinking stay inside it. Each friction point of a narrow foreign kernel
has a test here, through adapter files written only against the public API
(``examples/narrow_w4a16_adapter.py``, ``tests/harness/narrow_kernels.py``), and each check has a
twin that shows it can fail (the old behaviour, or a broken kernel)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qkcheck.cases import registry
from qkcheck.cases.fuzz import fuzz_adapter
from qkcheck.cases.gate import gate_cases
from qkcheck.cases.space import CaseSpace
from qkcheck.kernels.adapters import AdapterError, KernelAdapter, at_least, at_most, between, multiple_of
from qkcheck.kernels.catalog import resolve

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = str(ROOT / "examples" / "narrow_w4a16_adapter.py")
NARROW = str(ROOT / "tests" / "harness" / "narrow_kernels.py")


@pytest.fixture(scope="module")
def narrow():
    import importlib.util

    mods = {}
    for path in (EXAMPLE, NARROW):
        spec = importlib.util.spec_from_file_location(Path(path).stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mods[Path(path).stem] = mod
    return mods


@dataclasses.dataclass
class _Result:  # what fuzz_adapter reads of a runner Result
    status: str
    reason: str = ""

    def summary(self) -> str:
        return f"{self.status}: {self.reason}"


def _outside(case, adapter) -> str | None:
    """The runner's adapter check (cases/runner.py: adapter.outside), without running anything."""
    return adapter.outside(case.p, case.dims, case.cfg)


def _fuzz_counts(adapter, budget=1.0, execute=None):
    seen = []

    def fake(case, a, *, diagnose_failures=True):
        seen.append(case)
        why = _outside(case, a)
        return _Result("skip", why) if why else _Result("pass")

    out = fuzz_adapter(adapter, execute or fake, budget=budget)
    return out, seen


def _draw(strategy, n=300):
    got = []

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def collect(case):
        got.append(case)

    collect()
    return got


# ------------------------------------------------------------------ the declaration itself


def test_dim_rules_combine_and_explain():
    rule = multiple_of(16) & at_least(32) & at_most(256)
    assert rule.reason("k", 48) is None
    assert "multiple of 16" in rule.reason("k", 40)
    assert "at least 32" in rule.reason("k", 16)
    assert "at most 256" in rule.reason("k", 272)
    assert between(1, 8).reason("m", 9) == "m=9 must be at most 8"
    with pytest.raises(AdapterError):
        multiple_of(0)


def test_outside_names_the_declared_field(narrow):
    a = narrow["narrow_w4a16_adapter"].ADAPTERS[0]
    base = {"group_size": 128, "layout": "gptq", "act_dtype": "float16", "out_dtype": "float16",
            "zero_points": False, "bias": False}
    assert a.outside(base, {"m": 1, "n": 64, "k": 256}, {"block_k": 64}) is None
    assert "group_size" in a.outside({**base, "group_size": -1})
    assert "layout" in a.outside({**base, "layout": "awq"})
    assert "multiple of 32" in a.outside(base, {"m": 1, "n": 64, "k": 48}, {})
    assert "block_k" in a.outside(base, {"m": 1, "n": 64, "k": 256}, {"block_k": 16})
    assert "larger than K" in a.outside(base, {"m": 1, "n": 64, "k": 64}, {"block_k": 128})


def test_supports_params_stays_one_predicate_among_the_declared(narrow):
    a = narrow["narrow_w4a16_adapter"].ADAPTERS[0]
    old_style = dataclasses.replace(a, supports=lambda p: "no bias here" if p["bias"] else None)
    space = registry.case_space(old_style)
    assert all(not c.p["bias"] for c in registry.grid(old_style))
    assert all(not c.p["bias"] for c in _draw(registry.from_adapter(old_style), 100))
    assert space.reason(registry.grid(a)[0].replace(params={**registry.grid(a)[0].p, "bias": True})) == "no bias here"


def test_validate_adapter_refuses_what_the_op_does_not_have(narrow):
    a = narrow["narrow_w4a16_adapter"].ADAPTERS[0]
    registry.validate_adapter(a)
    for bad, match in (({"params": {"group_sise": (32,)}}, "group_sise"),
                       ({"params": {"group_size": (48,)}}, "48"),
                       ({"dims": {"q": multiple_of(8)}}, "dims"),
                       ({"tunables": {"block_k": (24,)}}, "24")):
        with pytest.raises(AdapterError, match=match):
            registry.validate_adapter(dataclasses.replace(a, **bad))


# ------------------------------------------------------------------ fuzz draws: runnable share, skips apart


@pytest.mark.parametrize("which", ["w4a16", "group_quant", "scaled_mm", "block_fp8"])
def test_fuzz_draws_are_runnable(narrow, which):
    a = {"w4a16": lambda: narrow["narrow_w4a16_adapter"].ADAPTERS[0],
         "group_quant": narrow["narrow_kernels"].int8_group128,
         "scaled_mm": narrow["narrow_kernels"].int8_scaled_mm_adapter,
         "block_fp8": narrow["narrow_kernels"].block_fp8_128}[which]()
    out, seen = _fuzz_counts(a, budget=1.0)
    share = out.cases / max(1, out.cases + out.skipped)
    assert out.cases >= 15 and share >= 0.9, (out.cases, out.skipped)
    assert all(registry.case_space(a).contains(c) for c in seen)
    # twin: the op's whole space, drawn as before (the family's strategy for an adapter that
    # declares nothing) and checked with the same predicate, is mostly not runnable
    wide = dataclasses.replace(a, params={}, dims={}, layouts=(), constraint=None)
    drawn = _draw(registry._registry().strategies[a.op](wide), 200)
    old_share = sum(_outside(c, a) is None and registry.case_space(a).config_reason(c.cfg) is None
                    for c in drawn) / len(drawn)
    assert old_share < 0.5, old_share


def test_skips_are_counted_apart_not_as_cases(narrow):
    a = narrow["narrow_w4a16_adapter"].ADAPTERS[0]

    def device_skips_fp32_out(case, adapter, *, diagnose_failures=True):
        # an interpreter-style skip the space cannot know of: counted apart
        return _Result("skip", "device") if case.p["out_dtype"] == "float32" else _Result("pass")

    out, _ = _fuzz_counts(a, budget=1.0, execute=device_skips_fp32_out)
    assert out.skipped > 0 and out.cases > 0
    assert out.stats()["skipped"] == out.skipped
    # every run member is either a case or a skip, never both
    ran = []
    out2, _ = _fuzz_counts(a, budget=0.5, execute=lambda c, ad, **k: ran.append(c) or device_skips_fp32_out(c, ad))
    assert out2.cases + out2.skipped == len(ran)
    assert out2.cases == sum(c.p["out_dtype"] != "float32" for c in ran)


def test_undeclared_tunables_are_never_drawn(narrow):
    a = narrow["narrow_w4a16_adapter"].ADAPTERS[0]  # declares block_k only
    keys = {k for c in _draw(registry.from_adapter(a), 300) for k in c.cfg}
    assert keys == {"block_k"}
    moe = resolve("bundled:fused_moe")[0]
    no_fuse = dataclasses.replace(moe, tunables={k: v for k, v in moe.tunables.items() if k != "fuse_activation"})
    assert all("fuse_activation" not in c.cfg for c in _draw(registry.from_adapter(no_fuse), 150))
    # twin: an adapter that declares split_k gets it drawn (the check sees a drawn key)
    with_split = dataclasses.replace(a, tunables={"block_m": (16,), "block_n": (32,), "block_k": (32, 64),
                                                  "split_k": (1, 2)}, constraint=None)
    assert any("split_k" in c.cfg for c in _draw(registry.from_adapter(with_split), 300))


# ------------------------------------------------------------------ grids: inside, non-trivial, tails


def _tails(cases, dim, tile):
    return [c for c in cases if c.cfg.get(tile) and c.dims[dim] > c.cfg[tile] and c.dims[dim] % c.cfg[tile]]


def test_narrow_w4a16_grid_covers_declared_values_and_tails(narrow):
    a = narrow["narrow_w4a16_adapter"].ADAPTERS[0]
    cases = gate_cases(a)
    space = registry.case_space(a)
    assert len(cases) >= 30 and all(space.contains(c) for c in cases)
    assert {c.p["group_size"] for c in cases} == {32, 64, 128}
    assert {c.cfg.get("block_k") for c in cases} >= {32, 64, 128}
    assert {c.p["out_dtype"] for c in cases} == {"float16", "float32"}
    assert _tails(cases, "k", "block_k"), "no K % BLOCK_K != 0 case"
    assert {("block_k_vs_group", r) for r in ("lt", "eq", "gt")} <= set().union(*map(space.features, cases))
    assert any(c.dims["m"] > 1 and c.dims["m"] % 16 for c in cases) and any(c.dims["n"] % 32 for c in cases)


def test_block_scaled_grid_has_block_k_off_the_scale_block(narrow):
    a = narrow["narrow_kernels"].block_fp8_128()
    cases = registry.grid(a)
    rel = {("lt" if c.cfg["block_k"] < 128 else "eq" if c.cfg["block_k"] == 128 else "gt") for c in cases if c.cfg}
    assert rel == {"lt", "eq", "gt"}
    assert _tails(cases, "k", "block_k")
    assert all(c.p["scale_block_k"] == 128 and c.dims["k"] % 64 == 0 for c in cases)


def test_narrow_scaled_mm_grid_is_not_trivial(narrow):
    a = narrow["narrow_kernels"].int8_scaled_mm_adapter()
    cases = gate_cases(a)
    assert len(cases) >= 10
    for dim, tile in (("m", "block_m"), ("n", "block_n"), ("k", "block_k")):
        assert _tails(cases, dim, tile), dim
    assert all(c.p["quant_dtype"] == "int8" and not c.p["azp"] for c in cases)


def test_a_k_tail_bug_is_caught_by_the_grid_and_missed_without_the_cover(narrow, monkeypatch):
    import qkcheck

    mod = narrow["narrow_w4a16_adapter"]
    broken = mod.narrow_adapter("example:narrow_w4a16_k_tail_bug", drop_k_tail=True)
    tails = _tails(gate_cases(broken), "k", "block_k")
    results = qkcheck.run_cases(tails, [broken], device="cpu")
    assert any(r.status == "fail" for r in results)
    # twin: the family grid alone (moved inside the space, no coverage) has no such case, so the bug passes
    monkeypatch.setattr(CaseSpace, "cover", lambda self, cases: [])
    assert not _tails(gate_cases(broken), "k", "block_k")


def test_no_tunable_adapter_keeps_the_config_naming_grid_cases(narrow):
    import qkcheck

    nk = narrow["narrow_kernels"]
    a = nk.int8_group128()
    cases = gate_cases(a)
    assert len(cases) >= 8 and all(not c.cfg for c in cases)
    assert len(set(cases)) == len(cases)
    assert all(c.p["group_size"] == 128 and c.dims["k"] % 128 == 0 for c in cases)
    big = [c for c in cases if c.dims["m"] > 8]
    assert big
    # twin: a kernel wrong only past row 8 fails those cases; the grid cases that named no config
    # (all that an adapter without tunables kept before) have no such row count
    broken = nk.int8_group128("narrow:int8_group128_rows_bug", rows_bug=True)
    results = qkcheck.run_cases(big[:2], [broken], device="cpu")
    assert all(r.status == "fail" for r in results), [r.summary() for r in results]
    raw = registry._registry().grids[a.op](a)
    kept_before = [c for c in raw if not c.cfg and a.outside(c.p, c.dims, c.cfg) is None]
    assert all(c.dims["m"] <= 8 for c in kept_before)
    good = qkcheck.run_cases(cases, [a], device="cpu")
    assert all(r.status == "pass" for r in good), [r.summary() for r in good if r.status != "pass"]


# ------------------------------------------------------------------ shrinking stays inside


def test_shrinking_stays_inside_the_space(narrow):
    from qkcheck.cases.runner import run_case

    mod = narrow["narrow_w4a16_adapter"]
    broken = mod.narrow_adapter("example:narrow_w4a16_k_tail_bug", drop_k_tail=True)
    space = registry.case_space(broken)
    ran = []

    def execute(case, adapter, *, diagnose_failures=True):
        ran.append(case)
        return run_case(case, adapter, "cpu", diagnose_failures=diagnose_failures)

    out = fuzz_adapter(broken, execute, budget=20.0)
    assert out.failure is not None
    assert all(space.contains(c) for c in ran)
    f = out.failure
    assert f.dims["k"] % 32 == 0 and f.cfg.get("block_k", 64) <= f.dims["k"]
    assert f.dims["k"] % f.cfg.get("block_k", 64)  # the shrunk case still has a K tail
    assert out.skipped == 0


# ------------------------------------------------------------------ bundled kernels


def test_bundled_gate_keeps_its_cases_first():
    """The bundled grids are the family grids as before, then the coverage cases (appended)."""
    for a in resolve("bundled"):
        raw = list(dict.fromkeys(registry._registry().grids[a.op](a)))
        assert registry.grid(a)[:len(raw)] == raw, a.name


def test_readme_documents_the_case_space_with_the_worked_example():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Your kernel"):readme.index("## On GPU runners")]
    for text in ("### Its case space", "examples/narrow_w4a16_adapter.py", "multiple_of(32)", "constraint=",
                 "### Conventions", '{"qmax": 224.0}', "::example:narrow_w4a16", "qkcheck replay"):
        assert text in section, text
    adapters = resolve("examples/narrow_w4a16_adapter.py::example:narrow_w4a16")
    assert [a.name for a in adapters] == ["example:narrow_w4a16"]
