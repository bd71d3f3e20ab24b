//! kiln's gzip at level 6 on 200 MB of text-like bytes and on 200 MB of
//! random ones (a layer of compressed files), in MB/s, beside `pigz -6` and
//! `gzip -6` compressing the same bytes in the same run.
//!
//! Run with `cargo bench -p kiln-cache --bench gzip`.

use std::fs;
use std::io::{self, Write};

use kiln_cache::Compression;

mod common;
use common::{best, fill, mb_per_s, tool};

const INPUT_BYTES: usize = 200 * 1024 * 1024;

/// What callers hand the encoder at a time: `std::io::copy`'s buffer.
const WRITE_SIZE: usize = 8 * 1024;

fn random(buffer: &mut [u8]) {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for word in buffer.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
    }
}

/// Counts what it is given, so that the output costs no memory.
struct CountingSink(u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn kiln_gzip(data: &[u8]) -> u64 {
    let mut encoder = Compression::Gzip { level: 6 }
        .encoder(CountingSink(0))
        .expect("encoder");
    for piece in data.chunks(WRITE_SIZE) {
        encoder.write_all(piece).expect("compress");
    }
    encoder.finish().expect("finish").0
}

fn main() {
    let work = tempfile::tempdir().expect("temporary directory");
    let mut text = vec![0u8; INPUT_BYTES];
    fill(&mut text, &mut 0x2545_f491_4f6c_dd1d);
    let mut noise = vec![0u8; INPUT_BYTES];
    random(&mut noise);
    println!(
        "{:<20} {:>10} {:>14} {:>12}",
        "case", "MB/s", "compressed MB", "kiln speedup"
    );
    for (name, data) in [("text-like", text), ("random", noise)] {
        let input = work.path().join(name);
        fs::write(&input, &data).expect("write input");
        let bytes = data.len() as u64;
        let (elapsed, size) = best(3, || kiln_gzip(&data));
        let ours = mb_per_s(bytes, elapsed);
        println!(
            "{:<20} {ours:>10.1} {:>14.1}",
            format!("{name}: kiln -6"),
            size as f64 / 1e6
        );
        for program in ["pigz", "gzip"] {
            let label = format!("{name}: {program} -6");
            match best(2, || tool(program, &["-6", "-c"], &input)) {
                (_, Some((elapsed, size))) => {
                    let theirs = mb_per_s(bytes, elapsed);
                    println!(
                        "{label:<20} {theirs:>10.1} {:>14.1} {:>11.2}x",
                        size as f64 / 1e6,
                        ours / theirs
                    );
                }
                (_, None) => println!("{label:<20} skipped: {program} is not installed"),
            }
        }
    }
    io::stdout().flush().expect("flush");
}
