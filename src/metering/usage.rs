//! Token usage as a provider reports it, independent of wire format.

/// Tokens one generation consumed. `cached_prompt_tokens` is the part of `prompt_tokens` served
/// from the provider's prompt cache (already included in `prompt_tokens`, usually billed at a
/// lower rate). `cache_write_tokens` is the part of `prompt_tokens` written to the cache
/// (Anthropic's `cache_creation_input_tokens`, usually billed at a higher rate).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub cache_write_tokens: u64,
}

impl Usage {
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    /// Prompt tokens not served from the cache. Saturates: a provider reporting more cached
    /// than prompt tokens must not make us bill a negative amount.
    pub fn uncached_prompt_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_sub(self.cached_prompt_tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_saturate() {
        let u = Usage { prompt_tokens: 10, completion_tokens: 5, cached_prompt_tokens: 4, ..Default::default() };
        assert_eq!((u.total_tokens(), u.uncached_prompt_tokens()), (15, 6));
        let odd = Usage { prompt_tokens: 1, completion_tokens: u64::MAX, cached_prompt_tokens: 9, ..Default::default() };
        assert_eq!((odd.total_tokens(), odd.uncached_prompt_tokens()), (u64::MAX, 0));
    }
}
