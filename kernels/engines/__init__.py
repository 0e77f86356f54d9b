"""Adapters for serving engines' own kernels (``--kernels kernels.engines.vllm``,
``--kernels kernels.engines.aiter``).

Each engine module is importable whether or not the engine is installed. It defines:

- ``ADAPTERS``: a list of ``kernels.adapters.KernelAdapter``, built only when the engine imports
  (empty otherwise);
- ``UNAVAILABLE``: ``None`` when the engine imported, else why not (a sentence naming the
  package and how to get it), for the gate to report as one skipped item;
- ``load() -> (adapters, unavailable)``: the same, computed afresh (after installing the engine,
  or with a stand-in module placed in ``sys.modules``).

Every adapter binds its engine callable **by keyword** and declares ``target`` / ``signature``,
so a renamed or reordered parameter in a new engine release fails the harness's signature check
instead of binding silently. An engine symbol that has moved or vanished yields an adapter whose
call raises :class:`EngineSymbolMissing` naming the paths tried (a loud failure, not a skip).

Engines support only part of an op's case space (vLLM's ``cutlass_scaled_mm`` writes fp16 /
bf16 only, AITER's per-token quant has no ``scale_ub``). Those limits are data:
``unsupported(adapter, params)`` returns the reason a case is outside the engine's API, or
None, and each adapter's ``call`` raises :class:`EngineUnsupported` with that reason first.

``CONVENTIONS`` (per adapter name) holds each adapter's ``conventions``: the oracle options (the
op's convention keys, e.g. ``oracle.ops.quant``'s ``qmax``, ``amax_floor``, ``int8_clamp``) under
which the engine's documented behaviour is the correct answer, as a mapping or as a function of
the case's params (``qmax`` 224 only where the case asks for float8_e4m3fnuz, as vLLM on ROCm
does). The runner sets them on the oracle's problem and records them with each result
(``KernelAdapter.conventions``); what an adapter does not declare stays strict.
"""
from __future__ import annotations

import importlib
from typing import Callable, Mapping

ENGINES = {"vllm": "qkcheck.kernels.engines.vllm", "aiter": "qkcheck.kernels.engines.aiter",
           "torchao": "qkcheck.kernels.engines.torchao", "sglang": "qkcheck.kernels.engines.sglang",
           "gemlite": "qkcheck.kernels.engines.gemlite"}

# adapter name -> params -> reason the case is outside the engine's API (None: supported)
SUPPORTS: dict[str, Callable[[Mapping], str | None]] = {}
# adapter name -> oracle problem options the engine's documented semantics correspond to
CONVENTIONS: dict[str, Mapping | Callable[[Mapping], Mapping]] = {}


class EngineUnsupported(ValueError):
    """The case asks for something the engine's API does not offer (not a kernel defect)."""


class EngineSymbolMissing(ImportError):
    """The engine imported, but a callable an adapter binds is not where any known release has it."""


def installed_version(dist: str) -> str | None:
    """The installed release of the distribution ``dist`` (its metadata), or None."""
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def version_note(dist: str, verified: tuple[str, ...]) -> str:
    """What each adapter's description says of the installed release against the verified ones."""
    v = installed_version(dist)
    if v is None:
        return f"installed {dist} version unknown (verified against {', '.join(verified)})"
    if v in verified:
        return f"{dist} {v} (verified)"
    return (f"{dist} {v}: NOT the verified release ({', '.join(verified)}); signatures are checked, semantics "
            f"may have drifted")


def fnuz_lowering_missing(params: Mapping) -> str | None:
    """Why a case naming a fnuz FP8 type cannot run compiled here, or None. Triton lowers
    float8_e4m3fnuz / float8_e5m2fnuz only for AMD GPUs: on an NVIDIA GPU an engine kernel holding
    them fails to compile ("type fp8e4b8 not supported in this architecture"), which says nothing
    of the kernel. The interpreter (CPU) and ROCm builds run them. (qkcheck's bundled kernels
    convert fnuz in software there and keep those cases.)"""
    names = sorted({v for v in params.values() if isinstance(v, str) and v.startswith("float8") and v.endswith("fnuz")})
    if not names:
        return None
    from qkcheck.kernels import device

    if device.interpreted():
        return None
    import torch

    if getattr(torch.version, "hip", None) or not torch.cuda.is_available():
        return None
    return (f"{', '.join(names)}: Triton lowers the fnuz FP8 types only for AMD GPUs, so this engine kernel "
            f"cannot be compiled with them on this GPU")


def platform_limited(supports: Callable[[Mapping], str | None] | None) -> Callable[[Mapping], str | None]:
    """An engine adapter's ``supports`` with the platform limits every engine kernel shares
    (``fnuz_lowering_missing``) checked first."""

    def check(params: Mapping) -> str | None:
        return fnuz_lowering_missing(params) or (supports(params) if supports else None)

    return check


def unsupported(adapter, params: Mapping) -> str | None:
    """Why ``params`` lie outside what ``adapter``'s engine callable supports, or None."""
    check = SUPPORTS.get(getattr(adapter, "name", adapter))
    return None if check is None else check(params)


def require_supported(name: str, params: Mapping) -> None:
    reason = SUPPORTS[name](params)
    if reason:
        raise EngineUnsupported(f"{name}: {reason}")


def bias_in(bias, dtype, name: str):
    """``bias`` converted to ``dtype`` for an engine that requires it there; EngineUnsupported where
    that would round a value (the case's problem would no longer be the one judged)."""
    if bias is None:
        return None
    out = bias.to(dtype)
    if not bool((out.float() == bias.float()).all()):
        raise EngineUnsupported(f"{name}: the engine takes the bias in {str(dtype).removeprefix('torch.')}, and this "
                                f"problem's bias is not representable in it")
    return out


def import_engine(package: str, install_hint: str) -> tuple[object | None, str | None]:
    """(module, None) when ``package`` imports; (None, reason) when it does not."""
    try:
        return importlib.import_module(package), None
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if missing and (missing == package or package.startswith(missing + ".")):
            return None, f"{package} is not installed ({install_hint})"
        return None, f"{package} failed to import ({type(exc).__name__}: {exc}); {install_hint}"
    except Exception as exc:  # an engine present but broken on this machine (no GPU driver, ...)
        return None, f"{package} failed to import ({type(exc).__name__}: {exc}); {install_hint}"


def load_module_from(package: str, relpath: str):
    """The module file ``relpath`` (e.g. ``"ops/triton/quant.py"``) of the installed ``package``,
    imported as ``package.ops.triton.quant`` without running the ``__init__.py`` of ``package`` or
    of any package between it and the file (an engine whose top-level import needs its native
    build, while the Triton modules themselves do not).

    Where ``package`` is already imported (its real ``__init__`` ran), this is a plain import. Else
    each package on the way that is not imported yet is registered in ``sys.modules`` as a bare
    package (its ``__path__`` only), so the file's own absolute imports of sibling modules resolve
    from the installed files; those stand-ins stay registered (a later ``import package`` in the
    same process gets the bare package, not the real one). Subpackages the file imports that are
    not on the way run their ``__init__`` as usual. Raises ImportError (``ModuleNotFoundError``
    where ``package`` or the file is absent)."""
    import importlib.machinery
    import importlib.util
    import os
    import sys
    import types

    parts = relpath[:-3].split("/") if relpath.endswith(".py") else relpath.split("/")
    dotted = ".".join([package, *parts])
    if dotted in sys.modules:
        return sys.modules[dotted]
    top = sys.modules.get(package)
    if top is not None and getattr(top, "__file__", None):  # the real package is imported
        return importlib.import_module(dotted)
    spec = importlib.util.find_spec(package) if top is None else top.__spec__
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{package} is not installed (no package directory found)", name=package)
    folder = list(spec.submodule_search_locations)[0]
    path = os.path.join(folder, *parts[:-1], parts[-1] + ".py")
    if not os.path.isfile(path):
        raise ModuleNotFoundError(f"{package} has no {relpath} (looked at {path})", name=dotted)
    name, here = package, folder
    for i, part in enumerate([None, *parts[:-1]]):
        if part is not None:
            name, here = f"{name}.{part}", os.path.join(here, part)
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
            mod.__spec__.submodule_search_locations = [here]
            mod.__path__, mod.__package__ = [here], name
            sys.modules[name] = mod
            if i:
                setattr(sys.modules[name.rpartition(".")[0]], part, mod)
    file_spec = importlib.util.spec_from_file_location(dotted, path)
    module = importlib.util.module_from_spec(file_spec)
    sys.modules[dotted] = module
    try:
        file_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[dotted]
        raise
    setattr(sys.modules[dotted.rpartition(".")[0]], parts[-1], module)
    return module


def find_symbol(paths: tuple[str, ...], name: str) -> tuple[Callable | None, str]:
    """The first ``module.name`` found among ``paths`` (engine releases move things), and where.

    Returns (callable, "module.name") or (None, a sentence naming everything tried and why)."""
    tried = []
    for path in paths:
        try:
            mod = importlib.import_module(path)
        except Exception as exc:
            tried.append(f"{path} ({type(exc).__name__}: {exc})")
            continue
        fn = getattr(mod, name, None)
        if callable(fn):
            return fn, f"{path}.{name}"
        tried.append(f"{path} (no callable {name!r})")
    return None, f"{name} not found; tried {'; '.join(tried)}"


def missing_call(where: str):
    """A ``call`` for an adapter whose engine symbol could not be found: fails each case loudly."""

    def call(t, params, config):
        raise EngineSymbolMissing(f"engine API drift: {where}")

    return call


def status() -> dict[str, str | None]:
    """Engine name -> None (available) or the reason it is not."""
    return {name: importlib.import_module(path).UNAVAILABLE for name, path in ENGINES.items()}


def register(specs) -> None:
    """Publish each adapter spec's API limits and conventions under its adapter name."""
    for s in specs:
        SUPPORTS[s["name"]] = s["supports"]
        CONVENTIONS[s["name"]] = s["conventions"]  # a mapping, or a function of params


def build(specs, engine: str, install_hint: str):
    """(adapters, None) where ``engine`` imports; ([], reason) where it does not. An engine
    function that cannot be found still yields its adapter: every case of it fails, naming the
    paths tried (API drift is loud, never a silently missing kernel)."""
    from qkcheck.kernels.adapters import KernelAdapter

    _, reason = import_engine(engine, install_hint)
    if reason:
        return [], reason
    adapters = []
    for s in specs:
        fn, where = find_symbol(s["paths"], s["symbol"])
        call = s["make_call"](fn) if fn is not None else missing_call(f"{s['name']}: {where}")
        adapters.append(KernelAdapter(name=s["name"], op=s["op"], pack=s["pack"], call=call, target=fn,
                                      signature=s["signature"], description=s["description"],
                                      supports=platform_limited(s["supports"]), **s["fields"]))
    return adapters, None
