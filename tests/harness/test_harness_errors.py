"""Nothing lost, nothing silently passed: whatever an adapter does (raise in pack, return something
that is not tensors, exit), the case ends as exactly one recorded result that is not a pass; an
interrupted run still writes its results, marked interrupted; a run's results file holds only
that run's results."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qkcheck.cases.case import Case
from qkcheck.cases.cli import main
from qkcheck.cases.runner import run_case

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "torch_w4a16_adapter.py"
CASE = Case.make("w4a16_gemm", shape={"m": 3, "n": 16, "k": 64},
                 params={"group_size": 32, "zero_points": True, "layout": "gptq", "act_dtype": "float16",
                         "out_dtype": "float16", "bias": True},
                 regime="exact", seed=11)

# (name, what the adapter's pack/call does instead, the stage the error is charged to, status)
MISBEHAVIOURS = [
    ("pack-raises", "pack", "raise ValueError('bad pack')", "pack", "error"),
    ("call-returns-none", "call", "return None", "outputs", "error"),
    ("call-returns-int", "call", "return 3", "outputs", "error"),
    ("call-returns-ndarray", "call", "return np.zeros((3, 16), np.float16)", "outputs", "error"),
    ("call-returns-empty-tuple", "call", "return ()", "outputs", "error"),
    ("call-exits", "call", "sys.exit(0)", "kernel", "fail"),
    ("pack-exits", "pack", "sys.exit(0)", "pack", "error"),
]


def _example_adapter():
    import importlib.util

    spec = importlib.util.spec_from_file_location("qkcheck_test_example_adapter", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ADAPTERS[0]


def _misbehaving(where: str, body: str):
    import dataclasses

    scope = {"np": np, "sys": sys}
    exec(f"def bad(*args, **kwargs):\n    {body}\n", scope)  # noqa: S102 — a test's own one-liner
    return dataclasses.replace(_example_adapter(), **{where: scope["bad"]})


@pytest.mark.parametrize("name,where,body,stage,status", MISBEHAVIOURS, ids=[m[0] for m in MISBEHAVIOURS])
def test_a_misbehaving_adapter_is_recorded_never_passed(name, where, body, stage, status):
    r = run_case(CASE, _misbehaving(where, body), "cpu")
    assert r.status == status, r.summary()
    if status == "error":
        assert r.error["stage"] == stage and r.checks[-1].name == "harness", r.to_dict()
        assert r.error["exception"] and "raised" in r.checks[-1].detail
    else:
        assert any(c.name == "raised" and "SystemExit" in c.detail for c in r.failed_checks), r.summary()


def test_the_correct_example_passes():
    """The misbehaviours above are caught by the harness, not by a broken example."""
    assert run_case(CASE, _example_adapter(), "cpu").status == "pass"


BROKEN_FILE = '''
import dataclasses, importlib.util
spec = importlib.util.spec_from_file_location("ex", {example!r})
ex = importlib.util.module_from_spec(spec); spec.loader.exec_module(ex)

def call(t, params, config):
    if params["bias"]:
        return None          # not tensors: an error, never a pass
    return ex.call(t, params, config)

ADAPTERS = [dataclasses.replace(ex.ADAPTERS[0], name="test:none_with_bias", call=call)]
'''


def test_errors_reach_the_results_file_report_and_failures_dir(tmp_path, capsys):
    adapters = tmp_path / "broken.py"
    adapters.write_text(BROKEN_FILE.format(example=str(EXAMPLE)))
    results, report, failures = tmp_path / "r.jsonl", tmp_path / "r.html", tmp_path / "failures"
    code = main(["gate", "--device", "cpu", "--kernels", str(adapters), "--results", str(results),
                 "--failures-dir", str(failures), "--", "-k", "m1n or m16n", "-p", "no:randomly"])
    assert code == 1
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    run, recs = lines[0], lines[1:]
    statuses = [r["status"] for r in recs]
    with_bias = [r for r in recs if r["case"]["params"]["bias"]]
    assert with_bias and all(r["status"] == "error" and r["error"]["stage"] == "outputs" for r in with_bias)
    assert statuses.count("error") == len(with_bias) and "fail" not in statuses
    assert {r["run_id"] for r in recs} == {run["run_id"]}
    assert len(list(failures.glob("*.json"))) == len(with_bias)
    assert main(["report", str(results), "-o", str(report)]) == 1
    page = report.read_text()
    assert f"<b>{len(with_bias)}</b>errors" in page


SLOW_FILE = '''
import dataclasses, importlib.util, time
spec = importlib.util.spec_from_file_location("ex", {example!r})
ex = importlib.util.module_from_spec(spec); spec.loader.exec_module(ex)

def call(t, params, config):
    time.sleep(0.4)
    return ex.call(t, params, config)

ADAPTERS = [dataclasses.replace(ex.ADAPTERS[0], name="test:slow", call=call)]
'''


def _slow_gate(tmp_path, workers) -> tuple[subprocess.Popen, Path]:
    """A gate run over SLOW_FILE's adapter (88 cases, 0.4 s each) started in a new process: the
    process (output merged into stdout) and its results file."""
    adapters = tmp_path / "slow.py"
    adapters.write_text(SLOW_FILE.format(example=str(EXAMPLE)))
    results = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "qkcheck.cases.cli", "gate", "--device", "cpu", "--kernels", str(adapters),
           "--results", str(results), *(["-n", workers] if workers else [])]
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), results


@pytest.mark.parametrize("workers", [None, "2"], ids=["one-process", "xdist-2"])
def test_sigterm_writes_the_results_so_far_marked_interrupted(tmp_path, workers):
    proc, results = _slow_gate(tmp_path, workers)
    seen = ""
    while seen.split("nodes...")[-1].count(".") < 4:  # pytest's progress (-q): a few of the 88 cases passed
        char = proc.stdout.read(1)
        assert char, f"the run ended before it could be interrupted: {seen[-2000:]}"
        seen += char
    assert proc.poll() is None, "the run ended before it could be interrupted: slow the adapter down"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out[-2000:]
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert lines[0].get("interrupted") is True, (f"exit {proc.returncode}, {len(lines) - 1} results, run line "
                                                 f"{lines[0]}; output tail: {out[-1500:]}")
    assert 0 < len(lines) - 1 < 88, len(lines)
    assert not list(tmp_path.glob("r.jsonl.*")), "no part files left behind"


@pytest.mark.parametrize("workers,delay", [(None, 0.3), ("2", 0.3), pytest.param("2", 1.0, marks=pytest.mark.slow)],
                         ids=["one-process-0.3s", "xdist-2-0.3s", "xdist-2-1.0s"])  # a third moment: the slow tier
def test_sigterm_while_the_run_starts_still_ends_as_an_interrupted_run(tmp_path, workers, delay):
    """A signal while Python imports, pytest configures or xdist brings up its workers: the run
    stops at collection, writes its (empty) results file marked interrupted, exits 2, and prints
    no traceback (raised there at once, the interrupt could land in a frame pytest cannot format,
    or before the point from which pytest writes the results)."""
    proc, results = _slow_gate(tmp_path, workers)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in out, f"exit {proc.returncode}: {out[-2000:]}"
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert lines[0].get("interrupted") is True and len(lines) - 1 < 88, lines[0]


def test_a_later_run_never_takes_in_an_earlier_runs_results(tmp_path):
    results = tmp_path / "r.jsonl"
    # a leftover from an older version's interrupted run: never merged
    (tmp_path / "r.jsonl.gw0.part").write_text(json.dumps({"case_id": "x", "status": "pass"}) + "\n")
    args = ["gate", "--device", "cpu", "--kernels", str(EXAMPLE), "--results", str(results), "--", "-k", "m1n"]
    assert main(args) == 0
    first = [json.loads(x) for x in results.read_text().splitlines()]
    assert main(args) == 0
    second = [json.loads(x) for x in results.read_text().splitlines()]
    assert len(first) == len(second) and first[0]["run_id"] != second[0]["run_id"]
    assert {r["run_id"] for r in second[1:]} == {second[0]["run_id"]} and "x" not in {r["case_id"] for r in second[1:]}


@pytest.mark.parametrize("args,message", [
    (["gate", "-n", "-1"], "-n '-1': expected a number of workers >= 1 or auto"),
    (["gate", "--results", "{tmp}"], "is a directory; expected a file path"),
    (["gate", "--results", "{tmp}/x.jsonl", "--report", "{tmp}/x.jsonl"], "the report would overwrite the results"),
    (["gate", "--results", "/proc/qkcheck/r.jsonl"], "--results: cannot write under /proc/qkcheck"),
    (["gate", "--failures-dir", "{tmp}/file"], "--failures-dir {tmp}/file is a file"),
    (["list", "--device", "nonsense"], "device='nonsense' is not a device qkcheck knows"),
    (["report", "{tmp}/r.jsonl", "{tmp}/r.jsonl", "-o", "{tmp}/r.html"], "is given twice"),
    (["report", "{tmp}/r.jsonl", "-o", "{tmp}/r.jsonl"], "is one of the results files"),
    (["replay", "{tmp}/case.json", "--case-timeout", "soon"], "--case-timeout 'soon' is not a duration"),
], ids=["workers", "results-dir", "report-is-results", "unwritable", "failures-file", "device", "report-twice",
        "report-over-results", "replay-timeout"])
def test_usage_errors_are_one_line_and_exit_2(args, message, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    (tmp_path / "r.jsonl").write_text(json.dumps({"kind": "run"}) + "\n")
    CASE.save(tmp_path / "case.json")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if argv[0] == "replay":
        argv += ["--device", "cpu", "--kernels", str(EXAMPLE)]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert message.replace("{tmp}", str(tmp_path)) in err and err.startswith("qkcheck: error: ")


CRASH_FILE = '''
import ctypes, dataclasses, importlib.util, os, signal
spec = importlib.util.spec_from_file_location("ex", {example!r})
ex = importlib.util.module_from_spec(spec); spec.loader.exec_module(ex)
CRASHES = (lambda: ctypes.string_at(0), lambda: os._exit(3), os.abort)  # segfault, exit, abort

def call(t, params, config):
    if params["bias"]:
        CRASHES[int(t["x"].shape[0] + t["qweight"].shape[1] + int(params["group_size"])) % 3]()
    elif {kill_worker!r}:  # the run has xdist workers (this runs in one's case runner): SIGKILL that
        try:                # worker, once in the run (the first case to get here)
            os.close(os.open({killed!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            os.kill(os.getppid(), signal.SIGKILL)
        except FileExistsError:
            pass
    return ex.call(t, params, config)

ADAPTERS = [dataclasses.replace(ex.ADAPTERS[0], name="test:crash", call=call)]
'''


# the default tier runs the xdist variant (every crash kind through the same isolated case runner, and a
# worker SIGKILLed as well); the one-process run of the same crashes is in the slow tier
@pytest.mark.parametrize("workers", [pytest.param(None, marks=pytest.mark.slow), "2"], ids=["one-process", "xdist-2"])
def test_a_crashing_foreign_kernel_costs_its_cases_never_the_run(tmp_path, workers):
    """Isolation is on by default for a user's file on the CPU: each crash (segfault, os._exit,
    abort) fails its case, the other cases run and pass, every case is in the results file, exit 1.
    Under -n 2 one xdist worker is also SIGKILLed mid-run (its case runner kills it): the run does
    not hang, the case that worker was running is recorded as crashed, the worker's other cases
    run on its replacement."""
    adapters = tmp_path / "crash.py"
    killed = tmp_path / "worker-killed"
    adapters.write_text(CRASH_FILE.format(example=str(EXAMPLE), killed=str(killed), kill_worker=bool(workers)))
    results = tmp_path / "r.jsonl"
    r = subprocess.run([sys.executable, "-m", "qkcheck.cases.cli", "gate", "--device", "cpu", "--kernels",
                        str(adapters), "--results", str(results), *(["-n", workers] if workers else []),
                        "--shard", "1/8"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    recs = [json.loads(x) for x in results.read_text().splitlines()][1:]
    crashed = [x for x in recs if x["case"]["params"]["bias"]]
    assert crashed and len(crashed) < len(recs) == 10, [x["case_id"] for x in recs]
    assert all(x["status"] == "fail" and any(c["name"] == "crashed" for c in x["checks"]) for x in crashed)
    others = [x for x in recs if not x["case"]["params"]["bias"]]
    lost = [x for x in others if x["status"] != "pass"]
    if workers:
        assert killed.exists() and len(lost) == 1, [(x["case_id"], x["status"]) for x in lost]
        assert [c["detail"] for c in lost[0]["checks"]] == [
            c["detail"] for c in lost[0]["checks"] if "xdist worker gw" in c["detail"] and "died" in c["detail"]]
        assert (tmp_path / "out" / "failures" / f"{lost[0]['case_id']}.json").exists()
    else:
        assert not lost, lost
    details = " ".join(c["detail"] for x in crashed for c in x["checks"] if c["name"] == "crashed")
    assert "SIGSEGV" in details and "code 3" in details and "SIGABRT" in details, details


STUCK_FILE = '''
import dataclasses, importlib.util, os, signal
spec = importlib.util.spec_from_file_location("ex", {example!r})
ex = importlib.util.module_from_spec(spec); spec.loader.exec_module(ex)

def call(t, params, config):
    if params["bias"] and not os.path.exists({stuck!r}):  # the first case with a bias, once
        open({stuck!r}, "w").close()
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGUSR2}})
        signal.sigwait({{signal.SIGUSR2}})  # a wait in native code: never back in Python
    return ex.call(t, params, config)

ADAPTERS = [dataclasses.replace(ex.ADAPTERS[0], name="test:stuck", call=call)]
'''


@pytest.mark.parametrize("workers", [None, "2"], ids=["one-process", "xdist-2"])
def test_a_case_stuck_in_native_code_without_isolation_never_hangs_the_run(tmp_path, workers):
    """--isolate off: the in-process timer cannot interrupt native code, so a watchdog ends the
    process STUCK_GRACE_S after the limit. Under -n 2 that is one worker: its case is recorded as
    crashed and the run goes on with every case recorded. In one process the run stops there: the
    stuck case is recorded as a timeout and the results so far are written, marked interrupted."""
    adapters = tmp_path / "stuck.py"
    adapters.write_text(STUCK_FILE.format(example=str(EXAMPLE), stuck=str(tmp_path / "stuck-once")))
    results = tmp_path / "r.jsonl"
    r = subprocess.run([sys.executable, "-m", "qkcheck.cases.cli", "gate", "--device", "cpu", "--kernels",
                        str(adapters), "--results", str(results), "--isolate", "off", "--case-timeout", "1s",
                        "--shard", "1/16", *(["-n", workers] if workers else [])],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert workers or "stuck in native code" in r.stderr, r.stderr[-3000:]
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    run, recs = lines[0], lines[1:]
    failed = [x for x in recs if x["status"] != "pass"]
    assert len(failed) == 1 and failed[0]["case"]["params"]["bias"], [(x["case_id"], x["status"]) for x in recs]
    checks = {c["name"] for c in failed[0]["checks"]}
    if workers:
        assert len(recs) == 7 and checks == {"crashed"} and not run.get("interrupted"), (len(recs), checks, run)
    else:
        assert len(recs) < 7 and checks == {"timeout"} and run.get("interrupted") is True, (len(recs), checks)
    assert (tmp_path / "out" / "failures" / f"{failed[0]['case_id']}.json").exists()


TWO_FILE = '''
import dataclasses, importlib.util
spec = importlib.util.spec_from_file_location("ex", {example!r})
ex = importlib.util.module_from_spec(spec); spec.loader.exec_module(ex)

def late_scales(t, params, config):  # each group's scales taken from the next group
    return ex.call({{**t, "scales": t["scales"].roll(-1, 0)}}, params, config)

ADAPTERS = [dataclasses.replace(ex.ADAPTERS[0], name="mine:good"),
            dataclasses.replace(ex.ADAPTERS[0], name="mine:late scales", call=late_scales)]
'''


def test_file_name_selection_and_the_printed_replay_command_works_verbatim(tmp_path):
    """``FILE::NAME`` selects one adapter of a file; the replay line printed for its failure,
    pasted into a shell (a name with a space in a directory with a space), replays that adapter only."""
    folder = tmp_path / "my kernels"
    folder.mkdir()
    adapters = folder / "two.py"
    adapters.write_text(TWO_FILE.format(example=str(EXAMPLE)))
    r = subprocess.run([sys.executable, "-m", "qkcheck.cases.cli", "gate", "--device", "cpu", "--kernels",
                        f"{adapters}::mine:late scales", "--failures-dir", str(folder / "failures"),
                        "--", "-x", "-k", "m1n64k256"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "mine:good" not in r.stdout, r.stdout[-3000:]
    line = next(x for x in r.stdout.splitlines() if x.strip().startswith("replay: "))
    command = line.split("replay: ", 1)[1].replace("qkcheck", f"{sys.executable} -m qkcheck.cases.cli", 1)
    replay = subprocess.run(command, shell=True, cwd="/", capture_output=True, text=True, timeout=300)
    assert replay.returncode == 1, replay.stdout + replay.stderr
    assert "mine:late scales ::" in replay.stdout and "mine:good" not in replay.stdout, replay.stdout
    missing = subprocess.run([sys.executable, "-m", "qkcheck.cases.cli", "gate", "--device", "cpu", "--kernels",
                              f"{adapters}::nope"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "has no adapter named 'nope' (it has: mine:good, mine:late scales)" in (
        missing.stdout + missing.stderr)


def _past_x(t, elements: int):
    """A one-element view ``elements`` past the end of x's last row (its storage: the shared buffer)."""
    import torch

    x = t["x"]
    last = x.storage_offset() + (x.shape[0] - 1) * x.stride(0) + x.shape[1]
    return torch.as_strided(x, (1,), (1,), storage_offset=last + elements)


@pytest.mark.parametrize("elements", [3, 16, 300], ids=["in-padding", "past-padding", "far-past"])
def test_a_write_outside_an_inputs_view_fails_inputs_unchanged(elements):
    ex = _example_adapter()

    def call(t, params, config):
        _past_x(t, elements).fill_(1.0)
        return ex.call(t, params, config)

    import dataclasses

    r = run_case(CASE, dataclasses.replace(ex, call=call), "cpu")
    failed = {c.name: c.detail for c in r.failed_checks}
    assert r.status == "fail" and "inputs_unchanged" in failed, r.summary()
    if elements < 300:  # in x's padding, or in the gap after x's region: charged to x
        assert "into the poison around x" in failed["inputs_unchanged"], failed
    else:  # far enough to land in the next input's region: that input changed
        assert "wrote into its inputs: qweight" in failed["inputs_unchanged"], failed


@pytest.mark.parametrize("elements", [3, 16, 300], ids=["in-padding", "past-padding", "far-past"])
def test_a_read_outside_an_inputs_view_reads_poison(elements):
    ex = _example_adapter()

    def call(t, params, config):
        y = ex.call(t, params, config)
        return y + _past_x(t, elements).to(y.dtype)  # a read the kernel should never make

    import dataclasses

    r = run_case(CASE, dataclasses.replace(ex, call=call), "cpu")
    assert r.status == "fail" and "numerics" in {c.name for c in r.failed_checks}, r.summary()


BAD_ADAPTER_FILES = {
    "exits-sys": ("import sys\nsys.exit(0)\n", "exited while being imported (sys.exit(0))"),
    "exits-os": ("import os\nos._exit(0)\n", "exited while being imported (os._exit(0))"),
    "adapters-int": ("ADAPTERS = 5\n", "ADAPTERS is int 5; expected a list of kernels.adapters.KernelAdapter"),
    "pack-none": ("import dataclasses, importlib.util\n"
                  f"spec = importlib.util.spec_from_file_location('ex', {str(EXAMPLE)!r})\n"
                  "ex = importlib.util.module_from_spec(spec); spec.loader.exec_module(ex)\n"
                  "ADAPTERS = [dataclasses.replace(ex.ADAPTERS[0], pack=None)]\n",
                  "ADAPTERS[0] (example:torch_w4a16): pack=None is not callable"),
    "directory": (None, "is a directory; expected a .py file defining ADAPTERS"),
}


@pytest.mark.parametrize("name", list(BAD_ADAPTER_FILES))
def test_a_bad_adapter_file_is_one_usage_error_naming_it(name, tmp_path, capsys, monkeypatch):
    """An adapter file that exits at import (sys.exit or os._exit), defines ADAPTERS that is not a
    list, or an adapter whose pack is not callable, or a directory given as --kernels: exit 2 and
    one line naming the file (not exit 0 without a word, nor a collection traceback)."""
    source, message = BAD_ADAPTER_FILES[name]
    path = tmp_path / ("kernels" if source is None else f"{name}.py")
    if source is None:
        path.mkdir()
    else:
        path.write_text(source)
    monkeypatch.chdir(tmp_path)
    code = main(["gate", "--device", "cpu", "--kernels", path.name, "--results", str(tmp_path / "r.jsonl")])
    out, err = capsys.readouterr()
    assert code == 2 and err.strip().count("\n") == 0, out[-2000:] + err
    assert message in err and str(path.name) in err, err
    assert not (tmp_path / "r.jsonl").exists()


def _case_file(**changes):
    d = CASE.to_dict()
    for key, value in changes.items():
        d[key] = {**d[key], **value} if isinstance(value, dict) else value
    return json.dumps(d)


BAD_CASE_FILES = {
    "huge-shape": (_case_file(shape={"m": 10 ** 9}), "refused before allocating (set QKCHECK_MAX_CASE_ELEMENTS=N"),
    "k0-group-all": (_case_file(shape={"k": 0}, params={"group_size": -1}), "shape['k']=0 must be a positive integer"),
    "negative-dim": (_case_file(shape={"n": -16}), "shape['n']=-16 must be a positive integer"),
    "float-tile": (_case_file(config={"block_k": 32.0, "block_m": 16, "block_n": 16}),
                   "config['block_k']=32.0 must be an integer"),
    "deeply-nested": ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
    "binary": (b"\x89PNG\r\n\x1a\n\xff\xfe\x00", "not a text file (byte 0 is not UTF-8)"),
}


@pytest.mark.parametrize("name", list(BAD_CASE_FILES))
def test_a_bad_case_file_is_one_usage_error_naming_it(name, tmp_path, capsys):
    """Refused before anything is allocated or run: exit 2, one line naming the file and what is
    allowed (not a 477 GiB allocation attempt, a ZeroDivisionError, a RecursionError, a float tile
    size taken as 32, or a decode error without the file's name)."""
    content, message = BAD_CASE_FILES[name]
    path = tmp_path / f"{name}.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code = main(["replay", str(path), "--device", "cpu", "--kernels", str(EXAMPLE)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert err.startswith(f"qkcheck: error: {path}: ") and message in err, err


@pytest.mark.parametrize("field,value,message", [
    ("status", 5, "status is 5; expected one of pass, fail, skip, error"),
    ("checks", "x", "field 'checks' is a string (\"x\"); expected a list"),
    ("checks", [5], "field 'checks' item 0 is 5; expected an object with string name, outcome and detail"),
    ("case", [1], "field 'case' is a list ([1]); expected an object"),
    ("timings", "fast", "field 'timings' is a string (\"fast\"); expected an object"),
    ("deep", None, "JSON nested too deeply to be a result line"),
    ("binary", None, "not text (byte 0 of the line is not UTF-8)"),
], ids=["status-int", "checks-str", "check-int", "case-list", "timings-str", "deeply-nested", "binary"])
def test_report_on_wrongly_typed_fields_names_file_line_and_field(field, value, message, tmp_path, capsys):
    r = run_case(CASE, _example_adapter(), "cpu").to_dict()
    path = tmp_path / "r.jsonl"
    third = {"deep": b"[" * 100_000 + b"]" * 100_000, "binary": b"\x89PNG\xff\xfe"}.get(
        field, json.dumps({**r, field: value, "kind": "result"}).encode())
    path.write_bytes((json.dumps({"kind": "run"}) + "\n" + json.dumps({**r, "kind": "result"}) + "\n").encode()
                     + third + b"\n")
    code = main(["report", str(path), "-o", str(tmp_path / "r.html")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith(f"qkcheck: error: {path}:3: {message}"), err
