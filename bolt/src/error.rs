//! Errors returned by the reader.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A path for messages: printable UTF-8 kept, `\` doubled, control characters and invalid
/// bytes as `\xNN` (the rules of ctrwatch's `escape_bytes`), so that a hostile file name
/// cannot forge or garble the output.
pub(crate) fn escaped(path: &std::path::Path) -> String {
    use std::fmt::Write as _;
    use std::os::unix::ffi::OsStrExt as _;
    let mut out = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(out, "\\x{b:02x}");
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Where a page came from, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageLoc {
    /// A page of the file, by page id.
    Page(u64),
    /// The page of an inline bucket, stored inside a value on page `in_page`.
    Inline {
        /// The on-disk page holding the bucket's value (the nearest one, for nested inline buckets).
        in_page: u64,
    },
    /// The meta page, i.e. a reference made by the meta page itself.
    Meta,
}

impl PageLoc {
    /// The id of the on-disk page this location is on (the meta page counts as 0).
    pub fn disk_page(self) -> u64 {
        match self {
            PageLoc::Page(id) => id,
            PageLoc::Inline { in_page } => in_page,
            PageLoc::Meta => 0,
        }
    }
}

impl fmt::Display for PageLoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PageLoc::Page(id) => write!(f, "page {id}"),
            PageLoc::Inline { in_page } => write!(f, "inline bucket on page {in_page}"),
            PageLoc::Meta => f.write_str("meta page"),
        }
    }
}

/// Why a meta page could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaProblem {
    /// The file ends before the meta page does.
    #[error("file too short to hold it")]
    TooShort,
    /// The magic number is not bbolt's `0xED0CDAED`.
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    /// The format version is not 2.
    #[error("unsupported version {0}")]
    BadVersion(u32),
    /// The FNV-1a checksum does not match (typically a torn or never-completed write).
    #[error("checksum mismatch")]
    BadChecksum,
    /// The page size is not a power of two between 512 bytes and 16 MiB.
    #[error("unsupported page size {0}")]
    BadPageSize(u32),
    /// Its page size disagrees with the one it was found at.
    #[error("page size {found} does not match its offset {expected}")]
    PageSizeMismatch {
        /// The offset (= page size) the meta page was read at.
        expected: u32,
        /// The page size the meta page records.
        found: u32,
    },
    /// Page 0 was unusable and no valid second meta page was found at any probed page size.
    #[error("not found at any page size from 512 bytes to 16 MiB")]
    NotFound,
}

/// Everything that can go wrong reading a bbolt file.
///
/// Corrupt or hostile input always ends in one of these, never in a panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BoltError {
    /// Opening or reading the file failed.
    #[error("{}: {source}", escaped(path))]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The path is not a regular file (a symbolic link, FIFO, device, directory...): it is
    /// neither followed nor read. [`Db::open`](crate::Db::open) refuses these so that a
    /// symlink cannot make it read another file and a FIFO cannot block it.
    #[error("{}: {kind}, not a regular file (not read)", escaped(path))]
    NotRegularFile {
        /// The path given.
        path: PathBuf,
        /// What it is, e.g. "symbolic link" or "FIFO".
        kind: &'static str,
    },
    /// Neither meta page is valid: not a bbolt file, or a damaged one.
    #[error("no valid meta page (page 0: {meta0}; page 1: {meta1})")]
    NoValidMeta {
        /// What is wrong with meta page 0.
        meta0: MetaProblem,
        /// What is wrong with meta page 1.
        meta1: MetaProblem,
    },
    /// A writer committed transactions faster than the file could be copied, every time.
    #[error(
        "the database kept changing while it was being read ({attempts} attempts); try again later"
    )]
    Unstable {
        /// How many copies were attempted.
        attempts: u32,
    },
    /// A page id that cannot hold a tree page: a meta page, or past the high-water mark or the
    /// end of the file (also when the page's overflow pages run past them).
    #[error("{from}: page id {pgid} is out of range (tree pages are 2..{limit})")]
    PageOutOfRange {
        /// Where the reference was found.
        from: PageLoc,
        /// The page id referenced.
        pgid: u64,
        /// One past the last usable page id: min(high-water mark, pages in the file).
        limit: u64,
    },
    /// A page whose header names another page id: not the page that was meant, or garbage.
    #[error("page {pgid} identifies itself as page {found}")]
    PageIdMismatch {
        /// The page id that was read.
        pgid: u64,
        /// The id in its header.
        found: u64,
    },
    /// A page of the wrong type where a branch/leaf (or the freelist) was expected.
    #[error("{page}: expected a {expected} page, found page flags {flags:#06x}")]
    WrongPageType {
        /// The page.
        page: PageLoc,
        /// What was expected.
        expected: &'static str,
        /// The page flags found.
        flags: u16,
    },
    /// The element count does not fit in the page.
    #[error("{page}: {count} elements do not fit in the page")]
    CountOverrun {
        /// The page.
        page: PageLoc,
        /// The element count from its header.
        count: u64,
    },
    /// A key or value reaches outside its page.
    #[error("{page}: element {index} points outside the page")]
    ElementOutOfBounds {
        /// The page.
        page: PageLoc,
        /// The element index.
        index: usize,
    },
    /// A branch page without elements.
    #[error("{page}: branch page has no elements")]
    EmptyBranch {
        /// The page.
        page: PageLoc,
    },
    /// The tree or the bucket nesting is deeper than [`MAX_DEPTH`](crate::MAX_DEPTH): a cycle, or
    /// garbage.
    #[error("{page}: nesting deeper than {limit} levels (cycle?)")]
    TooDeep {
        /// The page where the limit was hit.
        page: PageLoc,
        /// The limit.
        limit: usize,
    },
    /// A page reachable twice: a cycle between pages or two references to one page.
    #[error("{from}: page {pgid} is referenced a second time (cycle or shared page)")]
    PageReused {
        /// Where the second reference was found.
        from: PageLoc,
        /// The page id.
        pgid: u64,
    },
    /// Keys are not in strictly increasing order, or a subtree holds keys outside the range its
    /// branch key allows (lookups would go wrong).
    #[error("{page}: element {index}: key out of order")]
    KeyOrder {
        /// The page.
        page: PageLoc,
        /// The element index.
        index: usize,
    },
    /// A bucket value too short for the bucket header (or for its inline page header).
    #[error("{page}: element {index}: bucket value of {len} bytes is too short")]
    BadBucketValue {
        /// The page holding the bucket value.
        page: PageLoc,
        /// The element index.
        index: usize,
        /// The value's length.
        len: usize,
    },
}
