"""The report of a real zoo run, as a kernel author opens it: each seed bug's regression case run
against its zoo entry and against the bundled counterpart (the runner, not synthetic records),
rendered, and opened in headless Chromium. Every seed's cause is on the page in words, the
numerics failures carry their heatmap and k-group profile, and the replay commands are there."""
from __future__ import annotations

from pathlib import Path

import pytest

from qkcheck.cases.case import Case
from qkcheck.cases.corpus import CORPUS_DIR
from qkcheck.cases.runner import run_case
from qkcheck.kernels.catalog import available
from qkcheck.reports.html import render_report
from qkcheck.reports.store import write_results
from tests.reports.test_browser import DomFacts, chromium, run_chromium  # noqa: F401 — fixture reused

pytestmark = pytest.mark.browser

# corpus file -> (zoo entry, bundled counterpart, words the page must show for it)
SEEDS = {
    "w4a16-block-k-spans-two-groups.json": ("zoo:scale_group_spanning", "bundled:w4a16_gemm",
                                            "first scale group of each BLOCK_K=64 tile is applied to the whole tile"),
    "fp8-w8a16-square-scale-transposed.json": ("zoo:transposed_scales", "bundled:fp8_w8a16_gemm",
                                               "applied along K (rows) instead of N (columns)"),
    "per-token-quant-int8-output-dtype.json": ("zoo:wrong_output_dtype", "bundled:per_token_quant",
                                               "output dtype float8_e4m3fn, requested int8"),
    "mxfp4-gemm-out-buffer-binding.json": ("zoo:api_misbinding", "bundled:mxfp4_gemm",
                                           "parameter 3 is 'bias' where the adapter binds 'out'"),
    "moe-w4a4-mxfp4-runs-native.json": ("zoo:silent_emulation", "bundled:fused_moe",
                                        "ran on emulation, native expected"),
}


@pytest.fixture(scope="module")
def zoo_report(tmp_path_factory) -> tuple[Path, Path, list]:
    tmp = tmp_path_factory.mktemp("zoo-report")
    kernels = available()
    results = []
    for name, (zoo, fixed, _) in SEEDS.items():
        case = Case.load(CORPUS_DIR / name)
        for kernel in (zoo, fixed):
            r = run_case(case, kernels[kernel], "cpu")
            r.replay = f"qkcheck replay cases/corpus/{name} --kernels {kernel}"
            results.append(r)
    path = tmp / "zoo.jsonl"
    write_results(path, [r.to_dict() for r in results], {"device": "cpu", "platform": "cpu", "kernels": ["zoo", "bundled"]})
    return render_report([path], tmp / "zoo.html", title="qkcheck zoo report"), tmp, results


def test_every_zoo_entry_fails_and_every_bundled_counterpart_passes(zoo_report):
    _, _, results = zoo_report
    status = {r.kernel: r.status for r in results}
    assert {k: v for k, v in status.items() if k.startswith("zoo:")} == {z: "fail" for z, _, _ in SEEDS.values()}
    assert {k: v for k, v in status.items() if k.startswith("bundled:")} == {b: "pass" for _, b, _ in SEEDS.values()}


def test_the_page_names_each_seed_bug_and_draws_the_numerics_failures(chromium, zoo_report):  # noqa: F811
    page, tmp, results = zoo_report
    proc = run_chromium(chromium, tmp, "--dump-dom", page.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = DomFacts(proc.stdout)
    assert {"summary-matrix", "coverage-matrix"} <= dom.ids
    for name, (zoo, _, words) in SEEDS.items():
        assert words in proc.stdout, f"{zoo}: the page does not say {words!r}"
        assert f"qkcheck replay cases/corpus/{name} --kernels {zoo}" in proc.stdout
    numerics = [r for r in results if any(c.name == "numerics" and c.outcome == "fail" for c in r.checks)]
    assert len(numerics) >= 2  # seed 003 and seed 004 diverge in value
    assert "heatmap" in dom.classes
    shot = tmp / "zoo.png"
    proc = run_chromium(chromium, tmp, f"--screenshot={shot}", "--window-size=1400,3000", page.as_uri())
    assert proc.returncode == 0 and shot.stat().st_size > 20_000
