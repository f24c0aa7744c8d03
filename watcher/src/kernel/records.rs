//! Decoding ring buffer records (layouts in watcher-common) into owned values.

use watcher_common::{
    EXEC_RECORD_FIXED, ExecRecord, ExitRecord, FILE_RECORD_FIXED, FileRecord, ForkRecord,
    RecordHeader, TaskInfo, kind,
};

/// A record from the kernel.
#[derive(Clone, Debug)]
pub enum Record {
    File(FileOp),
    Exec(Exec),
    Fork {
        ts_ns: u64,
        task: TaskInfo,
        child_pid: u32,
    },
    Exit {
        ts_ns: u64,
        task: TaskInfo,
        exit_code: i32,
    },
}

/// A file operation, with its variable parts split out.
#[derive(Clone, Debug, Default)]
pub struct FileOp {
    pub op: u16,
    pub ts_ns: u64,
    pub task: TaskInfo,
    pub result: i64,
    pub ino: u64,
    pub dev: u32,
    pub mode: u32,
    pub sys_flags: u32,
    pub flags: u32,
    pub f_mode: u32,
    pub rdev: u32,
    pub size: u64,
    pub offset: u64,
    pub bytes: u64,
    pub writes: u64,
    pub first_ns: u64,
    /// Rename with `FLAG_REPLACED`: the overwritten target's inode number and dev (0 when
    /// nothing was replaced, or it could not be seen).
    pub replaced_ino: u64,
    pub replaced_dev: u32,
    pub uid_arg: u32,
    pub gid_arg: u32,
    pub fd: i32,
    pub path: Vec<u8>,
    pub path2: Vec<u8>,
    pub xattr_name: Vec<u8>,
    pub xattr_value: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct Exec {
    pub ts_ns: u64,
    pub task: TaskInfo,
    pub old_pid: u32,
    pub flags: u32,
    pub exe: Vec<u8>,
    /// argv as the kernel has it: NUL-separated (split by the process table).
    pub args: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {got} bytes is shorter than its fixed part ({need} bytes)")]
    Short { got: usize, need: usize },
    #[error("record kind {0} is unknown")]
    UnknownKind(u16),
    #[error("record tail lengths exceed the record ({need} > {got} bytes)")]
    Tail { got: usize, need: usize },
}

/// Copies a `T` out of the front of `bytes` (ring buffer items have no alignment guarantee
/// beyond 8 bytes, and the tails make the records variable-length).
fn read_prefix<T: Copy>(bytes: &[u8], fixed: usize) -> Result<T, DecodeError> {
    if bytes.len() < fixed || fixed > std::mem::size_of::<T>() {
        return Err(DecodeError::Short {
            got: bytes.len(),
            need: fixed,
        });
    }
    let mut value = std::mem::MaybeUninit::<T>::zeroed();
    // SAFETY: T is one of the plain-data record types (valid for any bytes, zeroed tail), and
    // exactly `fixed` <= size_of::<T>() bytes are copied from a slice at least that long.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), value.as_mut_ptr() as *mut u8, fixed);
        Ok(value.assume_init())
    }
}

pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let hdr: RecordHeader = read_prefix(bytes, std::mem::size_of::<RecordHeader>())?;
    match hdr.kind {
        kind::FILE => decode_file(bytes).map(Record::File),
        kind::EXEC => decode_exec(bytes).map(Record::Exec),
        kind::FORK => {
            let r: ForkRecord = read_prefix(bytes, std::mem::size_of::<ForkRecord>())?;
            Ok(Record::Fork {
                ts_ns: r.hdr.ts_ns,
                task: r.task,
                child_pid: r.child_pid,
            })
        }
        kind::EXIT => {
            let r: ExitRecord = read_prefix(bytes, std::mem::size_of::<ExitRecord>())?;
            Ok(Record::Exit {
                ts_ns: r.hdr.ts_ns,
                task: r.task,
                exit_code: r.exit_code,
            })
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// Splits `tail` into consecutive parts of the given lengths.
fn split_tail<const N: usize>(tail: &[u8], lens: [usize; N]) -> Result<[&[u8]; N], DecodeError> {
    let need: usize = lens.iter().sum();
    if need > tail.len() {
        return Err(DecodeError::Tail {
            got: tail.len(),
            need,
        });
    }
    let mut parts = [&tail[..0]; N];
    let mut at = 0;
    for (part, len) in parts.iter_mut().zip(lens) {
        *part = &tail[at..at + len];
        at += len;
    }
    Ok(parts)
}

fn decode_file(bytes: &[u8]) -> Result<FileOp, DecodeError> {
    let r: FileRecord = read_prefix(bytes, FILE_RECORD_FIXED)?;
    let [path, path2, name, value] = split_tail(
        &bytes[FILE_RECORD_FIXED..],
        [
            r.path_len as usize,
            r.path2_len as usize,
            r.name_len as usize,
            r.value_len as usize,
        ],
    )?;
    Ok(FileOp {
        op: r.hdr.op,
        ts_ns: r.hdr.ts_ns,
        task: r.task,
        result: r.result,
        ino: r.ino,
        dev: r.dev,
        mode: r.mode,
        sys_flags: r.sys_flags,
        flags: r.flags,
        f_mode: r.f_mode,
        rdev: r.rdev,
        size: r.size,
        offset: r.offset,
        bytes: r.bytes,
        writes: r.writes,
        first_ns: r.first_ns,
        replaced_ino: r.replaced_ino,
        replaced_dev: r.replaced_dev,
        uid_arg: r.uid_arg,
        gid_arg: r.gid_arg,
        fd: r.fd,
        path: path.to_vec(),
        path2: path2.to_vec(),
        xattr_name: name.to_vec(),
        xattr_value: value.to_vec(),
    })
}

fn decode_exec(bytes: &[u8]) -> Result<Exec, DecodeError> {
    let r: ExecRecord = read_prefix(bytes, EXEC_RECORD_FIXED)?;
    let [exe, args] = split_tail(
        &bytes[EXEC_RECORD_FIXED..],
        [r.exe_len as usize, r.args_len as usize],
    )?;
    Ok(Exec {
        ts_ns: r.hdr.ts_ns,
        task: r.task,
        old_pid: r.old_pid,
        flags: r.flags,
        exe: exe.to_vec(),
        args: args.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_record_bytes(path: &[u8], path2: &[u8]) -> Vec<u8> {
        // SAFETY: FileRecord is plain data; all-zero is a valid value.
        let mut r: FileRecord = unsafe { std::mem::zeroed() };
        r.hdr.kind = kind::FILE;
        r.hdr.op = watcher_common::op::RENAME;
        r.path_len = path.len() as u16;
        r.path2_len = path2.len() as u16;
        r.data[..path.len()].copy_from_slice(path);
        r.data[path.len()..path.len() + path2.len()].copy_from_slice(path2);
        let len = FILE_RECORD_FIXED + path.len() + path2.len();
        // SAFETY: viewing a plain-data struct as bytes.
        let all = unsafe {
            std::slice::from_raw_parts(
                &r as *const FileRecord as *const u8,
                std::mem::size_of::<FileRecord>(),
            )
        };
        all[..len].to_vec()
    }

    #[test]
    fn decodes_both_paths_of_a_rename() {
        let bytes = file_record_bytes(b"/r/a", b"/r/b c");
        let Ok(Record::File(f)) = decode(&bytes) else {
            panic!("not a file record");
        };
        assert_eq!(f.path, b"/r/a");
        assert_eq!(f.path2, b"/r/b c");
    }

    #[test]
    fn decodes_the_replaced_target_of_a_rename() {
        let mut bytes = file_record_bytes(b"/r/a", b"/r/b");
        let ino_at = std::mem::offset_of!(FileRecord, replaced_ino);
        let dev_at = std::mem::offset_of!(FileRecord, replaced_dev);
        bytes[ino_at..ino_at + 8].copy_from_slice(&77u64.to_ne_bytes());
        bytes[dev_at..dev_at + 4].copy_from_slice(&((254u32 << 20) | 1).to_ne_bytes());
        let Ok(Record::File(f)) = decode(&bytes) else {
            panic!("not a file record");
        };
        assert_eq!((f.replaced_ino, f.replaced_dev), (77, (254 << 20) | 1));
    }

    #[test]
    fn rejects_truncated_records() {
        let bytes = file_record_bytes(b"/r/a", b"/r/b");
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Tail { .. })
        ));
        assert!(matches!(
            decode(&bytes[..10]),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn rejects_unknown_kinds() {
        let mut bytes = file_record_bytes(b"/", b"");
        bytes[0] = 99;
        assert_eq!(decode(&bytes).unwrap_err(), DecodeError::UnknownKind(99));
    }
}
