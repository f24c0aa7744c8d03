//! Pure encodings used by the store: path splitting and the snapshot-inner path, path globs,
//! the compact binary form of an event's op-specific details, times, and a stable hash.

use std::time::SystemTime;

use ctrwatch_containerd::paths::{SNAPSHOTS_DIR, SNAPSHOTTER_PREFIX, SnapshotLayout};
use ctrwatch_event::{
    ContainerdView, Details, Dev, Mode, Notes, OpenFlags, Overwritten, PathBytes, Protect, Xattr,
    hex, lossless_text, text::unhex,
};

// ---------------------------------------------------------------------------------------------
// Paths

/// Splits a path at its last `/`: `(Some(dir), name)`, or `(None, path)` when it has no `/`.
/// `dir` is everything before the slash, so "/pause" is `(Some(""), "pause")` and the split is
/// exact for any bytes ("//a" is `(Some("/"), "a")`).
pub(crate) fn split_path(path: &[u8]) -> (Option<&[u8]>, &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (Some(&path[..i]), &path[i + 1..]),
        None => (None, path),
    }
}

/// Inverse of [`split_path`].
pub(crate) fn join_path(dir: Option<&[u8]>, name: &[u8]) -> Vec<u8> {
    match dir {
        Some(d) => {
            let mut out = Vec::with_capacity(d.len() + 1 + name.len());
            out.extend_from_slice(d);
            out.push(b'/');
            out.extend_from_slice(name);
            out
        }
        None => name.to_vec(),
    }
}

/// For a directory path, the same directory as seen inside the image or container: the part
/// after `…/io.containerd.snapshotter.v1.<name>/snapshots/<id>/fs`, or after
/// `…/snapshots/<id>` for the snapshotters whose snapshot directory is the tree itself (the
/// layouts are the containerd model's: [`SnapshotLayout`]). The snapshot root itself is `""`
/// (its files then join to "/file"). None when the directory is not inside a snapshot, or is
/// in a snapshotter whose layout is not known.
pub(crate) fn inner_dir(dir: &[u8]) -> Option<&[u8]> {
    // Runs for every event the writer stores: no allocation, one pass over the bytes.
    let mut comps = Components { bytes: dir, pos: 0 };
    while let Some((s, e)) = comps.next() {
        let Some(name) = dir[s..e].strip_prefix(SNAPSHOTTER_PREFIX.as_bytes()) else {
            continue;
        };
        let mut ahead = comps.clone();
        let (ss, se) = ahead.next()?;
        if &dir[ss..se] != SNAPSHOTS_DIR.as_bytes() {
            continue;
        }
        let (_, id_end) = ahead.next()?;
        // Where the tree starts below `snapshots/<id>` is the containerd model's to say.
        let root_end = match SnapshotLayout::of_name(name).tree_subdir()? {
            "" => id_end,
            sub => {
                let (ts, te) = ahead.next()?;
                if dir[ts..te] != *sub.as_bytes() {
                    return None;
                }
                te
            }
        };
        return Some(&dir[root_end..]);
    }
    None
}

/// The (start, end) byte offsets of a path's non-empty components.
#[derive(Clone)]
struct Components<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Iterator for Components<'_> {
    type Item = (usize, usize);
    fn next(&mut self) -> Option<(usize, usize)> {
        while self.bytes.get(self.pos) == Some(&b'/') {
            self.pos += 1;
        }
        if self.pos >= self.bytes.len() {
            return None;
        }
        let start = self.pos;
        let len = self.bytes[start..]
            .iter()
            .position(|&b| b == b'/')
            .unwrap_or(self.bytes.len() - start);
        self.pos = start + len;
        Some((start, self.pos))
    }
}

/// Where a file's path inside its snapshot starts: `&path[i..]` is what [`inner_path`]
/// returns, without allocating.
pub(crate) fn inner_start(path: &[u8]) -> Option<usize> {
    let (dir, _) = split_path(path);
    let dir = dir?;
    let inner = inner_dir(dir)?;
    Some(dir.len() - inner.len())
}

/// The path of a file as seen inside its image or container, when it lies in a snapshot:
/// `…/io.containerd.snapshotter.v1.overlayfs/snapshots/12/fs/usr/bin/jq` is `/usr/bin/jq`.
pub fn inner_path(path: &[u8]) -> Option<Vec<u8>> {
    inner_start(path).map(|i| path[i..].to_vec())
}

/// A query path as typed: repeated slashes folded, a trailing slash dropped.
pub(crate) fn normalize_query_path(path: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    for &b in path {
        if b == b'/' && out.last() == Some(&b'/') {
            continue;
        }
        out.push(b);
    }
    while out.len() > 1 && out.last() == Some(&b'/') {
        out.pop();
    }
    out
}

/// The proper ancestors of a path, nearest first, excluding "/" itself.
pub(crate) fn ancestors(path: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut cur = path;
    while let (Some(dir), _) = split_path(cur) {
        if dir.is_empty() {
            break;
        }
        out.push(dir);
        cur = dir;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Globs

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Byte(u8),
    /// `?`: one byte other than `/`.
    Any,
    /// `*`: any run of bytes without `/`.
    Star,
    /// `**` not followed by `/`: any run of bytes, `/` included.
    DoubleStar,
    /// `**/`: zero or more whole directories (empty, or any run ending in `/`).
    Dirs,
    /// `[...]`: (negated, ranges).
    Class(bool, Vec<(u8, u8)>),
}

/// A compiled path glob: `*` (not crossing `/`), `**` (crossing; `**/` also matches no
/// directory at all), `?`, `[abc]`, `[a-z]`, `[!x]`, and `\` to quote the next byte.
#[derive(Debug, Clone)]
pub struct Glob {
    toks: Vec<Tok>,
    /// The longest literal run: a text without it cannot match (cheap rejection).
    needle: Vec<u8>,
}

impl Glob {
    /// Parses a glob (`*`, `?`, `[...]`, `\\` escapes), or says why it is not one.
    pub fn new(pattern: &[u8]) -> Result<Glob, String> {
        let mut toks = Vec::new();
        let mut i = 0;
        while i < pattern.len() {
            let b = pattern[i];
            match b {
                b'\\' => {
                    let Some(&n) = pattern.get(i + 1) else {
                        return Err("trailing backslash in glob".into());
                    };
                    toks.push(Tok::Byte(n));
                    i += 2;
                }
                b'*' => {
                    if pattern.get(i + 1) == Some(&b'*') {
                        i += 2;
                        while pattern.get(i) == Some(&b'*') {
                            i += 1;
                        }
                        if pattern.get(i) == Some(&b'/') {
                            toks.push(Tok::Dirs);
                            i += 1;
                        } else {
                            toks.push(Tok::DoubleStar);
                        }
                    } else {
                        toks.push(Tok::Star);
                        i += 1;
                    }
                }
                b'?' => {
                    toks.push(Tok::Any);
                    i += 1;
                }
                b'[' => {
                    let mut j = i + 1;
                    let negated = matches!(pattern.get(j), Some(b'!') | Some(b'^'));
                    if negated {
                        j += 1;
                    }
                    let mut ranges = Vec::new();
                    let mut first = true;
                    loop {
                        let Some(&c) = pattern.get(j) else {
                            return Err("unclosed '[' in glob".into());
                        };
                        if c == b']' && !first {
                            j += 1;
                            break;
                        }
                        first = false;
                        let lo = if c == b'\\' {
                            j += 1;
                            *pattern.get(j).ok_or("trailing backslash in glob")?
                        } else {
                            c
                        };
                        j += 1;
                        if pattern.get(j) == Some(&b'-')
                            && pattern.get(j + 1).is_some_and(|&c| c != b']')
                        {
                            ranges.push((lo, pattern[j + 1]));
                            j += 2;
                        } else {
                            ranges.push((lo, lo));
                        }
                    }
                    toks.push(Tok::Class(negated, ranges));
                    i = j;
                }
                _ => {
                    toks.push(Tok::Byte(b));
                    i += 1;
                }
            }
        }
        let mut needle = Vec::new();
        let mut run = Vec::new();
        for t in toks.iter().chain(std::iter::once(&Tok::Any)) {
            match t {
                Tok::Byte(b) => run.push(*b),
                _ => {
                    if run.len() > needle.len() {
                        needle = std::mem::take(&mut run);
                    }
                    run.clear();
                }
            }
        }
        Ok(Glob { toks, needle })
    }

    /// Whether the pattern has no wildcard (it is a plain path).
    pub fn is_literal(&self) -> bool {
        self.toks.iter().all(|t| matches!(t, Tok::Byte(_)))
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &[u8]) -> bool {
        if !self.needle.is_empty() && !text.windows(self.needle.len()).any(|w| w == self.needle) {
            return false;
        }
        // cur[j]: the tokens so far match text[..j]. One pass per token: O(tokens * text).
        let n = text.len();
        let mut cur = vec![false; n + 1];
        cur[0] = true;
        let mut next = vec![false; n + 1];
        for tok in &self.toks {
            match tok {
                Tok::Star => {
                    next[0] = cur[0];
                    for j in 1..=n {
                        next[j] = cur[j] || (next[j - 1] && text[j - 1] != b'/');
                    }
                }
                Tok::DoubleStar => {
                    next[0] = cur[0];
                    for j in 1..=n {
                        next[j] = cur[j] || next[j - 1];
                    }
                }
                Tok::Dirs => {
                    // reach: some k < j with cur[k] (any bytes may follow, ending in '/').
                    let mut reach = false;
                    next[0] = cur[0];
                    for j in 1..=n {
                        reach |= cur[j - 1];
                        next[j] = cur[j] || (reach && text[j - 1] == b'/');
                    }
                }
                Tok::Any => {
                    next[0] = false;
                    for j in 1..=n {
                        next[j] = cur[j - 1] && text[j - 1] != b'/';
                    }
                }
                Tok::Byte(b) => {
                    next[0] = false;
                    for j in 1..=n {
                        next[j] = cur[j - 1] && text[j - 1] == *b;
                    }
                }
                Tok::Class(neg, ranges) => {
                    next[0] = false;
                    for j in 1..=n {
                        let c = text[j - 1];
                        let inside = ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
                        next[j] = cur[j - 1] && c != b'/' && (inside != *neg);
                    }
                }
            }
            std::mem::swap(&mut cur, &mut next);
            if !cur.iter().any(|&x| x) {
                return false;
            }
        }
        cur[n]
    }
}

/// Checks a pattern for SQLite's `GLOB` (the `--comm`/`--exe`/`--unit` filters): `*`, `?` and
/// `[...]` (`^` negates, `]` first in the set is literal). The one way such a pattern is
/// malformed is a `[` without its `]`: SQLite then matches nothing, which would answer "no
/// matching events" to a typo.
pub(crate) fn check_sql_glob(pattern: &str) -> Result<(), String> {
    let b = pattern.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'[' {
            let mut j = i + 1;
            if b.get(j) == Some(&b'^') {
                j += 1;
            }
            // A `]` right after `[` or `[^` is a member of the set.
            if b.get(j) == Some(&b']') {
                j += 1;
            }
            match b[j.min(b.len())..].iter().position(|&c| c == b']') {
                Some(k) => i = j + k + 1,
                None => {
                    return Err(format!(
                        "unclosed '[' in glob {pattern:?} (write [[] for a literal '[')"
                    ));
                }
            }
        } else {
            i += 1;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Times

/// ns since the epoch (saturating at the ends of i64).
pub(crate) fn system_time_ns(t: SystemTime) -> i64 {
    ctrwatch_event::time::system_time_ns(t)
}

/// ns since the epoch to the RFC 3339 form events use (UTC, nanoseconds); total, also before
/// 1970 (only a damaged row holds such a time).
pub(crate) fn format_time(ns: i64) -> String {
    ctrwatch_event::format_rfc3339(ns)
}

// ---------------------------------------------------------------------------------------------
// Stable hash (FNV-1a, 64 bit): the same on every build, so it can be stored.

pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        for &x in b {
            self.0 ^= x as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub(crate) fn u64(&mut self, v: u64) {
        for x in v.to_le_bytes() {
            self.0 ^= x as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub(crate) fn opt(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.u64(1);
                self.bytes(s.as_bytes());
            }
            None => self.u64(0),
        }
    }
    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

// ---------------------------------------------------------------------------------------------
// Row checksums (schema version 3): see docs/store.md, "Row checksums".

/// The digest of a path's bytes: XXH3's 128-bit hash. Also the writer's path cache key.
pub(crate) fn path_digest(path: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(path)
}

/// The digest of an atom's text (op, result, device, mode, flag, note, containerd object).
pub(crate) fn text_digest(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

/// Layout of what [`content_digest`] hashes; part of the hashed bytes, so a later layout can
/// never be confused with this one.
const CHECKSUM_LAYOUT: u8 = 1;

/// Everything an event's answer is built from, as its checksum covers it: the row's own
/// columns (but its id, see [`row_checksum`]) and a digest of each row it refers to — the
/// path and new path (their bytes), the process (its whole description and clock offset), the
/// op, result and device atoms, and the atoms its details refer to (in the order the details
/// name them). A silent change in any of these rows changes the answer and fails the check.
pub(crate) struct RowContent<'a> {
    pub path: u128,
    pub new_path: Option<u128>,
    /// `proc_hash` of the process description (FNV-1a: any single changed byte changes it).
    pub process: u64,
    pub clock_off: i64,
    pub op: u64,
    pub result: u64,
    pub dev: Option<u64>,
    pub mono_d: i64,
    pub errno: Option<i32>,
    pub inode: Option<i64>,
    pub seg: i64,
    pub details: &'a [u8],
    pub detail_atoms: &'a [u64],
}

/// XXH3 of a [`RowContent`], laid out in `buf` (a scratch buffer, reused).
pub(crate) fn content_digest(c: &RowContent<'_>, buf: &mut Vec<u8>) -> u64 {
    buf.clear();
    buf.push(CHECKSUM_LAYOUT);
    buf.extend_from_slice(&c.path.to_le_bytes());
    match c.new_path {
        Some(p) => {
            buf.push(1);
            buf.extend_from_slice(&p.to_le_bytes());
        }
        None => buf.push(0),
    }
    buf.extend_from_slice(&c.process.to_le_bytes());
    buf.extend_from_slice(&c.clock_off.to_le_bytes());
    buf.extend_from_slice(&c.op.to_le_bytes());
    buf.extend_from_slice(&c.result.to_le_bytes());
    match c.dev {
        Some(d) => {
            buf.push(1);
            buf.extend_from_slice(&d.to_le_bytes());
        }
        None => buf.push(0),
    }
    buf.extend_from_slice(&c.mono_d.to_le_bytes());
    match c.errno {
        Some(e) => {
            buf.push(1);
            buf.extend_from_slice(&e.to_le_bytes());
        }
        None => buf.push(0),
    }
    match c.inode {
        Some(i) => {
            buf.push(1);
            buf.extend_from_slice(&i.to_le_bytes());
        }
        None => buf.push(0),
    }
    buf.extend_from_slice(&c.seg.to_le_bytes());
    buf.extend_from_slice(&(c.details.len() as u64).to_le_bytes());
    buf.extend_from_slice(c.details);
    for a in c.detail_atoms {
        buf.extend_from_slice(&a.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(buf)
}

/// The value stored in `events.checksum`: the content digest bound to the row's id and `adj`
/// (settled only when the row is inserted), cut to 32 bits so SQLite stores it in 4 bytes. A
/// damaged row passes with probability 2^-32.
pub(crate) fn row_checksum(content: u64, id: i64, adj: i64) -> i64 {
    let mut b = [0u8; 24];
    b[..8].copy_from_slice(&content.to_le_bytes());
    b[8..16].copy_from_slice(&id.to_le_bytes());
    b[16..].copy_from_slice(&adj.to_le_bytes());
    i64::from(xxhash_rust::xxh3::xxh3_64(&b) as u32 as i32)
}

// ---------------------------------------------------------------------------------------------
// Details: tag/value records, varints. NULL (no bytes) when an event has none.

const T_MODE: u8 = 1;
const T_SIZE: u8 = 2;
const T_OFFSET: u8 = 3;
const T_BYTES: u8 = 4;
const T_WRITES: u8 = 5;
const T_FIRST_WRITE_DELTA: u8 = 6;
const T_FIRST_WRITE_TEXT: u8 = 7;
const T_XATTR_NAME: u8 = 8;
const T_XATTR_VALUE: u8 = 9;
const T_XATTR_VALUE_HEX: u8 = 10;
const T_OWNER_UID: u8 = 11;
const T_OWNER_GID: u8 = 12;
const T_RDEV: u8 = 13;
const T_WHITEOUT: u8 = 14;
const T_OPEN_FLAG: u8 = 15;
const T_NOTE: u8 = 16;
/// `containerd` object without its `path`: an atom (JSON text, shared by every event of the
/// same snapshot/blob and verdict).
const T_CONTAINERD: u8 = 17;
/// `containerd.path` (JSON string text).
const T_CONTAINERD_PATH: u8 = 18;
/// `containerd.path` is the event path's inner path (nothing stored).
const T_CONTAINERD_PATH_INNER: u8 = 19;
/// Rename: the inode the rename deleted, and its filesystem's "major:minor" (an atom).
const T_OVERWRITTEN_INODE: u8 = 20;
const T_OVERWRITTEN_DEV: u8 = 21;
/// Protect mode's verdict (`protect`): [`protect_code`].
const T_PROTECT: u8 = 22;

/// The stored number of a protect verdict (0 is no verdict, never stored).
fn protect_code(p: Protect) -> u64 {
    match p {
        Protect::Denied => 1,
        Protect::WouldDeny => 2,
    }
}

fn protect_of_code(code: u64) -> Option<Protect> {
    Protect::ALL.into_iter().find(|p| protect_code(*p) == code)
}

/// Which dictionary ("atoms") a short string goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum AtomKind {
    Op = 0,
    Result = 1,
    Dev = 2,
    Mode = 3,
    Rdev = 4,
    Flag = 5,
    Note = 6,
    /// A `containerd` object (JSON) without its `path`.
    Containerd = 7,
}

impl AtomKind {
    pub(crate) fn from_i64(v: i64) -> Option<AtomKind> {
        Some(match v {
            0 => AtomKind::Op,
            1 => AtomKind::Result,
            2 => AtomKind::Dev,
            3 => AtomKind::Mode,
            4 => AtomKind::Rdev,
            5 => AtomKind::Flag,
            6 => AtomKind::Note,
            7 => AtomKind::Containerd,
            _ => return None,
        })
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    let mut shift = 0;
    loop {
        let b = *buf.get(*pos)?;
        *pos += 1;
        if shift >= 64 {
            return None;
        }
        v |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_u(out: &mut Vec<u8>, tag: u8, v: u64) {
    out.push(tag);
    put_varint(out, v);
}

fn put_s(out: &mut Vec<u8>, tag: u8, s: &[u8]) {
    out.push(tag);
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// How `containerd.path` is stored.
pub(crate) enum CtrdPath {
    Absent,
    /// The event path's inner path: derived when read back.
    Inner,
    /// JSON string text.
    Text(String),
}

/// Encodes the details into `out` (path_hex/new_path_hex are not stored: they follow from the
/// path bytes); nothing is written when there are none. `atom` maps a short string of a kind
/// to its id (inserting it when new): modes, devices, flags and notes are stored as their
/// text (`0644`, `254:1`, `by_fd`), as in every store so far. `containerd` is the event's
/// containerd object as (the atom of its JSON without `path`, its `path`), computed by the
/// caller (it caches the atom).
pub(crate) fn encode_details<E>(
    out: &mut Vec<u8>,
    d: &Details,
    time_ns: i64,
    containerd: Option<(i64, CtrdPath)>,
    mut atom: impl FnMut(AtomKind, &str) -> Result<i64, E>,
) -> Result<(), E> {
    if let Some((atom_id, path)) = containerd {
        put_u(out, T_CONTAINERD, atom_id as u64);
        match path {
            CtrdPath::Absent => {}
            CtrdPath::Inner => out.push(T_CONTAINERD_PATH_INNER),
            CtrdPath::Text(p) => put_s(out, T_CONTAINERD_PATH, p.as_bytes()),
        }
    }
    if let Some(m) = d.mode {
        put_u(out, T_MODE, atom(AtomKind::Mode, &m.to_string())? as u64);
    }
    if let Some(v) = d.size {
        put_u(out, T_SIZE, v);
    }
    if let Some(v) = d.offset {
        put_u(out, T_OFFSET, v);
    }
    if let Some(v) = d.bytes {
        put_u(out, T_BYTES, v);
    }
    if let Some(v) = d.writes {
        put_u(out, T_WRITES, v);
    }
    if let Some(ns) = d.first_write_ns {
        // Stored as the distance to the event's time.
        put_u(out, T_FIRST_WRITE_DELTA, zigzag(time_ns.wrapping_sub(ns)));
    }
    if let Some(x) = &d.xattr {
        put_s(out, T_XATTR_NAME, lossless_text(&x.name).as_bytes());
        if let Some(v) = &x.value {
            // The text for readers of older versions; the exact bytes in hex.
            put_s(
                out,
                T_XATTR_VALUE,
                x.value_text().unwrap_or_default().as_bytes(),
            );
            put_s(out, T_XATTR_VALUE_HEX, hex(v).as_bytes());
        }
    }
    if let Some(v) = d.owner_uid {
        put_u(out, T_OWNER_UID, v as u64);
    }
    if let Some(v) = d.owner_gid {
        put_u(out, T_OWNER_GID, v as u64);
    }
    if let Some(r) = d.rdev {
        put_u(out, T_RDEV, atom(AtomKind::Rdev, &r.to_string())? as u64);
    }
    if let Some(w) = d.whiteout {
        put_u(out, T_WHITEOUT, w as u64);
    }
    if let Some(o) = &d.overwritten {
        put_u(out, T_OVERWRITTEN_INODE, o.inode);
        put_u(
            out,
            T_OVERWRITTEN_DEV,
            atom(AtomKind::Rdev, &o.dev.to_string())? as u64,
        );
    }
    for f in d.open_flags.names() {
        put_u(out, T_OPEN_FLAG, atom(AtomKind::Flag, f)? as u64);
    }
    for n in d.notes.names() {
        put_u(out, T_NOTE, atom(AtomKind::Note, n)? as u64);
    }
    if let Some(p) = d.protect {
        put_u(out, T_PROTECT, protect_code(p));
    }
    Ok(())
}

fn get_str(buf: &[u8], pos: &mut usize) -> Option<String> {
    let len = usize::try_from(get_varint(buf, pos)?).ok()?;
    let end = pos.checked_add(len)?;
    let s = buf.get(*pos..end)?;
    *pos = end;
    String::from_utf8(s.to_vec()).ok()
}

/// Decodes what [`encode_details`] wrote into typed details. None when the bytes are not a
/// valid encoding, or an atom they name is not a value of its kind (a mode that is not octal
/// permission bits, a device that is not `major:minor`, an unknown flag or note, a containerd
/// object that does not parse): the row is damaged.
pub(crate) fn decode_details(
    buf: &[u8],
    time_ns: i64,
    path: &[u8],
    mut atom: impl FnMut(i64) -> Option<String>,
) -> Option<Details> {
    let mut d = Details::default();
    let mut pos = 0;
    let mut ctrd_path: Option<PathBytes> = None;
    let mut xattr_value_text: Option<String> = None;
    let mut xattr_value_hex: Option<String> = None;
    let mut overwritten_inode: Option<u64> = None;
    let mut overwritten_dev: Option<Dev> = None;
    let mut atom_at = |pos: &mut usize| -> Option<String> {
        let id = i64::try_from(get_varint(buf, pos)?).ok()?;
        atom(id)
    };
    while pos < buf.len() {
        let tag = buf[pos];
        pos += 1;
        match tag {
            T_MODE => d.mode = Some(Mode::parse(&atom_at(&mut pos)?)?),
            T_SIZE => d.size = Some(get_varint(buf, &mut pos)?),
            T_OFFSET => d.offset = Some(get_varint(buf, &mut pos)?),
            T_BYTES => d.bytes = Some(get_varint(buf, &mut pos)?),
            T_WRITES => d.writes = Some(get_varint(buf, &mut pos)?),
            T_FIRST_WRITE_DELTA => {
                let delta = unzigzag(get_varint(buf, &mut pos)?);
                d.first_write_ns = Some(time_ns.wrapping_sub(delta));
            }
            // Written by no release for a time it had formatted itself; read for completeness.
            T_FIRST_WRITE_TEXT => {
                d.first_write_ns = Some(ctrwatch_event::parse_rfc3339(&get_str(buf, &mut pos)?)?)
            }
            T_XATTR_NAME => {
                let name = get_str(buf, &mut pos)?.into_bytes();
                d.xattr.get_or_insert_with(Xattr::default).name = name;
            }
            T_XATTR_VALUE => xattr_value_text = Some(get_str(buf, &mut pos)?),
            T_XATTR_VALUE_HEX => xattr_value_hex = Some(get_str(buf, &mut pos)?),
            T_OWNER_UID => d.owner_uid = Some(u32::try_from(get_varint(buf, &mut pos)?).ok()?),
            T_OWNER_GID => d.owner_gid = Some(u32::try_from(get_varint(buf, &mut pos)?).ok()?),
            T_RDEV => d.rdev = Some(Dev::parse(&atom_at(&mut pos)?)?),
            T_WHITEOUT => d.whiteout = Some(get_varint(buf, &mut pos)? != 0),
            T_OVERWRITTEN_INODE => overwritten_inode = Some(get_varint(buf, &mut pos)?),
            T_OVERWRITTEN_DEV => overwritten_dev = Some(Dev::parse(&atom_at(&mut pos)?)?),
            T_OPEN_FLAG => d
                .open_flags
                .insert(OpenFlags::from_name(&atom_at(&mut pos)?)?),
            T_NOTE => d.notes.insert(Notes::from_name(&atom_at(&mut pos)?)?),
            T_PROTECT => d.protect = Some(protect_of_code(get_varint(buf, &mut pos)?)?),
            T_CONTAINERD => {
                let view: ContainerdView = serde_json::from_str(&atom_at(&mut pos)?).ok()?;
                d.containerd = Some(Box::new(view));
            }
            T_CONTAINERD_PATH => {
                ctrd_path = Some(serde_json::from_str(&get_str(buf, &mut pos)?).ok()?);
            }
            T_CONTAINERD_PATH_INNER => ctrd_path = Some(PathBytes(inner_path(path)?)),
            _ => return None,
        }
    }
    // The value's exact bytes are its hex; the text alone (no hex) is all there is of it.
    let value = match (xattr_value_hex, xattr_value_text) {
        (Some(h), _) => Some(unhex(&h)?),
        (None, Some(t)) => Some(t.into_bytes()),
        (None, None) => None,
    };
    if let Some(value) = value {
        d.xattr.get_or_insert_with(Xattr::default).value = Some(value);
    }
    d.overwritten = match (overwritten_inode, overwritten_dev) {
        (Some(inode), Some(dev)) => Some(Overwritten { inode, dev }),
        (None, None) => None,
        _ => return None,
    };
    if let (Some(c), Some(p)) = (&mut d.containerd, ctrd_path) {
        c.path = Some(p);
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_join_are_exact() {
        for p in [
            &b"/a/b"[..],
            b"/pause",
            b"/",
            b"",
            b"rel",
            b"//x",
            b"/a/",
            b"/a\xff/b",
        ] {
            let (d, n) = split_path(p);
            assert_eq!(join_path(d, n), p.to_vec(), "{p:?}");
        }
        assert_eq!(split_path(b"/pause"), (Some(&b""[..]), &b"pause"[..]));
    }

    #[test]
    fn inner_paths_of_snapshotters() {
        let ov = b"/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/12/fs";
        assert_eq!(inner_dir(ov), Some(&b""[..]));
        let mut deep = ov.to_vec();
        deep.extend_from_slice(b"/usr/lib");
        assert_eq!(inner_dir(&deep), Some(&b"/usr/lib"[..]));
        assert_eq!(
            inner_dir(
                b"/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/12/work"
            ),
            None
        );
        assert_eq!(
            inner_dir(b"/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/12"),
            None
        );
        assert_eq!(
            inner_dir(b"/var/lib/containerd/io.containerd.snapshotter.v1.native/snapshots/3/usr"),
            Some(&b"/usr"[..])
        );
        assert_eq!(
            inner_dir(b"/var/lib/containerd/io.containerd.snapshotter.v1.native/snapshots/3"),
            Some(&b""[..])
        );
        assert_eq!(
            inner_dir(b"/var/lib/containerd/io.containerd.content.v1.content"),
            None
        );
        assert_eq!(
            inner_path(b"/k/io.containerd.snapshotter.v1.overlayfs/snapshots/rm-7/fs/pause"),
            Some(b"/pause".to_vec())
        );
        // Repeated slashes, a snapshotter name again below a snapshot, a missing `fs`.
        assert_eq!(
            inner_path(b"/k//io.containerd.snapshotter.v1.overlayfs//snapshots/3/fs//etc/x"),
            Some(b"//etc/x".to_vec())
        );
        assert_eq!(
            inner_path(
                b"/k/io.containerd.snapshotter.v1.native/x/io.containerd.snapshotter.v1.native/snapshots/9/a"
            ),
            Some(b"/a".to_vec())
        );
        assert_eq!(
            inner_path(b"/k/io.containerd.snapshotter.v1.overlayfs/snapshots/3/etc/x"),
            None
        );
        assert_eq!(inner_path(b"pause"), None);
    }

    /// The store's inner path and the event's `containerd.path` come from one model of the
    /// snapshotters' layouts. Before it, the store took zfs for a snapshotter whose
    /// `snapshots/<id>` is the tree and any unknown snapshotter for an overlay one, while
    /// attribution took btrfs for unknown: the two disagreed on all three.
    #[test]
    fn inner_paths_agree_with_the_containerd_model() {
        use ctrwatch_containerd::{PathClass, RootLayout, SnapshotArea, classify_path};
        let layout = RootLayout::new("/var/lib/containerd");
        for sn in [
            "overlayfs",
            "fuse-overlayfs",
            "stargz",
            "nydus",
            "native",
            "btrfs",
            "zfs",
            "devmapper",
            "blockfile",
        ] {
            for tail in ["fs/etc/passwd", "fs", "work/x", "etc/passwd", "", "fs/a/b"] {
                let path = format!(
                    "/var/lib/containerd/io.containerd.snapshotter.v1.{sn}/snapshots/7/{tail}"
                );
                let path = path.trim_end_matches('/').as_bytes();
                let attributed = match classify_path(&layout, path) {
                    PathClass::SnapshotFile {
                        area: SnapshotArea::Fs,
                        inner_path,
                        ..
                    } => Some(inner_path),
                    _ => None,
                };
                // The store keeps no inner path for the snapshot directory itself (its name
                // is outside the tree); attribution calls it "/".
                let attributed = attributed.filter(|p| p.as_slice() != b"/");
                assert_eq!(
                    inner_path(path),
                    attributed,
                    "{}",
                    String::from_utf8_lossy(path)
                );
            }
        }
        let btrfs = b"/var/lib/containerd/io.containerd.snapshotter.v1.btrfs/snapshots/3/etc/x";
        assert_eq!(inner_path(btrfs), Some(b"/etc/x".to_vec()));
        let zfs = b"/var/lib/containerd/io.containerd.snapshotter.v1.zfs/snapshots/3/etc/x";
        assert_eq!(inner_path(zfs), None);
        let other = b"/var/lib/containerd/io.containerd.snapshotter.v1.devmapper/snapshots/3/fs/x";
        assert_eq!(inner_path(other), None);
    }

    /// Each snapshotter's layout resolves the same through its three users: the audit's trees
    /// (`snapshot_tree`, where `audit` replays and compares layers), the event's attribution
    /// (`classify_path`: `containerd.path` and the snapshot area) and the store's inner path.
    /// A file in the tree the audit reads is the same file inside the image for the other two;
    /// a snapshotter whose tree is not known has none for any of them.
    #[test]
    fn each_layout_resolves_the_same_for_the_audit_the_attribution_and_the_store() {
        use ctrwatch_containerd::{
            PathClass, RootLayout, SnapshotArea, SnapshotLayout, classify_path, snapshot_dir,
            snapshot_tree,
        };
        let layout = RootLayout::new("/var/lib/containerd");
        let attributed = |path: &[u8]| match classify_path(&layout, path) {
            PathClass::SnapshotFile {
                area: SnapshotArea::Fs,
                inner_path,
                dir_id: 7,
                ..
            } => Some(inner_path),
            _ => None,
        };
        let bytes = |p: &std::path::Path| p.as_os_str().as_encoded_bytes().to_vec();
        for (sn, expected) in [
            ("overlayfs", SnapshotLayout::Overlay),
            ("fuse-overlayfs", SnapshotLayout::Overlay),
            ("stargz", SnapshotLayout::Overlay),
            ("nydus", SnapshotLayout::Overlay),
            ("native", SnapshotLayout::Direct),
            ("btrfs", SnapshotLayout::Direct),
            ("zfs", SnapshotLayout::Unknown),
            ("devmapper", SnapshotLayout::Unknown),
            ("blockfile", SnapshotLayout::Unknown),
        ] {
            assert_eq!(SnapshotLayout::of(sn), expected, "{sn}");
            let sn_root = layout.snapshotter_root(sn);
            match snapshot_tree(&sn_root, sn, 7) {
                Some(tree) => {
                    assert_ne!(expected, SnapshotLayout::Unknown, "{sn}: a tree");
                    let file = bytes(&tree.join("etc/passwd"));
                    assert_eq!(attributed(&file), Some(b"/etc/passwd".to_vec()), "{sn}");
                    assert_eq!(inner_path(&file), Some(b"/etc/passwd".to_vec()), "{sn}");
                    // The tree itself is the image's "/"; the store's inner path of a file
                    // directly in it starts there.
                    assert_eq!(attributed(&bytes(&tree)), Some(b"/".to_vec()), "{sn}");
                    assert_eq!(
                        inner_path(&bytes(&tree.join("pause"))),
                        Some(b"/pause".to_vec())
                    );
                }
                None => {
                    assert_eq!(expected, SnapshotLayout::Unknown, "{sn}: no tree");
                    let dir = snapshot_dir(&sn_root, 7);
                    for tail in ["fs/etc/passwd", "etc/passwd"] {
                        let file = bytes(&dir.join(tail));
                        assert_eq!(attributed(&file), None, "{sn} {tail}");
                        assert_eq!(inner_path(&file), None, "{sn} {tail}");
                    }
                }
            }
        }
    }

    /// The inner path is always the path's tail, which the writer compares without copying.
    #[test]
    fn inner_path_is_a_suffix_from_inner_start() {
        for p in [
            &b"/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/12/fs/usr/lib/x"[..],
            b"/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/12/fs/pause",
            b"/var/lib/containerd/io.containerd.snapshotter.v1.native/snapshots/3/pause",
            b"/var/lib/containerd/io.containerd.content.v1.content/blobs/sha256/ab",
            b"/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/12",
        ] {
            let (dir, name) = split_path(p);
            let joined = dir
                .and_then(inner_dir)
                .map(|d| join_path(Some(d), name));
            assert_eq!(inner_path(p), joined, "{}", String::from_utf8_lossy(p));
            assert_eq!(inner_start(p).map(|i| p[i..].to_vec()), joined);
        }
    }

    #[test]
    fn globs() {
        let m = |p: &str, t: &str| Glob::new(p.as_bytes()).map(|g| g.matches(t.as_bytes()));
        assert_eq!(m("/a/*/c", "/a/b/c"), Ok(true));
        assert_eq!(m("/a/*/c", "/a/b/x/c"), Ok(false));
        assert_eq!(m("/a/**/c", "/a/b/x/c"), Ok(true));
        assert_eq!(m("/a/**/c", "/a/c"), Ok(true));
        assert_eq!(m("/a/**", "/a/b/c"), Ok(true));
        assert_eq!(m("**/pause", "/var/x/fs/pause"), Ok(true));
        assert_eq!(m("/a/?", "/a/b"), Ok(true));
        assert_eq!(m("/a/?", "/a/bc"), Ok(false));
        assert_eq!(m("/a/[bc]x", "/a/cx"), Ok(true));
        assert_eq!(m("/a/[!bc]x", "/a/cx"), Ok(false));
        assert_eq!(m("/a/[a-z]", "/a/q"), Ok(true));
        assert_eq!(m("/a/\\*", "/a/*"), Ok(true));
        assert_eq!(m("/a/\\*", "/a/b"), Ok(false));
        assert_eq!(m("*.so*", "libjq.so.1"), Ok(true));
        assert!(Glob::new(b"[ab").is_err());
        assert!(Glob::new(b"/x").is_ok_and(|g| g.is_literal()));
    }

    #[test]
    fn times_before_1970_are_formatted_not_a_panic() {
        assert_eq!(format_time(-1), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(
            format_time(-86_400_000_000_000),
            "1969-12-31T00:00:00.000000000Z"
        );
        assert_eq!(format_time(i64::MIN), "1677-09-21T00:12:43.145224192Z");
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(format_time(i64::MAX), "2262-04-11T23:47:16.854775807Z");
        // A details record whose first write lies before 1970.
        let mut enc = Vec::new();
        put_u(&mut enc, T_FIRST_WRITE_DELTA, zigzag(1_000));
        let d = decode_details(&enc, 0, b"/x", |_| None);
        let first = d.and_then(|d| d.first_write_ns);
        assert_eq!(first, Some(-1_000));
        assert_eq!(
            first.map(format_time).as_deref(),
            Some("1969-12-31T23:59:59.999999000Z")
        );
    }

    /// Writes the seed corpus of the `row_codec` fuzz target (watcher/fuzz): rows as the
    /// fuzz target reads them (8-byte time, path length and bytes, details record) holding
    /// what the real encoder writes. The atom ids refer to the target's own table
    /// (`store::fuzzing::ATOMS`): 0 a mode, 1 a device, 2 and 3 flags, 4 a note, 5 a
    /// containerd object.
    /// `cargo test -p ctrwatch-store --lib codec::tests::write_fuzz_seeds -- --ignored`
    #[test]
    #[ignore = "writes files into watcher/fuzz/corpus; run by hand"]
    fn write_fuzz_seeds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../watcher/fuzz/corpus/row_codec");
        std::fs::create_dir_all(&dir).expect("mkdir corpus");
        let path: &[u8] =
            b"/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/9/fs/usr/bin/jq";
        let time_ns: i64 = 1_767_225_600_123_456_789;
        let atom = |_: AtomKind, s: &str| -> Result<i64, ()> {
            Ok(match s {
                "0644" => 0,
                "0:0" => 1,
                "write" => 2,
                "create" => 3,
                _ => 4,
            })
        };
        let full = Details {
            mode: Some(Mode(0o644)),
            size: Some(4096),
            offset: Some(512),
            bytes: Some(1 << 33),
            writes: Some(9),
            first_write_ns: Some(time_ns - 5_000_000_000),
            xattr: Some(Xattr {
                name: b"trusted.overlay.opaque".to_vec(),
                value: Some(b"y".to_vec()),
            }),
            owner_uid: Some(0),
            owner_gid: Some(65534),
            rdev: Some(Dev::new(0, 0)),
            whiteout: Some(true),
            overwritten: Some(Overwritten {
                inode: 1 << 33,
                dev: Dev::new(0, 0),
            }),
            open_flags: OpenFlags::WRITE | OpenFlags::CREATE,
            notes: Notes::BY_FD,
            ..Default::default()
        };
        let modify = Details {
            bytes: Some(12),
            writes: Some(1),
            first_write_ns: Some(time_ns - 1),
            ..Default::default()
        };
        // (file name, details, containerd atom and path)
        type Seed<'a> = (&'a str, &'a Details, Option<(i64, CtrdPath)>);
        let seeds: Vec<Seed> = vec![
            ("full", &full, Some((5, CtrdPath::Inner))),
            (
                "full-ctrd-text",
                &full,
                Some((5, CtrdPath::Text("\"/data\"".into()))),
            ),
            ("modify-ctrd-no-path", &modify, Some((5, CtrdPath::Absent))),
            ("modify", &modify, None),
        ];
        for (name, d, ctrd) in seeds {
            let mut row = time_ns.to_le_bytes().to_vec();
            row.push(path.len() as u8);
            row.extend_from_slice(path);
            let r = encode_details(&mut row, d, time_ns, ctrd, atom);
            assert!(r.is_ok());
            std::fs::write(dir.join(name), row).expect("write seed");
        }
        std::fs::write(dir.join("empty-details"), time_ns.to_le_bytes()).expect("write seed");
    }

    #[test]
    fn sql_globs_are_checked() {
        assert!(check_sql_glob("[").is_err());
        assert!(check_sql_glob("a[bc").is_err());
        assert!(check_sql_glob("[^]").is_err());
        for ok in ["", "*/bash", "[]]", "[^]]", "[[]", "a?[a-z]*", "]"] {
            assert!(check_sql_glob(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn details_round_trip() {
        let d = Details {
            mode: Some(Mode(0o4755)),
            size: Some(7),
            offset: Some(3),
            bytes: Some(1 << 40),
            writes: Some(2),
            first_write_ns: Some(1_700_000_000_123_456_789),
            xattr: Some(Xattr {
                name: b"trusted.overlay.opaque".to_vec(),
                value: Some(b"y\0".to_vec()),
            }),
            owner_uid: Some(0),
            owner_gid: Some(65534),
            rdev: Some(Dev::new(0, 0)),
            whiteout: Some(true),
            overwritten: Some(Overwritten {
                inode: 1 << 33,
                dev: Dev::new(254, 0),
            }),
            open_flags: OpenFlags::WRITE | OpenFlags::CREATE,
            notes: Notes::BY_FD | Notes::VALUE_TRUNCATED,
            protect: Some(Protect::WouldDeny),
            ..Default::default()
        };
        let mut atoms: Vec<String> = Vec::new();
        let mut enc = Vec::new();
        let r = encode_details::<()>(&mut enc, &d, 1_700_000_001_000_000_000, None, |_, s| {
            atoms.push(s.to_string());
            Ok(atoms.len() as i64 - 1)
        });
        assert!(r.is_ok() && !enc.is_empty(), "encode");
        // The atoms hold the texts every store so far holds.
        assert_eq!(
            atoms,
            [
                "4755",
                "0:0",
                "254:0",
                "write",
                "create",
                "by_fd",
                "value_truncated"
            ]
        );
        let dec = decode_details(&enc, 1_700_000_001_000_000_000, b"/x", |id| {
            atoms.get(id as usize).cloned()
        });
        assert_eq!(dec.as_ref(), Some(&d));
        assert!(decode_details(&[99], 0, b"", |_| None).is_none());
        assert!(decode_details(&[T_SIZE], 0, b"", |_| None).is_none());
        // An atom that is not a value of its kind is damage, not a value.
        for bad in ["0x644", "99999", ""] {
            let mut enc = Vec::new();
            put_u(&mut enc, T_MODE, 0);
            assert!(
                decode_details(&enc, 0, b"", |_| Some(bad.into())).is_none(),
                "{bad}"
            );
        }
        let mut enc = Vec::new();
        put_u(&mut enc, T_NOTE, 0);
        assert!(decode_details(&enc, 0, b"", |_| Some("by_hand".into())).is_none());
        // A protect verdict this version does not know is damage.
        let mut enc = Vec::new();
        put_u(&mut enc, T_PROTECT, 3);
        assert!(decode_details(&enc, 0, b"", |_| None).is_none());
        let mut enc = Vec::new();
        put_u(&mut enc, T_PROTECT, protect_code(Protect::Denied));
        let dec = decode_details(&enc, 0, b"", |_| None);
        assert_eq!(dec.and_then(|d| d.protect), Some(Protect::Denied));
        // Half of an overwritten target is damage too.
        let mut enc = Vec::new();
        put_u(&mut enc, T_OVERWRITTEN_INODE, 5);
        assert!(decode_details(&enc, 0, b"", |_| None).is_none());
    }
}
