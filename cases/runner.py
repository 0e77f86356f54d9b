"""The runner: case x kernel -> Result.

materialize canonical inputs -> the op's oracle record (``oracle.ops.reference(op)``: its
expectation) -> pack to the kernel's layout -> place inputs as views inside NaN/poison-filled buffers -> run (recording the
backend) -> checks:

- ``signature``: the adapter's declared binding matches the external callable's parameters;
- ``raised``: the kernel raised (recorded as a failure of this case; the run goes on);
- ``contract``: output dtype is the requested one, shape (padded as the adapter's
  ``output_layouts`` declare: only the contract's region is read after it), device;
- ``numerics``: the record's ``compare`` of the outputs (read by the record, or by the adapter's
  ``unpack``) against its expectation; on failure the record's ``diagnose`` and, where its
  activations are grouped along K, a K-localization (error by k-group, re-running the kernel on
  one k-group at a time);
- ``inputs_unchanged``: the kernel did not write into its inputs;
- ``determinism``: a repeat run is bitwise identical (unless the adapter declares otherwise);
- ``fake_vs_real``: for torch.library ops, the fake implementation's output metadata;
- ``backend``: the backend that ran is the one the adapter expects;
- ``workspace`` (adapters that declare one): a run with the workspace filled with another
  pattern returns the same bits, and nothing around the workspace was written.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from qkcheck.cases.case import Case
from qkcheck.cases.registry import materialize, op_spec
from qkcheck.oracle.ops import reference
from qkcheck.oracle.reference import Raw

PASS, FAIL, SKIP, ERROR = "pass", "fail", "skip", "error"
POISON_PAD = 7  # elements of poison on each side of, and between the rows of, every input view
K_PROFILE_MAX_GROUPS = 32
FLOAT_DTYPES = ("float16", "bfloat16", "float32")


class CaseTimeout(BaseException):
    """Raised inside a case that ran past its time limit (see ``cases.isolation``). Not an
    ``Exception``: a kernel that catches ``Exception`` around its work (a retry loop) must not
    swallow it and run on past the limit."""


@dataclass
class Check:
    name: str
    outcome: str  # pass | fail | skip
    detail: str = ""


@dataclass
class Result:
    case: dict
    case_id: str
    kernel: str
    op: str
    status: str  # pass | fail | skip | error (the adapter or the harness raised before a verdict)
    device: str
    checks: list[Check] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)
    divergence: dict | None = None
    diagnosis: list[dict] = field(default_factory=list)
    k_profile: dict | None = None
    skip_reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    replay: str = ""
    error: dict | None = None  # status error: {"stage": ..., "exception": ...}
    conventions: dict = field(default_factory=dict)  # the adapter's declared conventions applied

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if c.outcome == FAIL]

    def summary(self) -> str:
        lines = [f"{self.kernel} :: {self.case_id}: {self.status.upper()}"]
        for c in self.failed_checks:
            lines.append(f"  [{c.name}] {c.detail}")
        for d in self.diagnosis[:3]:
            lines.append(f"  diagnosis: {d['sentence']}")
        if self.replay:
            lines.append(f"  replay: {self.replay}")
        return "\n".join(lines)


REGION_ALIGN = 512  # bytes: where each input's region starts in the shared buffer (the allocator's alignment)


def _fill_poison(region, dtype) -> None:
    """Fill a byte region of a device buffer with ``dtype``'s poison, on the device: NaN for
    floats, all-ones for integers."""
    if dtype.is_floating_point:
        region.view(dtype).fill_(float("nan"))
    else:
        region.fill_(255)


def _padded_length(shape) -> int:
    """Elements of the buffer that :func:`_padded_view` places a tensor of ``shape`` in."""
    if len(shape) == 2:
        return POISON_PAD * 2 + shape[0] * (shape[1] + POISON_PAD)
    return int(np.prod(shape, dtype=np.int64)) + 2 * POISON_PAD


def _padded_view(flat, shape):
    """A view of ``shape`` inside the 1-D ``flat`` (at least ``_padded_length(shape)`` elements): POISON_PAD
    elements before and after it, and a 2-D view's rows padded by POISON_PAD elements each."""
    if len(shape) == 2:
        rows, cols = shape
        return flat[POISON_PAD:POISON_PAD + rows * (cols + POISON_PAD)].view(rows, cols + POISON_PAD)[:, :cols]
    return flat[POISON_PAD:_padded_length(shape) - POISON_PAD].view(shape)


class PoisonedInputs:
    """A case's inputs copied into views inside poison (NaN for floats, all-ones for integers):
    padding on each side of every input and between the rows of 2-D ones, so a read outside a view
    returns poison. The inputs of one device share one byte buffer (each in its own region),
    allocated and poisoned on that device (no host image, no pinned copy); one snapshot of that
    buffer serves the inputs-unchanged check, which then costs one comparison on the device for all
    of them. The whole buffer is poisoned first (every byte 0xFF: NaN for every float dtype, -1 for
    signed ints), with REGION_ALIGN bytes more after the last region, so the gaps between regions
    and past the last one read as poison too, and a write anywhere in the buffer outside the views
    fails the check, charged to the input before it."""

    def __init__(self, clean: dict):
        import torch

        self.views: dict = {k: None for k in clean}
        self.regions: dict = {}  # name -> (device, byte start, byte end)
        self.buffers: dict = {}  # device -> (buffer, snapshot)
        by_device: dict = {}
        for name, t in clean.items():
            if t is not None:
                by_device.setdefault(t.device, []).append(name)
        for device, names in by_device.items():
            end = 0
            for name in names:
                t = clean[name]
                start = -(-end // REGION_ALIGN) * REGION_ALIGN
                end = start + _padded_length(tuple(t.shape)) * t.element_size()
                self.regions[name] = (device, start, end)
            buf = torch.full((end + REGION_ALIGN,), 0xFF, dtype=torch.uint8, device=device)
            for name in names:
                _, start, stop = self.regions[name]
                _fill_poison(buf[start:stop], clean[name].dtype)
            for name in names:
                _, start, stop = self.regions[name]
                self.views[name] = _padded_view(buf[start:stop].view(clean[name].dtype), tuple(clean[name].shape))
                self.views[name].copy_(clean[name])
            self.buffers[device] = (buf, buf.clone())

    def changed_flag(self):
        """Whether any byte of the inputs' buffers (views and their poison) changed since they were
        made: computed on the device and queued for a host copy (read it after a synchronization)."""
        return [_host_copy((buf != snap).any()) for buf, snap in self.buffers.values()]

    def changed(self, flag) -> tuple[list[str], list[str]]:
        """After a synchronization: (inputs whose values changed, inputs whose poison around the
        view changed: writes outside the input, out of bounds)."""
        if not any(bool(f) for f in flag):
            return [], []
        values, padding = [], []
        for name, (device, start, stop) in self.regions.items():
            buf, snap = self.buffers[device]
            view = self.views[name]
            if not torch_equal_bits(view, _padded_view(snap[start:stop].view(view.dtype), tuple(view.shape))):
                values.append(name)
            elif not torch_equal_bits(buf[start:stop], snap[start:stop]):
                padding.append(name)
        for device, (buf, snap) in self.buffers.items():  # the bytes between regions and past the last
            regions = sorted((s, e, n) for n, (d, s, e) in self.regions.items() if d == device)
            for (_, lo, name), following in zip(regions, [*regions[1:], None]):
                hi = following[0] if following else buf.numel()
                if hi > lo and not torch_equal_bits(buf[lo:hi], snap[lo:hi]):
                    padding.append(f"{name} (beyond its padding)")
        return values, list(dict.fromkeys(padding))


# NaN bit patterns with a payload no arithmetic produces (canonical NaNs are 0x7E00 / 0x7FC0.. )
SENTINEL_BITS = {2: 0x7D5A, 4: 0x7FD5A5A5}
SENTINEL_BYTE = 0xA5  # other element sizes: every byte 0xA5


class OutputBuffer:
    """A preallocated output for kernels that write into one (``adapter.out_param``): the view
    sits inside a larger buffer, with padding around it and between its rows, every element of it
    filled with a sentinel. After the call, padding that changed is an out-of-bounds write and
    view elements still holding the sentinel were never written."""

    def __init__(self, shape, dtype, device, region=None):
        import torch

        self.shape = tuple(shape)
        self.region = None if region is None or tuple(region) == self.shape else tuple(region)
        rows, cols = (self.shape if len(self.shape) == 2 else (1, int(np.prod(self.shape))))
        self.buf = torch.empty(_padded_length((rows, cols)), dtype=dtype, device=device)
        raw = self.buf.view(torch.uint8)
        size = self.buf.element_size()
        if size in SENTINEL_BITS and self.buf.is_floating_point():
            int_dtype = {2: torch.int16, 4: torch.int32}[size]
            bits = SENTINEL_BITS[size]
            bits = bits - (1 << (8 * size)) if bits >= 1 << (8 * size - 1) else bits
            self.buf.view(int_dtype).fill_(bits)
        else:
            raw.fill_(SENTINEL_BYTE)
        self.pristine = raw.clone()
        inner = _padded_view(self.buf, (rows, cols))
        self.view = inner.reshape(self.shape) if len(self.shape) != 2 else inner
        mask = torch.ones(self.buf.numel(), dtype=torch.bool, device=device)
        _padded_view(mask, (rows, cols))[:] = False
        self.canary = mask

    def problems(self) -> list[str]:
        import torch

        size = self.buf.element_size()
        now = self.buf.view(torch.uint8).view(-1, size)
        before = self.pristine.view(-1, size)
        changed = (now != before).any(dim=1)
        found = []
        oob = (changed & self.canary).nonzero().flatten()
        if oob.numel():
            found.append(f"{oob.numel()} element(s) outside the output were overwritten (out-of-bounds writes; "
                         f"first at buffer offset {int(oob[0]) - POISON_PAD} relative to the output's start)")
        inside = ~self.canary
        if self.region is not None:  # a declared padding: only the contract's region must be written
            keep = torch.zeros(self.shape, dtype=torch.bool, device=self.buf.device)
            keep[: self.region[0], : self.region[1]] = True
            inside = inside.clone()
            inside[~self.canary] = keep.reshape(-1)
        unwritten = (~changed & inside).nonzero().flatten()
        if unwritten.numel():
            idx = (~self.canary).nonzero().flatten()
            first = int((idx == unwritten[0]).nonzero()[0])
            pos = np.unravel_index(first, self.shape)
            found.append(f"{unwritten.numel()} output element(s) were never written (first at "
                         f"{list(map(int, pos))}; they still hold the sentinel)")
        return found


WORKSPACE_FILLS = (0xFF, 0x5A)  # poison (NaN / -1), then a finite pattern (0x5A5A: 203.25 in fp16)


class WorkspaceBuffer:
    """A declared workspace (``kernels.adapters.Workspace``): a view of its shape inside a flat
    buffer with POISON_PAD elements of guard on each side, every byte ``fill``. ``problems()``
    names writes into the guard."""

    def __init__(self, spec, shape, dtype, device, fill: int):
        import torch

        self.name, self.fill = spec.name, fill
        n = int(np.prod(shape, dtype=np.int64))
        self.buf = torch.empty(n + 2 * POISON_PAD, dtype=dtype, device=device)
        self.buf.view(torch.uint8).fill_(fill)
        self.view = self.buf[POISON_PAD:POISON_PAD + n].view(shape)
        self.n = n

    def problems(self) -> list[str]:
        import torch

        raw = self.buf.view(torch.uint8).view(-1, self.buf.element_size())
        bad = (raw != self.fill).any(dim=1)
        bad[POISON_PAD:POISON_PAD + self.n] = False
        if bool(bad.any()):
            first = int(bad.nonzero()[0]) - POISON_PAD
            return [f"{int(bad.sum())} element(s) around workspace {self.name!r} were overwritten (out-of-bounds "
                    f"writes; first at offset {first if first < 0 else first - self.n} "
                    f"{'before its start' if first < 0 else 'past its end'})"]
        return []


def _describe_fill(fill: int, dtype) -> str:
    import torch

    one = torch.full((1,), fill, dtype=torch.uint8).repeat(torch.empty((), dtype=dtype).element_size())
    value = one.view(dtype)[0].item()
    return f"bytes {fill:#04x} ({value!r} as {_dtype_name(dtype)})"


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def skip_reason(case: Case, device: str, adapter=None) -> str | None:
    """Why this case cannot be checked on this device (an interpreter defect), or None."""
    if device != "cpu" or (adapter is not None and not adapter.triton):
        return None
    from qkcheck.kernels import probes

    spec = op_spec(case.op)
    p = case.p
    out_dtypes = [o.dtype for o in spec.outputs(case.dims, p)]
    fp8 = any(d.startswith("float8") for d in out_dtypes) or spec.fp8_conversion(p)
    plain = [d for d in out_dtypes if d in FLOAT_DTYPES]
    compute = spec.compute_dtype(p)  # int8/fp8 dots: the probes concern their float32 epilogue
    return probes.skip_reason(compute_dtype=compute if compute in FLOAT_DTYPES else "float32", fp8_output=fp8,
                              output_dtype=plain[0] if plain else None)


def raised_skip_reason(exc: BaseException, device: str) -> str | None:
    """Why an exception from an adapter's pack or call is the interpreter's known defect (a probe
    raised the same, kernels.probes.defect_raised), not the kernel's; None otherwise."""
    if device != "cpu":
        return None
    from qkcheck.kernels import probes

    return probes.defect_raised(exc)


def as_outputs(out) -> tuple:
    """A kernel's return value as a tuple of tensors (one op may return several); anything else
    raises TypeError naming what came back."""
    import torch

    outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    bad = [type(o).__name__ for o in outs if not isinstance(o, torch.Tensor)]
    if not outs or bad:
        raise TypeError(f"the adapter's call returned {type(out).__name__}"
                        + (f" holding {', '.join(bad)}" if bad and isinstance(out, (tuple, list)) else "")
                        + "; expected a torch.Tensor or a tuple of them (or None with out_param set)")
    return outs


def _bits_equal(a, b) -> bool:
    a, b = as_outputs(a), as_outputs(b)
    if len(a) != len(b):
        return False
    return all(x.dtype == y.dtype and x.shape == y.shape and torch_equal_bits(x, y) for x, y in zip(a, b))


def torch_equal_bits(a, b) -> bool:
    import torch

    return torch.equal(_flat(a).view(torch.uint8), _flat(b).view(torch.uint8))


def _flat(t):
    """``t`` as a 1-D tensor of stride 1: a size-1 view keeps an odd stride under .contiguous()
    (a column-major [1, G] output), which a byte view refuses; such a one is copied."""
    import torch

    t = t.contiguous().reshape(-1)
    if t.numel() and t.stride(0) != 1:
        t = t.clone(memory_format=torch.contiguous_format)
    return t


def _wait(device: str) -> None:
    """Wait for the device: every launch and host copy queued on the current stream completes."""
    import torch

    if device == "cuda":
        torch.cuda.current_stream().synchronize()


def _host_copy(t):
    """A host copy of ``t`` queued on the current stream without waiting (pinned memory) for a
    CUDA/ROCm tensor; an immediate copy for any other. Read it only after a synchronization."""
    if t.is_cuda:
        return t.detach().to("cpu", non_blocking=True)
    return t.detach().to("cpu", copy=True)


def effective_config(case: Case, adapter) -> dict:
    """The config that ran: the case's own, or the kernel's default choice for this shape."""
    if case.cfg:
        return case.cfg
    if adapter.default_config is None:
        return {}
    return dict(adapter.default_config(case.dims, case.p))


class _Run:
    def __init__(self, adapter, tensors, params, config, new_output=None, new_workspace=None):
        self.adapter, self.tensors, self.params, self.config = adapter, tensors, params, config
        self.new_output = new_output  # () -> OutputBuffer, for kernels that write into a given output
        self.new_workspace = new_workspace  # (fill) -> [WorkspaceBuffer], for kernels that take a workspace
        self.workspaces: list = []  # every workspace handed to the kernel, for the guard check

    def __call__(self, tensors=None, fill: int = WORKSPACE_FILLS[0]):
        from qkcheck.kernels import backends

        tensors = tensors or self.tensors
        buffer = None
        if self.adapter.out_param and self.adapter.out_param not in tensors:
            buffer = self.new_output()
            tensors = {**tensors, self.adapter.out_param: buffer.view}
        if self.new_workspace is not None and any(w.name not in tensors for w in self.adapter.workspace):
            made = self.new_workspace(fill)
            self.workspaces += made
            tensors = {**tensors, **{w.name: w.view for w in made}}
        with backends.recording() as ran:
            out = self.adapter.call(tensors, self.params, self.config)
        if out is None and buffer is not None:
            out = buffer.view
        return out, list(ran)


def _meta_key(t) -> tuple | None:
    if t is None:
        return None
    return (tuple(t.shape), tuple(t.stride()), t.storage_offset(), str(t.dtype), t.device.type)


def _adapter_cache(adapter, name: str) -> dict:
    """A per-adapter-object memo (a replaced or rebuilt adapter starts empty)."""
    cache = adapter.__dict__.get(name)
    if cache is None:
        cache = {}
        object.__setattr__(adapter, name, cache)  # adapters are frozen dataclasses
    return cache


def fake_metadata(adapter, tensors, params, config, out_template=None):
    """The fake implementation's output metadata, memoized per adapter on the inputs' metadata,
    the params and the config: a fake sees metadata only (it runs on fake tensors), so the same
    metadata always gives the same answer; a fake that raises is not memoized."""
    key = (tuple((k, _meta_key(v)) for k, v in sorted(tensors.items())), repr(sorted(params.items())),
           repr(sorted((config or {}).items())), _meta_key(out_template))
    cache = _adapter_cache(adapter, "_qkcheck_fake_memo")
    if key not in cache:
        cache[key] = _fake_metadata(adapter, tensors, params, config, out_template)
    return cache[key]


FAKE_INPUTS_KEPT = 256  # fake inputs kept per adapter, by metadata, for later fake calls


def _fake_state(adapter):
    """One fake tensor mode per adapter, and the fake inputs made in it (by metadata): siblings of
    a fuzz case share most of their inputs' metadata (often all but the activations' row count),
    so a later fake call makes only the fake inputs it has not seen."""
    state = _adapter_cache(adapter, "_qkcheck_fake_mode")
    if not state:
        from torch._subclasses.fake_tensor import FakeTensorMode

        state["mode"], state["inputs"] = FakeTensorMode(allow_non_fake_inputs=False), {}
    return state["mode"], state["inputs"]


def _fake_like(mode, made: dict, t):
    """A fake tensor with ``t``'s metadata (inside ``mode``). A tensor at offset 0 of its storage
    is made by the fake mode's own factory (``empty_strided``: same shape, strides, dtype and
    device), several times cheaper than converting it with ``from_tensor``, and kept in ``made``
    for the next call; others (views into a larger buffer) are converted."""
    import torch

    if t.storage_offset() != 0:
        return mode.from_tensor(t)
    key = _meta_key(t)
    fake = made.get(key)
    if fake is None or _meta_key(fake) != key:  # new, or a fake implementation changed its metadata
        if len(made) >= FAKE_INPUTS_KEPT:
            made.clear()
        fake = made[key] = torch.empty_strided(tuple(t.shape), t.stride(), dtype=t.dtype, device=t.device)
    return fake


def _fake_metadata(adapter, tensors, params, config, out_template=None):
    mode, made = _fake_state(adapter)
    with mode:
        fake = {k: (None if v is None else _fake_like(mode, made, v)) for k, v in tensors.items()}
        if adapter.out_param and out_template is not None:
            fake[adapter.out_param] = mode.from_tensor(out_template)
        out = adapter.call(fake, params, config)
        if out is None and adapter.out_param:
            out = fake[adapter.out_param]
    return [(tuple(o.shape), o.dtype, o.device.type) for o in as_outputs(out)]


def _k_profile(ref, case, problem, run, adapter, device, exp_kwargs) -> dict | None:
    """Error by k-group: re-run with activations nonzero on one k-group at a time (ops whose
    activations ``x`` are grouped along K: ``ref.k_group_size``)."""
    if ref.k_group_size is None:
        return None
    k = np.asarray(problem["x"]).shape[1]
    g = ref.k_group_size(problem)
    groups = -(-k // g)  # a partial last group (partial_groups) counts as one
    if groups < 2 or groups > K_PROFILE_MAX_GROUPS:
        return None
    ratios = []
    for gi in range(groups):
        sub = dict(problem)
        x = np.zeros_like(np.asarray(problem["x"], np.float64))
        x[:, gi * g:(gi + 1) * g] = problem["x"][:, gi * g:(gi + 1) * g]
        sub["x"], sub["bias"] = x, None
        e = ref.expect(sub, **exp_kwargs)
        out, _ = run(adapter.pack(sub, case.p, device))
        d = ref.compare(e, ref.read(e, _raw_outputs(as_outputs(out))))
        ratios.append(0.0 if d is None else float(d.max_ratio))
    block_k = effective_config(case, adapter).get("block_k")
    return {"group_size": g, "groups": groups, "max_ratio": ratios, "block_k": block_k}


def contract_problems(promised, outs, device: str, layouts=None) -> list[str]:
    """What differs between the outputs a kernel returned and the op's contract (``layouts``: the
    adapter's ``output_layouts``, an output declared padded is held to its padded shape)."""
    import torch

    layouts = layouts or {}
    if len(outs) != len(promised):
        return [f"returned {len(outs)} output(s), the op promises {len(promised)} "
                f"({', '.join(o.name for o in promised)})"]
    problems = []
    for want, got in zip(promised, outs):
        name = "" if len(promised) == 1 else f"{want.name}: "
        if _dtype_name(got.dtype) != want.dtype:
            problems.append(f"{name}output dtype {_dtype_name(got.dtype)}, requested {want.dtype}")
        layout = layouts.get(want.name)
        shape = tuple(want.shape) if layout is None else layout.shape(tuple(want.shape))
        if tuple(got.shape) != shape:
            problems.append(f"{name}output shape {list(got.shape)}, expected {list(shape)}"
                            + ("" if layout is None else f" (the contract's {list(want.shape)} {layout}, as declared)"))
        if got.device.type != torch.device(device).type:
            problems.append(f"{name}output on {got.device.type}, inputs on {device}")
    return problems


@dataclass
class _Meta:
    """Output metadata shaped like a tensor, for checking a fake's outputs against the contract."""

    shape: tuple
    dtype: Any
    device_type: str

    @property
    def device(self):
        import torch

        return torch.device(self.device_type)


def _describe_meta(meta) -> str:
    return ", ".join(f"shape {list(s)} dtype {_dtype_name(d)} on {dev}" for s, d, dev in meta)


def contract_regions(promised, outs, layouts) -> tuple:
    """The outputs as the contract reads them: an output declared padded (``layouts``) and
    returned in its padded shape is cut to the contract's region; the padding is never read."""
    if not layouts or len(outs) != len(promised):
        return tuple(outs)
    cut = []
    for want, got in zip(promised, outs):
        layout = layouts.get(want.name)
        if layout is not None and tuple(got.shape) == layout.shape(tuple(want.shape)):
            got = got[: want.shape[0], : want.shape[1]]
        cut.append(got)
    return tuple(cut)


def _numerics(ref, spec, case, expectation, outs, res, adapter):
    """The numerics check through the op's oracle record; returns (divergence or None, actual)."""
    raw = _raw_outputs(outs)
    promised = spec.outputs(case.dims, case.p)
    why = ref.unreadable(expectation, raw, [o.dtype for o in promised])
    if not why and adapter.unpack is None and (len(raw) != len(promised) or any(
            tuple(r.array.shape) != tuple(o.shape) for r, o in zip(raw, promised))):
        why = "the outputs' shapes differ from the contract; not compared"
    if why:
        res.checks.append(Check("numerics", SKIP, why))
        return None, None
    actual = adapter.unpack(outs, case.p) if adapter.unpack else ref.read(expectation, raw)
    div = ref.compare(expectation, actual)
    res.checks.append(Check("numerics", FAIL if div else PASS, div.summary() if div else ""))
    return div, actual


def _raw_numpy(t) -> np.ndarray:
    """A tensor's elements as NumPy: integers as they are, floats of 8 bits as their bit patterns,
    other floats as float64 values (widened through float32)."""
    import torch

    t = t.detach().cpu()
    if t.element_size() == 1 and t.is_floating_point():
        return t.view(torch.uint8).numpy()
    if t.is_floating_point():
        return t.float().numpy().astype(np.float64)
    return t.numpy()


def _raw_outputs(outs) -> list[Raw]:
    """A kernel's output tensors as the oracle reads them (``oracle.reference.Raw``)."""
    return [Raw(_raw_numpy(o), _dtype_name(o.dtype)) for o in outs]


def run_case(case: Case, adapter, device: str, *, diagnose_failures: bool = True) -> Result:
    """Run ``case`` on ``adapter`` and check it. Never raises for what the adapter or its kernel
    does (only CaseTimeout and KeyboardInterrupt pass): a kernel that raises fails the case; an
    exception anywhere else (the adapter's pack, an output that is not tensors, the harness itself),
    including SystemExit, gives status ``error`` with the stage it came from."""
    stage = ["setup"]
    t_start = time.perf_counter()
    try:
        return _run_case(case, adapter, device, diagnose_failures, stage)
    except (CaseTimeout, KeyboardInterrupt):
        raise
    except BaseException as exc:  # noqa: BLE001 — any escape is this case's recorded error, never a lost result
        known = raised_skip_reason(exc, device) if stage[0] == "pack" else None
        if known:  # a Triton kernel the adapter's pack launches hit a probed interpreter defect
            return Result(case=case.to_dict(), case_id=case.id, kernel=getattr(adapter, "name", "?"), op=case.op,
                          status=SKIP, device=device, skip_reason=known,
                          timings={"total": round(time.perf_counter() - t_start, 6)})
        what = traceback.format_exception_only(type(exc), exc)[-1].strip()
        res = Result(case=case.to_dict(), case_id=case.id, kernel=getattr(adapter, "name", "?"), op=case.op,
                     status=ERROR, device=device,
                     error={"stage": stage[0], "exception": what,
                            "traceback": "".join(traceback.format_exception(exc))[-4000:]})
        res.checks.append(Check("harness", FAIL, f"{STAGES.get(stage[0], stage[0])} raised {what}"))
        res.timings = {"total": round(time.perf_counter() - t_start, 6)}
        return res


STAGES = {
    "setup": "checking the case and the adapter's signature",
    "materialize": "making the case's inputs", "oracle": "the oracle",
    "conventions": "the adapter's declared conventions",
    "pack": "the adapter's pack (or allocating the poisoned inputs)",
    "kernel": "the adapter's call", "outputs": "reading the adapter's outputs (call must return tensors)",
    "checks": "the checks", "fake": "the fake implementation check", "diagnosis": "the diagnosis",
}


def _run_case(case: Case, adapter, device: str, diagnose_failures: bool, stage: list) -> Result:
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    res = Result(case=case.to_dict(), case_id=case.id, kernel=adapter.name, op=case.op, status=PASS, device=device)

    def tick(name, t0):
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0

    def finish(status):
        res.status = status
        timings["total"] = time.perf_counter() - t_start
        res.timings = {k: round(v, 6) for k, v in timings.items()}
        return res

    # an interpreter defect, or a case outside the space the adapter declares (supports, params, dims, constraint)
    from qkcheck.cases.space import undeclared

    reason = (skip_reason(case, device, adapter) or adapter.outside(case.p, case.dims, case.cfg)
              or undeclared(op_spec(case.op), adapter, case))
    if reason:
        res.skip_reason = reason
        return finish(SKIP)

    signature = _adapter_cache(adapter, "_qkcheck_signature_memo")
    target = id(adapter.target)
    if target not in signature:  # a callable's parameters do not change during a run
        signature[target] = adapter.check_signature()
    drift = signature[target]
    res.checks.append(Check("signature", FAIL if drift else PASS, drift or ""))
    if drift:
        return finish(FAIL)

    t0 = time.perf_counter()
    stage[0] = "materialize"
    problem = materialize(case)
    tick("materialize", t0)
    t0 = time.perf_counter()
    exact = case.regime == "exact"
    p = case.p
    spec = op_spec(case.op)
    ref = reference(case.op)
    promised = spec.outputs(case.dims, p)
    layouts = adapter.output_layouts
    unknown = sorted(set(layouts) - {o.name for o in promised})
    if unknown:
        raise ValueError(f"output_layouts names {unknown}, which {case.op} does not return "
                         f"(its outputs: {', '.join(o.name for o in promised)})")
    stage[0] = "conventions"
    conventions = adapter.conventions_for(p, case.dims, effective_config(case, adapter))
    if conventions:  # the engine's documented choices, answered for instead of the strict default
        ref.check_conventions(conventions)
        problem = {**problem, **conventions}
        res.conventions = conventions
    exp_kwargs = dict(exact=exact, compute_dtype=spec.compute_dtype(p), out_dtype=spec.out_dtype(p))
    stage[0] = "oracle"
    expectation = ref.expect(problem, **exp_kwargs)
    tick("oracle", t0)

    t0 = time.perf_counter()
    stage[0] = "pack"
    clean = adapter.pack(problem, p, device)
    inputs = PoisonedInputs(clean)
    tensors = dict(inputs.views)
    out_buffer = new_output = None
    if adapter.out_param:
        from qkcheck.kernels.torch_io import torch_dtype

        want = promised[0]
        layout = layouts.get(want.name)

        def new_output():  # a declared padding is allocated; only the contract's region must be written
            if layout is None:
                return OutputBuffer(want.shape, torch_dtype(want.dtype), device)
            return OutputBuffer(layout.shape(tuple(want.shape)), torch_dtype(want.dtype), device, region=want.shape)

        out_buffer = new_output()
        tensors[adapter.out_param] = out_buffer.view
    new_workspace = None
    if adapter.workspace:
        from qkcheck.kernels.torch_io import torch_dtype

        cfg_now = effective_config(case, adapter)
        ws_specs = [(w, w.shape_for(case.dims, p, cfg_now), torch_dtype(w.dtype_for(p))) for w in adapter.workspace]

        def new_workspace(fill):
            return [WorkspaceBuffer(w, shape, dtype, device, fill) for w, shape, dtype in ws_specs]
    run = _Run(adapter, tensors, p, case.cfg, new_output, new_workspace)
    tick("pack", t0)

    # Everything from the first launch to the checks is queued on the device without waiting
    # for it: the outputs' host copies, the inputs-unchanged flags and the repeat run for the
    # determinism check; one synchronization then serves them all (fewer round trips per case
    # matter most when several processes share one GPU).
    t0 = time.perf_counter()
    stage[0] = "kernel"
    try:
        out, ran = run()
    except (Exception, SystemExit) as exc:  # the kernel's failure is this case's failure, not the run's (a
        # CaseTimeout, a BaseException, passes)
        tick("kernel", t0)
        known = raised_skip_reason(exc, device)
        if known:
            res.skip_reason = known
            return finish(SKIP)
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        res.checks.append(Check("raised", FAIL, f"the kernel raised {tb}"))
        return finish(FAIL)
    res.backends = ran
    if out is None and out_buffer is not None:  # kernels that only write into the given output
        out = out_buffer.view
    stage[0] = "outputs"
    outs_full = as_outputs(out)
    outs = contract_regions(promised, outs_full, layouts)  # a declared padding is never read
    host_outs = [_host_copy(o) for o in outs]  # taken now: a repeat run may reuse the output's memory
    changed_flag = inputs.changed_flag()
    host_again = repeat_error = None
    if adapter.deterministic:
        try:
            again, _ = run({k: v for k, v in tensors.items() if k != adapter.out_param})  # fresh output, if any
        except Exception as exc:
            repeat_error = traceback.format_exception_only(type(exc), exc)[-1].strip()
        else:
            host_again = [_host_copy(o) for o in contract_regions(promised, as_outputs(again), layouts)]
    host_other = other_error = None
    if adapter.workspace:  # the same inputs, the workspace filled with another pattern
        try:
            other, _ = run({k: v for k, v in tensors.items() if k != adapter.out_param}, fill=WORKSPACE_FILLS[1])
        except Exception as exc:
            other_error = traceback.format_exception_only(type(exc), exc)[-1].strip()
        else:
            host_other = [_host_copy(o) for o in contract_regions(promised, as_outputs(other), layouts)]
    _wait(device)  # every launch and copy above
    changed, around = inputs.changed(changed_flag)
    tick("kernel", t0)

    t0 = time.perf_counter()
    stage[0] = "checks"
    problems = contract_problems(promised, outs_full, device, layouts)
    res.checks.append(Check("contract", FAIL if problems else PASS, "; ".join(problems)))

    div, actual = _numerics(ref, spec, case, expectation, host_outs, res, adapter)
    if out_buffer is not None:
        found = out_buffer.problems()
        res.checks.append(Check("output_memory", FAIL if found else PASS, "; ".join(found)))
    wrote = ([f"the kernel wrote into its inputs: {', '.join(changed)}"] if changed else []) + (
        [f"the kernel wrote outside its inputs, into the poison around {', '.join(around)} (out-of-bounds writes)"]
        if around else [])
    res.checks.append(Check("inputs_unchanged", FAIL if wrote else PASS, "; ".join(wrote)))
    if adapter.deterministic:
        same = repeat_error is None and _bits_equal(host_again, host_outs)
        res.checks.append(Check("determinism", PASS if same else FAIL,
                                "" if same else f"the repeat run raised {repeat_error}" if repeat_error
                                else "a repeat run with the same inputs returned different bits"))
    if adapter.workspace:
        found = [msg for w in run.workspaces for msg in w.problems()]
        if other_error is not None:
            found.append(f"the run with the workspace filled with other contents raised {other_error}")
        elif not _bits_equal(host_other, host_outs):
            ws = run.workspaces[0]
            found.append(f"the output depends on the workspace's initial contents: filled with "
                         f"{_describe_fill(WORKSPACE_FILLS[0], ws.buf.dtype)} and with "
                         f"{_describe_fill(WORKSPACE_FILLS[1], ws.buf.dtype)}, the same inputs returned different bits")
        res.checks.append(Check("workspace", FAIL if found else PASS, "; ".join(dict.fromkeys(found))))
    tick("checks", t0)

    if adapter.custom_op:
        t0 = time.perf_counter()
        try:
            fake_in = {**clean, **{w.name: w.view for w in run.workspaces[:len(adapter.workspace)]}}
            meta = fake_metadata(adapter, fake_in, p, case.cfg, None if out_buffer is None else out_buffer.view)
            real = [(tuple(o.shape), o.dtype, o.device.type) for o in outs_full]
            broken = contract_problems(promised, [_Meta(*m) for m in meta], device, layouts)
            ok = meta == real and not broken
            detail = "; ".join(([] if meta == real else [f"fake says {_describe_meta(meta)}; real gives {_describe_meta(real)}"])
                               + [f"fake: {b}" for b in broken])
        except Exception as exc:
            ok, detail = False, f"the fake implementation raised {type(exc).__name__}: {exc}"
        res.checks.append(Check("fake_vs_real", PASS if ok else FAIL, detail))
        tick("checks", t0)

    want_backend = adapter.expected_backend
    if callable(want_backend):  # a declared expectation that depends on the case and the platform
        want_backend = want_backend(case.p, device)
    if want_backend:
        wrong = [b for b in ran if b != want_backend] or ([] if ran else ["(none recorded)"])
        res.checks.append(Check("backend", FAIL if wrong else PASS,
                                f"ran on {', '.join(wrong)}, {want_backend} expected" if wrong else ""))

    stage[0] = "diagnosis"
    if div is not None:
        res.divergence = div.to_dict()
        if diagnose_failures:
            t0 = time.perf_counter()
            cfg = effective_config(case, adapter)  # the tiles that ran, and the inputs' padding (poison)
            ctx = {**{key: cfg.get(key) for key in ("block_k", "block_n", "block_m", "split_k")},
                   "input_row_pad": POISON_PAD}
            res.diagnosis = [asdict(f) for f in ref.diagnose(problem, actual, context=ctx, **exp_kwargs)]
            try:
                res.k_profile = _k_profile(ref, case, problem, run, adapter, device, exp_kwargs)
            except Exception as exc:  # localization is best effort; never lose the result
                res.k_profile = {"error": f"{type(exc).__name__}: {exc}"}
            tick("diagnosis", t0)

    return finish(FAIL if res.failed_checks else PASS)

