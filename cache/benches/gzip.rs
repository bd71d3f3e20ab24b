//! kiln's gzip at level 6 on 200 MB of text-like bytes and on 200 MB of
//! random ones (a layer of compressed files), beside `pigz -6` and `gzip -6`
//! compressing the same bytes in the same run: MB/s of wall time, and MB per
//! CPU second, which other work on a shared machine disturbs far less. Runs
//! of kiln and of the tools alternate so that they share the same load.
//!
//! Run with `cargo bench -p kiln-cache --bench gzip`.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_cache::Compression;

mod common;
use common::{fill, mb_per_s};

const INPUT_BYTES: usize = 200 * 1024 * 1024;

/// What callers hand the encoder at a time: `std::io::copy`'s buffer.
const WRITE_SIZE: usize = 8 * 1024;

const ROUNDS: usize = 3;

const TOOLS: [&str; 2] = ["pigz", "gzip"];

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

/// What a run cost: wall time, and CPU time over all threads, which a
/// machine busy with other work inflates far less.
#[derive(Clone, Copy)]
struct Cost {
    wall: Duration,
    cpu: Duration,
}

/// CPU time of this process (all its threads) and of its waited-for
/// children, from `/proc/self/stat`.
fn cpu_times() -> (Duration, Duration) {
    let stat = fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields 14 to 17 (utime, stime, cutime, cstime) counted from 1, after
    // the command name, which may hold spaces but ends with the last ')'.
    let fields: Vec<u64> = stat[stat.rfind(')').expect("stat format") + 1..]
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|field| field.parse().expect("clock ticks"))
        .collect();
    let ticks =
        |n: u64| Duration::from_secs_f64(n as f64 / rustix::param::clock_ticks_per_second() as f64);
    (ticks(fields[0] + fields[1]), ticks(fields[2] + fields[3]))
}

/// Runs `run` in this process and measures it.
fn measure<T>(run: impl FnOnce() -> T) -> (Cost, T) {
    let (cpu_before, _) = cpu_times();
    let started = Instant::now();
    let value = run();
    let wall = started.elapsed();
    let (cpu_after, _) = cpu_times();
    let cpu = cpu_after.saturating_sub(cpu_before);
    (Cost { wall, cpu }, value)
}

/// What `program` costs to compress `input`, and its output size; `None`
/// when it is not installed or fails.
fn tool(program: &str, args: &[&str], input: &Path) -> Option<(Cost, u64)> {
    let file = fs::File::open(input).ok()?;
    let (_, children_before) = cpu_times();
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(file)
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let size = io::copy(child.stdout.as_mut()?, &mut io::sink()).ok()?;
    let status = child.wait().ok()?;
    let wall = started.elapsed();
    let (_, children_after) = cpu_times();
    let cpu = children_after.saturating_sub(children_before);
    status.success().then_some((Cost { wall, cpu }, size))
}

/// The best wall time and the best CPU time of several runs, and the
/// output size.
#[derive(Default)]
struct Best {
    cost: Option<Cost>,
    size: u64,
}

impl Best {
    fn add(&mut self, cost: Cost, size: u64) {
        let best = self.cost.get_or_insert(cost);
        best.wall = best.wall.min(cost.wall);
        best.cpu = best.cpu.min(cost.cpu);
        self.size = size;
    }
}

fn main() {
    let work = tempfile::tempdir().expect("temporary directory");
    let mut text = vec![0u8; INPUT_BYTES];
    fill(&mut text, &mut 0x2545_f491_4f6c_dd1d);
    let mut noise = vec![0u8; INPUT_BYTES];
    random(&mut noise);
    println!(
        "{:<20} {:>8} {:>10} {:>14} {:>15}",
        "case", "MB/s", "MB/CPU-s", "compressed MB", "kiln speedup, wall (cpu)"
    );
    for (name, data) in [("text-like", text), ("random", noise)] {
        let input = work.path().join(name);
        fs::write(&input, &data).expect("write input");
        let bytes = data.len() as u64;
        let mut ours = Best::default();
        let mut theirs: [Best; TOOLS.len()] = Default::default();
        let mut missing = [false; TOOLS.len()];
        for _ in 0..ROUNDS {
            let (cost, size) = measure(|| kiln_gzip(&data));
            ours.add(cost, size);
            for (index, program) in TOOLS.into_iter().enumerate() {
                match tool(program, &["-6", "-c"], &input) {
                    Some((cost, size)) => theirs[index].add(cost, size),
                    None => missing[index] = true,
                }
            }
        }
        let Some(our_cost) = ours.cost else {
            continue;
        };
        let row = |label: String, cost: Cost, size: u64| {
            format!(
                "{label:<20} {:>8.1} {:>10.1} {:>14.1}",
                mb_per_s(bytes, cost.wall),
                mb_per_s(bytes, cost.cpu),
                size as f64 / 1e6
            )
        };
        println!("{}", row(format!("{name}: kiln -6"), our_cost, ours.size));
        for (index, program) in TOOLS.into_iter().enumerate() {
            let label = format!("{name}: {program} -6");
            match theirs[index].cost {
                Some(cost) if !missing[index] => println!(
                    "{} {:>7.2}x ({:.2}x)",
                    row(label, cost, theirs[index].size),
                    cost.wall.as_secs_f64() / our_cost.wall.as_secs_f64(),
                    cost.cpu.as_secs_f64() / our_cost.cpu.as_secs_f64()
                ),
                _ => println!("{label:<20} skipped: {program} is not installed or failed"),
            }
        }
    }
    io::stdout().flush().expect("flush");
}
