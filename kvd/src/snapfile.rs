//! The snapshot file: a header with the Raft snapshot metadata, then the
//! state machine's records, then a count and a CRC-32 of everything before it.
//! The same file is what `GET /v1/snapshot` streams for backups.
//!
//! ```text
//! "KVSNAP03" | u32 header length | header (postcard)
//! { u8 tag (1 = data, 2 = dedup, 3 = sys) | u32 key length | key | u32 value length | value }*
//! u8 0 | u64 record count | u32 CRC-32
//! ```
//!
//! Integers of the framing are little-endian. A record is a key and value of
//! the data dir's keyspace its tag names, as the data dir holds them (format
//! 3, crate::format). The magic is the file's version: `KVSNAP01` files,
//! written by kvd 0.1 (`GET /v1/snapshot` backups, snapshots in its data
//! dirs and sent by its members), have the same framing with the header and
//! values in the bincode 1 layout, and `KVSNAP02` files the values of data
//! dir format 2 (entries without access and change times); both are still
//! read, each value upgraded as it is read, so every caller sees format 3
//! values. A `KVSNAP` of a later version is refused with an error that says
//! so.
//!
//! The keys of dedup records say their layout (crate::dedup): the records
//! kept by log time (`r`, `t`, `w`) are newer than the ones kept by count
//! (`i`, `x`), which are still read. A kvd that knows only the latter refuses
//! a snapshot holding the former ("unknown dedup record") rather than load it.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::format::{bincode1, upgrade_value, Space};
use crate::types::{decode, encode, SnapshotMeta};

/// What files of the current version start with.
const MAGIC: &[u8; 8] = b"KVSNAP03";
/// What the files of data dir format 2 start with.
const MAGIC_V2: &[u8; 8] = b"KVSNAP02";
/// What kvd 0.1's files start with.
const MAGIC_V1: &[u8; 8] = b"KVSNAP01";
/// Record tag of a state machine entry.
pub const TAG_DATA: u8 = 1;
/// Record tag of a deduplication record.
pub const TAG_DEDUP: u8 = 2;
/// Record tag of a system area record (tokens).
pub const TAG_SYS: u8 = 3;
const TAG_END: u8 = 0;

/// What a snapshot file starts with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Raft's view: last log id, membership, snapshot id.
    pub meta: SnapshotMeta,
    /// The store revision at that point.
    pub revision: u64,
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("snapshot is corrupt or truncated: {what}"))
}

/// The version of a snapshot file by its magic: 1, 2 or 3, the data dir
/// format of its values.
fn version(magic: &[u8; 8]) -> io::Result<u32> {
    match magic {
        MAGIC_V1 => Ok(1),
        MAGIC_V2 => Ok(2),
        MAGIC => Ok(3),
        m if m.starts_with(b"KVSNAP") && m[6..].iter().all(u8::is_ascii_digit) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "snapshot file format {:?} is not one this kvd reads (KVSNAP01 to KVSNAP03): it was written by a \
                 newer kvd; restore it with that version or a later one",
                String::from_utf8_lossy(m)
            ),
        )),
        _ => Err(corrupt("not a kv snapshot (bad magic)")),
    }
}

/// The header of a file of `version`.
fn decode_header(version: u32, b: &[u8]) -> io::Result<Header> {
    let h = match version {
        1 => bincode1::from_slice(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        _ => decode(b),
    };
    h.map_err(|_| corrupt("bad header"))
}

/// The keyspace a record tag's records belong to.
fn space(tag: u8) -> Space {
    match tag {
        TAG_DATA => Space::Data,
        TAG_SYS => Space::Sys,
        _ => Space::Dedup,
    }
}

/// Writes a snapshot file.
pub struct Writer {
    out: BufWriter<File>,
    crc: crc32fast::Hasher,
    count: u64,
}

impl Writer {
    /// Starts a file with its header.
    pub fn new(file: File, header: &Header) -> io::Result<Writer> {
        let mut w = Writer { out: BufWriter::with_capacity(1 << 16, file), crc: crc32fast::Hasher::new(), count: 0 };
        let h = encode(header);
        w.put(MAGIC)?;
        w.put(&(h.len() as u32).to_le_bytes())?;
        w.put(&h)?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.crc.update(b);
        self.out.write_all(b)
    }

    /// Adds one record.
    pub fn record(&mut self, tag: u8, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.put(&[tag])?;
        self.put(&(key.len() as u32).to_le_bytes())?;
        self.put(key)?;
        self.put(&(value.len() as u32).to_le_bytes())?;
        self.put(value)?;
        self.count += 1;
        Ok(())
    }

    /// Ends the file and fsyncs it.
    pub fn finish(mut self) -> io::Result<()> {
        self.put(&[TAG_END])?;
        let count = self.count;
        self.put(&count.to_le_bytes())?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    }
}

struct CrcReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> CrcReader<R> {
    fn exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => corrupt("unexpected end of file"),
            _ => e,
        })?;
        self.crc.update(buf);
        Ok(())
    }

    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn bytes(&mut self, limit: u32) -> io::Result<Vec<u8>> {
        let n = self.u32()?;
        if n > limit {
            return Err(corrupt("record longer than allowed"));
        }
        // NOTE: grow with the bytes that are there, not with what a
        // (possibly damaged) length claims.
        let mut v = Vec::with_capacity((n as usize).min(1 << 16));
        (&mut self.inner).take(u64::from(n)).read_to_end(&mut v)?;
        if v.len() != n as usize {
            return Err(corrupt("unexpected end of file"));
        }
        self.crc.update(&v);
        Ok(v)
    }
}

/// Reads a snapshot file from `r`, calling `f` for every record (its value
/// in the current format, whatever the file's version), and checks the
/// trailer and CRC at the end. Returns the header. Callers that must not
/// act on a bad file run it once with a no-op `f` first ([`verify`]).
pub fn read<R: Read>(r: R, mut f: impl FnMut(u8, Vec<u8>, Vec<u8>) -> io::Result<()>) -> io::Result<Header> {
    let mut r = CrcReader { inner: BufReader::with_capacity(1 << 16, r), crc: crc32fast::Hasher::new() };
    let mut magic = [0u8; 8];
    r.exact(&mut magic)?;
    let version = version(&magic)?;
    let header = decode_header(version, &r.bytes(1 << 24)?)?;
    // NOTE: a record of an older file that does not upgrade is reported
    // once the CRC held (a damaged file is reported as such).
    let mut not_upgraded = None;
    let mut count = 0u64;
    loop {
        let mut tag = [0u8; 1];
        r.exact(&mut tag)?;
        match tag[0] {
            TAG_END => break,
            TAG_DATA | TAG_DEDUP | TAG_SYS => {
                let k = r.bytes(1 << 16)?;
                let v = r.bytes(u32::MAX)?;
                count += 1;
                if version < 3 {
                    match upgrade_value(version, space(tag[0]), &k, &v) {
                        Ok(Some(new)) => f(tag[0], k, new)?,
                        Ok(None) => f(tag[0], k, v)?,
                        Err(e) => {
                            not_upgraded.get_or_insert(e);
                        }
                    }
                } else {
                    f(tag[0], k, v)?;
                }
            }
            _ => return Err(corrupt("unknown record tag")),
        }
    }
    let mut n = [0u8; 8];
    r.exact(&mut n)?;
    let expected = r.crc.clone().finalize();
    let mut c = [0u8; 4];
    r.inner.read_exact(&mut c).map_err(|_| corrupt("missing checksum"))?;
    if u64::from_le_bytes(n) != count {
        return Err(corrupt("record count does not match"));
    }
    if u32::from_le_bytes(c) != expected {
        return Err(corrupt("checksum mismatch"));
    }
    let mut rest = [0u8; 1];
    if r.inner.read(&mut rest)? != 0 {
        return Err(corrupt("trailing bytes after the checksum"));
    }
    match not_upgraded {
        Some(e) => Err(io::Error::new(io::ErrorKind::InvalidData, format!("snapshot record: {e}"))),
        None => Ok(header),
    }
}

/// Reads only the header of a snapshot file (no checksum check).
pub fn read_header(path: &Path) -> io::Result<Header> {
    read_header_from(File::open(path)?)
}

/// Reads only the header from `r` (no checksum check); it may read past it.
pub fn read_header_from<R: Read>(r: R) -> io::Result<Header> {
    let mut r = CrcReader { inner: BufReader::new(r), crc: crc32fast::Hasher::new() };
    let mut magic = [0u8; 8];
    r.exact(&mut magic)?;
    let version = version(&magic)?;
    decode_header(version, &r.bytes(1 << 24)?)
}

/// fsyncs a directory so a rename in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify(path: &Path) -> io::Result<Header> {
        read(File::open(path)?, |_, _, _| Ok(()))
    }

    fn sample(path: &Path) -> Header {
        let header = Header { meta: SnapshotMeta::default(), revision: 7 };
        let mut w = Writer::new(File::create(path).expect("create"), &header).expect("writer");
        w.record(TAG_DATA, b"a", b"1").expect("record");
        w.record(TAG_DEDUP, b"b", &[0u8; 300]).expect("record");
        w.finish().expect("finish");
        header
    }

    #[test]
    fn round_trips_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("s");
        let header = sample(&p);
        let mut seen = vec![];
        let h = read(File::open(&p).expect("open"), |t, k, v| {
            seen.push((t, k, v.len()));
            Ok(())
        })
        .expect("read");
        assert_eq!(h, header);
        assert_eq!(seen, vec![(TAG_DATA, b"a".to_vec(), 1), (TAG_DEDUP, b"b".to_vec(), 300)]);
        assert_eq!(read_header(&p).expect("header").revision, 7);
    }

    #[test]
    fn reads_a_kvd_0_1_snapshot_with_its_values_upgraded() {
        // `kvctl snapshot save` of kvd 0.1 (tests/fixtures/kvd-0.1/make.sh).
        let file = include_bytes!("../../tests/fixtures/kvd-0.1/backup.snap");
        assert_eq!(&file[..8], MAGIC_V1);
        let mut keys = vec![];
        let h = read(file.as_slice(), |tag, k, v| {
            crate::sm::check_record(tag, &k, &v)?;
            keys.push((tag, String::from_utf8_lossy(&k).into_owned()));
            Ok(())
        })
        .expect("read");
        // The revision kvd 0.1 answered with its list (list.json).
        let list: serde_json::Value =
            serde_json::from_slice(include_bytes!("../../tests/fixtures/kvd-0.1/list.json")).expect("list.json");
        assert_eq!(Some(h.revision), list["revision"].as_u64());
        assert_eq!(read_header_from(file.as_slice()).expect("header"), h);
        for want in [(TAG_DATA, "cfg/etc/app/current"), (TAG_DATA, "bin/raw"), (TAG_SYS, "token/reader")] {
            assert!(keys.contains(&(want.0, want.1.to_owned())), "{want:?} missing from {keys:?}");
        }
    }

    #[test]
    fn reads_a_format_2_snapshot_with_its_entries_upgraded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("s");
        let e = crate::types::StoredEntry {
            kind: kv_client::Kind::File,
            mode: 0o600,
            uid: 1,
            gid: 2,
            mtime_ns: 77,
            create_revision: 3,
            mod_revision: 4,
            version: 2,
            value: serde_bytes::ByteBuf::from(b"v".to_vec()),
            atime_ns: 5,
            ctime_ns: 6,
        };
        let header = Header { meta: SnapshotMeta::default(), revision: 7 };
        let mut w = Writer::new(File::create(&p).expect("create"), &header).expect("writer");
        w.record(TAG_DATA, b"a", &crate::format::in_layout_2(|| encode(&e))).expect("record");
        w.record(TAG_DEDUP, b"w", &9u64.to_be_bytes()).expect("record");
        w.finish().expect("finish");
        let mut bytes = std::fs::read(&p).expect("read");
        bytes[..8].copy_from_slice(MAGIC_V2);
        let end = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..end]);
        bytes[end..].copy_from_slice(&crc.to_le_bytes());
        let mut seen = vec![];
        read(bytes.as_slice(), |t, k, v| {
            seen.push((t, k, v));
            Ok(())
        })
        .expect("read");
        let want = crate::types::StoredEntry { atime_ns: 77, ctime_ns: 77, ..e };
        assert_eq!(seen.len(), 2);
        assert_eq!((seen[0].0, seen[0].1.as_slice()), (TAG_DATA, b"a".as_slice()));
        assert_eq!(decode::<crate::types::StoredEntry>(&seen[0].2).expect("current format"), want);
        assert_eq!(seen[1], (TAG_DEDUP, b"w".to_vec(), 9u64.to_be_bytes().to_vec()));
    }

    #[test]
    fn a_later_version_is_refused_as_such() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("s");
        sample(&p);
        let mut bytes = std::fs::read(&p).expect("read");
        bytes[..8].copy_from_slice(b"KVSNAP04");
        let e = read(bytes.as_slice(), |_, _, _| Ok(())).expect_err("a later version");
        assert!(e.to_string().contains("\"KVSNAP04\" is not one this kvd reads (KVSNAP01 to KVSNAP03)"), "{e}");
        bytes[..8].copy_from_slice(b"NOTASNAP");
        let e = read(bytes.as_slice(), |_, _, _| Ok(())).expect_err("not a snapshot");
        assert!(e.to_string().contains("bad magic"), "{e}");
    }

    #[test]
    fn refuses_truncated_and_flipped_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("s");
        sample(&p);
        let bytes = std::fs::read(&p).expect("read");
        for cut in [0, 5, 20, bytes.len() - 1] {
            std::fs::write(&p, &bytes[..cut]).expect("write");
            assert!(verify(&p).is_err(), "truncated at {cut} accepted");
        }
        let mut flipped = bytes.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        std::fs::write(&p, &flipped).expect("write");
        assert!(verify(&p).is_err(), "flipped byte accepted");
        let mut longer = bytes;
        longer.push(0);
        std::fs::write(&p, &longer).expect("write");
        assert!(verify(&p).is_err(), "trailing byte accepted");
    }
}
