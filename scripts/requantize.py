#!/usr/bin/env python3
"""A requantized copy of an MLX model folder: a draft model for speculative decoding
(`--draft-model`), or a smaller copy to carry to the GPU machine.

usage: third_party/venv/bin/python scripts/requantize.py SRC DST [--bits 4] [--group-size 64]

Loads SRC with mlx-lm, dequantizes it, casts to bfloat16 and quantizes every linear and
embedding layer to BITS (groups of GROUP_SIZE), then writes DST with SRC's config (quantization
updated) and tokenizer files. The same weights at fewer bits share the tokenizer and mostly the
greedy choices of SRC, which makes them a draft model where no smaller sibling is at hand:
models/Qwen2.5-Coder-0.5B-Instruct (8-bit, 688 MB) -> 4-bit 354 MB (docs/PERFORMANCE.md).
"""
import argparse
import json
import os
import shutil

import mlx.core as mx
import mlx.nn as nn
from mlx_lm import load
from mlx_lm.utils import dequantize_model, save_config, save_model

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("src")
parser.add_argument("dst")
parser.add_argument("--bits", type=int, default=4)
parser.add_argument("--group-size", type=int, default=64)
args = parser.parse_args()

model, _ = load(args.src)
model = dequantize_model(model)
model.set_dtype(mx.bfloat16)
nn.quantize(model, group_size=args.group_size, bits=args.bits)
os.makedirs(args.dst, exist_ok=True)
save_model(args.dst, model)
with open(os.path.join(args.src, "config.json")) as f:
    cfg = json.load(f)
quantization = {"group_size": args.group_size, "bits": args.bits}
cfg["quantization"] = quantization
cfg["quantization_config"] = quantization
cfg["torch_dtype"] = "bfloat16"
save_config(cfg, os.path.join(args.dst, "config.json"))
for name in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
    if os.path.exists(os.path.join(args.src, name)):
        shutil.copy(os.path.join(args.src, name), args.dst)
