//! Deterministic layer tars from directory trees.
//!
//! The tree is a layer's diff in overlayfs form: a character device 0/0 is
//! a deleted file and becomes a `.wh.NAME` entry; a directory with the
//! `trusted.overlay.opaque` attribute replaced the lower one and gets a
//! `.wh..wh..opq` entry. Entries are sorted, owners and modes are taken as
//! they are on disk, hard links are found through their inode, and PAX
//! records are written only when USTAR cannot hold a value. With a source
//! date epoch, later modification times are clamped to it, so that the same
//! inputs give the same bytes on any machine.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::compress::Compression;
use crate::digest::{Digest, HashingWriter};
use crate::error::Error;
use crate::whiteout::{OPAQUE_WHITEOUT, OPAQUE_XATTR, WHITEOUT_PREFIX};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackOptions {
    pub compression: Compression,
    /// `SOURCE_DATE_EPOCH`: later modification times are clamped to it.
    pub source_date_epoch: Option<i64>,
}

/// What packing a layer produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedLayer {
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Digest of the blob as written (compressed).
    pub digest: Digest,
    /// Size of the blob.
    pub size: u64,
    /// Size of the uncompressed tar.
    pub tar_size: u64,
    pub compression: Compression,
    /// True when the tree had no entries at all.
    pub empty: bool,
}

/// Packs the tree at `dir` into a layer written to `out`, computing both
/// digests in the same pass. Memory use does not depend on the layer's size.
pub fn pack_dir<W: Write>(
    dir: &Path,
    options: &PackOptions,
    out: W,
) -> Result<(W, PackedLayer), Error> {
    let blob = HashingWriter::new(out);
    let encoder = options
        .compression
        .encoder(blob)
        .map_err(|e| Error::io(dir, e))?;
    let mut tar = TarWriter::new(HashingWriter::new(encoder), options.source_date_epoch);
    let mut walk = Walk {
        hardlinks: HashMap::new(),
        entries: 0,
    };
    walk.directory(&mut tar, dir, "")?;
    let tar_stream = tar.finish().map_err(|e| Error::io(dir, e))?;
    let (encoder, diff_id, tar_size) = tar_stream.finish();
    let blob = encoder.finish().map_err(|e| Error::io(dir, e))?;
    let (out, digest, size) = blob.finish();
    Ok((
        out,
        PackedLayer {
            diff_id,
            digest,
            size,
            tar_size,
            compression: options.compression,
            empty: walk.entries == 0,
        },
    ))
}

struct Walk {
    /// (device, inode) of files seen with more than one link, and their path.
    hardlinks: HashMap<(u64, u64), String>,
    entries: u64,
}

impl Walk {
    fn directory<W: Write>(
        &mut self,
        tar: &mut TarWriter<W>,
        dir: &Path,
        prefix: &str,
    ) -> Result<(), Error> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::io(dir, e))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let path = dir.join(&name);
            let name = std::str::from_utf8(name.as_bytes())
                .map_err(|_| Error::NonUtf8Path(path.clone()))?
                .to_string();
            let relative = format!("{prefix}{name}");
            let metadata = fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
            self.entry(tar, &path, &relative, &name, &metadata)?;
        }
        Ok(())
    }

    fn entry<W: Write>(
        &mut self,
        tar: &mut TarWriter<W>,
        path: &Path,
        relative: &str,
        name: &str,
        metadata: &Metadata,
    ) -> Result<(), Error> {
        let io_error = |e| Error::io(path, e);
        let file_type = metadata.file_type();
        let mut header = EntryHeader::from_metadata(relative, metadata);
        if file_type.is_char_device() && metadata.rdev() == 0 {
            // An overlayfs whiteout: the file was deleted.
            let parent = &relative[..relative.len() - name.len()];
            let mut whiteout = EntryHeader::empty_file(&format!("{parent}{WHITEOUT_PREFIX}{name}"));
            whiteout.mtime = header.mtime;
            self.entries += 1;
            return tar.append(&whiteout, None).map_err(io_error);
        }
        let xattrs = read_xattrs(path).map_err(io_error)?;
        let opaque = xattrs.iter().any(|(k, v)| k == OPAQUE_XATTR && v == b"y");
        header.xattrs = xattrs
            .into_iter()
            .filter(|(name, _)| belongs_in_layer(name))
            .collect();
        self.entries += 1;
        if file_type.is_dir() {
            header.path.push('/');
            tar.append(&header, None).map_err(io_error)?;
            if opaque {
                let mut marker = EntryHeader::empty_file(&format!("{relative}/{OPAQUE_WHITEOUT}"));
                marker.mtime = header.mtime;
                tar.append(&marker, None).map_err(io_error)?;
            }
            return self.directory(tar, path, &format!("{relative}/"));
        }
        if file_type.is_file() {
            if metadata.nlink() > 1 {
                let key = (metadata.dev(), metadata.ino());
                if let Some(first) = self.hardlinks.get(&key) {
                    header.kind = EntryKind::HardLink;
                    header.link_name = first.clone();
                    header.size = 0;
                    return tar.append(&header, None).map_err(io_error);
                }
                self.hardlinks.insert(key, relative.to_string());
            }
            let file = File::open(path).map_err(io_error)?;
            return tar.append(&header, Some(file)).map_err(io_error);
        }
        if file_type.is_symlink() {
            let target = fs::read_link(path).map_err(io_error)?;
            header.link_name = std::str::from_utf8(target.as_os_str().as_bytes())
                .map_err(|_| Error::NonUtf8Path(path.to_path_buf()))?
                .to_string();
        } else if file_type.is_socket() {
            // Sockets cannot be stored in a tar; Docker leaves them out too.
            self.entries -= 1;
            return Ok(());
        }
        tar.append(&header, None).map_err(io_error)
    }
}

/// Whether an extended attribute is part of a file's content. `trusted.`
/// ones are overlayfs' bookkeeping (the opaque marker becomes its own
/// entry) and need privileges to read back; an SELinux label belongs to the
/// host that wrote the file and would make the same image differ between
/// hosts.
pub fn belongs_in_layer(name: &str) -> bool {
    !name.starts_with("trusted.") && name != "security.selinux"
}

/// The extended attributes of a file (not following symlinks), sorted.
pub fn read_xattrs(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut names = vec![0u8; 1024];
    let length = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut attributes = Vec::new();
    for name in names[..length].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        let mut value = vec![0u8; 256];
        let size = loop {
            match rustix::fs::lgetxattr(path, name, &mut value[..]) {
                Ok(n) => break n,
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(rustix::io::Errno::NODATA) => break usize::MAX,
                Err(e) => return Err(e.into()),
            }
        };
        if size != usize::MAX {
            value.truncate(size);
            attributes.push((name.to_string(), value));
        }
    }
    attributes.sort();
    Ok(attributes)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    File,
    HardLink,
    Symlink,
    CharDevice,
    BlockDevice,
    Directory,
    Fifo,
}

impl EntryKind {
    fn flag(self) -> u8 {
        match self {
            EntryKind::File => b'0',
            EntryKind::HardLink => b'1',
            EntryKind::Symlink => b'2',
            EntryKind::CharDevice => b'3',
            EntryKind::BlockDevice => b'4',
            EntryKind::Directory => b'5',
            EntryKind::Fifo => b'6',
        }
    }
}

/// One tar entry before encoding.
#[derive(Debug, Clone)]
struct EntryHeader {
    path: String,
    kind: EntryKind,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: i64,
    link_name: String,
    dev_major: u32,
    dev_minor: u32,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl EntryHeader {
    fn from_metadata(path: &str, metadata: &Metadata) -> Self {
        let file_type = metadata.file_type();
        let kind = if file_type.is_dir() {
            EntryKind::Directory
        } else if file_type.is_symlink() {
            EntryKind::Symlink
        } else if file_type.is_char_device() {
            EntryKind::CharDevice
        } else if file_type.is_block_device() {
            EntryKind::BlockDevice
        } else if file_type.is_fifo() {
            EntryKind::Fifo
        } else {
            EntryKind::File
        };
        let device = matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice);
        let rdev = metadata.rdev();
        EntryHeader {
            path: path.to_string(),
            kind,
            mode: metadata.mode() & 0o7777,
            uid: u64::from(metadata.uid()),
            gid: u64::from(metadata.gid()),
            size: if kind == EntryKind::File {
                metadata.len()
            } else {
                0
            },
            mtime: metadata.mtime(),
            link_name: String::new(),
            dev_major: if device { rustix::fs::major(rdev) } else { 0 },
            dev_minor: if device { rustix::fs::minor(rdev) } else { 0 },
            xattrs: Vec::new(),
        }
    }

    fn empty_file(path: &str) -> Self {
        EntryHeader {
            path: path.to_string(),
            kind: EntryKind::File,
            mode: 0o600,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            link_name: String::new(),
            dev_major: 0,
            dev_minor: 0,
            xattrs: Vec::new(),
        }
    }
}

/// Writes USTAR entries, with PAX records for what USTAR cannot hold.
pub(crate) struct TarWriter<W: Write> {
    out: W,
    source_date_epoch: Option<i64>,
}

const BLOCK: usize = 512;
const MAX_OCTAL_8: u64 = 0o7_777_777;
const MAX_OCTAL_12: u64 = 0o77_777_777_777;

impl<W: Write> TarWriter<W> {
    pub(crate) fn new(out: W, source_date_epoch: Option<i64>) -> Self {
        TarWriter {
            out,
            source_date_epoch,
        }
    }

    fn append(&mut self, entry: &EntryHeader, content: Option<File>) -> io::Result<()> {
        let mtime = match self.source_date_epoch {
            Some(epoch) => entry.mtime.min(epoch),
            None => entry.mtime,
        }
        .max(0) as u64;
        let mut records: Vec<(String, Vec<u8>)> = Vec::new();
        let (prefix, name) = match split_ustar_path(&entry.path) {
            Some(split) => split,
            None => {
                records.push(("path".into(), entry.path.clone().into_bytes()));
                ("", truncate_utf8(&entry.path, 100))
            }
        };
        if entry.link_name.len() > 100 {
            records.push(("linkpath".into(), entry.link_name.clone().into_bytes()));
        }
        for (key, value) in [("uid", entry.uid), ("gid", entry.gid)] {
            if value > MAX_OCTAL_8 {
                records.push((key.into(), value.to_string().into_bytes()));
            }
        }
        if entry.size > MAX_OCTAL_12 {
            records.push(("size".into(), entry.size.to_string().into_bytes()));
        }
        if mtime > MAX_OCTAL_12 {
            records.push(("mtime".into(), mtime.to_string().into_bytes()));
        }
        for (key, value) in &entry.xattrs {
            records.push((format!("SCHILY.xattr.{key}"), value.clone()));
        }
        if !records.is_empty() {
            self.write_pax(&entry.path, &records)?;
        }
        let mut header = [0u8; BLOCK];
        put_bytes(&mut header[0..100], name.as_bytes());
        put_octal(&mut header[100..108], u64::from(entry.mode));
        put_octal(&mut header[108..116], entry.uid.min(MAX_OCTAL_8));
        put_octal(&mut header[116..124], entry.gid.min(MAX_OCTAL_8));
        put_octal(&mut header[124..136], entry.size.min(MAX_OCTAL_12));
        put_octal(&mut header[136..148], mtime.min(MAX_OCTAL_12));
        header[156] = entry.kind.flag();
        put_bytes(
            &mut header[157..257],
            truncate_utf8(&entry.link_name, 100).as_bytes(),
        );
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        put_octal(&mut header[329..337], u64::from(entry.dev_major));
        put_octal(&mut header[337..345], u64::from(entry.dev_minor));
        put_bytes(&mut header[345..500], prefix.as_bytes());
        finish_checksum(&mut header);
        self.out.write_all(&header)?;
        if let Some(mut file) = content {
            let copied = io::copy(&mut (&mut file).take(entry.size), &mut self.out)?;
            if copied != entry.size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} changed size while being packed", entry.path),
                ));
            }
            self.pad(entry.size)?;
        }
        Ok(())
    }

    fn write_pax(&mut self, path: &str, records: &[(String, Vec<u8>)]) -> io::Result<()> {
        let mut data = Vec::new();
        for (key, value) in records {
            // Each record is "LENGTH KEY=VALUE\n" where LENGTH counts itself.
            let body = key.len() + value.len() + 3;
            let mut length = body + 1;
            while (body + length.to_string().len()) != length {
                length = body + length.to_string().len();
            }
            data.extend_from_slice(format!("{length} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        let base = path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or(path);
        let pax_name = format!("PaxHeaders.0/{}", truncate_utf8(base, 80));
        let mut header = [0u8; BLOCK];
        put_bytes(&mut header[0..100], pax_name.as_bytes());
        put_octal(&mut header[100..108], 0o644);
        put_octal(&mut header[108..116], 0);
        put_octal(&mut header[116..124], 0);
        put_octal(&mut header[124..136], data.len() as u64);
        put_octal(&mut header[136..148], 0);
        header[156] = b'x';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        finish_checksum(&mut header);
        self.out.write_all(&header)?;
        self.out.write_all(&data)?;
        self.pad(data.len() as u64)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let remainder = (size % BLOCK as u64) as usize;
        if remainder != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - remainder])?;
        }
        Ok(())
    }

    /// Writes the two empty blocks that end an archive.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        Ok(self.out)
    }
}

/// Splits a path into USTAR's prefix (155 bytes) and name (100 bytes)
/// fields, when it fits.
fn split_ustar_path(path: &str) -> Option<(&str, &str)> {
    if path.len() <= 100 {
        return Some(("", path));
    }
    let trimmed = path.trim_end_matches('/');
    let suffix_len = path.len() - trimmed.len();
    for (index, _) in trimmed.match_indices('/') {
        let (prefix, name) = (&path[..index], &path[index + 1..]);
        if prefix.len() <= 155 && name.len() <= 100 && name.len() > suffix_len {
            return Some((prefix, name));
        }
    }
    None
}

fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn put_bytes(field: &mut [u8], value: &[u8]) {
    field[..value.len()].copy_from_slice(value);
}

/// Octal digits filling the field but the last byte, which stays NUL.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = format!("{value:0width$o}", width = field.len() - 1);
    field[..digits.len()].copy_from_slice(digits.as_bytes());
}

fn finish_checksum(header: &mut [u8; BLOCK]) {
    header[148..156].fill(b' ');
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    let digits = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(digits.as_bytes());
}
