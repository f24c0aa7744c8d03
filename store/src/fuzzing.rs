//! Entry points for the fuzz targets in `watcher/fuzz` (feature `fuzzing`): the row codec
//! (the details record and the row checksum) and the query globs, on arbitrary bytes. Each
//! must return (never panic, never hang) whatever the input; where the input can be turned
//! into something the writer would store, what is read back must be what was written.
//!
//! Build and run: see docs/store.md, "Fuzzing".

use ctrwatch_event::{Details, Dev, Mode, Notes, OpenFlags, Overwritten, Xattr};

use super::codec::{self, AtomKind};

/// Atom texts the decoder may be handed (the fuzzer picks ids): valid and invalid containerd
/// JSON among them. Ids beyond the list are missing atoms.
const ATOMS: &[&str] = &[
    "0644",
    "0:0",
    "write",
    "create",
    "by_fd",
    r#"{"root":"/var/lib/containerd","kind":"snapshot","snapshot_id":9,"verdict":"foreign","reason":"x"}"#,
    "not json",
    "[1,2]",
    r#"{"path":7}"#,
    "\u{0}\u{ffff}",
];

/// A small reader of fuzz input: bytes, integers and strings until the input runs out.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        u64::from_le_bytes(b)
    }
    fn bytes(&mut self) -> &[u8] {
        let n = usize::from(self.byte()).min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
    fn string(&mut self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }
    fn opt<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
        (self.byte() & 1 == 1).then(|| f(self))
    }
}

/// Decodes `data` as a stored row would be: an 8-byte time, a path, then a details record
/// (the rest), with [`ATOMS`] as the atom table; then hashes it as the reader does.
pub fn decode_row(data: &[u8]) {
    let mut input = Input { data };
    let time_ns = input.u64() as i64;
    let path = input.bytes().to_vec();
    let blob = input.data;
    let mut atoms = Vec::new();
    let details = codec::decode_details(blob, time_ns, &path, |id| {
        let text = usize::try_from(id).ok().and_then(|i| ATOMS.get(i))?;
        atoms.push(codec::text_digest(text));
        Some(text.to_string())
    });
    if let Some(d) = details {
        // What the CLI does with a decoded row (its containerd object, when it has one).
        let _ = serde_json::to_string(&d.containerd);
        let _ = d.xattr.as_ref().map(Xattr::value_text);
    }
    let content = codec::RowContent {
        path: codec::path_digest(&path),
        new_path: None,
        process: 0,
        clock_off: time_ns,
        op: 0,
        result: 0,
        dev: None,
        mono_d: 0,
        errno: None,
        inode: None,
        seg: 0,
        details: blob,
        detail_atoms: &atoms,
    };
    let _ = codec::row_checksum(codec::content_digest(&content, &mut Vec::new()), time_ns, 0);
}

/// Builds details from `data`, encodes them as the writer does and decodes them as the reader
/// does: the same details must come back. Panics (a finding) when they do not.
pub fn round_trip(data: &[u8]) {
    let mut input = Input { data };
    let time_ns = input.u64() as i64;
    let d = Details {
        mode: input.opt(|i| Mode(i.u64() as u32 & 0o7777)),
        size: input.opt(|i| i.u64()),
        offset: input.opt(|i| i.u64()),
        bytes: input.opt(|i| i.u64()),
        writes: input.opt(|i| i.u64()),
        first_write_ns: input.opt(|i| i.u64() as i64),
        // Names are text (as the kernel's always were); values any bytes.
        xattr: input.opt(|i| Xattr {
            name: i.string().into_bytes(),
            value: i.opt(|i| i.bytes().to_vec()),
        }),
        owner_uid: input.opt(|i| i.u64() as u32),
        owner_gid: input.opt(|i| i.u64() as u32),
        rdev: input.opt(|i| Dev(i.u64() as u32)),
        whiteout: input.opt(|i| i.byte() & 1 == 1),
        overwritten: input.opt(|i| Overwritten {
            inode: i.u64(),
            dev: Dev(i.u64() as u32),
        }),
        open_flags: OpenFlags(u16::from(input.byte()) & 0xf),
        notes: Notes(u16::from(input.byte()) & 0x3f),
        protect: input.opt(|i| {
            if i.byte() & 1 == 0 {
                ctrwatch_event::Protect::Denied
            } else {
                ctrwatch_event::Protect::WouldDeny
            }
        }),
        ..Default::default()
    };
    let mut table: Vec<(AtomKind, String)> = Vec::new();
    let mut enc = Vec::new();
    let encoded = codec::encode_details::<()>(&mut enc, &d, time_ns, None, |kind, text| {
        let id = match table.iter().position(|(k, t)| *k == kind && t == text) {
            Some(i) => i,
            None => {
                table.push((kind, text.to_string()));
                table.len() - 1
            }
        };
        Ok(id as i64)
    });
    assert!(encoded.is_ok());
    let decoded = codec::decode_details(&enc, time_ns, b"/x", |id| {
        usize::try_from(id)
            .ok()
            .and_then(|i| table.get(i))
            .map(|(_, t)| t.clone())
    });
    let Some(decoded) = decoded else {
        panic!("the reader rejects what the writer wrote: {enc:?}");
    };
    assert_eq!(decoded, d, "read back differs from written ({enc:?})");
}

/// Compiles `data` as a path glob and as an SQL glob, and matches the path glob against
/// itself and a fixed path.
pub fn globs(data: &[u8]) {
    if let Ok(g) = codec::Glob::new(data) {
        let _ = g.matches(data);
        let _ = g.matches(
            b"/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/1/fs/pause",
        );
        let _ = g.is_literal();
    }
    let _ = codec::check_sql_glob(&String::from_utf8_lossy(data));
}

#[cfg(test)]
mod tests {
    /// The entry points on a few thousand inputs of a simple generator (the fuzzer explores
    /// far more; this keeps them honest in `cargo test --features fuzzing`).
    #[test]
    fn entry_points_hold_on_pseudo_random_inputs() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..3000usize {
            let data: Vec<u8> = (0..len % 300)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            super::decode_row(&data);
            super::round_trip(&data);
            super::globs(&data);
        }
    }
}
