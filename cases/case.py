"""The Case: one fully specified test of one op — frozen, hashable, with a stable id and an
exact JSON round trip. The JSON file *is* the reproducer (no pickle, no eval).

A case names the op, its shape, its op parameters (scheme, layout, dtypes, bias, ...), the
kernel config (every tunable; empty = the kernel's own default choice), the input regime and the
seed. What values are allowed is declared per op by its ``OpSpec`` (``cases.spec``), which builds
and checks cases (``spec.case(...)``, ``case.validate(spec)``); every error names the field, the
value, what is allowed and a fix. A case is a plain value: this module imports nothing of the
project, and only ``Case.make`` / ``Case.validate()`` without a spec look the op up in the
registry (``cases.registry``), when called.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

REGIMES = ("exact", "realistic", "adversarial")
SCHEMA = 1


def freeze(d: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """A mapping as a tuple of (key, value) pairs sorted by key (hashable, order-independent)."""
    return tuple(sorted((d or {}).items()))


class CaseError(ValueError):
    """A case (or case file) that cannot be run as written."""


@dataclass(frozen=True)
class Case:
    op: str
    shape: tuple[tuple[str, int], ...]
    params: tuple[tuple[str, Any], ...]
    config: tuple[tuple[str, int | str], ...] = ()
    regime: str = "exact"
    seed: int = 0
    why: str = field(default="", compare=False)

    @classmethod
    def make(cls, op: str, *, shape: Mapping[str, int], params: Mapping[str, Any],
             config: Mapping[str, int] | None = None, regime: str = "exact", seed: int = 0,
             why: str = "") -> "Case":
        """A validated case of ``op``, its spec looked up in the registry (a family calls its own
        ``SPEC.case(...)`` instead)."""
        from qkcheck.cases.registry import op_spec  # at call time: the registry sits above this module

        return op_spec(op).case(shape=shape, params=params, config=config, regime=regime, seed=seed, why=why)

    # -- views -----------------------------------------------------------------------------
    @property
    def dims(self) -> dict[str, int]:
        return dict(self.shape)

    @property
    def p(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def cfg(self) -> dict[str, int]:
        return dict(self.config)

    def replace(self, **changes) -> "Case":
        """A copy with whole fields replaced (``config={}`` drops the config)."""
        d = self.to_dict()
        d.update(changes)
        return Case.from_dict(d)

    # -- identity --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {"schema": SCHEMA, "op": self.op, "shape": dict(self.shape), "params": dict(self.params),
             "config": dict(self.config), "regime": self.regime, "seed": self.seed}
        if self.why:
            d["why"] = self.why
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @cached_property  # a case is frozen: computed once (the fuzzer asks for ids many times)
    def digest(self) -> str:
        d = self.to_dict()
        d.pop("why", None)
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    @cached_property
    def id(self) -> str:
        """Readable and stable: op, shape (in its spec's order, as ``spec.case`` froze it), the
        params, config, regime, seed, digest."""
        shape = "".join(f"{k}{v}" for k, v in self.shape)
        params = "-".join(f"{k}={_short(v)}" for k, v in self.params)
        cfg = ("-" + "".join(f"{_abbrev(k)}{v}" for k, v in self.config)) if self.config else "-default"
        return f"{self.op}-{shape}-{params}{cfg}-{self.regime}-s{self.seed}-{self.digest}"

    # -- parsing ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "case") -> "Case":
        if not isinstance(d, Mapping):
            raise CaseError(f"{source}: a case is a JSON object, got {type(d).__name__}")
        known = {"schema", "op", "shape", "params", "config", "regime", "seed", "why"}
        extra = sorted(set(d) - known)
        if extra:
            raise CaseError(f"{source}: unknown field(s) {extra} (allowed: {sorted(known)}); remove them")
        if d.get("schema", SCHEMA) != SCHEMA:
            raise CaseError(f"{source}: schema={d.get('schema')!r}, this qkcheck reads schema {SCHEMA}")
        for key, kind in (("op", str), ("shape", Mapping), ("params", Mapping)):
            if key not in d:
                raise CaseError(f"{source}: missing field {key!r}; a case needs op, shape and params")
            if not isinstance(d[key], kind):
                raise CaseError(f"{source}: field {key!r} must be a {'string' if kind is str else 'JSON object'}, got {d[key]!r}")
        if not isinstance(d.get("config", {}), Mapping):
            raise CaseError(f"{source}: field 'config' must be a JSON object, got {d['config']!r}")
        for k, v in dict(d.get("config") or {}).items():
            if not isinstance(v, (int, str)) or isinstance(v, bool):
                raise CaseError(f"{source}: config[{k!r}]={v!r} must be an integer (a tile size or count, e.g. 32) "
                                "or a name (a code path, e.g. 'decode')")
        seed = d.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise CaseError(f"{source}: seed={seed!r} must be a non-negative integer")
        try:
            return cls.make(d["op"], shape=d["shape"], params=d["params"], config=d.get("config"),
                            regime=d.get("regime", "exact"), seed=seed, why=d.get("why", ""))
        except CaseError as exc:
            raise CaseError(f"{source}: {exc}") from None

    @classmethod
    def from_json(cls, text: str, *, source: str = "case") -> "Case":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CaseError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
        except RecursionError:
            raise CaseError(f"{source}: JSON nested too deeply to be a case (a case is an object of "
                            "op, shape, params, config, regime, seed)") from None
        if isinstance(d, Mapping) and isinstance(d.get("shape"), Mapping):
            _check_shape(d["shape"], source)
        return cls.from_dict(d, source=source)

    @classmethod
    def load(cls, path: str | Path) -> "Case":
        path = Path(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as exc:
            raise CaseError(f"{path}: cannot read the case file ({exc.strerror or exc})") from None
        except UnicodeDecodeError as exc:
            raise CaseError(f"{path}: not a text file (byte {exc.start} is not UTF-8); a case file is JSON "
                            "as written by qkcheck (out/failures/<case>.json)") from None
        return cls.from_json(text, source=str(path))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    def validate(self, spec=None) -> None:
        """Check the case against ``spec`` (an ``OpSpec``; None: its op's spec in the registry)."""
        if self.regime not in REGIMES:
            raise CaseError(f"regime={self.regime!r} is not an input regime (allowed: {', '.join(REGIMES)})")
        if spec is None:
            from qkcheck.cases.registry import op_spec  # at call time: the registry sits above this module

            spec = op_spec(self.op)
        spec.validate(self)


MAX_CASE_ELEMENTS = 2 ** 28  # default limit on a case's largest operand: 2 GiB as the float64 reference holds it
MAX_ELEMENTS_VARIABLE = "QKCHECK_MAX_CASE_ELEMENTS"


def max_case_elements() -> int:
    """The largest operand a case read from a file may have (elements): ``QKCHECK_MAX_CASE_ELEMENTS``
    or MAX_CASE_ELEMENTS."""
    import os

    text = os.environ.get(MAX_ELEMENTS_VARIABLE, "")
    return int(text) if text.strip().isdigit() else MAX_CASE_ELEMENTS


def _check_shape(shape: Mapping[str, Any], source: str) -> None:
    """A case file's shape: positive integers, and no operand past the memory limit, refused
    before anything is allocated. The largest operand is estimated as the product of the dims
    (two dims) or of all but the smallest (three or more: a GEMM's largest of m*k, k*n, m*n, a
    MoE's expert weights e*h*i)."""
    import math

    for k, v in shape.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise CaseError(f"{source}: shape[{k!r}]={v!r} must be a positive integer")
    dims = sorted(shape.values())
    largest = math.prod(dims[1:] if len(dims) >= 3 else dims)
    limit = max_case_elements()
    if largest > limit:
        raise CaseError(f"{source}: shape {dict(shape)} has an operand of about {largest:.3g} elements "
                        f"({largest * 8 / 2**30:.3g} GiB as the float64 reference holds it), past the limit of "
                        f"{limit} elements; refused before allocating (set {MAX_ELEMENTS_VARIABLE}=N to raise it)")


def _short(v: Any) -> str:
    if isinstance(v, bool):
        return "y" if v else "n"
    return str(v).replace("float", "f").replace(" ", "")


def _abbrev(k: str) -> str:
    return {"block_m": "bm", "block_n": "bn", "block_k": "bk", "split_k": "sk", "group_m": "gm",
            "num_warps": "w", "num_stages": "st", "fp8_path": "fp8"}.get(k, k)
