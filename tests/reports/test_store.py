"""The results store: JSON-lines round trip, merging of xdist/shard files, errors that name the line."""
from __future__ import annotations

import json

import pytest

from qkcheck.reports.store import COLUMNS, load_results, write_results
from tests.reports.synth import case_dict, failing_record, record, run_info


def test_round_trip_keeps_every_record_field(tmp_path):
    recs = [record(case_dict(seed=1)), failing_record(case_dict(seed=2)), record(case_dict(seed=3), status="skip")]
    path = tmp_path / "r.jsonl"
    write_results(path, recs, run_info(shard="1/2"))

    frame, infos = load_results([path])

    assert list(frame["case_id"]) == [r["case_id"] for r in recs]
    assert list(frame["status"]) == ["pass", "fail", "skip"]
    assert frame.loc[1, "divergence"] == json.loads(json.dumps(recs[1]["divergence"]))  # tuples -> lists
    assert frame.loc[1, "case"] == recs[1]["case"]
    assert set(frame["source"]) == {str(path)}
    assert set(COLUMNS) <= set(frame.columns)
    assert [i["shard"] for i in infos] == ["1/2"]
    assert "kind" not in frame.columns and "kind" not in infos[0]


def test_file_layout_is_run_line_then_result_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    write_results(path, [record(case_dict(seed=s)) for s in range(3)], run_info())
    kinds = [json.loads(line)["kind"] for line in path.read_text().splitlines()]
    assert kinds == ["run", "result", "result", "result"]


def test_merging_two_shards_adds_counts_and_keeps_both_run_infos(tmp_path):
    a, b = tmp_path / "shard1.jsonl", tmp_path / "shard2.jsonl"
    write_results(a, [record(case_dict(seed=s)) for s in range(5)] + [failing_record(case_dict(seed=5))],
                  run_info(shard="1/2"))
    write_results(b, [record(case_dict(seed=s), status="skip") for s in range(10, 14)], run_info(shard="2/2"))

    frame, infos = load_results([a, b])

    assert len(frame) == 10
    assert frame["status"].value_counts().to_dict() == {"pass": 5, "skip": 4, "fail": 1}
    assert frame.groupby("source").size().to_dict() == {str(a): 6, str(b): 4}
    assert [(i["shard"], i["source"]) for i in infos] == [("1/2", str(a)), ("2/2", str(b))]


def test_non_finite_floats_are_written_as_strict_json(tmp_path):
    rec = failing_record(case_dict())
    rec["divergence"]["max_ratio"] = float("inf")
    rec["divergence"]["max_abs_error"] = float("nan")
    path = tmp_path / "r.jsonl"
    write_results(path, [rec], run_info())

    for line in path.read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    frame, _ = load_results([path])
    assert frame.loc[0, "divergence"]["max_ratio"] == "inf"


def test_empty_run_loads_as_empty_frame_with_columns(tmp_path):
    path = tmp_path / "r.jsonl"
    write_results(path, [], run_info())
    frame, infos = load_results([path])
    assert len(frame) == 0 and set(COLUMNS) <= set(frame.columns) and len(infos) == 1


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param('{"kind": "result", "case_id": ', r"r\.jsonl:3: not valid JSON .*expected one JSON object per line",
                     id="truncated-json"),
        pytest.param('[1, 2]', r"r\.jsonl:3: got a JSON list; expected a JSON object", id="not-an-object"),
        pytest.param('{"kind": "row"}', r"r\.jsonl:3: \"kind\" is 'row'; expected \"run\" or \"result\"",
                     id="unknown-kind"),
        pytest.param('{"kind": "result", "case_id": "x"}', r"r\.jsonl:3: result record lacks case, kernel, op, status",
                     id="missing-fields"),
        pytest.param('{"kind": "result", "case": {}, "case_id": "x", "kernel": "k", "op": "o", "status": "ok"}',
                     r"r\.jsonl:3: status is 'ok'; expected one of pass, fail, skip", id="bad-status"),
    ],
)
def test_malformed_line_names_file_line_and_expectation(tmp_path, line, expected):
    path = tmp_path / "r.jsonl"
    write_results(path, [record(case_dict())], run_info())
    with path.open("a") as f:
        f.write(line + "\n")
    with pytest.raises(ValueError, match=expected):
        load_results([path])


def test_run_line_after_results_is_rejected(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"kind": "result", **record(case_dict())}) + '\n{"kind": "run"}\n')
    with pytest.raises(ValueError, match=r"r\.jsonl:2: run line after result lines; expected the run line first"):
        load_results([path])


def test_second_run_line_is_rejected(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"kind": "run"}\n{"kind": "run"}\n')
    with pytest.raises(ValueError, match=r"r\.jsonl:2: a second run line"):
        load_results([path])


def test_missing_file_is_named(tmp_path):
    good = tmp_path / "good.jsonl"
    write_results(good, [record(case_dict())], run_info())
    with pytest.raises(ValueError, match=r"absent\.jsonl: results file not found"):
        load_results([good, tmp_path / "absent.jsonl"])
