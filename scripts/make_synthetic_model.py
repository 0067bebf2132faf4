#!/usr/bin/env python3
"""Writes a random-weight model in a real architecture, for benchmarks on hardware where
real weights of that size cannot be carried (the GPU machine has no network).

usage: python scripts/make_synthetic_model.py --shape {smollm2-135m,llama-8b} [--bits 4]
           [--group-size 64] --tokenizer-from DIR --out DIR

The weights come from mlx-lm's own Llama module (random init, fixed seed), optionally
quantized with mlx's affine quantization, and are saved the way mlx-lm saves models, with the
tokenizer files copied from `--tokenizer-from` (token ids of the benchmark prompt must be below
that tokenizer's vocabulary size, which is all a benchmark needs).
"""
import argparse
import json
import os
import shutil

SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                         num_key_value_heads=3, num_hidden_layers=30, vocab_size=49152,
                         rope_theta=100000.0, tie_word_embeddings=True, head_dim=64),
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                     num_key_value_heads=8, num_hidden_layers=32, vocab_size=128256,
                     rope_theta=500000.0, tie_word_embeddings=False, head_dim=128),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=sorted(SHAPES), required=True)
    p.add_argument("--bits", type=int, default=0, help="0 = keep bf16")
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--tokenizer-from", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    mx.random.seed(0)
    config = dict(model_type="llama", architectures=["LlamaForCausalLM"], rms_norm_eps=1e-5,
                  max_position_embeddings=8192, **SHAPES[args.shape])
    model = llama.Model(llama.ModelArgs.from_dict(config))
    model.set_dtype(mx.bfloat16)
    if args.bits:
        nn.quantize(model, group_size=args.group_size, bits=args.bits)
        config["quantization"] = {"group_size": args.group_size, "bits": args.bits}
        config["quantization_config"] = config["quantization"]
    os.makedirs(args.out, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(os.path.join(args.out, "model.safetensors"), weights, metadata={"format": "mlx"})
    config["torch_dtype"] = "bfloat16"
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(dict(sorted(config.items())), f, indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        src = os.path.join(args.tokenizer_from, name)
        if os.path.exists(src):
            shutil.copy(src, args.out)
    total = sum(v.nbytes for v in weights.values())
    print(f"{args.out}: {args.shape}, bits={args.bits or 16}, {total / 1e9:.2f} GB of weights")


if __name__ == "__main__":
    main()
