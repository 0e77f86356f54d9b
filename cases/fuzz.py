"""The fuzz engine: hypothesis explores one kernel adapter's case space within a time budget; a
failure is reported the moment it is found, then shrunk to a minimal failing case.

Policy, in one place (the pytest suite ``cases/suites/test_fuzz.py`` and the scripting API
``qkcheck.fuzz`` are thin over :func:`fuzz_adapter`):

- **Siblings.** Every drawn case runs with ``siblings - 1`` data siblings (the same params and
  config with other seeds, input regimes and row counts of the same compiled kernel variants;
  ordinary cases, each fully checked), so one draw and one compile serve several cases. While a
  failure is being shrunk, a candidate runs only as many siblings as the first failure needed.
- **Budgets.** ``budget`` bounds the whole fuzz (checked between a draw's members too);
  ``shrink_budget`` (None: none) bounds shrinking after the first failure: once spent, candidates
  stop running and the smallest failure so far stands. While shrinking under a budget, a candidate
  of a kernel variant not yet run, whose compile would end past the budget (estimated as the
  longest first run of a variant so far), is left untried.
- **Skips.** Draws come from the adapter's case space (``cases.space``), so a case the kernel
  cannot take is the exception (an interpreter defect, a predicate the space could not steer
  clear of): it is counted apart (``skipped``), never as a case run.
- **Repeats.** A draw already checked in this stream is not run again (hypothesis redraws the
  simplest case at the start of each run, and its mutations repeat).
- **Streams.** Hypothesis runs ``BATCH`` examples at a time with seed
  ``first_seed * SEED_STRIDE + batch * streams + stream``, so streams never share seeds and a run
  is reproducible per seed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from qkcheck.cases.case import REGIMES, Case, CaseError

BATCH = 20  # examples per hypothesis run; runs repeat with new seeds until the budget is spent
SEED_STRIDE = 100_003


def _same_class_rows(rows: int, seed: int) -> int:
    """Another row count that Triton compiles like ``rows``: it specializes integer arguments equal
    to 1 and divisible by 16, so 1 stays 1, multiples of 16 stay multiples of 16, others stay others."""
    if rows == 1:
        return 1
    if rows % 16 == 0:
        return 16 * (1 + seed % max(1, 2 * rows // 16))
    value = 2 + seed % (2 * rows + 7)
    return value + 1 if value % 16 == 0 else value


def siblings(case: Case, count: int) -> list[Case]:
    """``case`` and ``count - 1`` data siblings: the same params and config, other seeds (derived
    from the case's own, so a replayed example runs the same siblings) and regimes, and every other
    one another row count (M, or T for the MoE) of the same compiled kernel variants."""
    from qkcheck.cases.registry import op_spec

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


def variant_of(case: Case) -> tuple:
    """What a case's compiled kernel variants depend on, as far as the case says: its params and
    config (siblings share both), and its shape where the config is the kernel's default (chosen
    from the shape)."""
    return case.op, case.params, case.config or case.shape


@dataclass
class FuzzOutcome:
    """What one fuzz stream did. ``failure``: the last (smallest) failing case, or None."""

    kernel: str
    stream: int
    cases: int = 0            # cases run (every sibling counts; skipped ones do not)
    draws: int = 0            # drawn cases that ran
    skipped: int = 0          # cases skipped (the kernel or this device cannot take them), counted apart
    repeats: int = 0          # drawn cases skipped as already checked
    untried: int = 0          # shrink candidates left untried (their compile would pass the shrink budget)
    seconds: float = 0.0
    after_first: float = 0.0  # seconds after the first case ended (start-up left out)
    failure: Case | None = None
    failure_summary: str = ""
    found_after_cases: int = 0
    found_at: float = 0.0     # seconds into the fuzz when the first failure was found

    @property
    def outcome(self) -> str:
        return "fail" if self.failure is not None else "pass"

    def stats(self) -> dict:
        """The counts the terminal summary adds up across streams."""
        return {"kernel": self.kernel, "stream": self.stream, "cases": self.cases, "draws": self.draws,
                "skipped": self.skipped, "repeats": self.repeats, "untried": self.untried, "seconds": round(self.seconds, 3),
                "outcome": self.outcome, "after_first": round(self.after_first, 3)}


@dataclass
class _State:
    """A stream's mutable state while it runs."""

    deadline: float
    shrink_budget: float | None
    found: float | None = None            # monotonic time of the first failure
    first_index: int | None = None        # the first failure's member index within its draw
    failing_draws: dict[str, str] = field(default_factory=dict)  # draw id -> failure summary
    passed: set[str] = field(default_factory=set)  # ids of draws whose members all ran and passed
    first_runs: dict[tuple, float] = field(default_factory=dict)  # variant -> seconds of its first case
    first_case_end: float | None = None

    def shrink_spent(self, now: float) -> bool:
        return self.found is not None and bool(self.shrink_budget) and now >= self.found + self.shrink_budget

    def unaffordable(self, case: Case, now: float) -> bool:
        """While shrinking under a budget: ``case`` is of a kernel variant not run yet, and
        compiling one (as long as the longest first run so far) would end past the budget."""
        if self.found is None or not self.shrink_budget or variant_of(case) in self.first_runs:
            return False
        return now + max(self.first_runs.values(), default=0.0) >= self.found + self.shrink_budget


class _Failure(AssertionError):
    """Raised inside the hypothesis test, by :func:`_fail` only."""


def _fail(summary: str):
    """The one raise site: hypothesis tells failures apart by where they are raised, and one
    failure must stay one while it is shrunk."""
    raise _Failure(summary)


def fuzz_adapter(adapter, execute: Callable, *, budget: float, stream: int = 0, streams: int = 1,
                 siblings_per_draw: int = 1, shrink_budget: float | None = None, first_seed: int = 0,
                 on_found: Callable[[Case, float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> FuzzOutcome:
    """Fuzz ``adapter`` for ``budget`` seconds. ``execute(case, adapter, diagnose_failures=...)``
    runs one case and returns a Result (in process or isolated: the caller's choice). ``on_found``
    is called with the first failing case and the seconds into the fuzz, before shrinking (so a
    run killed while shrinking still leaves it). Returns the stream's outcome; a failure's case is
    the smallest one hypothesis shrank to within the budgets."""
    from hypothesis import HealthCheck, Phase, given, seed, settings

    from qkcheck.cases.registry import case_space, from_adapter

    space = case_space(adapter)
    started = clock()
    state = _State(deadline=started + budget, shrink_budget=shrink_budget)
    out = FuzzOutcome(kernel=adapter.name, stream=stream)

    @settings(max_examples=BATCH, deadline=None, database=None, derandomize=False,
              phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck))
    @given(case=from_adapter(adapter))
    def explore(case):
        now = clock()
        if now >= state.deadline:  # the budget is spent: finish the batch without running
            return
        if state.shrink_spent(now):
            # candidates stop running and the smallest failure so far stands; when hypothesis
            # replays that draw it fails again without running
            if case.id in state.failing_draws:
                _fail(state.failing_draws[case.id])
            return
        if case.id in state.passed:
            out.repeats += 1
            return
        if state.unaffordable(case, now):  # not tried: hypothesis takes it as not failing
            out.untried += 1
            return
        variant = variant_of(case)
        ran = 0
        # siblings stay inside the adapter's case space too (a row count its dims rule refuses is left out)
        members = [m for m in siblings(case, siblings_per_draw) if m is case or space.contains(m)]
        if state.first_index is not None:  # shrinking: a candidate runs as far as the first failure needed
            members = members[:state.first_index + 1]
        for index, member in enumerate(members):
            if member is not case and (clock() >= state.deadline or state.shrink_spent(clock())):
                return
            began = clock()
            result = execute(member, adapter, diagnose_failures=False)
            if result.status == "skip":  # counted apart, never as a case
                out.skipped += 1
                continue
            if not ran:
                out.draws += 1
            ran += 1
            state.first_runs.setdefault(variant, clock() - began)
            out.cases += 1
            if state.first_case_end is None:  # start-up (child process, imports, first compile) ends here
                state.first_case_end = clock()
            if result.status in ("fail", "error"):  # error: the adapter or harness raised, never a pass
                out.failure, out.failure_summary = member, result.summary()
                state.failing_draws[case.id] = result.summary()
                if state.first_index is None:
                    state.first_index = index
                if state.found is None:
                    state.found = clock()
                    out.found_after_cases, out.found_at = out.cases, state.found - started
                    if on_found is not None:
                        on_found(member, out.found_at)
                _fail(result.summary())
        if state.first_index is None:  # every member ran and passed, before any failure: not run again
            state.passed.add(case.id)

    batch = 0
    while clock() < state.deadline:
        try:
            seed(first_seed * SEED_STRIDE + batch * streams + stream)(explore)()
        except (AssertionError, ExceptionGroup):  # a group: hypothesis saw the failure more than once
            if out.failure is None:
                raise
            break
        batch += 1
    now = clock()
    out.seconds = now - started
    out.after_first = now - (state.first_case_end or now)
    return out
