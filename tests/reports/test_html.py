"""The HTML report: what a reader must find on the page, escaping, coverage, skips, size at scale."""
from __future__ import annotations

import re
import time
from html.parser import HTMLParser

import pytest

from qkcheck.reports.html import DETAIL_LIMIT, block_k_relation, render_report, scheme_of
from qkcheck.reports.store import write_results
from tests.reports.synth import (DIAGNOSIS_SENTENCE, SKIP_REASON, case_dict, failing_record, many_records, record,
                                 run_info)

BANDED = {"block_m": 16, "block_n": 32, "block_k": 128}


def render(tmp_path, records, info=None, name="r"):
    results = tmp_path / f"{name}.jsonl"
    write_results(results, records, info or run_info())
    return render_report([results], tmp_path / f"{name}.html").read_text(encoding="utf-8")


class Elements(HTMLParser):
    """Every start tag with its attributes, and the ids on the page."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag

    @property
    def ids(self) -> set[str]:
        return {a["id"] for _, a in self.tags if "id" in a}

    def named(self, tag: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag]


@pytest.fixture
def failure_page(tmp_path):
    records = [record(case_dict(seed=s)) for s in range(3)]
    records.append(failing_record(case_dict(group_size=32, config=BANDED, seed=7)))
    records.append(record(case_dict(act_dtype="bfloat16", seed=9), status="skip"))
    return render(tmp_path, records), records[3]


def test_failure_section_shows_anchor_diagnosis_replay_heatmap_and_coverage(failure_page):
    page, failing = failure_page
    dom = Elements(page)

    assert "failure-0" in dom.ids
    assert DIAGNOSIS_SENTENCE in page
    assert failing["replay"] in page and re.search(r"<pre class=\"replay\"><code>qkcheck replay ", page)
    assert any("heatmap" in a.get("class", "") for a in dom.named("svg"))
    assert {"coverage-matrix", "summary-matrix", "failure-index"} <= dom.ids
    assert failing["divergence"]["pattern"] in page  # "columns with column mod 64 in 32..63"
    assert "column mod 64 in 32..63" in page


def test_failing_summary_cell_links_to_an_anchor_on_the_page(failure_page):
    page, _ = failure_page
    dom = Elements(page)
    links = [a["href"][1:] for a in dom.named("a") if a.get("href", "").startswith("#cell-")]
    assert links and set(links) <= dom.ids


def test_k_profile_groups_are_coloured_by_position_in_the_tile(failure_page):
    page, _ = failure_page
    # group_size 32, BLOCK_K 128: four positions per tile, each named in the legend
    for pos in range(4):
        assert f"position {pos} in tile" in page
    assert "k-group 5 (k 160..191), position 1 in BLOCK_K tile" in page


def test_header_shows_counts_device_probes_and_run_time(failure_page):
    page, _ = failure_page
    assert re.search(r"<b>3</b>passed", page) and re.search(r"<b>1</b>failed", page)
    assert re.search(r"<b>1</b>skipped", page)
    assert "float8_e4m3fn" in page and "bf16_arithmetic" in page and "defective" in page
    assert "12.5 s" in page


def test_a_failure_without_hypothesis_says_so(tmp_path):
    page = render(tmp_path, [failing_record(case_dict(config=BANDED), diagnosed=False)])
    assert "no hypothesis in the catalogue reproduces this output" in page


def test_a_failure_without_divergence_shows_its_checks(tmp_path):
    rec = record(case_dict(), "zoo:raises", status="fail")
    rec["checks"][1] = {"name": "raised", "outcome": "fail", "detail": "RuntimeError: triton compile failed"}
    rec["k_profile"] = {"error": "kernel raised on the first k-group"}
    page = render(tmp_path, [rec])
    assert "RuntimeError: triton compile failed" in page
    assert "No numeric divergence recorded" in page


def test_infinite_ratio_from_nan_positions_renders(tmp_path):
    rec = failing_record(case_dict(config=BANDED))
    rec["divergence"]["max_ratio"] = float("inf")
    rec["divergence"]["nonfinite_mismatches"] = 3
    page = render(tmp_path, [rec])
    assert "NaN/Inf positions differ" in page and "inf" in page


def test_skip_reasons_are_grouped_with_counts_and_examples(tmp_path):
    recs = [record(case_dict(seed=s), status="skip") for s in range(7)]
    other = record(case_dict(seed=99), status="skip")
    other["skip_reason"] = "needs a compiled-Triton device"
    page = render(tmp_path, recs + [other])
    rows = re.findall(r'<tr><td class="num">(\d+)</td><td>([^<]*)</td>', page.split('id="skip-reasons"')[1])
    assert rows == [("7", SKIP_REASON), ("1", "needs a compiled-Triton device")]
    assert recs[0]["case_id"] in page and "&hellip;" in page


@pytest.mark.parametrize(
    ("group_size", "k", "config", "relation"),
    [
        pytest.param(32, 256, {"block_k": 16}, "BLOCK_K<G", id="bk16-g32"),
        pytest.param(32, 256, {"block_k": 32}, "BLOCK_K=G", id="bk32-g32"),
        pytest.param(32, 256, {"block_k": 128}, "BLOCK_K>G", id="bk128-g32-spans-groups"),
        pytest.param(-1, 256, {"block_k": 128}, "BLOCK_K<G", id="per-channel-is-G=K"),
        pytest.param(-1, 128, {"block_k": 128}, "BLOCK_K=G", id="per-channel-bk=K"),
        pytest.param(64, 256, {}, "default", id="kernel-default-config"),
    ],
)
def test_block_k_relation(group_size, k, config, relation):
    case = case_dict(group_size=group_size, k=k, config={"block_m": 16, "block_n": 16, **config} if config else {})
    assert block_k_relation(case) == relation


def test_relation_is_none_for_ops_without_groups():
    assert block_k_relation({"op": "per_token_quant", "params": {"quant_dtype": "int8"}, "config": {}}) is None


@pytest.mark.parametrize(
    ("params", "scheme"),
    [
        pytest.param({"layout": "gptq", "group_size": 32, "zero_points": True}, "gptq g32 asym", id="gptq-g32-asym"),
        pytest.param({"layout": "awq", "group_size": -1, "zero_points": False}, "awq gK sym", id="per-channel"),
        pytest.param({"quant_dtype": "int8"}, "int8", id="other-op"),
    ],
)
def test_scheme_names(params, scheme):
    assert scheme_of(params) == scheme


def test_coverage_matrix_flags_a_relation_never_tried(tmp_path):
    # only BLOCK_K = G and the kernel default: BLOCK_K > G (the scale-group-spanning tile) never ran
    recs = [record(case_dict(group_size=32, config={"block_m": 16, "block_n": 16, "block_k": 32}, seed=1)),
            record(case_dict(group_size=32, seed=2))]
    page = render(tmp_path, recs)
    assert "Never tried: BLOCK_K&lt;G, BLOCK_K&gt;G." in page
    coverage = page.split('id="coverage-matrix"')[1].split("</table>")[0]
    assert re.search(r"BLOCK_K&gt;G</th><td class=\"num empty\">0</td>\s*<td class=\"empty\">—</td>", coverage)
    assert re.search(r"BLOCK_K=G</th><td class=\"num\">1</td>\s*<td class=\"pass\">1 / 0 / 0</td>", coverage)


PAYLOAD_SCRIPT = "<script>alert(1)</script>"
PAYLOAD_ATTR = '"><img src=x onerror=alert(1)>'


def hostile_records() -> list[dict]:
    bad = PAYLOAD_SCRIPT + PAYLOAD_ATTR
    rec = failing_record(case_dict(config=BANDED, why=bad), kernel="zoo:" + bad)
    rec["case"]["params"]["layout"] = bad
    rec["case"]["params"]["act_dtype"] = bad
    rec["case_id"] = "id-" + bad
    rec["checks"][2]["detail"] = bad
    rec["diagnosis"] = [{"hypothesis": bad, "sentence": bad}]
    rec["divergence"]["pattern"] = bad
    rec["replay"] = "qkcheck replay " + bad
    rec["backends"] = [bad]
    skipped = record(case_dict(seed=4), kernel=bad, status="skip")
    skipped["skip_reason"] = bad
    return [rec, skipped, record(case_dict(seed=5), kernel=bad)]


def test_values_from_results_are_escaped(tmp_path):
    bad = PAYLOAD_SCRIPT + PAYLOAD_ATTR
    info = run_info(device=bad, kernels=[bad], probes={bad: {"defective": True, "detail": bad}},
                    versions={"torch": bad})
    page = render(tmp_path, hostile_records(), info)
    dom = Elements(page)

    assert dom.named("script") == [] and dom.named("img") == []
    assert [(t, k) for t, a in dom.tags for k in a if k.lower().startswith("on")] == []
    assert "<script" not in page.lower() and "<img" not in page.lower()  # the payloads survive only as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_cap_keeps_full_detail_for_the_first_failures_only(tmp_path):
    recs = [failing_record(case_dict(config=BANDED, seed=s, m=8, n=64)) for s in range(DETAIL_LIMIT + 10)]
    page = render(tmp_path, recs)
    dom = Elements(page)
    sections = [a for a in dom.named("section") if a.get("class") == "failure"]
    assert len(sections) == DETAIL_LIMIT
    index = page.split('id="failure-index"')[1].split("</table>")[0]
    assert index.count("qkcheck replay") == DETAIL_LIMIT + 10
    assert f"The first {DETAIL_LIMIT} failures are shown in full" in page


def test_merged_shards_render_as_one_report(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_results(a, [record(case_dict(seed=s)) for s in range(4)], run_info(shard="1/2"))
    write_results(b, [failing_record(case_dict(config=BANDED, seed=9))], run_info(shard="2/2"))
    page = render_report([a, b], tmp_path / "r.html").read_text()
    assert re.search(r"<b>5</b>results", page) and "2 merged runs" in page


def test_an_empty_run_renders(tmp_path):
    page = render(tmp_path, [])
    assert "No results." in page and "No failures." in page


def test_thousand_results_stay_small(tmp_path):
    recs = many_records(1000, failures=60, skips=100)
    results = tmp_path / "r.jsonl"
    write_results(results, recs, run_info())
    t0 = time.perf_counter()
    out = render_report([results], tmp_path / "r.html")
    elapsed = time.perf_counter() - t0
    size = out.stat().st_size
    print(f"1,000 results (60 failures): rendered in {elapsed:.2f} s, {size / 1e6:.2f} MB")
    assert size <= 20e6
