//! Token arithmetic for when the provider has not (yet) told us the real numbers.
//!
//! Two different questions, answered with deliberately different biases:
//! - before the request, how much to *reserve*: this must be a true upper bound, or a prepaid
//!   account could spend more than it holds;
//! - after a stream cut before its usage chunk, how much to *charge*: a fair estimate of what
//!   was generated, from the text the client actually received.

/// Estimated tokens for `chars` characters of generated text: about four characters per token
/// (OpenAI's rule of thumb for English with their BPE vocabularies), rounded up, so any
/// non-empty output costs at least one token.
pub fn tokens_from_chars(chars: u64) -> u64 {
    chars.div_ceil(4)
}

/// A true upper bound on the prompt tokens of a request whose JSON body is `body_len` bytes,
/// for a model with a `context_length`-token window.
///
/// Why `body_len` bounds it: byte-level BPE tokenizers (tiktoken, and SentencePiece with byte
/// fallback) never emit a token that covers zero bytes of input, so text of `k` bytes is at most
/// `k` tokens. Every piece of text the model sees is in the body, and the body spells it with at
/// least as many bytes: JSON escapes only lengthen text (`\n` is 2 bytes for 1, `\u4e00` is 6
/// bytes for 3). The chat template adds a few special tokens per message (role markers), but
/// each message also costs far more JSON syntax bytes than that (`{"role":"user","content":""}`
/// is 28 bytes), so the bound still holds.
///
/// Why `context_length` bounds it: the provider rejects a prompt that does not fit the window.
/// It is also the only bound for inputs whose token cost is not proportional to their bytes:
/// an image given by URL (hundreds of tokens for a few dozen bytes) or audio. Callers that see
/// such parts should reserve with `context_length` alone.
///
/// A `context_length` of 0 means "unknown" and leaves the body bound alone.
pub fn prompt_upper_bound(body_len: usize, context_length: u64) -> u64 {
    let body = u64::try_from(body_len).unwrap_or(u64::MAX);
    if context_length == 0 {
        body
    } else {
        body.min(context_length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chars_round_up() {
        let cases =
            [(0, 0), (1, 1), (3, 1), (4, 1), (5, 2), (400, 100), (u64::MAX, u64::MAX / 4 + 1)];
        for (chars, tokens) in cases {
            assert_eq!(tokens_from_chars(chars), tokens, "{chars}");
        }
    }

    #[test]
    fn prompt_bound_is_the_smaller_limit() {
        assert_eq!(prompt_upper_bound(1_000, 128_000), 1_000);
        assert_eq!(prompt_upper_bound(5_000_000, 128_000), 128_000);
        assert_eq!(prompt_upper_bound(1_000, 0), 1_000);
        assert_eq!(prompt_upper_bound(0, 8), 0);
    }
}
