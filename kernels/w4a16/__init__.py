"""W4A16 GEMM: int4 weights (GPTQ / AWQ / nibble layouts) with group scales, fp16/bf16 activations.
``kernel`` (Triton; import after the device is selected), ``op`` (``qkcheck::w4a16_gemm``),
``adapter`` (``bundled:w4a16_gemm`` and the packer)."""
