"""The fuzzer: hypothesis explores each selected kernel's case space within ``--budget``; a
failure is saved the moment it is found (``<case>.found.json``), then shrunk to a minimal case,
saved as a replayable case file (replacing the found one) and printed with its one-line replay
command.

Throughput: every drawn case runs with ``--fuzz-siblings`` cases in all: itself and siblings (the
same params and config with other seeds, input regimes and row counts of the same compiled kernel
variants; ordinary cases, each fully checked), so one draw and one kernel compile serve several
cases; while hypothesis shrinks a failure, a candidate runs only as many siblings as the first
failure needed (default 64 on a GPU, 1 under the
CPU interpreter, where the kernel's own time dominates). Under pytest-xdist each kernel is explored
by ``--fuzz-streams`` independent streams (default: one per worker), each with its own seeds and the
whole budget; the terminal summary adds their counts up."""
from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings

from cases.case import REGIMES, CaseError
from cases.ops import op_spec
from cases.plugin import execute, fuzz_siblings, fuzz_streams, record, save_found, selected_adapters
from cases.strategies import from_adapter

BATCH = 20  # examples per hypothesis run; runs repeat with new seeds until the budget is spent
SEED_STRIDE = 100_003


def pytest_generate_tests(metafunc):
    if "fuzz_adapter" in metafunc.fixturenames:
        adapters = selected_adapters(metafunc.config)
        streams = fuzz_streams(metafunc.config)
        params = [pytest.param(a, s, id=a.name if streams == 1 else f"{a.name}-stream{s}")
                  for a in adapters for s in range(streams)]
        metafunc.parametrize("fuzz_adapter,fuzz_stream", params)


def _same_class_rows(rows: int, seed: int) -> int:
    """Another row count that Triton compiles like ``rows``: it specializes integer arguments equal
    to 1 and divisible by 16, so 1 stays 1, multiples of 16 stay multiples of 16, others stay others."""
    if rows == 1:
        return 1
    if rows % 16 == 0:
        return 16 * (1 + seed % max(1, 2 * rows // 16))
    value = 2 + seed % (2 * rows + 7)
    return value + 1 if value % 16 == 0 else value


def siblings(case, count: int):
    """``case`` and ``count - 1`` data siblings: the same params and config, other seeds (derived
    from the case's own, so a replayed example runs the same siblings) and regimes, and every other
    one another row count (M, or T for the MoE) of the same compiled kernel variants."""
    rows_key = op_spec(case.op).shape_keys[0]
    out = [case]
    for i in range(1, count):
        seed = (case.seed * 7919 + i) % (1 << 16)
        regime = REGIMES[(REGIMES.index(case.regime) + i) % len(REGIMES)]
        try:
            member = case.replace(seed=seed, regime=regime)
        except CaseError:  # a regime this case's params do not allow (e.g. exact with top_k = 3)
            member = case.replace(seed=seed)
        if i % 2 == 0:
            shape = {**case.dims, rows_key: _same_class_rows(case.dims[rows_key], seed)}
            try:
                resized = case.replace(shape=shape, seed=seed, regime=regime)
                resized.validate()
                member = resized
            except CaseError:  # a row count the op does not allow here: keep the data sibling
                pass
        out.append(member)
    return list(dict.fromkeys(out))


def _variant(case) -> tuple:
    """What a case's compiled kernel variants depend on, as far as the case says: its params and
    config (siblings share both), and its shape where the config is the kernel's default (chosen
    from the shape)."""
    return case.op, case.params, case.config or case.shape


def test_fuzz(fuzz_adapter, fuzz_stream, device, pytestconfig, request):
    budget = pytestconfig.qkcheck_budget
    streams = fuzz_streams(pytestconfig)
    per_draw = fuzz_siblings(pytestconfig)
    shrink_budget = pytestconfig.qkcheck_shrink_budget
    started = time.monotonic()
    deadline = started + budget
    failing: dict = {}
    checked = {"n": 0, "draws": 0, "repeats": 0, "untried": 0}
    passed: set[str] = set()  # ids of drawn cases whose members all ran and passed
    # seconds the first case of each kernel variant (params and config) took in this process: its
    # compile included, so the most any one took is what a new variant may cost
    first_runs: dict[tuple, float] = {}

    def fail(summary: str):  # one raise site: hypothesis tells failures apart by where they are raised
        raise AssertionError(summary)

    def shrink_spent() -> bool:
        return "found" in failing and bool(shrink_budget) and time.monotonic() >= failing["found"] + shrink_budget

    def unaffordable(case) -> bool:
        """While shrinking under a budget: whether ``case`` is of a kernel variant this process has
        not run, and compiling one (as long as the longest first run so far) would end past the
        budget. Such candidates are not tried, so shrinking ends within its budget."""
        if "found" not in failing or not shrink_budget or _variant(case) in first_runs:
            return False
        return time.monotonic() + max(first_runs.values(), default=0.0) >= failing["found"] + shrink_budget

    @settings(max_examples=BATCH, deadline=None, database=None, derandomize=False,
              phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck))
    @given(case=from_adapter(fuzz_adapter))
    def explore(case):
        if time.monotonic() >= deadline:  # the budget is spent: finish the batch without running
            return
        if shrink_spent():
            # the shrink budget is spent: candidates stop running and the smallest failure so far
            # stands; when hypothesis replays that draw it fails again without running
            if case.id in failing["draws"]:
                fail(failing["draws"][case.id])
            return
        if case.id in passed:
            # hypothesis draws some cases again (each run starts from the simplest case, and its
            # mutations repeat), and a case's siblings derive from it: the same cases, already checked
            checked["repeats"] += 1
            return
        if unaffordable(case):  # not tried: hypothesis takes it as not failing and tries others
            checked["untried"] += 1
            return
        checked["draws"] += 1
        variant = _variant(case)
        members = siblings(case, per_draw)
        if "index" in failing:  # shrinking: a candidate runs as far as the first failure needed
            members = members[:failing["index"] + 1]
        for index, member in enumerate(members):
            if member is not case and (time.monotonic() >= deadline or shrink_spent()):
                return  # budgets are checked between a draw's (or shrink candidate's) members too
            began = time.monotonic()
            result = execute(pytestconfig, member, fuzz_adapter, diagnose_failures=False)
            first_runs.setdefault(variant, time.monotonic() - began)
            checked["n"] += 1
            if checked["n"] == 1:  # start-up (case-runner process, imports, first compile) ends here
                checked["first"] = time.monotonic()
            if result.status == "fail":
                failing["case"] = member
                failing.setdefault("draws", {})[case.id] = result.summary()
                failing.setdefault("index", index)
                if "found" not in failing:
                    failing["found"] = time.monotonic()
                    failing["found_n"] = checked["n"]
                    failing["saved"] = save_found(pytestconfig, member, fuzz_adapter.name, failing["found"] - started)
                fail(result.summary())
        if "index" not in failing:  # every member ran (the deadline returns above) and passed
            passed.add(case.id)

    def stats(outcome: str) -> None:
        now = time.monotonic()
        request.node.user_properties.append(("qkcheck_fuzz", {
            "kernel": fuzz_adapter.name, "stream": fuzz_stream, "cases": checked["n"], "draws": checked["draws"],
            "repeats": checked["repeats"], "untried": checked["untried"],
            "seconds": round(now - started, 3), "outcome": outcome,
            "after_first": round(now - checked.get("first", now), 3)}))

    batch = 0
    first = pytestconfig.getoption("--fuzz-seed") * SEED_STRIDE
    while time.monotonic() < deadline:
        try:
            seed(first + batch * streams + fuzz_stream)(explore)()
        except (AssertionError, ExceptionGroup):  # a group: hypothesis saw the failure more than once
            if "case" not in failing:
                raise
            break
        batch += 1
    if "case" in failing:  # reported outside the except block: no chained hypothesis traceback
        case = failing["case"]  # the failing member of the last failing example: the shrunk one
        shrunk = time.monotonic() - started
        result = execute(pytestconfig, case, fuzz_adapter)  # again, diagnosed
        record(pytestconfig, result)
        if result.status == "fail":  # saved: it replaces the case saved as found
            failing["saved"].unlink(missing_ok=True)
        stats("fail")
        found, now = failing["found"] - started, time.monotonic() - started
        pytest.fail(f"fuzz found a failure after {failing['found_n']} cases, {found:.1f} s into the fuzz "
                    f"(shrunk in {checked['n'] - failing['found_n']} more cases by {shrunk:.1f} s, "
                    f"diagnosed and saved at {now:.1f} s):\n{result.summary()}", pytrace=False)
    stats("pass")
    print(f"fuzz {fuzz_adapter.name}: {checked['n']} cases in {budget:.0f}s budget, no failure")
