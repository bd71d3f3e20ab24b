//! What the benches share: text-like bytes and throughput.

use std::time::Duration;

/// Text-like content (about 3:1 under gzip, like binaries and sources).
pub fn fill(buffer: &mut [u8], state: &mut u64) {
    const WORDS: [&[u8]; 16] = [
        b"kiln ",
        b"layer ",
        b"build ",
        b"image ",
        b"0x7f3a ",
        b"return ",
        b"struct ",
        b"{\n",
        b"}\n",
        b"    ",
        b"digest ",
        b"sha256 ",
        b"context ",
        b"let ",
        b"mut ",
        b"fn ",
    ];
    let mut at = 0;
    while at < buffer.len() {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let word: &[u8] = if state.is_multiple_of(7) {
            &state.to_le_bytes()[..3]
        } else {
            WORDS[(*state >> 8) as usize % WORDS.len()]
        };
        let n = word.len().min(buffer.len() - at);
        buffer[at..at + n].copy_from_slice(&word[..n]);
        at += n;
    }
}

pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1_000_000.0 / elapsed.as_secs_f64()
}
