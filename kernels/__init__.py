"""The code under test and the torch boundary: bundled Triton kernels, layout packers,
torch.library ops, backends and dispatch, adapters for external kernels, and the zoo of
reproduced bugs. Imports oracle/; never imported by it."""
