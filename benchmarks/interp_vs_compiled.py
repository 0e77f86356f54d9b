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

Besides the gate's cases, a micro suite runs the corrected operations themselves through tiny
kernels on dense inputs (the same inputs both sides, from a fixed seed): every float32 ->
bf16 / fp16 / fp8 conversion on each code's neighbourhood (ties, float32 neighbours, beyond max,
±inf, NaN with both signs), bf16 / fp16 -> fp8 and fp8 -> wider on every code, and bf16
arithmetic (+, -, *, fma, ``a * b + c`` as written, which compiled code may contract into an fma,
minimum, maximum, negation, a / b) on random bit patterns. It records what compiled Triton does
where the correction had to choose (saturation, NaN codes); fnuz conversions exist only on AMD.

``record`` writes ``recording.json`` (the environment and, per entry, the case or micro test, the
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


# ------------------------------------------------------------------------------ micro suite
FLOAT8 = ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")


def micro_names() -> list[str]:
    names = [f"convert:float32->{d}" for d in ("bfloat16", "float16") + FLOAT8]
    names += [f"convert:{s}->{d}" for s in ("bfloat16", "float16") for d in FLOAT8]
    names += ["convert:bfloat16->float16", "convert:float16->bfloat16", "convert:bfloat16->float32"]
    names += [f"convert:{s}->{d}" for s in FLOAT8 for d in ("float32", "float16", "bfloat16")]
    return names + ["bf16_ops"]


def _micro_kernels():
    """The micro suite's kernels, decorated after the device is activated."""
    global _MICRO
    if "_MICRO" in globals():
        return _MICRO
    import triton
    import triton.language as tl

    @triton.jit
    def convert(src_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(out_ptr + offs, tl.load(src_ptr + offs, mask=mask).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def bf16_ops(a_ptr, b_ptr, c_ptr, add_ptr, sub_ptr, mul_ptr, fma_ptr, muladd_ptr, min_ptr, max_ptr, neg_ptr,
                 div_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        a = tl.load(a_ptr + offs, mask=mask)
        b = tl.load(b_ptr + offs, mask=mask)
        c = tl.load(c_ptr + offs, mask=mask)
        tl.store(add_ptr + offs, a + b, mask=mask)
        tl.store(sub_ptr + offs, a - b, mask=mask)
        tl.store(mul_ptr + offs, a * b, mask=mask)
        tl.store(fma_ptr + offs, tl.math.fma(a, b, c), mask=mask)
        tl.store(muladd_ptr + offs, a * b + c, mask=mask)
        tl.store(min_ptr + offs, tl.minimum(a, b), mask=mask)
        tl.store(max_ptr + offs, tl.maximum(a, b), mask=mask)
        tl.store(neg_ptr + offs, -a, mask=mask)
        tl.store(div_ptr + offs, (a / b).to(tl.bfloat16), mask=mask)

    _MICRO = convert, bf16_ops
    return _MICRO


def _micro_inputs(name: str):
    """The input tensors (CPU) of one micro test, deterministic."""
    import numpy as np
    import torch

    def every(dtype_name):  # every code of a 16- or 8-bit format, as that torch dtype
        bits = 8 if dtype_name.startswith("float8") else 16
        codes = np.arange(1 << bits, dtype=np.uint32).astype(np.uint8 if bits == 8 else np.uint16)
        return torch.from_numpy(codes.view(np.int8 if bits == 8 else np.int16)).view(getattr(torch, dtype_name))

    if name == "bf16_ops":
        rng = np.random.default_rng(27)
        bits = rng.integers(0, 1 << 16, size=(3, 1 << 16), dtype=np.uint32).astype(np.uint16)
        return [torch.from_numpy(b.view(np.int16)).view(torch.bfloat16) for b in bits]
    src, dst = name.removeprefix("convert:").split("->")
    if src != "float32":
        return [every(src)]
    values = every(dst).float().double().numpy()
    v = np.unique(values[np.isfinite(values)])
    mids = (v[:-1] + v[1:]) / 2
    beyond = np.array([v[-1] + (v[-1] - v[-2]) / 2, v[-1] + (v[-1] - v[-2]), 2 * v[-1], 1e30])
    with np.errstate(over="ignore"):
        centres = np.concatenate([v, mids, beyond, -beyond]).astype(np.float32)
    x = np.concatenate([centres, np.nextafter(centres, np.float32(np.inf)), np.nextafter(centres, np.float32(-np.inf))])
    nan = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FFFFFFF], dtype=np.uint32).view(np.float32)
    specials = np.array([np.inf, -np.inf, 0.0, -0.0, np.finfo(np.float32).max, float.fromhex("0x1p-149")], np.float32)
    return [torch.from_numpy(np.concatenate([np.unique(x), nan, specials]))]


def run_micro(name: str, device: str):
    """(outputs on the host, ["triton"]) of one micro test."""
    import torch

    convert, bf16_ops = _micro_kernels()
    inputs = [t.to(device) for t in _micro_inputs(name)]
    n, block = inputs[0].numel(), 4096
    grid = ((n + block - 1) // block,)
    if name == "bf16_ops":
        outs = [torch.empty(n, dtype=torch.bfloat16, device=device) for _ in range(9)]
        bf16_ops[grid](*inputs, *outs, n, BLOCK=block)
    else:
        outs = [torch.empty(n, dtype=getattr(torch, name.split("->")[1]), device=device)]
        convert[grid](inputs[0], outs[0], n, BLOCK=block)
    if device != "cpu":
        torch.cuda.synchronize()
    return [o.to("cpu") for o in outs], ["triton"]


def jobs(args, device: str):
    """The entries to run: the micro suite, then the gate's cases (``--only`` picks one)."""
    if args.only in (None, "micro"):
        for name in micro_names():
            yield {"source": "micro", "kernel": "micro", "op": name, "case_id": name, "categories": ["micro"]}
    if args.only in (None, "gate"):
        for case, adapter, categories in selected(args.kernels, device, args.limit):
            yield {"source": "gate", "kernel": adapter.name, "op": case.op, "case_id": case.id,
                   "case": case.to_dict(), "categories": categories}


def run_entry(entry: dict, device: str, adapters: dict):
    if entry["source"] == "micro":
        return run_micro(entry["op"], device)
    from qkcheck.cases.case import Case

    return run_outputs(Case.from_dict(entry["case"]), adapters[entry["kernel"]], device)


def _adapters(kernels: str, device: str) -> dict:
    import qkcheck

    return {a.name: a for a in qkcheck.resolve_kernels(kernels, device=device)}


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

    adapters = _adapters(args.kernels, dev)
    for index, entry in enumerate(jobs(args, dev)):
        entry = {"index": index, **entry}
        try:
            outs, ran = run_entry(entry, dev, adapters)
        except Exception as exc:  # recorded: compare reports the case as not comparable
            entry["error"] = f"{type(exc).__name__}: {exc}"
        else:
            entry["backends"] = ran
            entry["outputs"] = [{"dtype": str(o.dtype).removeprefix("torch."), "shape": list(o.shape)} for o in outs]
            for j, o in enumerate(outs):
                arrays[f"{index}.{j}"] = _raw(o)
        entries.append(entry)
        save()
        print(f"[{index}] {entry['kernel']} {entry['case_id']}: {entry.get('error') or 'ok'}", flush=True)
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
    from qkcheck.kernels import device as _device

    dev = _device.activate("cpu")  # the interpreter, with the correction (kernels.interpreter)
    adapters = _adapters(meta["kernels"], dev)
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
        try:
            outs, ran = run_entry(entry, dev, adapters)
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
            found = classify(o, want, spec["dtype"])
            if entry["source"] == "micro" and found["kind"] == "differs":  # the inputs of the first mismatches
                ins = [t.reshape(-1).float() for t in _micro_inputs(entry["op"])]
                found["inputs"] = [[float(t[f["index"]]) for t in ins] for f in found["first"]]
            row["outputs"].append({"dtype": spec["dtype"], "shape": spec["shape"], **found})
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
        p.add_argument("--only", choices=("gate", "micro"), default=None, help="run only the gate's cases or the micro suite")
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
