"""W8A8 / FP8 GEMMs: ``scaled_mm``, ``block_scaled_mm``, ``fp8_w8a16_gemm``. ``kernel`` (Triton;
import after the device is selected), ``op`` (their ``qkcheck::`` ops), ``adapter`` (the
``bundled:`` adapters and packers), ``loaders`` (checkpoint weights -> the kernels' layouts)."""
