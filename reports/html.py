"""The self-contained HTML report: one file, inline CSS and inline SVG, no script, no fetch.

``render_report(results_paths, out_path)`` merges results files (``reports.store.load_results``)
and writes one page with:

- a header: pass/fail/skip counts, device/platform/native FP8 variant, interpreter defect probes,
  versions, run time, kernels (one row per merged run: xdist workers and CI shards);
- the summary matrix: (op, scheme) x kernel, cells coloured by status, failing cells linking to
  their failures;
- the coverage matrix: layout x act_dtype x group_size x (BLOCK_K vs group_size), so a gate that
  never tried BLOCK_K > group_size shows empty cells;
- each failure (the first ``DETAIL_LIMIT`` in full): case, replay command, checks, diagnosis,
  error statistics, heatmap of |error|/bound, k-group profile coloured by position in the BLOCK_K
  tile, row and column max-ratio profiles; the remaining failures as a table with replay commands;
- skipped cases grouped by reason.

Every value that comes from results (kernel names, params, check details, sentences) reaches the
page through Jinja2 with autoescaping on; this module computes numbers and strings only, never
markup. Charts are drawn by the templates from the numbers computed here (``Divergence`` fields,
never recomputed from raw outputs).
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from qkcheck.reports.store import load_results

TEMPLATES = Path(__file__).with_name("templates")
DETAIL_LIMIT = 50  # failures shown in full (heatmaps, profiles); the rest as a table
SKIP_EXAMPLES = 5  # case ids shown per skip reason
# |error|/bound colour scale: <= 1 is within bound (neutral); above 1 graded on a log scale
NEUTRAL = "#eef1f4"
ZERO = "#ffffff"
GRADES = ("#fee391", "#fec44f", "#fe9929", "#ec7014", "#cc4c02", "#a63603", "#7f2704", "#4a1402")
RELATIONS = ("BLOCK_K<G", "BLOCK_K=G", "BLOCK_K>G", "default")
TILE_COLOURS = ("#3b6fb6", "#e08a1e", "#3c9a5f", "#b04a9a", "#8c6d31", "#5e5e5e", "#17becf", "#bcbd22")


# -- small helpers ---------------------------------------------------------------------------------
def _num(value) -> float:
    """A float from a record value ('inf'/'nan' strings as written by the store; None -> nan)."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def fmt(value, digits: int = 4) -> str:
    """Short human text for a number (inf/nan spelled out)."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    v = _num(value)
    if math.isnan(v):
        return "nan" if value is not None else "—"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def short(value: float) -> str:
    """Compact axis label: 0.5, 12, 340, 1e4, 5.9e5."""
    if value < 1e4:
        return f"{value:.3g}" if value < 1000 else f"{value:.0f}"
    mantissa, exponent = f"{value:.1e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}" if mantissa != "1" else f"1e{int(exponent)}"


def group_label(group_size) -> str:
    return "gK" if group_size == -1 else f"g{group_size}"


def scheme_of(params: dict) -> str:
    """'gptq g32 asym': layout + group size + zero points; other ops: their scheme-like params."""
    parts = []
    for key in ("scheme", "layout"):
        if key in params:
            parts.append(str(params[key]))
    if "group_size" in params:
        parts.append(group_label(params["group_size"]))
    if "zero_points" in params:
        parts.append("asym" if params["zero_points"] else "sym")
    if not parts:
        parts = [str(params[k]) for k in ("weight_dtype", "quant_dtype") if k in params]
    return " ".join(parts) or "—"


def block_k_relation(case: dict) -> str | None:
    """BLOCK_K vs group size of a case ('default' when the case leaves the config to the kernel);
    None when the op has no group size. group_size -1 means one group over all of K."""
    params, config = case.get("params") or {}, case.get("config") or {}
    g = params.get("group_size")
    if g is None:
        return None
    bk = config.get("block_k")
    if not config or bk is None:
        return "default"
    if g == -1:
        g = (case.get("shape") or {}).get("k")
    if not isinstance(g, int) or not isinstance(bk, int):
        return "default"
    return "BLOCK_K<G" if bk < g else ("BLOCK_K=G" if bk == g else "BLOCK_K>G")


def status_class(counts: Counter) -> str:
    if counts.get("fail") or counts.get("error"):
        return "fail"
    if counts.get("pass"):
        return "pass"
    return "skip" if counts.get("skip") else "empty"


# -- charts (numbers only; the templates draw them) -----------------------------------------------
def grade_edges(max_ratio: float) -> list[float]:
    """Upper edges of the graded colour bins above 1: geometric from 1 to max(max_ratio, 2)."""
    top = max_ratio if math.isfinite(max_ratio) and max_ratio > 2 else 2.0
    n = len(GRADES)
    return [top ** ((i + 1) / n) for i in range(n)]


def colour_of(ratio: float, edges: list[float]) -> str:
    if not ratio > 0:
        return ZERO
    if ratio <= 1:
        return NEUTRAL
    for edge, colour in zip(edges, GRADES):
        if ratio <= edge:
            return colour
    return GRADES[-1]


@dataclass
class Heatmap:
    rows: int
    cols: int
    paths: list[tuple[str, str]]  # (colour, SVG path data in cell units), one per colour
    legend: list[tuple[str, str]]  # (colour, label)
    out_rows: int
    out_cols: int
    width: float
    height: float


HEAT_W, HEAT_H_MAX = 512.0, 384.0


def heatmap(div: dict) -> Heatmap | None:
    """Run-length encoded colour paths of the pooled |error|/bound map, one path per colour."""
    grid = div.get("heatmap") or []
    if not grid or not grid[0]:
        return None
    rows, cols = len(grid), len(grid[0])
    edges = grade_edges(_num(div.get("max_ratio")))
    runs: dict[str, list[str]] = defaultdict(list)
    for r, line in enumerate(grid):
        c = 0
        while c < cols:
            colour = colour_of(_num(line[c]), edges)
            start = c
            while c < cols and colour_of(_num(line[c]), edges) == colour:
                c += 1
            runs[colour].append(f"M{start} {r}h{c - start}v1h{start - c}z")
    legend = [(ZERO, "0"), (NEUTRAL, "≤ 1 (within bound)")]
    lo = 1.0
    for edge, colour in zip(edges, GRADES):
        legend.append((colour, f"{short(lo)} – {short(edge)}"))
        lo = edge
    shape = div.get("shape") or [rows, cols]
    out_rows = int(shape[0]) if len(shape) >= 2 else 1
    out_cols = int(shape[-1])
    cell = HEAT_W / cols
    height = min(HEAT_H_MAX, max(24.0, cell * rows))
    return Heatmap(rows, cols, [(k, "".join(v)) for k, v in runs.items()], legend, out_rows, out_cols,
                   HEAT_W, height)


@dataclass
class Bars:
    """A bar chart of ratios with the bound line at 1. Linear when the top is small, log1p otherwise."""
    bars: list[dict]  # x, y, w, h, colour, label, value
    bound_y: float
    ticks: list[tuple[float, str]]
    width: float
    height: float
    log: bool
    legend: list[tuple[str, str]] = field(default_factory=list)
    axis_label: str = ""
    y_label: str = "error / bound"
    x_labels: list[tuple[float, str]] = field(default_factory=list)  # (x centre, label)


PLOT_H = 150.0


def _scale(values: list[float]):
    finite = [v for v in values if math.isfinite(v)]
    top = max(finite + [1.0]) * 1.1
    inf_top = max(finite + [2.0]) * 1.1
    log = top > 12
    if log:
        ymax = math.log10(1 + max(top, inf_top))

        def y(v):
            v = inf_top if math.isinf(v) else v
            return PLOT_H * (1 - math.log10(1 + max(v, 0.0)) / ymax)

        ticks, t = [(y(0.0), "0"), (y(1.0), "1")], 10.0
        while t <= top:
            ticks.append((y(t), short(t)))
            t *= 10
        peak = max(finite + [1.0])
        if peak >= 2 and 0.3 < math.log10(peak) % 1 < 0.85:  # label the peak unless it sits by a decade
            ticks.append((y(peak), short(peak)))
    else:
        ymax = max(top, 1.5)

        def y(v):
            v = ymax if math.isinf(v) else v
            return PLOT_H * (1 - max(v, 0.0) / ymax)

        step = 0.5 if ymax <= 3 else (1 if ymax <= 6 else 2)
        ticks, t = [], 0.0
        while t <= ymax:
            ticks.append((y(t), short(t)))
            t += step
    return y, ticks, log


def bars(values: list[float], colours: list[str], labels: list[str], width: float = 512.0) -> Bars:
    vals = [_num(v) for v in values]
    vals = [0.0 if math.isnan(v) else v for v in vals]
    y, ticks, log = _scale(vals)
    n = max(len(vals), 1)
    slot = width / n
    gap = slot * 0.15 if slot > 4 else 0.0
    out = []
    for i, (v, colour, label) in enumerate(zip(vals, colours, labels)):
        top = y(v)
        out.append({"x": i * slot + gap / 2, "y": top, "w": max(slot - gap, 0.5), "h": PLOT_H - top,
                    "colour": colour, "label": label, "value": fmt(v)})
    return Bars(out, y(1.0), ticks, width, PLOT_H, log)


def k_profile_chart(kp: dict) -> Bars | None:
    ratios = kp.get("max_ratio") or []
    if not ratios:
        return None
    g = kp.get("group_size")
    bk = kp.get("block_k")
    tiled = isinstance(g, int) and isinstance(bk, int) and g > 0 and bk > g
    positions = [((i * g) % bk) // g if tiled else 0 for i in range(len(ratios))]
    colours = [TILE_COLOURS[p % len(TILE_COLOURS)] for p in positions]
    labels = [f"k-group {i} (k {i * g}..{(i + 1) * g - 1}), position {p} in BLOCK_K tile" if tiled
              else f"k-group {i}" for i, p in enumerate(positions)]
    chart = bars(ratios, colours, labels)
    if len(ratios) <= 32:
        chart.x_labels = [(b["x"] + b["w"] / 2, f"g{i}") for i, b in enumerate(chart.bars)]
    if tiled:
        chart.legend = [(TILE_COLOURS[p % len(TILE_COLOURS)], f"position {p} in tile")
                        for p in range(bk // g)]
    else:
        chart.legend = [(TILE_COLOURS[0], "one group per tile or more" if bk else "BLOCK_K unknown")]
    chart.axis_label = f"k-group (group_size {g}, BLOCK_K {bk if bk is not None else '?'})"
    return chart


def profile_chart(values: list, axis: str, extent: int) -> Bars | None:
    vals = [_num(v) for v in values or []]
    if not vals:
        return None
    colours = [GRADES[3] if v > 1 else "#9aa5b1" for v in vals]
    per = extent / len(vals) if extent else 1
    labels = [f"{axis} {int(i * per)}..{max(int((i + 1) * per) - 1, int(i * per))}" for i in range(len(vals))]
    chart = bars(vals, colours, labels)
    chart.axis_label = f"{axis} (0..{extent - 1})" + (f", pooled by {fmt(per, 3)}" if per > 1 else "")
    return chart


# -- the page model ---------------------------------------------------------------------------------
def _case_rows(rec: dict) -> list[tuple[str, Any]]:
    case = rec.get("case") or {}
    rows = [("kernel", rec.get("kernel")), ("op", rec.get("op")), ("case id", rec.get("case_id")),
            ("shape", _kv(case.get("shape"))), ("params", _kv(case.get("params"))),
            ("config", _kv(case.get("config")) or "kernel default"), ("regime", case.get("regime")),
            ("seed", case.get("seed")), ("device", rec.get("device")),
            ("backends", ", ".join(map(str, rec.get("backends") or [])) or "—")]
    if rec.get("conventions"):  # declared by the adapter: the oracle answered for these, not its default
        rows.append(("conventions", _kv(rec.get("conventions"))))
    if case.get("why"):
        rows.append(("why", case.get("why")))
    t = rec.get("timings") or {}
    if t:
        rows.append(("timings", ", ".join(f"{k} {fmt(v, 3)} s" for k, v in t.items())))
    return rows


def _kv(d) -> str:
    if not d:
        return ""
    if not isinstance(d, dict):
        return str(d)
    return ", ".join(f"{k}={v}" for k, v in d.items())


def _stats(div: dict) -> list[tuple[str, str]]:
    total = int(_num(div.get("total")) or 0) if div.get("total") is not None else 0
    count = div.get("count")
    frac = (count / total) if total and isinstance(count, int) else math.nan
    unit = "output ULPs (exact regime, bound 0)" if div.get("bound_kind") == "exact" else "× bound"
    rows = [("mismatched elements", f"{count} / {total}"), ("fraction", f"{100 * frac:.3g} %"),
            ("max abs error", fmt(div.get("max_abs_error"), 6)),
            ("max error / bound", f"{fmt(div.get('max_ratio'))} {unit}"),
            ("worst index", str(div.get("worst_index"))),
            ("first mismatches", ", ".join(str(i) for i in (div.get("first_indices") or [])[:10])),
            ("pattern", div.get("pattern") or "—")]
    if div.get("nonfinite_mismatches"):
        rows.insert(1, ("NaN/Inf positions differ", str(div["nonfinite_mismatches"])))
    for note in div.get("notes") or []:
        rows.append(("note", str(note)))
    return rows


def _label_units(chart: Bars | None, exact: bool) -> Bars | None:
    if chart is not None and exact:
        chart.y_label = "error (output ULPs)"
    return chart


def _failure(rec: dict, index: int, detailed: bool) -> dict:
    div = rec.get("divergence") if isinstance(rec.get("divergence"), dict) else None
    kp = rec.get("k_profile") if isinstance(rec.get("k_profile"), dict) else None
    failed = [c for c in rec.get("checks") or [] if c.get("outcome") == "fail"]
    out = {"anchor": f"failure-{index}", "index": index, "rec": rec, "detailed": detailed,
           "scheme": scheme_of((rec.get("case") or {}).get("params") or {}),
           "failed_checks": ", ".join(str(c.get("name")) for c in failed) or "—",
           "diagnosis": [str(d.get("sentence", d)) if isinstance(d, dict) else str(d)
                         for d in rec.get("diagnosis") or []],
           "max_ratio": fmt(div.get("max_ratio")) if div else "—",
           "pattern": (div.get("pattern") if div else None) or "—"}
    if not detailed:
        return out
    out["case_rows"] = _case_rows(rec)
    out["checks"] = rec.get("checks") or []
    out["stats"] = _stats(div) if div else []
    out["exact"] = bool(div and div.get("bound_kind") == "exact")
    out["heatmap"] = heatmap(div) if div else None
    if div:
        shape = div.get("shape") or []
        rows_n = int(shape[0]) if len(shape) >= 2 else 1
        cols_n = int(shape[-1]) if shape else 0
        out["row_profile"] = _label_units(profile_chart(div.get("row_max_ratio"), "row", rows_n), out["exact"])
        out["col_profile"] = _label_units(profile_chart(div.get("col_max_ratio"), "column", cols_n), out["exact"])
    out["k_profile_error"] = kp.get("error") if kp and "error" in kp else None
    out["k_profile"] = _label_units(k_profile_chart(kp) if kp and "error" not in kp else None, out["exact"])
    return out


def _clean(rec: dict) -> dict:
    """A DataFrame row back to a record: fields a file did not have (NaN after the merge) -> None."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}


def _run_header(infos: list[dict], frame) -> dict:
    def uniq(key):
        seen = []
        for i in infos:
            v = i.get(key)
            if v is not None and v not in seen:
                seen.append(v)
        return seen

    started = [_num(i.get("started")) for i in infos if i.get("started") is not None]
    finished = [_num(i.get("finished")) for i in infos if i.get("finished") is not None]
    span = (max(finished) - min(started)) if started and finished else math.nan
    probes: dict[str, dict] = {}
    for i in infos:
        for name, p in (i.get("probes") or {}).items():
            probes.setdefault(name, p if isinstance(p, dict) else {"defective": None, "detail": str(p)})
    versions: dict[str, list] = defaultdict(list)
    for i in infos:
        for k, v in (i.get("versions") or {}).items():
            if v not in versions[k]:
                versions[k].append(v)
    kernels = []
    for i in infos:
        for k in i.get("kernels") or []:
            if k not in kernels:
                kernels.append(k)
    ran = sorted(set(frame["kernel"].dropna().astype(str))) if len(frame) else []
    import time as _time

    return {
        "devices": uniq("device"), "platforms": uniq("platform"), "native_fp8": uniq("native_fp8"),
        "run_time": fmt(span, 4) + " s" if math.isfinite(span) else "—",
        "started": _time.strftime("%Y-%m-%d %H:%M:%S UTC", _time.gmtime(min(started))) if started else "—",
        "probes": sorted(probes.items()), "versions": {k: ", ".join(map(str, v)) for k, v in versions.items()},
        "kernel_specs": kernels, "kernels_ran": ran, "runs": infos,
        "probe_errors": [i["probe_error"] for i in infos if i.get("probe_error")],
        "interrupted": [str(i.get("source", "")) for i in infos if i.get("interrupted")],
    }


def build_context(results_paths: list[Path], title: str) -> dict:
    frame, infos = load_results([Path(p) for p in results_paths])
    records = [_clean(r) for r in frame.to_dict("records")] if len(frame) else []
    counts = Counter(r["status"] for r in records)

    # summary matrix: (op, scheme) x kernel
    kernels = sorted({str(r["kernel"]) for r in records})
    cells: dict[tuple, Counter] = defaultdict(Counter)
    for r in records:
        case = r.get("case") or {}
        r["_scheme"] = scheme_of(case.get("params") or {})
        cells[(str(r["op"]), r["_scheme"], str(r["kernel"]))][r["status"]] += 1
    row_keys = sorted({(op, s) for op, s, _ in cells})

    # failures, ordered by cell so each failing cell links to the first of its failures
    failing = [r for r in records if r["status"] in ("fail", "error")]  # error: no verdict, never a pass
    failing.sort(key=lambda r: (str(r["op"]), r["_scheme"], str(r["kernel"]), str(r["case_id"])))
    failures, cell_anchor = [], {}
    for i, r in enumerate(failing):
        f = _failure(r, i, detailed=i < DETAIL_LIMIT)
        key = (str(r["op"]), r["_scheme"], str(r["kernel"]))
        if key not in cell_anchor:
            cell_anchor[key] = f"cell-{len(cell_anchor)}"
            f["cell_anchor"] = cell_anchor[key]
        failures.append(f)
    summary = {"kernels": kernels, "rows": [
        {"op": op, "scheme": s, "cells": [
            {"counts": cells.get((op, s, k), Counter()), "cls": status_class(cells.get((op, s, k), Counter())),
             "href": ("#" + cell_anchor[(op, s, k)]) if (op, s, k) in cell_anchor else None}
            for k in kernels]}
        for op, s in row_keys]}

    # coverage: (op, group size, BLOCK_K relation) rows x (layout, act dtype) columns
    cov: dict[tuple, Counter] = defaultdict(Counter)
    cov_groups, cov_cols, uncovered = set(), set(), 0
    for r in records:
        case = r.get("case") or {}
        rel = block_k_relation(case)
        if rel is None:
            uncovered += 1
            continue
        p = case.get("params") or {}
        group = (str(r["op"]), p.get("group_size"))
        col = (str(p.get("layout", "—")), str(p.get("act_dtype", "—")))
        cov_groups.add(group)
        cov_cols.add(col)
        cov[(group, rel, col)][r["status"]] += 1
    cols = sorted(cov_cols)
    groups_sorted = sorted(cov_groups, key=lambda og: (og[0], og[1] == -1, og[1] if isinstance(og[1], int) else 0))
    cov_rows = []
    for group in groups_sorted:
        for j, rel in enumerate(RELATIONS):
            cells_ = [cov.get((group, rel, col), Counter()) for col in cols]
            cov_rows.append({"op": group[0], "group": group_label(group[1]), "relation": rel,
                             "first": j == 0, "span": len(RELATIONS), "ran": sum(sum(c.values()) for c in cells_),
                             "cells": [{"counts": c, "cls": status_class(c)} for c in cells_]})
    layouts = []
    for lay, _ in cols:
        if not layouts or layouts[-1][0] != lay:
            layouts.append([lay, 0])
        layouts[-1][1] += 1
    rel_totals = Counter()
    for (group, rel, col), c in cov.items():
        rel_totals[rel] += sum(c.values())
    coverage = {"layouts": layouts, "acts": [a for _, a in cols], "rows": cov_rows, "uncovered": uncovered,
                "missing_relations": [rel for rel in RELATIONS[:3] if not rel_totals.get(rel)] if cov else []}

    # skips grouped by reason
    by_reason: dict[str, list] = defaultdict(list)
    for r in records:
        if r["status"] == "skip":
            by_reason[str(r.get("skip_reason") or "no reason recorded")].append(r)
    skips = [{"reason": reason, "count": len(rs), "kernels": sorted({str(r["kernel"]) for r in rs}),
              "examples": [str(r["case_id"]) for r in rs[:SKIP_EXAMPLES]]}
             for reason, rs in sorted(by_reason.items(), key=lambda kv: -len(kv[1]))]

    # which checks failed, across all results
    check_counts: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        for c in r.get("checks") or []:
            if isinstance(c, dict):
                check_counts[str(c.get("name"))][str(c.get("outcome"))] += 1

    return {
        "title": title, "total": len(records), "counts": counts, "header": _run_header(infos, frame),
        "sources": [str(p) for p in results_paths], "summary": summary, "coverage": coverage,
        "failures": failures, "detail_limit": DETAIL_LIMIT, "skips": skips,
        "checks": sorted(check_counts.items()), "neutral": NEUTRAL,
    }


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    return env


def render_report(results_paths: list[Path], out_path: Path, *, title: str = "qkcheck report") -> Path:
    """Render the results files into one self-contained HTML page at ``out_path``; returns it."""
    html = _environment().get_template("report.html.j2").render(**build_context(results_paths, title))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(html, encoding="utf-8")
    return out_path
