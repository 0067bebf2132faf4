#!/usr/bin/env python3
"""Writes a random-weight model in a real architecture, for benchmarks on hardware where
real weights of that size cannot be carried (the GPU machine has no network).

usage: python scripts/make_synthetic_model.py --shape SHAPE [--bits 4] [--group-size 64]
           --tokenizer-from DIR --out DIR
shapes: smollm2-135m, llama-8b (Llama), qwen3-moe-30b-a3b (mixture of experts: 128 experts,
8 active), minimax-m2-8l (MiniMax-M2's widths, 8 layers), gpt-oss-120b-8l (gpt-oss-120b's
widths, 8 layers; `--bits mxfp4` packs it as gpt-oss ships), the hybrids
nemotron-h-30b-a3b-8l and qwen3-next-80b-a3b-8l (8 layers each), and llama-tiny,
qwen3-moe-tiny, gpt-oss-tiny, nemotron-h-tiny, qwen3-next-tiny (a few MB, for dry runs of the
scripts on a CPU).

The weights come from mlx-lm's own modules (random init, fixed seed), optionally quantized
with mlx's affine quantization (the model's own quant_predicate applies, as in mlx_lm.convert:
qwen3_moe's routers at 8 bits), and are saved the way mlx-lm saves models (with
model.safetensors.index.json, which mlx-lm's sharded_load needs for pipeline parallel), with the
tokenizer files copied from `--tokenizer-from` (token ids of the benchmark prompt must be below
that tokenizer's vocabulary size, which is all a benchmark needs).
"""
import argparse
import json
import os
import shutil

LLAMA = dict(model_type="llama", architectures=["LlamaForCausalLM"], rms_norm_eps=1e-5,
             max_position_embeddings=8192)
QWEN3_MOE = dict(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"],
                 rms_norm_eps=1e-6, max_position_embeddings=40960, decoder_sparse_step=1,
                 mlp_only_layers=[], norm_topk_prob=True, rope_theta=1000000.0,
                 tie_word_embeddings=False)
MINIMAX = dict(model_type="minimax", architectures=["MiniMaxM2ForCausalLM"], rms_norm_eps=1e-6,
               max_position_embeddings=196608, rope_theta=5000000.0, tie_word_embeddings=False,
               use_qk_norm=True, scoring_func="sigmoid")
GPT_OSS = dict(model_type="gpt_oss", architectures=["GptOssForCausalLM"], rms_norm_eps=1e-5,
               max_position_embeddings=131072, rope_theta=150000, tie_word_embeddings=False,
               sliding_window=128,
               rope_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                             "beta_slow": 1.0, "original_max_position_embeddings": 4096,
                             "truncate": False})
NEMOTRON_H = dict(model_type="nemotron_h", architectures=["NemotronHForCausalLM"],
                  layer_norm_epsilon=1e-5, max_position_embeddings=262144, attention_bias=False,
                  mlp_bias=False, use_bias=False, use_conv_bias=True, mamba_proj_bias=False,
                  conv_kernel=4, tie_word_embeddings=False, n_group=1, topk_group=1,
                  routed_scaling_factor=2.5, norm_topk_prob=True, n_shared_experts=1)
QWEN3_NEXT = dict(model_type="qwen3_next", architectures=["Qwen3NextForCausalLM"],
                  rms_norm_eps=1e-6, max_position_embeddings=262144, rope_theta=10000000.0,
                  partial_rotary_factor=0.25, tie_word_embeddings=False, decoder_sparse_step=1,
                  mlp_only_layers=[], norm_topk_prob=True, full_attention_interval=4,
                  linear_conv_kernel_dim=4)
SHAPES = {
    "smollm2-135m": dict(LLAMA, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                         num_key_value_heads=3, num_hidden_layers=30, vocab_size=49152,
                         rope_theta=100000.0, tie_word_embeddings=True, head_dim=64),
    "llama-8b": dict(LLAMA, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                     num_key_value_heads=8, num_hidden_layers=32, vocab_size=128256,
                     rope_theta=500000.0, tie_word_embeddings=False, head_dim=128),
    # Qwen3-30B-A3B's shape: 30.5B parameters, 3.3B active per token (~17 GB at 4 bits).
    "qwen3-moe-30b-a3b": dict(QWEN3_MOE, hidden_size=2048, intermediate_size=6144,
                              num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                              num_hidden_layers=48, vocab_size=151936, moe_intermediate_size=768,
                              num_experts=128, num_experts_per_tok=8),
    # MiniMax-M2's widths (256 experts, 8 active, q/k norms over all heads, RoPE on 64 of 128
    # head values) with 8 of its 62 layers: ~29B parameters (~16 GB at 4 bits), so that it
    # is written in minutes on one GPU; a token reads the same per-layer weights as M2's.
    "minimax-m2-8l": dict(MINIMAX, hidden_size=3072, intermediate_size=1536,
                          num_attention_heads=48, num_key_value_heads=8, head_dim=128,
                          rotary_dim=64, num_hidden_layers=8, vocab_size=200064,
                          num_local_experts=256, num_experts_per_tok=8,
                          shared_intermediate_size=0),
    # gpt-oss-120b's widths (128 experts, 4 active, sinks, sliding and full layers in turn)
    # with 8 of its 36 layers: ~26B parameters (~14 GB as MXFP4).
    "gpt-oss-120b-8l": dict(GPT_OSS, hidden_size=2880, intermediate_size=2880,
                            num_attention_heads=64, num_key_value_heads=8, head_dim=64,
                            num_hidden_layers=8, vocab_size=201088, num_local_experts=128,
                            num_experts_per_tok=4),
    # Nemotron-3-Nano-30B-A3B's widths (Mamba-2: 64 heads of 64, state 128, 8 groups; GQA
    # 32/2 heads of 128; 128 experts, 6 active, ReLU² experts and a shared one) with 8 of its 52
    # layers in its own order (Mamba, experts, ..., one attention layer). The vocabulary is
    # Qwen2.5's (151,936, not its 131,072): the benchmarks carry that tokenizer, whose chat
    # markup ids must exist in the model.
    "nemotron-h-30b-a3b-8l": dict(NEMOTRON_H, hidden_size=2688, intermediate_size=1856,
                                  num_attention_heads=32, num_key_value_heads=2, head_dim=128,
                                  mamba_num_heads=64, mamba_head_dim=64, ssm_state_size=128,
                                  n_groups=8, hybrid_override_pattern=list("MEMEM*EM"),
                                  vocab_size=151936, n_routed_experts=128,
                                  num_experts_per_tok=6, moe_intermediate_size=1856,
                                  moe_shared_expert_intermediate_size=3712),
    # Qwen3-Next-80B-A3B's widths (Gated DeltaNet: 16 key and 32 value heads of 128; gated
    # attention 16/2 heads of 256 every 4th layer; 512 experts, 10 active, a gated shared one)
    # with 8 of its 48 layers.
    "qwen3-next-80b-a3b-8l": dict(QWEN3_NEXT, hidden_size=2048, intermediate_size=5120,
                                  num_attention_heads=16, num_key_value_heads=2, head_dim=256,
                                  linear_num_key_heads=16, linear_num_value_heads=32,
                                  linear_key_head_dim=128, linear_value_head_dim=128,
                                  num_hidden_layers=8, vocab_size=151936, num_experts=512,
                                  num_experts_per_tok=10, moe_intermediate_size=512,
                                  shared_expert_intermediate_size=512),
    # The same widths cut to 4 layers (3 Gated DeltaNet, 1 attention) and 16 experts: matches
    # mlx-lm exactly on the CPU; small enough to compare kooka and mlx-lm on the GPU quickly.
    "qwen3-next-80b-a3b-4l16e": dict(QWEN3_NEXT, hidden_size=2048, intermediate_size=5120,
                                     num_attention_heads=16, num_key_value_heads=2, head_dim=256,
                                     linear_num_key_heads=16, linear_num_value_heads=32,
                                     linear_key_head_dim=128, linear_value_head_dim=128,
                                     num_hidden_layers=4, vocab_size=151936, num_experts=16,
                                     num_experts_per_tok=10, moe_intermediate_size=512,
                                     shared_expert_intermediate_size=512),
    "nemotron-h-tiny": dict(NEMOTRON_H, hidden_size=256, intermediate_size=256,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                            mamba_num_heads=8, mamba_head_dim=64, ssm_state_size=64, n_groups=2,
                            hybrid_override_pattern=list("MEM*"), vocab_size=151936,
                            n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=128,
                            moe_shared_expert_intermediate_size=128),
    "qwen3-next-tiny": dict(QWEN3_NEXT, hidden_size=256, intermediate_size=512,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                            linear_num_key_heads=2, linear_num_value_heads=4,
                            linear_key_head_dim=64, linear_value_head_dim=64, num_hidden_layers=4,
                            vocab_size=151936, num_experts=8, num_experts_per_tok=2,
                            moe_intermediate_size=128, shared_expert_intermediate_size=128),
    # Dry-run shapes: every width splits over 2 ranks in whole 64-wide quantization groups.
    "llama-tiny": dict(LLAMA, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                       num_key_value_heads=2, num_hidden_layers=4, vocab_size=151936,
                       rope_theta=500000.0, tie_word_embeddings=False, head_dim=64),
    "gpt-oss-tiny": dict(GPT_OSS, hidden_size=256, intermediate_size=256, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=64, num_hidden_layers=4,
                         vocab_size=151936, num_local_experts=8, num_experts_per_tok=2),
    "qwen3-moe-tiny": dict(QWEN3_MOE, hidden_size=256, intermediate_size=512,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                           num_hidden_layers=4, vocab_size=151936, moe_intermediate_size=128,
                           num_experts=8, num_experts_per_tok=2),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=sorted(SHAPES), required=True)
    p.add_argument("--bits", default="0", help="0 = keep bf16; 2-8 affine; mxfp4")
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--tokenizer-from", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.models import gpt_oss, llama, minimax, nemotron_h, qwen3_moe, qwen3_next

    mx.random.seed(0)
    config = dict(SHAPES[args.shape])
    arch = {"llama": llama, "qwen3_moe": qwen3_moe, "minimax": minimax, "gpt_oss": gpt_oss,
            "nemotron_h": nemotron_h, "qwen3_next": qwen3_next}[config["model_type"]]
    model = arch.Model(arch.ModelArgs.from_dict(config))
    model.set_dtype(mx.bfloat16)
    # Materialise layer by layer: one lazy graph for a 30B model would hold its float32 init
    # and bf16 copies at once.
    for layer in model.layers:
        mx.eval(layer.parameters())
    mx.eval(model.parameters())
    mode = "mxfp4" if args.bits == "mxfp4" else "affine"
    bits = 4 if mode == "mxfp4" else int(args.bits)
    group_size = 32 if mode == "mxfp4" else args.group_size
    if bits:
        quant = {"group_size": group_size, "bits": bits}
        if mode != "affine":
            quant["mode"] = mode
        own = getattr(model, "quant_predicate", None)

        def predicate(path, m):
            if not hasattr(m, "to_quantized"):
                return False
            if own is None:
                return True
            r = own(path, m)
            if isinstance(r, dict):
                quant[path] = r  # recorded per module, as mlx_lm.convert does
            return r

        nn.quantize(model, group_size=group_size, bits=bits, mode=mode, class_predicate=predicate)
        for layer in model.layers:
            mx.eval(layer.parameters())
        config["quantization"] = quant
        config["quantization_config"] = quant
    os.makedirs(args.out, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(os.path.join(args.out, "model.safetensors"), weights, metadata={"format": "mlx"})
    total = sum(v.nbytes for v in weights.values())
    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total},
                   "weight_map": {k: "model.safetensors" for k in sorted(weights)}}, f, indent=2)
    config["torch_dtype"] = "bfloat16"
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(dict(sorted(config.items())), f, indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        src = os.path.join(args.tokenizer_from, name)
        if os.path.exists(src):
            shutil.copy(src, args.out)
    print(f"{args.out}: {args.shape}, bits={args.bits}, {total / 1e9:.2f} GB of weights")


if __name__ == "__main__":
    main()
