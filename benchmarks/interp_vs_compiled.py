"""Compiled Triton vs the interpreter under qkcheck's correction, bit for bit, on the gate's cases
that need the correction (bf16 compute, bf16 output, fp8 output: the ones the CPU gate skipped
before ``kernels.interpreter`` existed), for the bundled Triton kernels.

    # 1. on a CUDA host (compiled Triton): run the cases, save every output's bytes
    python benchmarks/interp_vs_compiled.py record --out results/interp_vs_compiled

    # 2. on the CPU (the corrected interpreter; any host, the CUDA one too): run the same cases,
    #    compare the bits with the recording, write comparison.json and print the summary
    python benchmarks/interp_vs_compiled.py compare --recorded results/interp_vs_compiled [--jobs 8]

    # both on one CUDA host (the compare runs in child processes with TRITON_INTERPRET=1)
    python benchmarks/interp_vs_compiled.py both --out results/interp_vs_compiled --jobs 8

``record`` writes ``recording.json`` (the environment and, per (case, kernel), the case, the
backends that ran and each output's dtype and shape) and ``outputs.npz`` (each output's bytes).
``compare`` classifies each output: ``identical`` bits; ``nan_payload`` (NaN at the same places,
other bits equal: a NaN's payload is not a number; the correction writes NVIDIA's canonical NaNs);
``differs`` (with the count of differing elements and the largest distance in units in the last
place of the output dtype); or the run could not be compared (a kernel error on either side, a
different backend). A difference is a finding to explain (kernels/interpreter.py lists the
known ones: contraction of a * b + c into an fma on the GPU, summation order of dots and sums,
transcendental functions), never a reason to loosen the oracle. Exit status 1 when any output
differs.

``--device cpu`` for ``record`` only checks this script's plumbing (both sides interpreted).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECORDING = "recording.json"
OUTPUTS = "outputs.npz"
COMPARISON = "comparison.json"


# ------------------------------------------------------------------------------ selecting
def correction_categories(case) -> list[str]:
    """Why a case needs the interpreter correction: the categories the probes skip on (what
    ``cases.runner.skip_reason`` asks ``kernels.probes.skip_reason`` about); empty: it does not."""
    from qkcheck.cases.registry import op_spec

    spec = op_spec(case.op)
    p = case.p
    out_dtypes = [o.dtype for o in spec.outputs(case.dims, p)]
    found = []
    if spec.compute_dtype(p) in ("bfloat16", "bf16"):
        found.append("bf16 compute")
    if any(d.startswith("float8") for d in out_dtypes) or spec.fp8_conversion(p):
        found.append("fp8 output")
    if "bfloat16" in out_dtypes:
        found.append("bf16 output")
    return found


def selected(kernels: str, device: str, limit: int | None):
    """(case, adapter, categories) for every gate case of every Triton adapter of ``kernels``
    that needs the correction (``limit``: at most that many per adapter)."""
    import qkcheck

    for adapter in qkcheck.resolve_kernels(kernels, device=device):
        if not adapter.triton:
            continue
        picked = 0
        for case in qkcheck.gate_cases(adapter):
            categories = correction_categories(case)
            if not categories or (adapter.supports and adapter.supports(case.p)):
                continue
            yield case, adapter, categories
            picked += 1
            if limit is not None and picked >= limit:
                break


# -------------------------------------------------------------------------------- running
def run_outputs(case, adapter, device: str):
    """(host copies of the outputs, backends that ran) of one case, inputs as the runner packs
    them (deterministic from the case); a preallocated output starts as zeros."""
    import torch

    from qkcheck.cases.registry import materialize, op_spec
    from qkcheck.cases.runner import as_outputs
    from qkcheck.kernels import backends
    from qkcheck.kernels.torch_io import torch_dtype

    tensors = dict(adapter.pack(materialize(case), case.p, device))
    if adapter.out_param:
        want = op_spec(case.op).outputs(case.dims, case.p)[0]
        tensors[adapter.out_param] = torch.zeros(want.shape, dtype=torch_dtype(want.dtype), device=device)
    with backends.recording() as ran:
        out = adapter.call(tensors, case.p, case.cfg)
    if out is None and adapter.out_param:
        out = tensors[adapter.out_param]
    if device != "cpu":
        torch.cuda.synchronize()
    return [o.detach().to("cpu").contiguous() for o in as_outputs(out)], list(ran)


def _raw(t):
    import numpy as np
    import torch

    return t.reshape(-1).view(torch.uint8).numpy().astype(np.uint8) if t.numel() else np.zeros(0, np.uint8)


def _environment(device: str) -> dict:
    import torch
    import triton

    from qkcheck.kernels import device as _device
    from qkcheck.kernels import interpreter

    env = {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
           "triton": triton.__version__, "device": device, "interpreted": _device.interpreted()}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["arch"] = _device.gpu_arch(device)
    else:
        env["correction"] = vars(interpreter.status())
    return env


def record(args) -> int:
    import numpy as np

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from qkcheck.kernels import device as _device

    dev = _device.activate(args.device)
    entries, arrays, t0 = [], {}, time.perf_counter()

    def save():  # after every case: a run cut short still leaves what it recorded
        np.savez(out_dir / OUTPUTS, **arrays)
        meta = {"environment": _environment(dev), "kernels": args.kernels,
                "seconds": round(time.perf_counter() - t0, 1), "entries": entries}
        (out_dir / RECORDING).write_text(json.dumps(meta, indent=1))
        return meta

    for index, (case, adapter, categories) in enumerate(selected(args.kernels, dev, args.limit)):
        entry = {"index": index, "kernel": adapter.name, "op": case.op, "case_id": case.id,
                 "case": case.to_dict(), "categories": categories}
        try:
            outs, ran = run_outputs(case, adapter, dev)
        except Exception as exc:  # recorded: compare reports the case as not comparable
            entry["error"] = f"{type(exc).__name__}: {exc}"
        else:
            entry["backends"] = ran
            entry["outputs"] = [{"dtype": str(o.dtype).removeprefix("torch."), "shape": list(o.shape)} for o in outs]
            for j, o in enumerate(outs):
                arrays[f"{index}.{j}"] = _raw(o)
        entries.append(entry)
        save()
        print(f"[{index}] {adapter.name} {case.id}: {entry.get('error') or 'ok'}", flush=True)
    meta = save()
    print(f"recorded {len(entries)} cases ({sum('error' in e for e in entries)} raised) on {meta['environment']} "
          f"into {out_dir}")
    return 0


# ------------------------------------------------------------------------------ comparing
def _ordered(bits, width: int):
    """Sign-magnitude bits -> integers ordered like the values (adjacent floats differ by 1)."""
    import numpy as np

    b = bits.astype(np.int64)
    sign = np.int64(1) << (width - 1)
    return np.where(b & sign, -(b & (sign - 1)), b)


def classify(got, want, dtype: str) -> dict:
    """How the interpreter's output ``got`` (a CPU tensor) differs from the compiled ``want``."""
    import numpy as np
    import torch

    if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
        return {"kind": "shape_or_dtype", "detail": f"{got.dtype} {list(got.shape)} vs {want.dtype} {list(want.shape)}"}
    width = got.element_size() * 8
    view = {8: torch.uint8, 16: torch.int16, 32: torch.int32, 64: torch.int64}[width]
    unsigned = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}[width]
    g = got.reshape(-1).view(view).numpy().view(unsigned)
    w = want.reshape(-1).view(view).numpy().view(unsigned)
    differ = g != w
    if not differ.any():
        return {"kind": "identical", "elements": int(g.size)}
    floating = got.is_floating_point()
    if floating:
        gn, wn = torch.isnan(got.reshape(-1).float()).numpy(), torch.isnan(want.reshape(-1).float()).numpy()
        if (gn == wn).all() and not (differ & ~gn).any():
            return {"kind": "nan_payload", "elements": int(g.size), "nan": int(gn.sum())}
    idx = np.flatnonzero(differ)
    result = {"kind": "differs", "elements": int(g.size), "differing": int(idx.size),
              "first": [{"index": int(i), "interpreter": f"{int(g[i]):#x}", "compiled": f"{int(w[i]):#x}"} for i in idx[:5]]}
    if floating:
        dist = np.abs(_ordered(g[idx], width) - _ordered(w[idx], width))
        result["max_ulp"] = int(dist.max())
        result["values"] = [{"interpreter": float(got.reshape(-1)[i]), "compiled": float(want.reshape(-1)[i])}
                            for i in idx[:5]]
    return result


def compare(args) -> int:
    import numpy as np
    import torch

    recorded = Path(args.recorded)
    meta = json.loads((recorded / RECORDING).read_text())
    entries = meta["entries"]
    if args.jobs > 1 and args.shard is None:
        return _compare_in_children(args, len(entries))
    from qkcheck.cases.case import Case
    from qkcheck.kernels import device as _device

    dev = _device.activate("cpu")  # the interpreter, with the correction (kernels.interpreter)
    import qkcheck

    adapters = {a.name: a for a in qkcheck.resolve_kernels(meta["kernels"], device=dev)}
    arrays = np.load(recorded / OUTPUTS)
    shard = tuple(map(int, args.shard.split("/"))) if args.shard else (1, 1)
    results = []
    for entry in entries:
        if entry["index"] % shard[1] != shard[0] - 1:
            continue
        row = {k: entry[k] for k in ("index", "kernel", "op", "case_id", "categories")}
        if "error" in entry:
            row["kind"], row["detail"] = "compiled_error", entry["error"]
            results.append(row)
            continue
        case = Case.from_dict(entry["case"])
        try:
            outs, ran = run_outputs(case, adapters[entry["kernel"]], dev)
        except Exception as exc:
            row["kind"], row["detail"] = "interpreter_error", f"{type(exc).__name__}: {exc}"
            results.append(row)
            continue
        if ran != entry["backends"]:
            row["kind"], row["detail"] = "backend", f"interpreter ran {ran}, compiled ran {entry['backends']}"
            results.append(row)
            continue
        row["outputs"] = []
        for j, (o, spec) in enumerate(zip(outs, entry["outputs"])):
            want = torch.from_numpy(arrays[f"{entry['index']}.{j}"].copy())
            want = want.view(getattr(torch, spec["dtype"])).reshape(spec["shape"]) if want.numel() else \
                torch.empty(spec["shape"], dtype=getattr(torch, spec["dtype"]))
            row["outputs"].append({"dtype": spec["dtype"], "shape": spec["shape"], **classify(o, want, spec["dtype"])})
        kinds = {o["kind"] for o in row["outputs"]}
        row["kind"] = next((k for k in ("shape_or_dtype", "differs", "nan_payload") if k in kinds), "identical")
        results.append(row)
        print(f"[{entry['index']}] {entry['kernel']} {entry['case_id']}: {row['kind']}", flush=True)
    out = {"recorded": meta["environment"], "interpreter": _environment(dev), "results": results}
    target = Path(args.output) if args.output else recorded / (COMPARISON if not args.shard else
                                                               f"comparison.{shard[0]}of{shard[1]}.json")
    target.write_text(json.dumps(out, indent=1))
    if args.shard:
        return 0
    return _summarize(out, target)


def _compare_in_children(args, n: int) -> int:
    """Run ``compare`` in ``args.jobs`` child processes (shards of the cases), then merge."""
    recorded = Path(args.recorded)
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, "compare", "--recorded", str(recorded),
                               "--shard", f"{i}/{args.jobs}"], env=env) for i in range(1, args.jobs + 1)]
    codes = [p.wait() for p in procs]
    if any(codes):
        print(f"a compare shard failed (exit codes {codes})", file=sys.stderr)
        return 2
    parts = [json.loads((recorded / f"comparison.{i}of{args.jobs}.json").read_text()) for i in range(1, args.jobs + 1)]
    merged = {"recorded": parts[0]["recorded"], "interpreter": parts[0]["interpreter"],
              "results": sorted((r for p in parts for r in p["results"]), key=lambda r: r["index"])}
    target = Path(args.output) if args.output else recorded / COMPARISON
    target.write_text(json.dumps(merged, indent=1))
    for i in range(1, args.jobs + 1):
        (recorded / f"comparison.{i}of{args.jobs}.json").unlink()
    return _summarize(merged, target)


def _summarize(out: dict, target: Path) -> int:
    from collections import Counter

    by_kernel = Counter((r["kernel"], r["kind"]) for r in out["results"])
    print(f"\ncompiled: {out['recorded']}\ninterpreter: {out['interpreter']}")
    for kernel in sorted({k for k, _ in by_kernel}):
        counts = ", ".join(f"{kind} {n}" for (k, kind), n in sorted(by_kernel.items()) if k == kernel)
        print(f"  {kernel}: {counts}")
    total = Counter(r["kind"] for r in out["results"])
    print(f"all {len(out['results'])} cases: {dict(total)}; details in {target}")
    for r in out["results"]:
        if r["kind"] not in ("identical", "nan_payload"):
            worst = [o for o in r.get("outputs", []) if o["kind"] == "differs"]
            extra = f" ({worst[0]['differing']} of {worst[0]['elements']} elements, max {worst[0].get('max_ulp')} ulp)" if worst else \
                f" ({r.get('detail', '')})"
            print(f"  {r['kind']}: {r['kernel']} {r['case_id']}{extra}")
    return 1 if total.get("differs") or total.get("shape_or_dtype") else 0


def both(args) -> int:
    code = record(args)
    if code:
        return code
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, __file__, "compare", "--recorded", args.out, "--jobs", str(args.jobs)]
    return subprocess.run(cmd, env=env).returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("record", "both"):
        p = sub.add_parser(name)
        p.add_argument("--out", default="results/interp_vs_compiled", help="folder for recording.json and outputs.npz")
        p.add_argument("--kernels", default="bundled", help="kernel spec, as --kernels takes it (default: bundled)")
        p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                       help="cuda (compiled); cpu only checks the script's plumbing")
        p.add_argument("--limit", type=int, default=None, help="at most this many cases per kernel")
        if name == "both":
            p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    c = sub.add_parser("compare")
    c.add_argument("--recorded", default="results/interp_vs_compiled")
    c.add_argument("--jobs", type=int, default=1, help="child processes, each a shard of the cases")
    c.add_argument("--shard", default=None, help="i/n: compare only case indexes = i-1 mod n (used by --jobs)")
    c.add_argument("--output", default=None, help="where to write the comparison (default: RECORDED/comparison.json)")
    args = parser.parse_args(argv)
    return {"record": record, "compare": compare, "both": both}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
