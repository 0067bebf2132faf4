//! `Tokenizer::encode_prompt` reuses a recent prompt's ids: it must give exactly what a
//! whole tokenization gives, on the real tokenizers kooka ships tests with, for the texts a
//! coding agent sends (a conversation growing turn by turn, resent, edited in the middle,
//! forked), and it must actually reuse on them.

mod common;

use kooka::tokenizer::{Reuse, Tokenizer};

/// A deterministic stream of pseudo-random numbers (no seed-dependent crate needed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize
    }
}

/// Text with what splits tokens awkwardly: runs of spaces and newlines, digits, code,
/// non-ASCII letters and emoji, and the tokenizer's own added tokens.
fn message(rng: &mut Lcg, specials: &[String]) -> String {
    const WORDS: &[&str] = &[
        "fn",
        "main()",
        "{",
        "}",
        "let",
        "x",
        "=",
        "42;",
        "println!(\"héllo\");",
        "naïve",
        "Größe",
        "日本語",
        "🦀",
        "  ",
        "\n",
        "\n\n",
        "\t",
        "1234567",
        "3.14159",
        "'s",
        "don't",
        "    indented",
        "//",
        "comment",
        "<div>",
        "</div>",
        "a_b_c",
        "CamelCase",
        "   \n  ",
    ];
    let mut out = String::new();
    for _ in 0..(40 + rng.next() % 200) {
        if rng.next().is_multiple_of(23) && !specials.is_empty() {
            out.push_str(&specials[rng.next() % specials.len()]);
        } else {
            out.push_str(WORDS[rng.next() % WORDS.len()]);
        }
        if !rng.next().is_multiple_of(3) {
            out.push(' ');
        }
    }
    out
}

fn check(tok: &Tokenizer, text: &str, special: bool) -> Reuse {
    let (ids, reuse) = tok.encode_prompt_reusing(text, special).unwrap();
    let whole = tok.encode(text, special).unwrap();
    assert_eq!(ids, whole, "{reuse:?} differs from a whole tokenization");
    reuse
}

fn conversations(model: &str) {
    conversations_with(&Tokenizer::load(&common::model(model)).unwrap(), model);
}

fn conversations_with(tok: &Tokenizer, model: &str) {
    let specials: Vec<String> = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>"]
        .iter()
        .filter(|s| tok.token_to_id(s).is_some())
        .map(|s| s.to_string())
        .collect();
    let mut rng = Lcg(7);
    let (mut prefixes, mut wholes) = (0, 0);
    for conversation in 0..6 {
        let mut text = format!("<|im_start|>system\nAgent {conversation}. ");
        for _ in 0..3 {
            text += &message(&mut rng, &specials);
        }
        for turn in 0..6 {
            text += &format!(
                "<|im_end|>\n<|im_start|>user\n{}",
                message(&mut rng, &specials)
            );
            text += "<|im_end|>\n<|im_start|>assistant\n";
            let special = turn % 2 == 0;
            if let Reuse::Prefix(_) = check(tok, &text, special) {
                prefixes += 1;
            }
            // Resent as is (an agent's retry).
            if check(tok, &text, special) == Reuse::Whole {
                wholes += 1;
            }
            // Edited in the middle, and cut at every kind of place: still exact.
            let at = rng.next() % text.len();
            let at = (0..=at)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            let edited = format!("{} {}", &text[..at], message(&mut rng, &specials));
            check(tok, &edited, special);
            text += &message(&mut rng, &specials);
        }
    }
    assert!(
        prefixes >= 20,
        "{model}: only {prefixes} turns reused a prefix"
    );
    assert!(wholes >= 30, "{model}: only {wholes} resends were whole");
}

#[test]
fn smollm2_conversations_tokenize_as_whole() {
    conversations("SmolLM2-135M-Instruct");
}

#[test]
fn qwen_conversations_tokenize_as_whole() {
    conversations("Qwen2.5-Coder-0.5B-Instruct");
}

/// A tokenizer whose post-processor adds tokens around the text (a BOS before, an EOS after,
/// as TemplateProcessing does for Llama-style models): `encode(_, true)` reuses the text's
/// ids and puts them around.
#[test]
fn conversations_through_a_post_processor_that_adds_tokens() {
    let dir = common::tmp().join("encode-cache-bos-eos");
    std::fs::create_dir_all(&dir).unwrap();
    let src = common::model("SmolLM2-135M-Instruct");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer.json")).unwrap())
            .unwrap();
    let special = |t: &str| serde_json::json!({"SpecialToken": {"id": t, "type_id": 0}});
    let seq = serde_json::json!({"Sequence": {"id": "A", "type_id": 0}});
    json["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [special("<|endoftext|>"), seq, special("<|im_end|>")],
        "pair": [special("<|endoftext|>"), seq,
                 {"Sequence": {"id": "B", "type_id": 1}}, special("<|im_end|>")],
        "special_tokens": {
            "<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]},
            "<|im_end|>": {"id": "<|im_end|>", "ids": [2], "tokens": ["<|im_end|>"]}
        }
    });
    std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
    let tok = Tokenizer::load(&dir).unwrap();
    let ids = tok.encode("hello", true).unwrap();
    assert_eq!(
        (ids[0], ids[ids.len() - 1]),
        (0, 2),
        "the post-processor is in use"
    );
    conversations_with(&tok, "SmolLM2 with BOS and EOS");
}

/// Texts that differ right after an added token, or inside one, or that grow within a
/// word: the cut must stay clear of where they part.
#[test]
fn partings_near_added_tokens() {
    let tok = Tokenizer::load(&common::model("Qwen2.5-Coder-0.5B-Instruct")).unwrap();
    let base = format!("<|im_start|>user\n{}", "word ".repeat(600));
    check(&tok, &format!("{base}<|im_end|>\nabc"), false);
    for tail in [
        "<|im_end|>\nabcdef",
        "<|im_end|>",
        "<|im_en",
        "<|im_end|>x",
        "<|im_end|><|im_start|>",
        "<tool_call>{\"a\": 1}</tool_call>",
        "wordword",
        " ",
        "",
    ] {
        check(&tok, &format!("{base}{tail}"), false);
        check(&tok, &format!("{base}<|im_end|>\n{tail}"), false);
    }
}
