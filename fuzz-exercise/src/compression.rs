//! Compression detection and decoding: gzip, bzip2, xz and zstd, or the
//! bytes as they are.

use std::io::Read;

use kiln_cache::compress::{decompressed, is_tar_archive, Format};

/// More than a fuzz input decompresses to in reason; reading stops there.
const READ_AT_MOST: u64 = 64 << 20;

pub fn exercise(data: &[u8]) -> usize {
    let format = Format::detect(data);
    let Ok(mut reader) = decompressed(data) else {
        return 0;
    };
    let mut out = Vec::new();
    let read = (&mut reader).take(READ_AT_MOST).read_to_end(&mut out);
    if format == Format::Plain {
        // Bytes in no compression format come through unchanged.
        assert!(read.is_ok(), "reading plain bytes failed: {read:?}");
        assert_eq!(out, data, "plain bytes changed");
    }
    let _ = is_tar_archive(data);
    usize::from(read.is_ok())
}
