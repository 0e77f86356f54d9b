"""Case: frozen, hashable, stable id, JSON round trip; bad case files get one clear message."""
from __future__ import annotations

import json

import pytest

from qkcheck.cases.case import Case, CaseError

BASE = dict(op="w4a16_gemm", shape={"m": 3, "n": 16, "k": 64},
            params={"group_size": 32, "zero_points": True, "layout": "gptq", "act_dtype": "float16",
                    "out_dtype": "float16", "bias": False},
            config={"block_m": 16, "block_n": 16, "block_k": 64}, regime="exact", seed=5)


def _case(**over):
    d = {**BASE, **over}
    return Case.make(d["op"], shape=d["shape"], params=d["params"], config=d["config"], regime=d["regime"], seed=d["seed"])


def test_json_round_trip_is_exact_and_id_stable(tmp_path):
    c = _case()
    path = c.save(tmp_path / "c.json")
    back = Case.load(path)
    assert back == c and hash(back) == hash(c) and back.id == c.id
    assert c.id.startswith("w4a16_gemm-m3n16k64-") and c.id.endswith(c.digest)


def test_different_seeds_have_different_ids():
    assert _case().id != _case(seed=6).id


def test_why_does_not_change_identity():
    c = _case()
    d = c.to_dict()
    d["why"] = "a sentence"
    assert Case.from_dict(d).id == c.id


@pytest.mark.parametrize(
    "mutate,match",
    [
        pytest.param(lambda d: d.update(op="w5a16"), r"unknown op 'w5a16' \(allowed: [a-z0-9_, ]*w4a16_gemm", id="op"),
        pytest.param(lambda d: d["params"].update(group_size=48), r"params\['group_size'\]=48 is not allowed \(allowed: 32, 64, 128, -1\)", id="group"),
        pytest.param(lambda d: d["shape"].update(k=84), r"K=84 must be a multiple of 8 \(int4 codes are packed", id="k-packs"),
        pytest.param(lambda d: d["params"].pop("bias"), r"params is missing \['bias'\]", id="missing-param"),
        pytest.param(lambda d: d.update(regime="wild"), r"regime='wild' is not an input regime \(allowed: exact, realistic, adversarial\)", id="regime"),
        pytest.param(lambda d: d["config"].update(block_k=48), r"config\['block_k'\]=48 is not allowed", id="tile"),
        pytest.param(lambda d: d.update(colour="red"), r"unknown field\(s\) \['colour'\]", id="extra-field"),
        pytest.param(lambda d: d.update(seed=-1), r"seed=-1 must be a non-negative integer", id="seed"),
        pytest.param(lambda d: d["params"].update(bias="yes"), r"params\['bias'\]='yes' is not allowed", id="bool-type"),
    ],
)
def test_bad_case_files_name_the_field(tmp_path, mutate, match):
    d = json.loads(_case().to_json())
    mutate(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(CaseError, match=match) as info:
        Case.load(path)
    assert str(path) in str(info.value)


def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"op": "w4a16_gemm",\n  "shape": }')
    with pytest.raises(CaseError, match=r"broken.json: not valid JSON \(Expecting value at line 2 column 12\)"):
        Case.load(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CaseError, match=r"cannot read the case file"):
        Case.load(tmp_path / "nope.json")
