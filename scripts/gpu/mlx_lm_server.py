#!/usr/bin/env python3
"""`mlx_lm.server` as it ships (same flags), with one compatibility shim.

mlx-lm 0.32.2's QuantizedSwitchLinear passes `global_scale=` (nvfp4 experts) to
mx.gather_qmm, which mlx 0.32.2 does not accept, so a 4-bit mixture-of-experts model fails at
its first token. For affine experts the value is always None: drop it and call gather_qmm with
exactly mlx-lm's other arguments (as tests/python/mlx_lm_reference.py does).
"""
import mlx.core as mx

_gather_qmm = mx.gather_qmm


def _gather_qmm_compat(*args, global_scale=None, **kwargs):
    if global_scale is not None:
        raise NotImplementedError("global_scale needs a newer mlx")
    return _gather_qmm(*args, **kwargs)


mx.gather_qmm = _gather_qmm_compat

# Under the nccl backend (mlx.launch --backend nccl sets NCCL_HOST_IP), mlx-lm's sharded_load
# ends with `mx.distributed.all_sum(mx.array(1.0), stream=mx.cpu)`, which fails ("There is no
# Stream(gpu, 1) in current thread": NCCL communicates on a GPU stream). Only with
# MLX_LM_NCCL_FIX=1: drop the cpu stream of that one barrier-like call.
import os

if os.environ.get("MLX_LM_NCCL_FIX") and os.environ.get("NCCL_HOST_IP"):
    _all_sum = mx.distributed.all_sum

    def _all_sum_nccl(x, *args, stream=None, **kwargs):
        if isinstance(stream, type(mx.cpu)) and stream == mx.cpu:
            stream = None
        return _all_sum(x, *args, stream=stream, **kwargs)

    mx.distributed.all_sum = _all_sum_nccl

if __name__ == "__main__":
    from mlx_lm.server import main

    main()
