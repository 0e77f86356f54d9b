"""What each op's cases may hold, as data: shape dimensions, parameter domains, the kernel
config tunables and the cross-field rules (group size divides K, ...). Used to validate cases
and case files, and by the grid and the hypothesis strategies to draw only valid cases."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

TILE_SIZES = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class Output:
    """One output of an op, as its contract promises it: name, shape, dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str


def _gemm_outputs(dims, params) -> tuple[Output, ...]:
    return (Output("out", (dims["m"], dims["n"]), params["out_dtype"]),)


@dataclass(frozen=True)
class OpSpec:
    """An op's case space and contract.

    ``kind`` says how its output is judged: ``"gemm"`` (one float output within a per-element
    bound), ``"quant"`` (codes and scales, compared code for code). ``compute_dtype`` and
    ``out_dtype`` name the dtypes the interpreter probes and the oracle's bound need;
    ``outputs`` is the output contract (dtype, shape) the runner checks.
    """

    op: str
    shape_keys: tuple[str, ...]
    params: dict[str, tuple[Any, ...]]  # name -> allowed values
    tunables: dict[str, tuple[int, ...]]  # config name -> allowed values
    rules: tuple[Callable[["Case"], str | None], ...] = ()  # noqa: F821 — return an error or None
    kind: str = "gemm"
    compute_dtype: Callable[[dict], str] = lambda p: p["act_dtype"]
    out_dtype: Callable[[dict], str] = lambda p: p["out_dtype"]
    outputs: Callable[[dict, dict], tuple[Output, ...]] = _gemm_outputs
    # True where the kernel converts values to fp8 inside (in-kernel activation quantization):
    # the interpreter's fp8-conversion defect applies even though no output is fp8
    fp8_conversion: Callable[[dict], bool] = lambda p: False
    # (problem, actual, *, compute_dtype, out_dtype, context) -> findings (objects with
    # ``hypothesis`` and ``sentence``); None = the oracle's GEMM catalogue (oracle.diagnosis)
    diagnose: Callable[..., list] | None = None

    def validate(self, case) -> None:
        from qkcheck.cases.case import CaseError

        dims, params, cfg = case.dims, case.p, case.cfg
        if set(dims) != set(self.shape_keys):
            raise CaseError(f"{self.op}: shape has keys {sorted(dims)}, expected {list(self.shape_keys)}")
        for k, v in dims.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise CaseError(f"{self.op}: shape[{k!r}]={v!r} must be a non-negative integer")
        missing = sorted(set(self.params) - set(params))
        if missing:
            raise CaseError(f"{self.op}: params is missing {missing} (each of {sorted(self.params)} is required)")
        for k, v in params.items():
            if k not in self.params:
                raise CaseError(f"{self.op}: unknown param {k!r} (allowed: {sorted(self.params)})")
            allowed = self.params[k]
            if v not in allowed or type(v) is not type(allowed[0]):
                raise CaseError(f"{self.op}: params[{k!r}]={v!r} is not allowed (allowed: {', '.join(map(repr, allowed))})")
        for k, v in cfg.items():
            if k not in self.tunables:
                raise CaseError(f"{self.op}: unknown config key {k!r} (tunables: {sorted(self.tunables)})")
            if v not in self.tunables[k] or isinstance(v, bool):
                raise CaseError(f"{self.op}: config[{k!r}]={v!r} is not allowed (allowed: {', '.join(map(str, self.tunables[k]))})")
        for rule in self.rules:
            msg = rule(case)
            if msg:
                raise CaseError(f"{self.op}: {msg}")


def _group_divides_k(case) -> str | None:
    g, k = case.p["group_size"], case.dims["k"]
    if g != -1 and k % g:
        return f"group_size={g} must divide K={k} (allowed: 32, 64, 128, -1); pick K a multiple of {g}"
    return None


def _packing_fits(case) -> str | None:
    k, n, layout = case.dims["k"], case.dims["n"], case.p["layout"]
    if layout == "awq" and n % 8:
        return f"layout 'awq' packs 8 columns per int32 word: N={n} must be a multiple of 8"
    if k % 8:
        return f"K={k} must be a multiple of 8 (int4 codes are packed 8 per int32 word / 2 per byte along K)"
    return None


def _config_complete(case) -> str | None:
    cfg = case.cfg
    if cfg and not {"block_m", "block_n", "block_k"} <= set(cfg):
        return f"config {cfg} must give block_m, block_n and block_k together (or be empty for the kernel's default)"
    return None


OP_SPECS: dict[str, OpSpec] = {
    s.op: s
    for s in (
        OpSpec(
            "w4a16_gemm",
            shape_keys=("m", "n", "k"),
            params={
                "group_size": (32, 64, 128, -1),
                "zero_points": (False, True),
                "layout": ("gptq", "awq", "nibble"),
                "act_dtype": ("float16", "bfloat16"),
                "out_dtype": ("float16", "bfloat16", "float32"),
                "bias": (False, True),
            },
            tunables={"block_m": TILE_SIZES, "block_n": TILE_SIZES, "block_k": TILE_SIZES,
                      "split_k": (1, 2, 4), "group_m": (1, 4, 8)},
            rules=(_group_divides_k, _packing_fits, _config_complete),
        ),
    )
}


def _families() -> None:
    from qkcheck.cases import families

    for mod in families.modules():
        for spec in getattr(mod, "SPECS", ()):
            if spec.op in OP_SPECS:
                raise RuntimeError(f"{mod.__name__} defines op {spec.op!r} again")
            OP_SPECS[spec.op] = spec


_families()


def op_spec(op: str) -> OpSpec:
    from qkcheck.cases.case import CaseError

    try:
        return OP_SPECS[op]
    except KeyError:
        raise CaseError(f"unknown op {op!r} (allowed: {', '.join(sorted(OP_SPECS))})") from None


def validate_adapter(adapter) -> None:
    """An adapter must declare an op that exists and only layouts/tunables that op has."""
    from qkcheck.kernels.adapters import AdapterError

    if adapter.op not in OP_SPECS:
        raise AdapterError(f"adapter {adapter.name!r}: op {adapter.op!r} is unknown (allowed: {', '.join(sorted(OP_SPECS))})")
    spec = OP_SPECS[adapter.op]
    layouts = spec.params.get("layout", ())
    bad = sorted(set(adapter.layouts) - set(layouts))
    if bad:
        raise AdapterError(f"adapter {adapter.name!r}: declares layouts {bad} that {adapter.op} does not have "
                           f"(allowed: {', '.join(layouts)})")
    bad = sorted(set(adapter.tunables) - set(spec.tunables))
    if bad:
        raise AdapterError(f"adapter {adapter.name!r}: declares tunables {bad} that {adapter.op} does not have "
                           f"(allowed: {', '.join(spec.tunables)})")
