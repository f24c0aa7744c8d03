//! The blob hashing engine: a pool of threads that read files once each, in big sequential
//! reads, and sha256 them (the `sha2` crate, which uses the CPU's SHA extensions when
//! `cpufeatures` finds them at run time: SHA-NI on x86_64, the ARMv8 SHA2 instructions on
//! aarch64).
//!
//! [`hash_files`] is the entry point the benchmark (`tests/src/bin/audit_bench.rs`) measures;
//! the content check uses the same pieces ([`run_pool`], [`open_regular`], [`HashingReader`])
//! so that a layer blob can be streamed through the layer replay while it is hashed.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest as _, Sha256};

use crate::{Progress, Unit};
use ctrwatch_containerd::fsx::{self, OpenError};
use ctrwatch_event::escape_path;

/// Size of each read: large enough that the per-syscall cost vanishes next to hashing
/// (~0.5 ms of SHA-NI work per read), small enough to stay in L2/L3 cache.
pub const READ_SIZE: usize = 1 << 20;

/// Progress is reported in steps of at least this many bytes: indicatif's counter is shared
/// by all threads, and updating it per 8 KiB read of the layer replay would contend.
const PROGRESS_STEP: u64 = 4 << 20;

/// What reading a file gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileHash {
    /// Bytes read (the file's size when it was read).
    pub size: u64,
    /// `sha256:<hex>` of those bytes.
    pub digest: String,
    /// `sha256:<hex>` of the first `n` bytes, for each requested mark `n` reached, in order.
    pub prefixes: Vec<(u64, String)>,
}

/// Why a file could not be hashed.
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("{}: not a regular file ({kind})", escape_path(path))]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{}: {source}", escape_path(path))]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What kind of file a `FileType` is, for messages.
pub fn kind_name(ft: &std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_file() {
        "regular file"
    } else {
        "unknown type"
    }
}

/// Opens `path` (below `root`) for reading if it is a regular file, reached from `root`
/// without following a symbolic link (a symlink planted in the store must never lead the audit
/// outside it), without blocking on a FIFO and, where permitted, without updating its access
/// time (the audit modifies nothing): see [`ctrwatch_containerd::fsx::open_file_beneath`]. Tells the kernel
/// the file is read sequentially, which doubles its readahead window.
pub fn open_regular(root: &Path, path: &Path) -> Result<File, HashError> {
    let file = match fsx::open_file_beneath(root, path) {
        Ok(f) => f,
        Err(OpenError::Symlink { path }) => {
            return Err(HashError::NotRegular {
                path,
                kind: "symbolic link",
            });
        }
        Err(OpenError::NotRegular { path, kind }) => {
            return Err(HashError::NotRegular { path, kind });
        }
        Err(OpenError::Io { path, source }) => return Err(HashError::Io { path, source }),
        Err(e) => {
            return Err(HashError::Io {
                path: path.to_path_buf(),
                source: io::Error::other(e.to_string()),
            });
        }
    };
    // SAFETY: a valid open descriptor; advice only, its failure changes nothing.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
    Ok(file)
}

/// A reader that sha256-hashes and counts every byte passing through it, and remembers the
/// digest of the prefix at each requested offset ("mark"). Reports progress in bytes.
pub struct HashingReader<'p, R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    /// Offsets still to reach, ascending.
    marks: Vec<u64>,
    prefixes: Vec<(u64, String)>,
    progress: Option<&'p Progress>,
    unreported: u64,
}

impl<'p, R: Read> HashingReader<'p, R> {
    /// Hashes what is read from `inner`; `marks`: offsets whose prefix digest is wanted.
    pub fn new(inner: R, mut marks: Vec<u64>, progress: Option<&'p Progress>) -> Self {
        marks.sort_unstable();
        marks.dedup();
        // A mark at 0 is the empty prefix: record it before any read.
        let mut prefixes = Vec::new();
        if marks.first() == Some(&0) {
            marks.remove(0);
            prefixes.push((0, digest_string(Sha256::new())));
        }
        marks.reverse(); // pop() from the end gives the smallest
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
            marks,
            prefixes,
            progress,
            unreported: 0,
        }
    }

    /// Bytes passed through so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Reads what is left with `buf` (hashed too) and returns the result.
    pub fn finish(mut self, buf: &mut [u8]) -> io::Result<FileHash> {
        loop {
            match self.read(buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(p) = self.progress {
            p.inc(self.unreported);
        }
        Ok(FileHash {
            size: self.count,
            digest: digest_string(self.hasher),
            prefixes: self.prefixes,
        })
    }

    fn absorb(&mut self, mut data: &[u8]) {
        // Split at marks so that each prefix digest covers exactly its first n bytes.
        while let Some(&mark) = self.marks.last() {
            let until = mark - self.count;
            if until as usize > data.len() {
                break;
            }
            let (head, tail) = data.split_at(until as usize);
            self.hasher.update(head);
            self.count += head.len() as u64;
            self.prefixes
                .push((mark, digest_string(self.hasher.clone())));
            self.marks.pop();
            data = tail;
        }
        self.hasher.update(data);
        self.count += data.len() as u64;
    }
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.absorb(&buf[..n]);
        self.unreported += n as u64;
        if self.unreported >= PROGRESS_STEP {
            if let Some(p) = self.progress {
                p.inc(self.unreported);
            }
            self.unreported = 0;
        }
        Ok(n)
    }
}

/// `sha256:<hex>` of what `hasher` has seen.
pub fn digest_string(hasher: Sha256) -> String {
    format!("sha256:{}", ctrwatch_event::hex(&hasher.finalize()))
}

/// Hashes one file (regular, below `root`, reached without following a symlink) in reads of
/// `buf.len()` bytes.
pub fn hash_file(
    root: &Path,
    path: &Path,
    marks: Vec<u64>,
    progress: Option<&Progress>,
    buf: &mut [u8],
) -> Result<FileHash, HashError> {
    let file = open_regular(root, path)?;
    HashingReader::new(file, marks, progress)
        .finish(buf)
        .map_err(|source| HashError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Runs `work(item, buffer)` for every item on `threads` threads (at least one), each with its
/// own [`READ_SIZE`] buffer, taking items in the order given (callers put the largest first, so
/// that no thread is left with a big file at the end while the others idle). Results come back
/// in the items' order.
pub fn run_pool<T, R, F>(items: &[T], threads: usize, work: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&T, &mut [u8]) -> R + Sync,
{
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    let threads = threads.clamp(1, items.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut buf = vec![0u8; READ_SIZE];
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    mine.push((i, work(item, &mut buf[..])));
                }
                // A poisoned lock only means another worker panicked; its panic is re-raised
                // by the scope, so the partial results here are never used.
                let mut all = results.lock().unwrap_or_else(|e| e.into_inner());
                for (i, r) in mine {
                    all[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect()
}

/// Hashes `paths` on `threads` threads (0: one per CPU), largest files first; the results are
/// in the order of `paths`. Progress: a "hashing" phase in bytes.
pub fn hash_files(
    paths: &[PathBuf],
    threads: usize,
    progress: &Progress,
) -> Vec<Result<FileHash, HashError>> {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    let mut order: Vec<(usize, u64)> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| (i, std::fs::symlink_metadata(p).map_or(0, |m| m.len())))
        .collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    progress.phase("hashing", order.iter().map(|(_, s)| s).sum(), Unit::Bytes);
    let hashed = run_pool(&order, threads, |&(i, _), buf| {
        // Each file on its own: only its last component is not followed.
        let dir = paths[i].parent().unwrap_or(Path::new("/"));
        (
            i,
            hash_file(dir, &paths[i], Vec::new(), Some(progress), buf),
        )
    });
    let mut out: Vec<Option<Result<FileHash, HashError>>> =
        (0..paths.len()).map(|_| None).collect();
    for (i, r) in hashed {
        out[i] = Some(r);
    }
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(data);
        digest_string(h)
    }

    #[test]
    fn marks_give_prefix_digests_across_read_boundaries() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        // A reader that returns odd-sized pieces, so marks fall inside reads.
        struct Chunky<'a>(&'a [u8]);
        impl Read for Chunky<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(buf.len()).min(333);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let marks = vec![5000, 0, 1, 333, 10_000, 20_000];
        let r = HashingReader::new(Chunky(&data), marks, None);
        let mut buf = vec![0u8; 1000];
        let h = r.finish(&mut buf).unwrap();
        assert_eq!(h.size, 10_000);
        assert_eq!(h.digest, sha(&data));
        let want: Vec<(u64, String)> = [0u64, 1, 333, 5000, 10_000]
            .iter()
            .map(|&n| (n, sha(&data[..n as usize])))
            .collect();
        assert_eq!(h.prefixes, want, "20_000 is never reached");
    }

    #[test]
    fn pool_keeps_order_and_visits_each_item_once() {
        let items: Vec<u64> = (0..1000).collect();
        let out = run_pool(&items, 4, |&i, buf| {
            assert_eq!(buf.len(), READ_SIZE);
            i * 2
        });
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert!(run_pool(&Vec::<u64>::new(), 4, |&i, _| i).is_empty());
    }

    #[test]
    fn hash_files_refuses_symlinks_and_fifos() {
        let dir = std::env::temp_dir().join(format!("ctrwatch-hashing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, b"hello").unwrap();
        let link = dir.join("l");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let fifo = dir.join("p");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let out = hash_files(
            &[file, link, fifo, dir.join("missing")],
            2,
            &Progress::hidden(),
        );
        assert_eq!(out[0].as_ref().unwrap().digest, sha(b"hello"));
        assert!(matches!(
            out[1],
            Err(HashError::NotRegular {
                kind: "symbolic link",
                ..
            })
        ));
        assert!(matches!(
            out[2],
            Err(HashError::NotRegular { kind: "FIFO", .. })
        ));
        assert!(matches!(out[3], Err(HashError::Io { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
