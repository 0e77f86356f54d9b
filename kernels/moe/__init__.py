"""Fused MoE: routing, block alignment and the grouped expert GEMMs (dense, W4A16, FP8-block,
MXFP4 experts). ``kernel`` (Triton; import after the device is selected), ``op`` (its
``qkcheck::`` ops), ``emulation`` (the torch backend), ``dispatch`` (the backend choice per scheme
and platform, with declared expectations), ``adapter`` (``bundled:fused_moe`` and the packer)."""
