//! Helpers shared by unit tests.

/// A fixed-seed xorshift64 generator: each call gives a number in `0..bound` (0 for a bound
/// of 0). The mutation tests draw from it, so a failure names an input that reproduces.
pub fn xorshift(seed: u64) -> impl FnMut(usize) -> usize {
    let mut state = seed;
    move |bound| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound.max(1) as u64) as usize
    }
}
