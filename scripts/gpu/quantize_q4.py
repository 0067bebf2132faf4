#!/usr/bin/env python3
"""A 4-bit copy of an MLX model folder, small enough to carry to the GPU machine in parts.

usage: third_party/venv/bin/python scripts/gpu/quantize_q4.py SRC DST

Loads SRC with mlx-lm, dequantizes it, casts to bfloat16 and quantizes every linear and
embedding layer to 4 bits (group 64), then writes DST with SRC's config (quantization updated)
and tokenizer files. Used for the speculative-decoding benchmark on the H200
(docs/PERFORMANCE.md): models/Qwen2.5-Coder-0.5B-Instruct (8-bit, 688 MB) -> 354 MB, carried as
six 58 MiB parts (`split -b 58M`).
"""
import json
import os
import shutil
import sys

import mlx.core as mx
import mlx.nn as nn
from mlx_lm import load
from mlx_lm.utils import dequantize_model, save_config, save_model

src, dst = sys.argv[1], sys.argv[2]
model, _ = load(src)
model = dequantize_model(model)
model.set_dtype(mx.bfloat16)
nn.quantize(model, group_size=64, bits=4)
os.makedirs(dst, exist_ok=True)
save_model(dst, model)
with open(os.path.join(src, "config.json")) as f:
    cfg = json.load(f)
cfg["quantization"] = {"group_size": 64, "bits": 4}
cfg["torch_dtype"] = "bfloat16"
save_config(cfg, os.path.join(dst, "config.json"))
for name in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
    if os.path.exists(os.path.join(src, name)):
        shutil.copy(os.path.join(src, name), dst)
