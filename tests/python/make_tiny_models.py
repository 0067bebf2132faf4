"""Create tiny random MLX model folders with mlx-lm, for kooka's parity tests.

Usage: make_tiny_models.py OUTDIR [--shard]
       make_tiny_models.py --chat minimax|glm4_moe|gpt_oss|nemotron_h OUTDIR TOKENIZER_DIR TEMPLATE

With --shard it makes the fixtures of tests/shard.rs instead (the SHARD list below). With
--chat it makes one servable folder: the tiny minimax or glm4_moe with TOKENIZER_DIR's
tokenizer (SmolLM2's: same vocabulary size) and TEMPLATE as its chat template (MiniMax-M2's
or GLM-4.6's from llama.cpp's test data), for the contract suite's MiniMax and GLM runs.

Every folder holds config.json + model.safetensors (+ model.safetensors.index.json), written
the way mlx-lm's save_model/save_config write them. Weights come from mlx-lm's own model
classes with mx.random.seed(0), so reruns give identical files. No tokenizer: the parity
tests feed token ids directly.
"""
import json
import shutil
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map
from mlx_lm.models import (deepseek_v3, glm4_moe, gpt_oss, llama, minimax, mixtral, nemotron_h,
                            qwen2, qwen3, qwen3_moe, qwen3_next)
from mlx_lm.utils import save_config, save_model

BASE = dict(
    hidden_size=128,
    num_hidden_layers=2,
    intermediate_size=256,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    vocab_size=320,
    max_position_embeddings=512,
)

MOE_BASE = dict(BASE, hidden_size=64)

ARCHS = {
    "llama": (llama, dict(model_type="llama", rope_theta=10000.0, tie_word_embeddings=False)),
    "llama_tied": (llama, dict(model_type="llama", rope_theta=10000.0, tie_word_embeddings=True)),
    "llama3_rope": (llama, dict(
        model_type="llama", rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    "mistral": (llama, dict(model_type="mistral", rope_theta=1000000.0, tie_word_embeddings=False)),
    "qwen2": (qwen2, dict(model_type="qwen2", rope_theta=1000000.0, tie_word_embeddings=True)),
    "qwen3": (qwen3, dict(model_type="qwen3", rope_theta=1000000.0, tie_word_embeddings=True,
                          head_dim=48)),
    # Mixture of experts: qwen3_moe with one dense layer (mlp_only_layers) between two
    # sparse ones, 8 experts top-2 with renormalized scores; mixtral with 4 experts top-2.
    "qwen3_moe": (qwen3_moe, dict(
        MOE_BASE, model_type="qwen3_moe", rope_theta=1000000.0, tie_word_embeddings=False,
        num_hidden_layers=3, head_dim=16, intermediate_size=128, moe_intermediate_size=64,
        num_experts=8, num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[1],
        norm_topk_prob=True)),
    "mixtral": (mixtral, dict(
        MOE_BASE, model_type="mixtral", rope_theta=1000000.0, tie_word_embeddings=False,
        intermediate_size=64, num_local_experts=4, num_experts_per_tok=2)),
    # minimax: q/k norms over all heads, RoPE on 8 of 16 head values, 8 experts top-2
    # routed by sigmoid scores plus a correction bias (random here, see build()).
    "minimax": (minimax, dict(
        MOE_BASE, model_type="minimax", rope_theta=5000000.0, tie_word_embeddings=False,
        head_dim=16, rotary_dim=8, intermediate_size=64, shared_intermediate_size=64,
        num_local_experts=8, num_experts_per_tok=2, use_qk_norm=True, scoring_func="sigmoid")),
    # glm4_moe: QKV biases, per-head q/k norms, RoPE on half of each head, one dense layer
    # then two with 8 routed experts in 2 groups (1 kept), top-2, one shared expert.
    "glm4_moe": (glm4_moe, dict(
        MOE_BASE, model_type="glm4_moe", rope_theta=10000.0, tie_word_embeddings=False,
        num_hidden_layers=3, head_dim=16, partial_rotary_factor=0.5, intermediate_size=128,
        moe_intermediate_size=64, n_routed_experts=8, n_shared_experts=1,
        num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1,
        routed_scaling_factor=2.5, norm_topk_prob=True, use_qk_norm=True, attention_bias=True,
        rope_scaling=None)),
    # deepseek_v3: multi-head latent attention (low-rank query, a 64-wide latent and 16
    # rotated values per position cached, 4 heads of 64 + 16 query/key and 32 value values)
    # with YaRN (DeepSeek-V3's mscale settings: the softmax scale grows by mscale_all_dim's
    # factor squared); one dense layer, then 8 routed experts in 2 groups (1 kept), top-2,
    # one shared expert. Widths are multiples of 64 so that every projection, embed_q and
    # unembed_out included, is packed in the q4g64 variant.
    "deepseek_v3": (deepseek_v3, dict(
        MOE_BASE, model_type="deepseek_v3", tie_word_embeddings=False, num_hidden_layers=4,
        num_key_value_heads=4, q_lora_rank=64, kv_lora_rank=64, qk_nope_head_dim=64,
        qk_rope_head_dim=16, v_head_dim=32, intermediate_size=128, moe_intermediate_size=64,
        n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=2, topk_group=1,
        first_k_dense_replace=1, routed_scaling_factor=2.5, norm_topk_prob=True,
        rope_theta=10000.0,
        rope_scaling={"type": "yarn", "factor": 40.0, "beta_fast": 32.0, "beta_slow": 1.0,
                      "mscale": 1.0, "mscale_all_dim": 1.0,
                      "original_max_position_embeddings": 64})),
    # Sliding-window attention: mlx-lm's llama honours `sliding_window` only on layers that
    # `layer_types` marks "sliding_attention" (a RotatingKVCache of that size). The
    # 12-token test prompt and 40 generated tokens overrun the window of 8.
    "mistral_swa": (llama, dict(
        model_type="mistral", rope_theta=1000000.0, tie_word_embeddings=False,
        sliding_window=8, layer_types=["sliding_attention", "full_attention"])),
}

# Architectures only built in the EXTRA variants listed below.
ARCHS_EXTRA = {
    # gpt_oss: biases everywhere, attention sinks, YaRN RoPE, sliding (window 8) and full
    # layers in turn (mlx-lm's default layer_types), 8 experts top-2 with biases and the
    # clamped SwiGLU; sinks and expert biases random here (mlx-lm starts them at zero).
    # Quantized variants only in the parity list: in bf16, with the sinks and YaRN's query/key
    # scale, one logit of the 40-token run lands one bf16 step from mlx-lm's and flips a
    # near-tie (not yet explained); the sharded runs compare bf16 against kooka itself.
    "gpt_oss": (gpt_oss, dict(
        MOE_BASE, model_type="gpt_oss", num_hidden_layers=4, head_dim=16, intermediate_size=64,
        num_local_experts=8, num_experts_per_tok=2, sliding_window=8, rope_theta=150000,
        tie_word_embeddings=False,
        rope_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                      "original_max_position_embeddings": 64, "truncate": False})),
    # Window 16 > prompt: the rotating cache grows first, then wraps during decoding.
    "mistral_swa16": (llama, dict(
        model_type="mistral", rope_theta=1000000.0, tie_word_embeddings=True,
        sliding_window=16, layer_types=["full_attention", "sliding_attention"])),
    # mlx-lm's qwen2 ignores use_sliding_window: so must kooka.
    "qwen2_swa": (qwen2, dict(model_type="qwen2", rope_theta=1000000.0, tie_word_embeddings=True,
                              use_sliding_window=True, sliding_window=8, max_window_layers=1)),
    # qwen3_moe with SmolLM2's vocabulary size, so it can be served over HTTP with
    # SmolLM2's tokenizer (tests/cluster.rs copies the tokenizer files in).
    "qwen3_moe_chat": (qwen3_moe, dict(
        MOE_BASE, model_type="qwen3_moe", rope_theta=1000000.0, tie_word_embeddings=False,
        num_hidden_layers=3, head_dim=16, intermediate_size=128, moe_intermediate_size=64,
        num_experts=8, num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[1],
        norm_topk_prob=True, vocab_size=49152)),
    # minimax with SmolLM2's vocabulary size: `--minimax-chat` serves it with SmolLM2's
    # tokenizer and MiniMax-M2's chat template (tests/contract, marker `minimax`).
    "minimax_chat": (minimax, dict(ARCHS["minimax"][1], vocab_size=49152,
                                   max_position_embeddings=8192)),
    # glm4_moe with SmolLM2's vocabulary size (`--chat glm4_moe`, served with GLM-4.6's template).
    "glm4_moe_chat": (glm4_moe, dict(ARCHS["glm4_moe"][1], vocab_size=49152,
                                     max_position_embeddings=8192)),
    # nemotron_h: Mamba-2 (8 heads of 16 in 2 groups, state 16, conv kernel 4), attention
    # without RoPE, a ReLU^2 MLP, and MoE layers of 8 ReLU^2 experts in 2 groups (1 kept),
    # top-2, run in a 64-wide latent, plus a shared expert. Every quantized input width is a
    # multiple of 64. mlx-lm wants the pattern as a list of one-character strings and
    # `layer_norm_epsilon` (build() drops BASE's rms_norm_eps: kooka reads either name).
    # `time_step_limit` unbounded above, as NVIDIA's configs state it (there a bare
    # `Infinity`; mlx-lm's save_config writes `{"__float__": "Infinity"}`).
    "nemotron_h": (nemotron_h, dict(
        BASE, model_type="nemotron_h", hidden_size=128, intermediate_size=128,
        hybrid_override_pattern=list("ME*M-ME"), num_hidden_layers=7, layer_norm_epsilon=1e-5,
        attention_bias=False, mamba_num_heads=8, mamba_head_dim=16, mamba_proj_bias=False,
        ssm_state_size=16, conv_kernel=4, n_groups=2, mlp_bias=False, use_bias=False,
        use_conv_bias=True, moe_intermediate_size=64, moe_shared_expert_intermediate_size=64,
        moe_latent_size=64, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
        n_group=2, topk_group=1, norm_topk_prob=True, routed_scaling_factor=2.5,
        tie_word_embeddings=False, time_step_limit=[0.0, float("inf")])),
    # qwen3_next: Gated DeltaNet (linear) and gated full-attention layers in turn
    # (full_attention_interval 2), 2 key heads and 4 value heads of 16 in the linear layers,
    # RoPE on a quarter of each full-attention head, 8 experts top-2 with a gated shared
    # expert, layer 1 dense. Expert widths of 32: its quantized variant packs in groups of 32
    # (the routers and shared-expert gates at 8 bits in groups of 64, its quant_predicate).
    "qwen3_next": (qwen3_next, dict(
        MOE_BASE, model_type="qwen3_next", rope_theta=10000.0, tie_word_embeddings=False,
        num_hidden_layers=4, full_attention_interval=2, head_dim=16, partial_rotary_factor=0.25,
        intermediate_size=128, linear_num_key_heads=2, linear_num_value_heads=4,
        linear_key_head_dim=16, linear_value_head_dim=16, linear_conv_kernel_dim=4,
        num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[1],
        norm_topk_prob=True)),
    # Top-3 of 8 without renormalization, every second layer sparse.
    "qwen3_moe_k3": (qwen3_moe, dict(
        MOE_BASE, model_type="qwen3_moe", rope_theta=1000000.0, tie_word_embeddings=True,
        head_dim=16, intermediate_size=128, moe_intermediate_size=64, num_experts=8,
        num_experts_per_tok=3, decoder_sparse_step=2, mlp_only_layers=[],
        norm_topk_prob=False)),
}

# deepseek_v3 with a full q_proj (q_lora_rank null), attention biases, plain RoPE, and only
# every second layer after the first sparse (moe_layer_freq 2: layers 0, 1 and 3 dense).
ARCHS_EXTRA["deepseek_v3_noqlora"] = (deepseek_v3, dict(
    ARCHS["deepseek_v3"][1], q_lora_rank=None, attention_bias=True, rope_scaling=None,
    moe_layer_freq=2))
# deepseek_v3 saved as mlx-lm did before its MultiLinear: Hugging Face's kv_b_proj instead of
# embed_q/unembed_out (see to_kv_b); both kooka and mlx-lm split (and repack) it on load.
ARCHS_EXTRA["deepseek_v3_kvb"] = ARCHS["deepseek_v3"]

# gpt_oss with SmolLM2's vocabulary and the harmony special tokens after it (`--chat
# gpt_oss`, served with gpt-oss's template).
ARCHS_EXTRA["gpt_oss_chat"] = (gpt_oss, dict(ARCHS_EXTRA["gpt_oss"][1], vocab_size=49160,
                                             max_position_embeddings=8192))
# nemotron_h with SmolLM2's vocabulary (`--chat nemotron_h`, served with Nemotron-3-Nano's
# template: <tool_call><function=...><parameter=...> and <think>).
ARCHS_EXTRA["nemotron_h_chat"] = (nemotron_h, dict(ARCHS_EXTRA["nemotron_h"][1], vocab_size=49152,
                                                   max_position_embeddings=8192))

# Fixtures of tests/shard.rs (sharded runs against one rank). Those named "-f32" keep
# float32 scales and biases: kooka then runs packed 4-bit weights with float32 activations,
# so a tensor-parallel run differs from one rank only by summation order, not by bf16
# rounding (which these tiny random models amplify to different tokens). Group sizes fit
# two ranks: qwen3_moe's o_proj inputs and expert hidden units are 64, 32 per rank, so its
# "q4g64" does not fit (for the error).
SHARD = {
    ("llama", "q4g64-f32"): ({"group_size": 64, "bits": 4}, {}),
    ("qwen3_moe", "q4g32-f32"): ({"group_size": 32, "bits": 4}, {}),
    ("qwen3_moe", "bf16"): (None, {}),
    ("qwen3_moe", "q4g64"): ({"group_size": 64, "bits": 4}, {}),
    ("mixtral", "bf16"): (None, {}),
    ("qwen3_moe_chat", "q4g32-f32"): ({"group_size": 32, "bits": 4}, {}),
    ("minimax", "bf16"): (None, {}),
    ("minimax", "q4g32-f32"): ({"group_size": 32, "bits": 4}, {}),
    ("glm4_moe", "bf16"): (None, {}),
    ("glm4_moe", "q4g32-f32"): ({"group_size": 32, "bits": 4}, {}),
    ("gpt_oss", "bf16"): (None, {}),
    ("gpt_oss", "mxfp4-f32"): ({"group_size": 32, "bits": 4, "mode": "mxfp4"}, {}),
    ("deepseek_v3", "bf16"): (None, {}),
    ("deepseek_v3", "q4g32-f32"): ({"group_size": 32, "bits": 4}, {}),
    ("deepseek_v3_noqlora", "q4g32-f32"): ({"group_size": 32, "bits": 4}, {}),
    ("nemotron_h", "bf16"): (None, {}),
    ("qwen3_next", "bf16"): (None, {}),
}

# name -> (global quantization or None, per-module overrides)
VARIANTS = {
    "bf16": (None, {}),
    "q4g64": ({"group_size": 64, "bits": 4}, {}),
    "q8g32": ({"group_size": 32, "bits": 8}, {}),
}
# Extra variants only for one architecture, to cover the rarer layouts.
EXTRA = {
    ("llama", "mixed"): ({"group_size": 64, "bits": 4},
                         {"model.embed_tokens": {"group_size": 32, "bits": 8},
                          "lm_head": {"group_size": 128, "bits": 6},
                          "model.layers.0.mlp.down_proj": False}),
    ("llama_tied", "q3g32"): ({"group_size": 32, "bits": 3}, {}),
    ("llama_tied", "f16"): (None, {}),
    ("mistral_swa16", "bf16"): (None, {}),
    ("mistral_swa16", "q4g64"): ({"group_size": 64, "bits": 4}, {}),
    ("qwen2_swa", "bf16"): (None, {}),
    ("qwen3_moe_k3", "bf16"): (None, {}),
    ("qwen3_moe_k3", "q8g64"): ({"group_size": 64, "bits": 8}, {}),
    # MXFP4 experts and attention (what gpt-oss ships), the router affine 8-bit (its
    # quant_predicate).
    ("gpt_oss", "mxfp4"): ({"group_size": 32, "bits": 4, "mode": "mxfp4"}, {}),
    ("gpt_oss", "q4g64"): ({"group_size": 64, "bits": 4}, {}),
    ("gpt_oss", "q8g32"): ({"group_size": 32, "bits": 8}, {}),
    ("deepseek_v3_noqlora", "bf16"): (None, {}),
    ("deepseek_v3_noqlora", "q4g64"): ({"group_size": 64, "bits": 4}, {}),
    ("deepseek_v3_kvb", "bf16"): (None, {}),
    ("deepseek_v3_kvb", "q4g64"): ({"group_size": 64, "bits": 4}, {}),
    ("nemotron_h", "bf16"): (None, {}),
    ("nemotron_h", "q4g64"): ({"group_size": 64, "bits": 4}, {}),
    ("qwen3_next", "bf16"): (None, {}),
    ("qwen3_next", "q4g32"): ({"group_size": 32, "bits": 4}, {}),
    ("mixtral", "mixed"): ({"group_size": 64, "bits": 4},
                           {"model.layers.1.block_sparse_moe.switch_mlp.down_proj":
                                {"group_size": 32, "bits": 8},
                            "model.layers.0.block_sparse_moe.gate": False}),
}


def build(arch, variant, quant, overrides, out):
    module, extra = ARCHS.get(arch) or ARCHS_EXTRA[arch]
    config = dict(BASE, **extra)
    if module is nemotron_h:
        del config["rms_norm_eps"]
    mx.random.seed(0)
    args = module.ModelArgs.from_dict(config)
    model = module.Model(args)
    # Wider weights than the default init so the tiny model's logits are far from flat.
    # (ndim >= 2: stacked expert weights [experts, out, in] too.)
    model.update(tree_map(lambda p: p * 4.0 if p.ndim >= 2 else p, model.parameters()))
    dtype = {"f16": mx.float16}.get(variant, mx.float32 if variant.endswith("-f32") else mx.bfloat16)
    model.set_dtype(dtype)
    if module is glm4_moe:
        # mlx-lm starts the routers at zero (weights and correction bias, the latter kept
        # float32): random here, so that routing and the expert groups matter.
        for layer in model.model.layers:
            if isinstance(layer.mlp, glm4_moe.MoE):
                gate = layer.mlp.gate
                gate.weight = (mx.random.normal(gate.weight.shape) * 0.5).astype(dtype)
                gate.e_score_correction_bias = mx.random.uniform(-0.3, 0.3, gate.e_score_correction_bias.shape)
    if module is deepseek_v3:
        # As for glm4_moe: random routers and correction biases (float32).
        for layer in model.model.layers:
            if isinstance(layer.mlp, deepseek_v3.DeepseekV3MoE):
                gate = layer.mlp.gate
                gate.weight = (mx.random.normal(gate.weight.shape) * 0.5).astype(dtype)
                gate.e_score_correction_bias = mx.random.uniform(-0.3, 0.3, gate.e_score_correction_bias.shape)
    if module is minimax:
        # mlx-lm starts the routers' correction bias at zero and keeps it float32 (its
        # cast_predicate): random values here, so that the bias changes which experts win.
        for layer in model.model.layers:
            moe = layer.block_sparse_moe
            moe.e_score_correction_bias = mx.random.uniform(-0.3, 0.3, moe.e_score_correction_bias.shape)
    if module is gpt_oss:
        for layer in model.model.layers:
            attn, experts = layer.self_attn, layer.mlp.experts
            attn.sinks = mx.random.uniform(-1.0, 1.0, attn.sinks.shape).astype(dtype)
            for proj in (experts.gate_proj, experts.up_proj, experts.down_proj):
                proj.bias = (mx.random.normal(proj.bias.shape) * 0.5).astype(dtype)
    if module is nemotron_h:
        for layer in model.backbone.layers:
            m = layer.mixer
            if layer.block_type == "M":
                # mlx-lm's A = -(1..heads) and dt_bias = 1 forget a state within a few
                # positions: slow decays here (|A| in 0.02..0.2, softplus(dt) mostly < 1),
                # so the state carried across scan chunks and prefill chunks matters. A_log
                # stays float32 (mlx-lm's cast_predicate).
                m.A_log = mx.log(mx.random.uniform(0.02, 0.2, m.A_log.shape))
                m.dt_bias = mx.random.uniform(-3.0, -1.0, m.dt_bias.shape).astype(dtype)
                m.D = mx.random.uniform(0.5, 1.5, m.D.shape).astype(dtype)
            elif layer.block_type == "E":
                # As for glm4_moe: random routers and correction biases (float32).
                gate = m.gate
                gate.weight = (mx.random.normal(gate.weight.shape) * 0.5).astype(dtype)
                gate.e_score_correction_bias = mx.random.uniform(-0.3, 0.3, gate.e_score_correction_bias.shape)
    if quant is not None:
        # The model's own quant_predicate (qwen3_moe: routers at 8 bits) applies as in
        # mlx_lm.convert, and its per-module choices are recorded in the config likewise.
        own = getattr(model, "quant_predicate", None)
        chosen = dict(overrides)

        def predicate(path, m):
            if path in overrides:
                return overrides[path]
            if not hasattr(m, "to_quantized"):
                return False
            if own is not None:
                r = own(path, m)
                if isinstance(r, dict):
                    chosen[path] = r
                return r
            return True
        nn.quantize(model, group_size=quant["group_size"], bits=quant["bits"],
                    mode=quant.get("mode", "affine"), class_predicate=predicate)
        config["quantization"] = dict(quant, **chosen)
    mx.eval(model.parameters())
    save_model(out, model)
    save_config(config, out / "config.json")
    if arch.endswith("_kvb"):
        to_kv_b(out, args, quant)


def to_kv_b(out, args, quant):
    """Rewrites a deepseek_v3 folder the way mlx-lm saved it before `MultiLinear`: per layer,
    embed_q ([heads, kv_lora, nope]) and unembed_out ([heads, v, kv_lora]) joined back into
    kv_b_proj ([heads * (nope + v), kv_lora]), packed like the rest when quantized."""
    path = out / "model.safetensors"
    weights = mx.load(str(path))
    for i in range(args.num_hidden_layers):
        p = f"model.layers.{i}.self_attn"

        def take(name):
            w = weights.pop(f"{p}.{name}.weight")
            if f"{p}.{name}.scales" not in weights:
                return w
            scales, biases = weights.pop(f"{p}.{name}.scales"), weights.pop(f"{p}.{name}.biases")
            return mx.dequantize(w, scales, biases, quant["group_size"], quant["bits"])

        wk, wv = take("embed_q"), take("unembed_out")
        kv_b = mx.concatenate([wk.swapaxes(-1, -2), wv], axis=1).reshape(-1, args.kv_lora_rank)
        if quant is None:
            weights[f"{p}.kv_b_proj.weight"] = kv_b
        else:
            w, scales, biases = mx.quantize(kv_b, quant["group_size"], quant["bits"])
            weights.update({f"{p}.kv_b_proj.weight": w, f"{p}.kv_b_proj.scales": scales,
                            f"{p}.kv_b_proj.biases": biases})
    mx.eval(weights)  # read before the file is rewritten: mx.load is lazy
    mx.save_safetensors(str(path), weights, metadata={"format": "mlx"})
    index = json.loads((out / "model.safetensors.index.json").read_text())
    index["metadata"]["total_size"] = sum(v.nbytes for v in weights.values())
    index["weight_map"] = {k: "model.safetensors" for k in sorted(weights)}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=4))


# gpt-oss's harmony markup: special tokens of its o200k_harmony vocabulary, added after
# SmolLM2's 49,152 for the tiny gpt_oss chat model. The reply ends at <|return|> or <|call|>.
HARMONY_TOKENS = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>",
                  "<|return|>", "<|call|>"]


def chat_model(arch, out, tokenizer_dir, template):
    build(arch, "bf16", None, {}, out)
    tokenizer = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = template.read_text()
    if arch == "gpt_oss_chat":
        first = 49152
        for i, tok in enumerate(HARMONY_TOKENS):
            tokenizer["added_tokens"].append({
                "id": first + i, "content": tok, "single_word": False, "lstrip": False,
                "rstrip": False, "normalized": False, "special": True})
        ids = {t: first + i for i, t in enumerate(HARMONY_TOKENS)}
        model_config = json.loads((out / "config.json").read_text())
        model_config["eos_token_id"] = [ids["<|return|>"], ids["<|call|>"]]
        (out / "config.json").write_text(json.dumps(model_config, indent=4))
        config["eos_token"] = "<|return|>"
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))


def main():
    if sys.argv[1] == "--chat":
        chat_model(sys.argv[2] + "_chat", Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
        return
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    names = []
    if "--shard" in sys.argv[2:]:
        jobs = [(a, v, *q) for (a, v), q in SHARD.items()]
    else:
        jobs = [(a, v, *VARIANTS[v]) for a in ARCHS for v in VARIANTS]
        jobs += [(a, v, *q) for (a, v), q in EXTRA.items()]
    for arch, variant, quant, overrides in jobs:
        name = f"{arch}-{variant}"
        build(arch, variant, quant, overrides, out / name)
        names.append(name)
    (out / "models.json").write_text(json.dumps(names))
    print(json.dumps(names))


if __name__ == "__main__":
    main()
