//! What the benches share: text-like bytes, timing, and running the
//! command-line tools they compare against.

use std::fs;
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Best of a few runs, to keep the noise of a busy machine out.
pub fn best<T>(runs: usize, mut run: impl FnMut() -> T) -> (Duration, T) {
    let mut best: Option<(Duration, T)> = None;
    for _ in 0..runs {
        let started = Instant::now();
        let value = run();
        let elapsed = started.elapsed();
        if best.as_ref().is_none_or(|(b, _)| elapsed < *b) {
            best = Some((elapsed, value));
        }
    }
    best.expect("at least one run")
}

/// How long `program` takes to compress `input`, and its output size;
/// `None` when it is not installed or fails.
pub fn tool(program: &str, args: &[&str], input: &Path) -> Option<(Duration, u64)> {
    let file = fs::File::open(input).ok()?;
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(file)
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let size = io::copy(child.stdout.as_mut()?, &mut io::sink()).ok()?;
    let status = child.wait().ok()?;
    status.success().then(|| (started.elapsed(), size))
}
