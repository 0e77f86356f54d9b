"""Activation quantization: per-token, static, per-token-group, MX and NVFP4. ``kernel`` (Triton;
import after the device is selected), ``op`` (their ``qkcheck::`` ops), ``adapter`` (the
``bundled:`` adapters, packers and unpackers)."""
