"""The W8A8 / FP8 GEMM family in the harness: the bundled adapters pass their gate grid; the
seed-004 loader (zoo:transposed_scales) fails the generic gate — its unconditional
``weight_scale.t()`` turns a [1, N] checkpoint scale into [N, 1], which the FP8 W8A16 kernel
broadcasts along K on a square weight (diagnosed as transposed scales) and rejects on a non-square
one; its contiguity guess also misorients some square weights (diagnosed as a transposed weight).
The fuzzer finds it and shrinks it to a minimal square case that fails for the scale reason, the
replay reproduces it, and the bundled loader passes the same gate shard, fuzz budget and replay."""
from __future__ import annotations

import dataclasses
import json
import shlex
import zlib
from pathlib import Path

import pytest

from qkcheck.cases.case import Case, CaseError
from qkcheck.cases.registry import grid
from qkcheck.cases.runner import FAIL, PASS, SKIP, run_case
from qkcheck.kernels.catalog import resolve
from tests.harness.conftest import qkcheck

ZOO, BUNDLED = "zoo:transposed_scales", "bundled:fp8_w8a16_gemm"
SCALES_SENTENCE = ("the per-channel weight scales were applied along K (rows) instead of N (columns): the scale "
                   "tensor reached the kernel transposed ([{n}, 1] where [1, {n}] was expected)")
WEIGHT_SENTENCE = "is read transposed: a [N, K] layout taken for [K, N]"


def square(case: Case) -> bool:
    return case.dims["n"] == case.dims["k"]


def misoriented(case: Case) -> bool:
    """Where the seed-004 loader decides the weight's orientation wrongly: a square weight whose
    contiguity contradicts the 'checkpoints are contiguous [N, K]' guess."""
    p = case.p
    return square(case) and (p["weight_layout"], p["weight_storage"]) in (("nk", "transposed"), ("kn", "contiguous"))


def scale_transposed(case: Case) -> bool:
    """Where its unconditional weight_scale.t() changes the scale's orientation: a [1, N] arrival
    reaches the kernel as [N, 1] ([N, 1] becomes the right [1, N]; 0-D / 1-D scales stay)."""
    return case.p["scale_shape"] == "[1,N]"


def _runs_here(case: Case) -> bool:
    """Every case runs on the CPU: bf16 is corrected in the interpreter (kernels/interpreter.py)."""
    return True


@pytest.mark.parametrize("name", ["bundled:scaled_mm", "bundled:block_scaled_mm", BUNDLED])
def test_bundled_adapters_pass_a_sample_of_their_grid(name, device):
    adapter = resolve(name)[0]
    cases = grid(adapter)
    sample = cases[::7] + [cases[-1]]  # the last case is the kernel's default tile choice
    statuses = []
    for case in sample:
        res = run_case(case, adapter, device)
        assert res.status in (PASS, SKIP), res.summary()
        statuses.append(res.status)
    assert statuses.count(PASS) >= len(sample) - 1


def test_grid_covers_every_arrival_on_square_and_non_square_weights():
    adapter = resolve(BUNDLED)[0]
    cases = grid(adapter)
    sq = {(c.p["weight_layout"], c.p["weight_storage"], c.p["scale_shape"]) for c in cases if square(c)}
    assert len(sq) == 2 * 2 * 5
    other = {(c.p["weight_layout"], c.p["weight_storage"]) for c in cases if not square(c)}
    assert len(other) == 4
    assert sum(misoriented(c) and _runs_here(c) for c in cases) >= 6
    # the seed's scale mistake alone (weight guessed right), square and not, in the exact regime
    alone = [c for c in cases if scale_transposed(c) and not misoriented(c) and _runs_here(c)]
    assert {(c.p["weight_layout"], square(c)) for c in alone} >= {("kn", True), ("kn", False)}
    assert any(square(c) and c.regime == "exact" for c in alone)


def _results(path: Path) -> list[dict]:
    """The case results of a results file (its run header lines left out)."""
    return [row for row in map(json.loads, path.read_text().splitlines()) if "case_id" in row]


def _shard(cases: list[Case], count: int, i: int) -> list[Case]:
    return [c for c in cases if zlib.crc32(c.id.encode()) % count == i - 1]


def _failing_shard() -> tuple[str, list[Case]]:
    """The smallest shard (over 2..8 shards) of the fp8_w8a16 grid holding a square case the
    seed-004 loader gets wrong for the scale reason alone, a non-square [1, N] case (its loud
    failure), and a case it gets right."""
    from qkcheck.cases.corpus import load_corpus

    cases = [c for c in load_corpus() if c.op == "fp8_w8a16_gemm"] + grid(resolve(BUNDLED)[0])  # as the gate
    best = None
    for count in range(2, 9):
        for i in range(1, count + 1):
            mine = _shard(cases, count, i)
            want = (any(square(c) and scale_transposed(c) and not misoriented(c) and _runs_here(c) for c in mine)
                    and any(not square(c) and scale_transposed(c) and _runs_here(c) for c in mine)
                    and any(not (misoriented(c) or scale_transposed(c)) for c in mine))
            if want and (best is None or len(mine) < len(best[1])):
                best = (f"{i}/{count}", mine)
    assert best is not None, "no shard of the grid holds both kinds of scale failure"
    return best


def test_gate_fails_the_seed_004_loader_for_transposed_scales_and_passes_the_bundled_one(tmp_path):
    shard, cases = _failing_shard()
    results = tmp_path / "r.jsonl"
    r = qkcheck("gate", "--device", "cpu", "--kernels", ZOO, "--kernels", BUNDLED, "--op", "fp8_w8a16_gemm",
                "--shard", shard, "--results", str(results), "--failures-dir", str(tmp_path / "failures"))
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    rows = _results(results)
    by_kernel = {k: {row["case_id"]: row for row in rows if row["kernel"] == k} for k in (ZOO, BUNDLED)}
    assert set(by_kernel[ZOO]) == set(by_kernel[BUNDLED]) == {c.id for c in cases}
    assert all(row["status"] in (PASS, SKIP) for row in by_kernel[BUNDLED].values())
    for case in cases:
        row = by_kernel[ZOO][case.id]
        failed = {c["name"]: c["detail"] for c in row["checks"] if c["outcome"] == FAIL}
        sentences = [d["sentence"] for d in row["diagnosis"]]
        n = case.dims["n"]
        if not _runs_here(case):
            assert row["status"] == SKIP
        elif scale_transposed(case) and not square(case):
            # loud: the kernel rejects the [N, 1] scale it was handed
            assert row["status"] == FAIL and set(failed) == {"raised"}, row
            assert (f"b_scale.shape=[{n}, 1] does not broadcast to the weight's [K, N] = [{case.dims['k']}, {n}]"
                    in failed["raised"]), failed
            assert "prepare_weights converts checkpoint [N, 1] scales" in failed["raised"]
            assert case.id in r.stdout
        elif scale_transposed(case) and not misoriented(case):
            # silent on a square weight: numerics, diagnosed as transposed scales
            assert row["status"] == FAIL and set(failed) == {"numerics"}, row
            assert sentences == [SCALES_SENTENCE.format(n=n)], sentences
            assert SCALES_SENTENCE.format(n=n) in r.stdout and case.id in r.stdout
            assert "replay: qkcheck replay" in r.stdout
        elif misoriented(case):
            assert row["status"] == FAIL and set(failed) == {"numerics"}, row
            assert "Mismatched elements" in failed["numerics"]
            if not scale_transposed(case):
                assert any(WEIGHT_SENTENCE in t for t in sentences), sentences
        else:
            assert row["status"] == PASS, row


def test_fuzz_finds_seed_004_shrinks_it_to_a_minimal_transposed_scale_case_and_replay_reproduces(device, zoo_fuzz,
                                                                                                qkcheck_here):
    # the zoo entry alone, found and shrunk as far as hypothesis goes (the budget bounds the run: the
    # entry is found at its 4th case, and shrinking its draws takes 20-80 s on the CPU, more than
    # a budget shared with the bundled loader should burn; the next test runs the two side by side)
    run = zoo_fuzz("transposed_scales")
    r, fails = run.process, run.failures
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    saved = sorted(fails.glob("*.json"))
    assert len(saved) == 1, [p.name for p in saved]
    case = Case.load(saved[0])
    # shrunk: one row, the smallest square weight, a [1, N] scale the loader transposes to [N, 1],
    # and a weight whose orientation it guesses right: the failure is the scale's alone
    assert case.dims == {"m": 1, "n": 16, "k": 16}
    assert scale_transposed(case) and not misoriented(case), case.p
    rows = _results(run.results)
    assert [row["kernel"] for row in rows if row["status"] == FAIL] == [ZOO]
    assert SCALES_SENTENCE.format(n=16) in r.stdout

    # the printed replay command reproduces it; the bundled loader passes the same case
    command = next(line.split("replay: ", 1)[1] for line in r.stdout.splitlines() if "replay: qkcheck replay" in line)
    argv = shlex.split(command)  # printed shell-quoted, the run's device named
    assert argv[:5] == ["qkcheck", "replay", str(saved[0]), "--kernels", ZOO], argv
    replay = qkcheck_here(*argv[1:], *([] if "--device" in argv else ["--device", "cpu"]))
    assert replay.returncode == 1, replay.stdout + replay.stderr
    assert f"{ZOO} :: {case.id}: FAIL" in replay.stdout
    assert SCALES_SENTENCE.format(n=16) in replay.stdout
    assert run_case(case, resolve(BUNDLED)[0], device).status == PASS


@pytest.mark.slow  # the one-worker seed-004 fuzz above and test_fuzz_siblings' two-worker fuzz cover this in the default tier
def test_fuzz_of_seed_004_and_the_bundled_loader_on_two_workers_fails_only_the_zoo_entry(tmp_path):
    fails = tmp_path / "failures"
    results = tmp_path / "r.jsonl"
    # -n 2 spreads the two kernels over two workers; one fuzz stream each (not one per worker). The
    # budget is for finding the zoo entry (its 4th case, 5-15 s into the fuzz on the CPU) and the
    # bundled loader's fuzz; a spent shrink budget ends the zoo entry's stream once it is found
    # (shrinking: the test above)
    r = qkcheck("fuzz", "--device", "cpu", "--kernels", ZOO, "--kernels", BUNDLED, "--budget", "30s", "-n", "2",
                "--fuzz-streams", "1", "--shrink-budget", "0.001s", "--failures-dir", fails, "--results", results)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    failed = [line for line in r.stdout.splitlines() if line.startswith("FAILED ")]  # pytest's summary lines
    assert any(f"::test_fuzz[{ZOO}]" in line for line in failed), r.stdout[-3000:]
    assert not any(BUNDLED in line for line in failed), failed
    summaries = [line for line in r.stdout.splitlines() if line.startswith("qkcheck fuzz ")]
    assert len(summaries) == 2 and all(", 1 stream(s))" in line for line in summaries), summaries
    saved = sorted(fails.glob("*.json"))
    assert len(saved) == 1, [p.name for p in saved]
    assert Case.load(saved[0]).op == "fp8_w8a16_gemm"
    rows = _results(results)
    assert [row["kernel"] for row in rows if row["status"] == FAIL] == [ZOO]


@pytest.mark.parametrize("layout, storage, scale, hypothesis", [
    ("kn", "transposed", "[1,N]", "scales_transposed"),  # the seed's scale mistake alone
    ("nk", "contiguous", "[1,N]", "scales_transposed"),
    ("kn", "contiguous", "[N,1]", "weight_transposed"),  # the contiguity guess alone
])
def test_each_seed_004_mistake_is_diagnosed_as_itself(layout, storage, scale, hypothesis, device):
    case = Case.make("fp8_w8a16_gemm", shape={"m": 3, "n": 16, "k": 16},
                     params={"quant_dtype": "float8_e4m3fn", "weight_layout": layout, "weight_storage": storage,
                             "scale_shape": scale, "act_dtype": "float16", "bias": False, "out_dtype": "float16"},
                     config={"block_m": 16, "block_n": 16, "block_k": 16}, regime="exact", seed=0)
    res = run_case(case, resolve(ZOO)[0], device)
    assert res.status == FAIL, res.summary()
    assert [d["hypothesis"] for d in res.diagnosis] == [hypothesis], res.summary()
    if hypothesis == "scales_transposed":
        assert res.diagnosis[0]["sentence"] == SCALES_SENTENCE.format(n=16)
    assert run_case(case, resolve(BUNDLED)[0], device).status == PASS


# ------------------------------------------------------------------ the fp8 decode path

FP8 = ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz")
DECODE_ADAPTERS = ["bundled:scaled_mm", "bundled:block_scaled_mm", BUNDLED]


def _default_path(case: Case) -> Case:
    return case.replace(config={k: v for k, v in case.cfg.items() if k != "fp8_path"})


@pytest.mark.parametrize("name", DECODE_ADAPTERS)
def test_grid_takes_every_fp8_format_through_the_decode_path_on_a_few_cases(name):
    """Where the device computes fp8 dots (the CPU interpreter, sm_89+) the default fp8 path is
    native: only a case with config fp8_path="decode" runs the in-kernel decoding (a bug there,
    such as e4m3fn codes decoded with the fnuz exponent bias, is otherwise never run). Each such
    case is the twin of a default-path grid case, the same data; they stay few."""
    adapter = resolve(name)[0]
    cases = grid(adapter)
    decode = [c for c in cases if c.cfg.get("fp8_path") == "decode"]
    assert {c.p["quant_dtype"] for c in decode} == set(FP8), [c.id for c in decode]
    assert len(decode) <= 5
    assert all(_default_path(c) in set(cases) for c in decode)
    # twin: an adapter that does not declare the tunable gets no decode case, and no case more
    bare = dataclasses.replace(adapter, tunables={k: v for k, v in adapter.tunables.items() if k != "fp8_path"})
    assert not any("fp8_path" in c.cfg for c in grid(bare))
    assert len(grid(bare)) == len(cases) - len(decode)


def test_the_decode_path_needs_fp8_codes_and_replays_from_its_file():
    params = {"quant_dtype": "int8", "a_scale_shape": "[M,1]", "b_scale_shape": "[1,N]", "b_storage": "nk",
              "azp": False, "bias": False, "out_dtype": "float16"}
    config = {"block_m": 16, "block_n": 32, "block_k": 32, "fp8_path": "decode"}
    with pytest.raises(CaseError, match=r"fp8_path='decode' names how fp8 operands are read; 'int8' codes"):
        Case.make("scaled_mm", shape={"m": 4, "n": 32, "k": 64}, params=params, config=config)
    case = Case.make("scaled_mm", shape={"m": 4, "n": 32, "k": 64}, params={**params, "quant_dtype": "float8_e4m3fn"},
                     config=config)
    assert Case.from_json(case.to_json()) == case and "fp8decode" in case.id
    with pytest.raises(CaseError, match=r"config\['fp8_path'\]='native' is not allowed \(allowed: decode\)"):
        case.replace(config={**config, "fp8_path": "native"})


@pytest.mark.parametrize("name", DECODE_ADAPTERS)
def test_fuzz_draws_the_decode_path_for_fp8_codes_only(name):
    from hypothesis import HealthCheck, given, settings

    from qkcheck.cases.registry import from_adapter

    drawn = []

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=from_adapter(resolve(name)[0]))
    def collect(case):
        drawn.append(case)

    collect()
    decode = [c for c in drawn if c.cfg.get("fp8_path") == "decode"]
    assert all(c.p["quant_dtype"] in FP8 for c in decode)
    assert len(decode) >= len(drawn) // 10, (len(decode), len(drawn))
    assert any(c.p["quant_dtype"] in FP8 and "fp8_path" not in c.cfg for c in drawn)
