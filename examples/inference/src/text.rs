//! The "model" work of each stage, as plain functions: normalising and
//! tokenising a prompt (preprocess), generating tokens (inference, a toy:
//! no weights, the answer is derived from the prompt) and formatting them
//! (postprocess).

use crate::answer::Token;

/// Size of the hashed vocabulary token ids fall into.
pub const VOCABULARY: u32 = 50_000;

/// Lowercase, control characters dropped, runs of whitespace made one space,
/// trimmed.
pub fn normalise(prompt: &str) -> String {
    let mut out = String::with_capacity(prompt.len());
    let mut space = false;
    for c in prompt.chars().flat_map(char::to_lowercase) {
        if c.is_whitespace() {
            space = !out.is_empty();
        } else if !c.is_control() {
            if space {
                out.push(' ');
                space = false;
            }
            out.push(c);
        }
    }
    out
}

/// Words (letters, digits, `'` inside a word) and single punctuation marks,
/// each with a stable id (FNV-1a of its text, modulo [`VOCABULARY`]).
pub fn tokenise(text: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, tokens: &mut Vec<Token>| {
        if !word.is_empty() {
            tokens.push(token(std::mem::take(word)));
        }
    };
    for c in text.chars() {
        if c.is_alphanumeric() || (c == '\'' && !word.is_empty()) {
            word.push(c);
        } else {
            flush(&mut word, &mut tokens);
            if !c.is_whitespace() {
                tokens.push(token(c.to_string()));
            }
        }
    }
    flush(&mut word, &mut tokens);
    tokens
}

fn token(text: String) -> Token {
    Token {
        id: fnv1a(text.as_bytes()) % VOCABULARY,
        text,
    }
}

/// FNV-1a, 32 bits: a stable hash (std's `DefaultHasher` may change between
/// Rust releases, and ids should not).
pub fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The toy model: the prompt's words, last first. The slow model (v1)
/// keeps every word; the fast one (v2, "distilled") drops words of three
/// letters or fewer, so the two versions' answers differ visibly. At most
/// `max_tokens` tokens come out.
pub fn generate(model: &str, tokens: &[Token], max_tokens: usize) -> Vec<String> {
    let keep = |t: &&Token| {
        t.text.chars().any(char::is_alphanumeric) && (model != "fast" || t.text.chars().count() > 3)
    };
    tokens
        .iter()
        .rev()
        .filter(keep)
        .map(|t| t.text.clone())
        .take(max_tokens)
        .collect()
}

/// Tokens joined by spaces, the first word capitalised, ending with a full
/// stop.
pub fn format_answer(tokens: &[String]) -> String {
    let mut text = tokens.join(" ");
    if let Some(start) = text.find(char::is_alphabetic) {
        let upper: String = text[start..]
            .chars()
            .take(1)
            .flat_map(char::to_uppercase)
            .collect();
        let len = text[start..].chars().next().map_or(0, char::len_utf8);
        text.replace_range(start..start + len, &upper);
    }
    if !text.is_empty() && !text.ends_with(['.', '!', '?']) {
        text.push('.');
    }
    text
}

/// `?prompt=...` from a query string: `+` is a space and `%XX` a byte, as
/// browsers and `curl --data-urlencode -G` send it.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
