"""Results store: JSON lines, one file per run (or per xdist worker / CI shard), merged with pandas.

File format (one JSON object per line)::

    {"kind": "run", "device": ..., "platform": ..., "started": ..., ...}      # first line: run info
    {"kind": "result", "case": {...}, "case_id": ..., "kernel": ..., ...}     # one per case x kernel

``load_results`` merges any number of such files into one DataFrame (one row per result record,
a ``source`` column naming the file it came from) plus the list of run-info dicts, in file order.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported where results are merged (a second of start-up otherwise)
    import pandas as pd

RUN, RESULT = "run", "result"
REQUIRED_RESULT_FIELDS = ("case", "case_id", "kernel", "op", "status")
STATUSES = ("pass", "fail", "skip", "error")
# columns every results DataFrame has, even when it holds no rows (so callers can filter freely)
COLUMNS = ("case", "case_id", "kernel", "op", "status", "device", "checks", "backends", "divergence",
           "diagnosis", "k_profile", "skip_reason", "timings", "replay", "source", "conventions")


def _jsonable(value):
    """Floats that JSON cannot carry (inf, nan) become strings "inf"/"-inf"/"nan"; the rest as is."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_results(path: Path, records: list[dict], info: dict) -> None:
    """Write ``info`` as the run line, then one result line per record, to ``path`` (parents created).

    Records are written in the order given; non-finite floats are written as strings so that the
    file is strict JSON (readable by any JSON parser, not only Python's).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(json.dumps(_jsonable({**info, "kind": RUN}), allow_nan=False) + "\n")
        for rec in records:
            f.write(json.dumps(_jsonable({**rec, "kind": RESULT}), allow_nan=False) + "\n")
    tmp.replace(path)


def _parse_line(path: Path, lineno: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); "
                         f"expected one JSON object per line as written by reports.store.write_results") from None
    except RecursionError:
        raise ValueError(f"{path}:{lineno}: JSON nested too deeply to be a result line; expected one JSON object "
                         "per line as written by reports.store.write_results") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}:{lineno}: got a JSON {type(obj).__name__}; expected a JSON object "
                         f"with \"kind\": \"run\" or \"result\"")
    kind = obj.get("kind")
    if kind not in (RUN, RESULT):
        raise ValueError(f"{path}:{lineno}: \"kind\" is {kind!r}; expected \"run\" or \"result\"")
    if kind == RESULT:
        missing = [k for k in REQUIRED_RESULT_FIELDS if k not in obj]
        if missing:
            raise ValueError(f"{path}:{lineno}: result record lacks {', '.join(missing)}; "
                             f"expected the fields {', '.join(REQUIRED_RESULT_FIELDS)}")
        if obj["status"] not in STATUSES:
            raise ValueError(f"{path}:{lineno}: status is {obj['status']!r}; expected one of {', '.join(STATUSES)}")
        _check_types(obj, f"{path}:{lineno}")
    return obj


_STR, _DICT, _LIST = (str,), (dict,), (list,)
# a result record's fields and the JSON types each may have (None where the field is optional)
RESULT_TYPES = {
    "case": _DICT, "case_id": _STR, "kernel": _STR, "op": _STR, "status": _STR, "device": (str, type(None)),
    "checks": _LIST, "backends": _LIST, "divergence": (dict, type(None)), "diagnosis": _LIST,
    "k_profile": (dict, type(None)), "skip_reason": (str, type(None)), "timings": _DICT, "replay": (str, type(None)),
    "error": (dict, type(None)), "conventions": _DICT, "run_id": (str, type(None)),
}
_JSON_NAMES = {str: "a string", dict: "an object", list: "a list", type(None): "null"}


def _json_type(value) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", dict: "an object",
            list: "a list", type(None): "null"}.get(type(value), type(value).__name__)


def _check_types(obj: dict, where: str) -> None:
    """Each known field of a result record has its JSON type, and each check is an object with
    string name, outcome and detail: a wrong one is named (file:line, field, value) here rather
    than breaking the report later."""
    for key, allowed in RESULT_TYPES.items():
        if key in obj and not isinstance(obj[key], allowed):
            want = " or ".join(_JSON_NAMES[t] for t in allowed)
            raise ValueError(f"{where}: field {key!r} is {_json_type(obj[key])} ({json.dumps(obj[key])[:60]}); "
                             f"expected {want}")
    for i, check in enumerate(obj.get("checks") or []):
        bad = (not isinstance(check, dict) or not all(isinstance(check.get(k), str) for k in ("name", "outcome"))
               or not isinstance(check.get("detail", ""), str))
        if bad:
            raise ValueError(f"{where}: field 'checks' item {i} is {json.dumps(check)[:60]}; expected an object "
                             "with string name, outcome and detail")
    for key in ("backends",):
        for i, item in enumerate(obj.get(key) or []):
            if not isinstance(item, str):
                raise ValueError(f"{where}: field {key!r} item {i} is {_json_type(item)}; expected a string")
    for i, item in enumerate(obj.get("diagnosis") or []):
        if not isinstance(item, dict):
            raise ValueError(f"{where}: field 'diagnosis' item {i} is {_json_type(item)}; expected an object")


def read_file(path: Path) -> tuple[dict | None, list[dict]]:
    """The run info (None if the file has no run line) and the result records of one file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: results file not found; expected a JSON-lines file written by "
                         f"reports.store.write_results (pytest --results PATH)")
    info, records = None, []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not text (byte {exc.start} of the line is not UTF-8); expected "
                                 "a JSON-lines results file as written by reports.store.write_results") from None
            if not line.strip():
                continue
            obj = _parse_line(path, lineno, line)
            kind = obj.pop("kind")
            if kind == RUN:
                if info is not None:
                    raise ValueError(f"{path}:{lineno}: a second run line; expected exactly one "
                                     f"{{\"kind\": \"run\"}} line per file (merge files with load_results)")
                if records:
                    raise ValueError(f"{path}:{lineno}: run line after result lines; expected the run line first")
                info = obj
            else:
                records.append(obj)
    return info, records


def load_results(paths: list[Path]) -> tuple[pd.DataFrame, list[dict]]:
    """Merge results files (xdist workers, CI shards) into one DataFrame and the run infos.

    The DataFrame has one row per result record, the record's fields as columns (at least
    ``COLUMNS``) and ``source`` = the file the row came from. Run infos are returned in file order,
    each with ``source`` added. Missing files and malformed lines raise ``ValueError`` naming the
    file, the line and what was expected.
    """
    import pandas as pd

    if isinstance(paths, (str, Path)):
        paths = [paths]
    infos: list[dict] = []
    rows: list[dict] = []
    for p in paths:
        info, records = read_file(Path(p))
        if info is not None:
            infos.append({**info, "source": str(p)})
        for r in records:
            r["source"] = str(p)
            rows.append(r)
    frame = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
    for col in COLUMNS:
        if col not in frame.columns:
            frame[col] = pd.Series([None] * len(frame), dtype=object)
    return frame, infos
