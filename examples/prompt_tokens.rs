//! Time to tokenize a chat conversation that grows turn by turn, whole against
//! `Tokenizer::encode_prompt` (which reuses the previous turn's ids), and resent as is.
//! `cargo run --release --example prompt_tokens -- models/Qwen2.5-Coder-0.5B-Instruct`

use std::time::Instant;

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "models/Qwen2.5-Coder-0.5B-Instruct".into());
    let tok = kooka::tokenizer::Tokenizer::load(std::path::Path::new(&dir)).unwrap();
    // ~1,400 tokens of prose and code per user turn.
    let turn_text: String = (0..700)
        .map(|i| match i % 7 {
            0 => "the",
            1 => "server",
            2 => "reads",
            3 => "fn main() {",
            4 => "x = 42;",
            5 => "}\n",
            _ => "agent",
        })
        .collect::<Vec<_>>()
        .join(" ");
    let mut text = String::from("<|im_start|>system\nYou are a coding agent.");
    for turn in 0..12 {
        text += &format!(
            "<|im_end|>\n<|im_start|>user\nturn {turn} {turn_text}<|im_end|>\n<|im_start|>assistant\n"
        );
        let started = Instant::now();
        let whole = tok.encode(&text, false).unwrap();
        let whole_time = started.elapsed();
        let started = Instant::now();
        let (ids, reuse) = tok.encode_prompt_reusing(&text, false).unwrap();
        let next_time = started.elapsed();
        let started = Instant::now();
        let (_, again) = tok.encode_prompt_reusing(&text, false).unwrap();
        let resent_time = started.elapsed();
        assert_eq!(ids, whole);
        println!(
            "{:>6} tokens: whole {:>9.3} ms | next turn {:>7.3} ms ({reuse:?}) | resent {:>7.3} ms ({again:?})",
            ids.len(),
            whole_time.as_secs_f64() * 1e3,
            next_time.as_secs_f64() * 1e3,
            resent_time.as_secs_f64() * 1e3,
        );
        text += "Sure, here it is.";
    }
}
