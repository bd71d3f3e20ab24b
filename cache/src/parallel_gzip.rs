//! gzip compressed on every core, as pigz does it, with bytes that depend
//! only on the input and the level: never on the number of threads, so two
//! machines build layers with the same digest.
//!
//! The input is cut into blocks of [`BLOCK_SIZE`] bytes. Each block is
//! compressed on its own as raw deflate, primed with the 32 KiB of input
//! before it so that it loses little against one long stream, and ended with
//! a sync flush, which leaves it byte-aligned and not final: the blocks
//! concatenate into one deflate stream. Blocks whose bytes look random are
//! written as stored blocks without running the compressor, which is what
//! makes layers of already-compressed files cheap.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, FlushCompress};

/// Input bytes per block, pigz's size. Measured at level 6 on 64 MB of the
/// `gzip` bench's text and on 200 MB of binaries and a tar of man pages
/// and docs, blocks of 64 KiB to 512 KiB all cost the same CPU time as one
/// single-threaded stream (within 3%, the noise of the machine) and come
/// out within 0.15% of its size (128 KiB: 0.13% on the text, 0.05% on the
/// files; 256 KiB and more gain 0.1% on the text only). So the smallest
/// block that keeps the loss that small: memory in flight grows with the
/// block, and smaller blocks share the end of a layer between cores more
/// evenly.
pub const BLOCK_SIZE: usize = 128 * 1024;

/// How far back deflate can refer: all of a block's dictionary.
const WINDOW: usize = 32 * 1024;

// A block's dictionary is the tail of the block before it alone.
const _: () = assert!(BLOCK_SIZE >= WINDOW);

/// The most bytes one stored deflate block holds (its LEN is 16 bits).
const STORED_CHUNK: usize = 65535;

/// The gzip header: magic, deflate, no flags, mtime 0 (a blob must not
/// depend on when it was built), no extra flags, and OS 255 "unknown" (nor
/// on where): the ten bytes Go's compress/gzip writes at its default level.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// Every block ends with a sync flush and none is final, so the stream ends
/// with an empty final block: BFINAL=1, fixed Huffman codes, end-of-block.
const FINAL_EMPTY_BLOCK: [u8; 2] = [0x03, 0x00];

/// Turns a block, given the input before it, into its deflate bytes.
type BlockEncoder = fn(u32, &[u8], &[u8]) -> io::Result<Vec<u8>>;

struct Job {
    dictionary: Vec<u8>,
    block: Vec<u8>,
    result: SyncSender<io::Result<Vec<u8>>>,
}

/// Workers at most: beyond this, the memory allocators keep for each
/// thread's compressors (see [`ParallelGzEncoder`]) would pass the 64 MB a
/// build may use, for a layer export that other work on the machine
/// competes with anyway.
pub const MAX_THREADS: usize = 12;

/// A gzip writer that compresses blocks on worker threads and writes them
/// in order; [`ParallelGzEncoder::finish`] writes the trailer.
///
/// At most two blocks per thread are in flight, so memory does not grow
/// with the input: the encoder holds under a megabyte per thread (blocks,
/// dictionaries, outputs, one compressor). Measured, a process compressing
/// 200 MB peaks at 9 MB with 2 threads, 28 MB with 8 and 137 MB with 32:
/// glibc's malloc keeps much of what the compressors free.
pub struct ParallelGzEncoder<W: Write> {
    writer: W,
    block: Vec<u8>,
    dictionary: Vec<u8>,
    crc: flate2::Crc,
    in_flight: VecDeque<Receiver<io::Result<Vec<u8>>>>,
    max_in_flight: usize,
    workers: Workers,
}

impl<W: Write> ParallelGzEncoder<W> {
    /// An encoder with one worker per available core, up to
    /// [`MAX_THREADS`].
    pub fn new(writer: W, level: u32) -> io::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_threads(writer, level, threads.min(MAX_THREADS))
    }

    /// An encoder with `threads` workers; the output is the same for any
    /// number.
    pub fn with_threads(writer: W, level: u32, threads: usize) -> io::Result<Self> {
        if level > 9 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("gzip level {level} is not in 0..=9"),
            ));
        }
        Self::start(writer, level, threads, encode_block)
    }

    fn start(mut writer: W, level: u32, threads: usize, encode: BlockEncoder) -> io::Result<Self> {
        let threads = threads.max(1);
        let workers = Workers::spawn(threads, level, encode)?;
        writer.write_all(&HEADER)?;
        Ok(ParallelGzEncoder {
            writer,
            block: Vec::with_capacity(BLOCK_SIZE),
            dictionary: Vec::new(),
            crc: flate2::Crc::new(),
            in_flight: VecDeque::new(),
            max_in_flight: 2 * threads,
            workers,
        })
    }

    /// Compresses what is left, writes the end of the stream and returns the
    /// writer; the worker threads end with it.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.block.is_empty() {
            self.submit()?;
        }
        while !self.in_flight.is_empty() {
            self.write_oldest()?;
        }
        self.writer.write_all(&FINAL_EMPTY_BLOCK)?;
        self.writer.write_all(&self.crc.sum().to_le_bytes())?;
        // ISIZE is the input size modulo 2^32, which is what `amount` keeps.
        self.writer.write_all(&self.crc.amount().to_le_bytes())?;
        Ok(self.writer)
    }

    fn submit(&mut self) -> io::Result<()> {
        if self.in_flight.len() >= self.max_in_flight {
            self.write_oldest()?;
        }
        let block = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK_SIZE));
        let tail = block[block.len().saturating_sub(WINDOW)..].to_vec();
        let dictionary = std::mem::replace(&mut self.dictionary, tail);
        let (result, receiver) = mpsc::sync_channel(1);
        self.workers
            .jobs
            .send(Job {
                dictionary,
                block,
                result,
            })
            .map_err(|_| workers_gone())?;
        self.in_flight.push_back(receiver);
        self.write_finished()
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        if let Some(receiver) = self.in_flight.pop_front() {
            let encoded = receiver.recv().map_err(|_| workers_gone())??;
            self.writer.write_all(&encoded)?;
        }
        Ok(())
    }

    /// Writes the blocks already compressed, in order, without waiting: the
    /// output streams out while the input comes in.
    fn write_finished(&mut self) -> io::Result<()> {
        while let Some(oldest) = self.in_flight.front() {
            match oldest.try_recv() {
                Ok(encoded) => {
                    self.in_flight.pop_front();
                    self.writer.write_all(&encoded?)?;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Err(workers_gone()),
            }
        }
        Ok(())
    }
}

impl<W: Write> Write for ParallelGzEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let taken = &buf[..buf.len().min(BLOCK_SIZE - self.block.len())];
        self.block.extend_from_slice(taken);
        self.crc.update(taken);
        if self.block.len() == BLOCK_SIZE {
            self.submit()?;
        }
        Ok(taken.len())
    }

    /// Writes every block compressed so far, but does not end the block
    /// being filled: the output depends on the input bytes alone, not on
    /// when a caller flushed.
    fn flush(&mut self) -> io::Result<()> {
        while !self.in_flight.is_empty() {
            self.write_oldest()?;
        }
        self.writer.flush()
    }
}

/// A worker dies only by panicking, which drops its job's result sender or,
/// once all are dead, the job queue.
fn workers_gone() -> io::Error {
    io::Error::other("a gzip compression thread panicked")
}

/// The worker threads. Dropping it closes the queue, so the threads end
/// after the jobs already queued, and waits for them.
struct Workers {
    // Declared before the threads so that it is dropped first: joining them
    // while the queue is open would wait forever.
    jobs: Sender<Job>,
    _threads: JoinOnDrop,
}

struct JoinOnDrop(Vec<JoinHandle<()>>);

impl Drop for JoinOnDrop {
    fn drop(&mut self) {
        for thread in self.0.drain(..) {
            // A panic was reported to the writer when its block was awaited.
            let _ = thread.join();
        }
    }
}

impl Workers {
    fn spawn(threads: usize, level: u32, encode: BlockEncoder) -> io::Result<Workers> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let mut handles = JoinOnDrop(Vec::with_capacity(threads));
        for index in 0..threads {
            let queue = Arc::clone(&queue);
            let handle = std::thread::Builder::new()
                .name(format!("kiln-gzip-{index}"))
                .spawn(move || work(&queue, level, encode))?;
            handles.0.push(handle);
        }
        Ok(Workers {
            jobs,
            _threads: handles,
        })
    }
}

fn work(queue: &Mutex<Receiver<Job>>, level: u32, encode: BlockEncoder) {
    loop {
        let next = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok(job) = next else {
            return;
        };
        let encoded = encode(level, &job.dictionary, &job.block);
        // The encoder may have been dropped without waiting for this block.
        let _ = job.result.send(encoded);
    }
}

/// The deflate bytes of `block`, byte-aligned and not final, decided by
/// the block and its dictionary alone.
fn encode_block(level: u32, dictionary: &[u8], block: &[u8]) -> io::Result<Vec<u8>> {
    if level == 0 || looks_incompressible(block) {
        return Ok(stored_blocks(block));
    }
    // A new compressor for every block, never one reset: zlib-rs's reset
    // keeps the old window and chain table where a new compressor zeroes
    // them, and a reset one gave other bytes for 2 of 63 blocks of the
    // bench's text, depending on what it compressed before, that is on the
    // thread count. The allocation did not show in the CPU time measured.
    let mut compressor = Compress::new(flate2::Compression::new(level), false);
    if !dictionary.is_empty() {
        compressor
            .set_dictionary(dictionary)
            .map_err(io::Error::other)?;
    }
    // Room for no more than the stored form: a block that does not fit is
    // stored instead, and the compressor stops as soon as it has lost.
    let stored_size = stored_size(block.len());
    let mut compressed = Vec::with_capacity(stored_size);
    compressor
        .compress_vec(block, &mut compressed, FlushCompress::Sync)
        .map_err(io::Error::other)?;
    let complete = compressor.total_in() == block.len() as u64 && compressed.len() < stored_size;
    Ok(if complete {
        compressed
    } else {
        stored_blocks(block)
    })
}

/// Whether deflate can hardly shrink `block`, judged by how often two of its
/// bytes are equal (the order-0 collision rate): uniformly random bytes
/// collide once in 256 pairs. At once in 254 or less the entropy is at least
/// log2(254), 7.99 bits a byte, so Huffman coding alone saves under 0.2%;
/// only repeats within 32 KiB remain. Measured with zlib on a tar of
/// Debian's man pages and docs, the blocks this rule stores would have
/// shrunk by 0.1% on average (5% at worst: small compressed files repeated
/// close together), while compressing random bytes runs at a few tens of
/// MB/s. It reads every byte, since a sample misjudges short and mixed
/// blocks, yet runs at GB/s, a few percent of compressing text at most.
/// It is integer arithmetic: floating-point logarithms may round otherwise
/// on another machine and so change a layer's digest.
fn looks_incompressible(block: &[u8]) -> bool {
    // Four tables so that runs of one byte value do not wait on each
    // other's increments.
    let mut counts = [[0u32; 256]; 4];
    let mut quads = block.chunks_exact(4);
    for quad in &mut quads {
        counts[0][usize::from(quad[0])] += 1;
        counts[1][usize::from(quad[1])] += 1;
        counts[2][usize::from(quad[2])] += 1;
        counts[3][usize::from(quad[3])] += 1;
    }
    for &byte in quads.remainder() {
        counts[0][usize::from(byte)] += 1;
    }
    // Ordered pairs of equal bytes, against all ordered pairs: an unbiased
    // estimate of the collision rate even for a short last block.
    let equal_pairs: u64 = (0..256)
        .map(|value| {
            let count = counts.iter().map(|c| u64::from(c[value])).sum::<u64>();
            count * count.saturating_sub(1)
        })
        .sum();
    let len = block.len() as u64;
    equal_pairs * 254 <= len * len.saturating_sub(1)
}

fn stored_size(len: usize) -> usize {
    len + 5 * len.div_ceil(STORED_CHUNK)
}

/// `block` as stored deflate blocks: a header byte (not final, type 00,
/// padding), LEN and its complement, then the bytes.
fn stored_blocks(block: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(stored_size(block.len()));
    for chunk in block.chunks(STORED_CHUNK) {
        // `chunks(STORED_CHUNK)` keeps every length within 16 bits.
        let len = chunk.len() as u16;
        out.push(0);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::process::{Command, Stdio};

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        let mut data = Vec::with_capacity(len + 8);
        while data.len() < len {
            data.extend_from_slice(&xorshift(&mut state).to_le_bytes());
        }
        data.truncate(len);
        data
    }

    /// Words with a few random bytes among them: compresses about 3:1.
    fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
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
        let mut state = seed;
        let mut data = Vec::with_capacity(len + 8);
        while data.len() < len {
            let r = xorshift(&mut state);
            if r.is_multiple_of(7) {
                data.extend_from_slice(&r.to_le_bytes()[..3]);
            } else {
                data.extend_from_slice(WORDS[(r >> 8) as usize % WORDS.len()]);
            }
        }
        data.truncate(len);
        data
    }

    /// Runs of text and of random bytes, not aligned with blocks.
    fn mixed_bytes(len: usize) -> Vec<u8> {
        let mut data = Vec::with_capacity(len);
        let mut seed = 1_u64;
        while data.len() < len {
            seed += 1;
            let run = 70_001 + (seed as usize * 40_009) % 200_000;
            if seed.is_multiple_of(2) {
                data.extend_from_slice(&text_bytes(run, seed));
            } else {
                data.extend_from_slice(&random_bytes(run, seed));
            }
        }
        data.truncate(len);
        data
    }

    fn gzip(data: &[u8], level: u32, threads: usize) -> Vec<u8> {
        let mut encoder =
            ParallelGzEncoder::with_threads(Vec::new(), level, threads).expect("encoder");
        // Uneven writes, so that blocks are filled across calls.
        for piece in data.chunks(10_007) {
            encoder.write_all(piece).expect("write");
        }
        encoder.finish().expect("finish")
    }

    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    fn inputs() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("text", text_bytes(3 * BLOCK_SIZE + 12_345, 7)),
            ("random", random_bytes(2 * BLOCK_SIZE + 999, 8)),
            ("mixed", mixed_bytes(5 << 20)),
            ("whole blocks", text_bytes(4 * BLOCK_SIZE, 9)),
            ("short", text_bytes(1000, 10)),
            ("empty", Vec::new()),
        ]
    }

    #[test]
    fn output_does_not_depend_on_the_number_of_threads() {
        for (name, data) in inputs() {
            let one = gzip(&data, 6, 1);
            assert_eq!(one, gzip(&data, 6, 2), "{name}");
            assert_eq!(one, gzip(&data, 6, 8), "{name}");
            assert_eq!(gunzip(&one), data, "{name}");
        }
    }

    #[test]
    fn every_level_round_trips() {
        let data = mixed_bytes(3 << 20);
        for level in 0..=9 {
            assert_eq!(gunzip(&gzip(&data, level, 2)), data, "level {level}");
        }
    }

    fn gzip_binary(args: &[&str], input: &[u8]) -> std::process::Output {
        let mut child = Command::new("gzip")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run gzip");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&input));
        let output = child.wait_with_output().expect("gzip output");
        feeder.join().expect("feeder").expect("feed gzip");
        output
    }

    #[test]
    fn gzip_binary_accepts_the_output() {
        for (name, data) in [("mixed", mixed_bytes(3 << 20)), ("empty", Vec::new())] {
            for level in [0, 1, 6, 9] {
                let gz = gzip(&data, level, 2);
                let test = gzip_binary(&["-t"], &gz);
                assert!(
                    test.status.success(),
                    "{name} level {level}: {}",
                    String::from_utf8_lossy(&test.stderr)
                );
                let decompressed = gzip_binary(&["-dc"], &gz);
                assert!(decompressed.status.success(), "{name} level {level}");
                assert!(decompressed.stdout == data, "{name} level {level}");
            }
        }
    }

    #[test]
    fn empty_input_is_a_complete_gzip_stream() {
        let gz = gzip(&[], 6, 2);
        let mut expected = HEADER.to_vec();
        expected.extend_from_slice(&FINAL_EMPTY_BLOCK);
        expected.extend_from_slice(&[0; 8]);
        assert_eq!(gz, expected);
        assert_eq!(gunzip(&gz), b"");
    }

    #[test]
    fn random_blocks_are_stored() {
        let data = random_bytes(8 * BLOCK_SIZE, 11);
        assert!(looks_incompressible(&data[..BLOCK_SIZE]));
        let gz = gzip(&data, 6, 2);
        // Header, eight blocks of three stored chunks, final block, trailer.
        assert_eq!(gz.len(), 10 + data.len() + 8 * 3 * 5 + 2 + 8);
    }

    #[test]
    fn text_blocks_are_compressed() {
        let data = text_bytes(8 * BLOCK_SIZE, 12);
        assert!(!looks_incompressible(&data[..BLOCK_SIZE]));
        let gz = gzip(&data, 6, 2);
        assert!(gz.len() < data.len() / 2, "{} of {}", gz.len(), data.len());
    }

    #[test]
    fn level_zero_stores_everything() {
        let data = text_bytes(2 * BLOCK_SIZE + 5, 13);
        let gz = gzip(&data, 0, 2);
        assert_eq!(
            gz.len(),
            10 + stored_size(BLOCK_SIZE) * 2 + stored_size(5) + 2 + 8
        );
        assert_eq!(gunzip(&gz), data);
    }

    /// The same bytes as a stream of independent blocks, each compressed
    /// with nothing but its level and dictionary.
    fn reference_gzip(data: &[u8], level: u32) -> Vec<u8> {
        let mut gz = HEADER.to_vec();
        let mut dictionary: &[u8] = &[];
        for block in data.chunks(BLOCK_SIZE) {
            gz.extend(encode_block(level, dictionary, block).expect("encode"));
            dictionary = &block[block.len().saturating_sub(WINDOW)..];
        }
        gz.extend_from_slice(&FINAL_EMPTY_BLOCK);
        let mut crc = flate2::Crc::new();
        crc.update(data);
        gz.extend_from_slice(&crc.sum().to_le_bytes());
        gz.extend_from_slice(&(data.len() as u32).to_le_bytes());
        gz
    }

    #[test]
    fn blocks_do_not_depend_on_what_their_thread_compressed_before() {
        // Text on which a compressor reset between blocks, rather than a new
        // one, gave other bytes for a few blocks.
        let data = text_bytes(64 * BLOCK_SIZE, 0x2545_f491_4f6c_dd1d);
        let expected = reference_gzip(&data, 6);
        assert!(gzip(&data, 6, 1) == expected);
        assert!(gzip(&data, 6, 3) == expected);
    }

    #[test]
    fn a_panicking_worker_is_an_error_not_a_hang() {
        fn panics(_: u32, _: &[u8], _: &[u8]) -> io::Result<Vec<u8>> {
            panic!("worker failure for the test")
        }
        let mut encoder = ParallelGzEncoder::start(Vec::new(), 6, 2, panics).expect("encoder");
        let data = text_bytes(20 * BLOCK_SIZE, 15);
        let written = encoder.write_all(&data);
        assert!(written.is_err() || encoder.finish().is_err());
    }

    struct FailingWriter {
        room: usize,
    }

    impl Write for FailingWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::other("disk full"));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn errors_of_the_inner_writer_are_returned() {
        let data = text_bytes(20 * BLOCK_SIZE, 16);
        let mut encoder = ParallelGzEncoder::with_threads(FailingWriter { room: 100_000 }, 6, 2)
            .expect("encoder");
        let written = encoder.write_all(&data);
        let error = match written {
            Err(error) => error,
            Ok(()) => encoder.finish().err().expect("finish must fail"),
        };
        assert_eq!(error.to_string(), "disk full");
    }

    #[test]
    fn levels_above_nine_are_refused() {
        assert!(ParallelGzEncoder::with_threads(Vec::new(), 10, 1).is_err());
    }
}
