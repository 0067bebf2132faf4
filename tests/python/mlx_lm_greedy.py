"""Greedy generation with mlx-lm from a converted model folder (reference for tests/convert.rs).

Usage: mlx_lm_greedy.py --model DIR --prompt TEXT [--max-tokens N]
Applies the folder's chat template (add_generation_prompt=True), decodes greedily and prints
only the generated text on stdout.
"""
import argparse

import mlx.core as mx
from mlx_lm import generate, load
from mlx_lm.sample_utils import make_sampler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-tokens", type=int, default=20)
    args = ap.parse_args()

    mx.set_default_device(mx.cpu)
    model, tokenizer = load(args.model)
    messages = [{"role": "user", "content": args.prompt}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    text = generate(model, tokenizer, prompt=prompt, max_tokens=args.max_tokens,
                    sampler=make_sampler(temp=0.0), verbose=False)
    print(text)


if __name__ == "__main__":
    main()
