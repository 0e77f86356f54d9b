"""MXFP4 GEMM: e2m1 weights with E8M0 scales per 32 along K, W4A16 or W4A4. ``kernel`` (Triton;
import after the device is selected), ``op`` (``qkcheck::mxfp4_gemm``), ``adapter``
(``bundled:mxfp4_gemm`` and the packer)."""
