"""Mutants of the bundled kernels: small broken twins, each made by patching the source text of a
bundled kernel module (or its launcher), each labelled with the diagnosis hypothesis that should
name it. ``benchmarks/bench_mutants.py`` runs them through the gate and the fuzzer and scores the
diagnosis; ``tests/oracle/test_mutant_diagnosis.py`` runs a few of them on a case or two each.

A mutant is a ``--kernels`` file spec: ``qkcheck gate --kernels benchmarks/mutants/mutants.py::mutant:<name>``.
How one is built: the bundled module's source (``kernels/<family>/kernel.py``) with each ``(old,
new)`` replacement applied (every ``old`` must occur, so a mutant cannot silently stop applying
when the kernel changes) is written to a cache folder and imported as a module of its own; the
mutant's adapter is the bundled adapter whose call runs with the family's torch op (``op.py``, and
the MoE dispatcher) launching the patched module instead of the bundled one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import sys
import tempfile
from typing import NamedTuple
from pathlib import Path


class Mutant(NamedTuple):  # (a NamedTuple: this file is loaded as a --kernels file, outside sys.modules)
    name: str  # adapter name: mutant:<name>
    family: str  # kernels/<family>/kernel.py is patched
    adapter: str  # the bundled adapter it twins (bundled:<op>)
    expected: str  # the hypothesis that should be named
    what: str  # the mutation, in words
    patches: tuple[tuple[str, str], ...]


_X_MASK = "mask=mask_m[:, None] & mask_k[None, :], other=0.0,"
MUTANTS: tuple[Mutant, ...] = (
    Mutant("w4a16_first_group_scale", "w4a16", "bundled:w4a16_gemm", "first_group_scale_per_tile",
           "the one-group scale path for every tile (seed 003 rebuilt by patching the launcher)",
           (("path = scale_path(config.block_k, G, rows_per_k_step)", "path = 0"),
            ("path = gemv_scale_path(config.block_k, G)", "path = 0"))),
    Mutant("w4a16_group_not_advancing", "w4a16", "bundled:w4a16_gemm", "group_index_not_advancing",
           "the scale-group index is always 0 (k // group replaced by 0)",
           (("// GROUP_SIZE", "* 0 // GROUP_SIZE"),)),
    Mutant("w4a16_nibble_order", "w4a16", "bundled:w4a16_gemm", "nibble_order_swapped",
           "the weight words' field order reversed (unpack order)",
           (("QW_FIELD_CODE=_field_code(qpack)",
             "QW_FIELD_CODE=sum(f << (4 * e) for f, e in enumerate(reversed(qpack.field_order)))"),)),
    Mutant("w4a16_x_contiguous", "w4a16", "bundled:w4a16_gemm", "strides_assumed_contiguous",
           "x's row stride taken as K (its stride argument ignored)",
           (("x.stride(0), x.stride(1),", "x.shape[1], x.stride(1),"),)),
    Mutant("w4a16_k_tail_unmasked", "w4a16", "bundled:w4a16_gemm", "k_tail_unmasked",
           "the activation loads lose their K mask",
           ((_X_MASK, "mask=mask_m[:, None], other=0.0,"),)),
    Mutant("w4a16_n_tail_dropped", "w4a16", "bundled:w4a16_gemm", "missing_tail",
           "the last partial N tile is not stored (output zero-initialised)",
           (("_split_k_epilogue(acc, offs_m, offs_n, mask_m, mask_n, pid, pid_k,",
             "_split_k_epilogue(acc, offs_m, offs_n, mask_m, mask_n & (offs_n < (N // BLOCK_N) * BLOCK_N), pid, pid_k,"),
            ("    out = torch.empty((M, N), dtype=out_dtype, device=x.device)\n    if config.split_k > 1:",
             "    out = torch.zeros((M, N), dtype=out_dtype, device=x.device)\n    if config.split_k > 1:"))),
    Mutant("w4a16_split_k_partial_lost", "w4a16", "bundled:w4a16_gemm", "split_k_reduction_wrong",
           "the split-K reduction keeps only split 0's partial",
           (("total += tl.load(ws_tile + split * stride_ws", "total += 0.0 * tl.load(ws_tile + split * stride_ws"),)),
    Mutant("w4a16_scales_per_tensor", "w4a16", "bundled:w4a16_gemm", "scale_granularity_confused",
           "the scales' strides passed as 0: scales[0, 0] for every group and column",
           (("scales.stride(0), scales.stride(1),", "0, 0,"),)),
    Mutant("scaled_mm_fn_as_fnuz", "scaled_mm", "bundled:scaled_mm", "fn_fnuz_confused",
           "e4m3fn codes decoded with the fnuz exponent bias",
           (("BIAS=fmt.bias,", "BIAS=fmt.bias + (fmt.specials == Specials.FN and fmt.exponent_bits == 4),"),)),
    Mutant("scaled_mm_a_scale_per_tensor", "scaled_mm", "bundled:scaled_mm", "scale_granularity_confused",
           "the per-token a_scale read at row 0 for every row",
           (("as_ptr + offs_m * stride_as, mask", "as_ptr + offs_m * 0, mask"),)),
    Mutant("scaled_mm_a_contiguous", "scaled_mm", "bundled:scaled_mm", "strides_assumed_contiguous",
           "a's row stride taken as K",
           (("a_ptr + offs_m[:, None] * stride_am", "a_ptr + offs_m[:, None] * K"),)),
    Mutant("block_scaled_first_group_scale", "scaled_mm", "bundled:block_scaled_mm", "first_group_scale_per_tile",
           "the scale block of the K-tile's first row for the whole tile (BLOCK_K > block)",
           (("group = k_start // GROUP_K", "group = (tile * BLOCK_K) // GROUP_K"),)),
    Mutant("block_scaled_group_not_advancing", "scaled_mm", "bundled:block_scaled_mm", "group_index_not_advancing",
           "the K scale-block index is always 0",
           (("group = k_start // GROUP_K", "group = k_start * 0"),)),
    Mutant("per_token_quant_qmax_224", "quant", "bundled:per_token_quant", "qmax_confused",
           "e4m3fn quantized against 224 (the fnuz-safe max) instead of 448",
           (("return _ElemParams(float(fmt.max), -float(fmt.max), True,",
             "return _ElemParams(224.0 if fmt.max == 448 else float(fmt.max), "
             "-224.0 if fmt.max == 448 else -float(fmt.max), True,"),)),
    Mutant("fused_moe_group_score_max", "moe", "bundled:fused_moe", "routing_group_scoring",
           "grouped top-k scores a group by its largest expert score instead of the sum of its top two",
           (("group_score = first + second", "group_score = first"),)),
)

# the torch-op modules that hold each family's kernel module (as ``name``): swapped during a call
_HOLDERS = {"w4a16": (("qkcheck.kernels.w4a16.op", "_w4a16"),),
            "scaled_mm": (("qkcheck.kernels.scaled_mm.op", "_sm"),),
            "quant": (("qkcheck.kernels.quant.op", "_q"),),
            "moe": (("qkcheck.kernels.moe.op", "_moe"), ("qkcheck.kernels.moe.dispatch", "_moe"))}
_CACHE = Path(tempfile.gettempdir()) / "qkcheck-mutants"
_LOADED: dict[str, object] = {}


def patched_module(m: Mutant):
    """The family's kernel module with ``m.patches`` applied, imported as a module of its own."""
    if m.name in _LOADED:
        return _LOADED[m.name]
    base = importlib.import_module(f"qkcheck.kernels.{m.family}.kernel")
    src = Path(base.__file__).read_text()
    for old, new in m.patches:
        if old not in src:
            raise RuntimeError(f"mutant {m.name}: {old!r} is no longer in kernels/{m.family}/kernel.py")
        src = src.replace(old, new)
    digest = hashlib.sha1(src.encode()).hexdigest()[:10]
    _CACHE.mkdir(exist_ok=True)
    path = _CACHE / f"mutant_{m.name}_{digest}.py"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(src)
        tmp.replace(path)
    name = f"qkcheck_mutant_{m.name}"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    _LOADED[m.name] = mod
    return mod


@contextlib.contextmanager
def _launching(m: Mutant):
    mod = patched_module(m)
    holders = [(importlib.import_module(h), attr) for h, attr in _HOLDERS[m.family]]
    saved = [getattr(h, attr) for h, attr in holders]
    for h, attr in holders:
        setattr(h, attr, mod)
    try:
        yield
    finally:
        for (h, attr), old in zip(holders, saved):
            setattr(h, attr, old)


def _adapter(m: Mutant):
    from qkcheck.kernels.catalog import resolve

    base, = resolve(m.adapter)

    def call(t, params, config, _m=m, _call=base.call):
        with _launching(_m):
            return _call(t, params, config)

    return dataclasses.replace(base, name=f"mutant:{m.name}", call=call, custom_op=None,
                               description=f"mutant of {m.adapter}: {m.what} (expected: {m.expected})")


def by_name(name: str) -> Mutant:
    return next(m for m in MUTANTS if m.name == name.removeprefix("mutant:"))


ADAPTERS = [_adapter(m) for m in MUTANTS]
