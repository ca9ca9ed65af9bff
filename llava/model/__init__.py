"""Model side of LLaVA: checkpoint loading and the tiny offline checkpoint builder.

Light on purpose (no torch): the launcher checks its flags against `DTYPES` before it starts anything.
"""

DTYPES = ("auto", "float32", "bfloat16", "float16")  # auto: float32 on CPU, bfloat16 (else float16) on CUDA
