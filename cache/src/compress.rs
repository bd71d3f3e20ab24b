//! Compression of layer blobs, and recognising compressed archives by
//! their first bytes (for pulled layers and `ADD` of local archives).

use std::io::{self, BufRead, BufReader, Read, Write};

use crate::parallel_gzip::ParallelGzEncoder;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Uncompressed,
    /// gzip at a level from 0 to 9, compressed on every core; the bytes
    /// do not depend on the number of cores (see [`crate::parallel_gzip`]).
    Gzip {
        level: u32,
    },
    /// zstd at a level from 1 to 22.
    Zstd {
        level: i32,
    },
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Gzip { level: 6 }
    }
}

impl Compression {
    /// Parses `gzip`, `gzip:9`, `zstd`, `zstd:19` or `uncompressed`.
    pub fn parse(text: &str) -> Result<Compression, String> {
        let (name, level) = match text.split_once(':') {
            Some((name, level)) => (name, Some(level)),
            None => (text, None),
        };
        let level_number =
            |range: std::ops::RangeInclusive<i64>, default: i64| -> Result<i64, String> {
                match level {
                    None => Ok(default),
                    Some(level) => level
                        .parse::<i64>()
                        .ok()
                        .filter(|l| range.contains(l))
                        .ok_or_else(|| {
                            format!(
                                "compression level {level:?} for {name} must be in {}..={}",
                                range.start(),
                                range.end()
                            )
                        }),
                }
            };
        match name {
            "gzip" => Ok(Compression::Gzip {
                level: level_number(0..=9, 6)? as u32,
            }),
            "zstd" => Ok(Compression::Zstd {
                level: level_number(1..=22, 3)? as i32,
            }),
            "uncompressed" if level.is_none() => Ok(Compression::Uncompressed),
            _ => Err(format!(
                "unknown compression {text:?}: use gzip[:LEVEL], zstd[:LEVEL] or uncompressed"
            )),
        }
    }

    /// Wraps `writer` in an encoder for this compression.
    pub fn encoder<W: Write>(self, writer: W) -> io::Result<Encoder<W>> {
        Ok(match self {
            Compression::Uncompressed => Encoder::Uncompressed(writer),
            Compression::Gzip { level } => Encoder::Gzip(ParallelGzEncoder::new(writer, level)?),
            Compression::Zstd { level } => {
                let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
                Encoder::Zstd(zstd_encoder(writer, level, workers)?)
            }
        })
    }
}

/// A zstd encoder with `workers` threads. zstd's multi-threaded format is the
/// same for any number of workers but differs from its single-threaded one,
/// so even one worker goes through it: a layer must not change with the
/// number of cores of the machine that built it.
fn zstd_encoder<W: Write>(
    writer: W,
    level: i32,
    workers: u32,
) -> io::Result<zstd::Encoder<'static, W>> {
    let mut encoder = zstd::Encoder::new(writer, level)?;
    encoder.multithread(workers.max(1))?;
    Ok(encoder)
}

/// A compressing writer; call [`Encoder::finish`] to write the trailer.
pub enum Encoder<W: Write> {
    Uncompressed(W),
    Gzip(ParallelGzEncoder<W>),
    Zstd(zstd::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Uncompressed(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Uncompressed(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Uncompressed(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

/// The compression an archive's first bytes announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gzip,
    Bzip2,
    Xz,
    Zstd,
    /// Anything else, including plain tar.
    Plain,
}

impl Format {
    pub fn detect(prefix: &[u8]) -> Format {
        if prefix.starts_with(&[0x1f, 0x8b]) {
            Format::Gzip
        } else if prefix.starts_with(b"BZh") {
            Format::Bzip2
        } else if prefix.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Format::Xz
        } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Format::Zstd
        } else {
            Format::Plain
        }
    }
}

/// Returns a reader of the decompressed bytes of `reader`, whatever of the
/// supported compressions it uses (or none).
pub fn decompressed<'a, R: Read + 'a>(reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut buffered = BufReader::with_capacity(128 * 1024, reader);
    let format = Format::detect(buffered.fill_buf()?);
    Ok(match format {
        Format::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Format::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(buffered)),
        Format::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(buffered)),
        Format::Zstd => Box::new(zstd::Decoder::with_buffer(buffered)?),
        Format::Plain => Box::new(buffered),
    })
}

/// Whether the (possibly compressed) bytes start with a valid tar header,
/// which is how `ADD` tells an archive to unpack from a file to copy.
pub fn is_tar_archive<R: Read>(reader: R) -> bool {
    let Ok(mut stream) = decompressed(reader) else {
        return false;
    };
    let mut header = [0u8; 512];
    if stream.read_exact(&mut header).is_err() {
        return false;
    }
    valid_tar_header(&header)
}

fn valid_tar_header(header: &[u8; 512]) -> bool {
    let Some(stored) = std::str::from_utf8(&header[148..156])
        .ok()
        .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|s| u32::from_str_radix(s, 8).ok())
    else {
        return false;
    };
    let computed: u32 = header
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(b)
            }
        })
        .sum();
    stored == computed && header[..100].iter().any(|&b| b != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_output_does_not_depend_on_the_number_of_workers() {
        // Larger than one zstd job, so that several workers share it.
        let mut data = Vec::with_capacity(24 << 20);
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        while data.len() < 24 << 20 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            data.extend_from_slice(&state.to_le_bytes()[..(state % 5) as usize]);
            data.extend_from_slice(b"layer content ");
        }
        let compress = |workers| {
            let mut encoder = zstd_encoder(Vec::new(), 3, workers).expect("encoder");
            encoder.write_all(&data).expect("compress");
            encoder.finish().expect("finish")
        };
        let one = compress(1);
        assert_eq!(one, compress(2));
        assert_eq!(one, compress(4));
    }

    fn tar_bytes() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(5);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "hello.txt", &b"hello"[..])
            .expect("append");
        builder.into_inner().expect("tar")
    }

    fn compress(bytes: &[u8], compression: Compression) -> Vec<u8> {
        let mut encoder = compression.encoder(Vec::new()).expect("encoder");
        encoder.write_all(bytes).expect("write");
        encoder.finish().expect("finish")
    }

    #[test]
    fn round_trips_and_detects_every_format() {
        let tar = tar_bytes();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        bz.write_all(&tar).expect("bzip2");
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(&tar).expect("xz");
        let cases = [
            (compress(&tar, Compression::Gzip { level: 6 }), Format::Gzip),
            (compress(&tar, Compression::Zstd { level: 3 }), Format::Zstd),
            (bz.finish().expect("bzip2"), Format::Bzip2),
            (xz.finish().expect("xz"), Format::Xz),
            (tar.clone(), Format::Plain),
        ];
        for (bytes, format) in cases {
            assert_eq!(Format::detect(&bytes), format);
            let mut out = Vec::new();
            decompressed(&bytes[..])
                .expect("decoder")
                .read_to_end(&mut out)
                .expect("decompress");
            assert_eq!(out, tar, "{format:?}");
            assert!(is_tar_archive(&bytes[..]), "{format:?}");
        }
    }

    #[test]
    fn files_that_are_not_archives() {
        assert!(!is_tar_archive(&b"just some text"[..]));
        assert!(!is_tar_archive(
            &compress(b"compressed text", Compression::Gzip { level: 1 })[..]
        ));
        assert!(!is_tar_archive(&[0u8; 1024][..]));
    }

    #[test]
    fn gzip_output_is_deterministic() {
        let data = vec![7u8; 100_000];
        assert_eq!(
            compress(&data, Compression::Gzip { level: 6 }),
            compress(&data, Compression::Gzip { level: 6 })
        );
        assert_eq!(
            compress(&data, Compression::Zstd { level: 3 }),
            compress(&data, Compression::Zstd { level: 3 })
        );
    }

    #[test]
    fn parses_compression_names() {
        assert_eq!(
            Compression::parse("gzip"),
            Ok(Compression::Gzip { level: 6 })
        );
        assert_eq!(
            Compression::parse("gzip:9"),
            Ok(Compression::Gzip { level: 9 })
        );
        assert_eq!(
            Compression::parse("zstd:19"),
            Ok(Compression::Zstd { level: 19 })
        );
        assert_eq!(
            Compression::parse("uncompressed"),
            Ok(Compression::Uncompressed)
        );
        assert!(Compression::parse("gzip:10").is_err());
        assert!(Compression::parse("lz4").is_err());
    }
}
