//! Process lifecycle: exec, fork and exit, captured in the kernel so that a process that lived
//! for a millisecond is still attributed (its exe, argv and parent are known before it is gone).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_probe_read_user, bpf_ringbuf_output},
    },
    macros::map,
    maps::PerCpuArray,
    programs::RawTracePointContext,
};
use watcher_common::{
    ARGS_CAP, EXEC_RECORD_FIXED, ExecRecord, ExitRecord, FLAG_ARGS_TRUNCATED, FLAG_PATH_TRUNCATED,
    ForkRecord, LOSS_EXEC, LOSS_EXIT, LOSS_FORK, PATH_BUF_CAP, RecordHeader, TaskInfo, kind,
};

use crate::{
    kernel::{current_task, file_path, fill_task_info, now_ns, read},
    maps::{EVENTS, count_lost, off, offsets, offsets_valid},
    path::{MASK, write_dentry_path},
};

#[map]
static EXEC_SCRATCH: PerCpuArray<ExecRecord> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn header(kind: u16, len: usize) -> RecordHeader {
    RecordHeader {
        kind,
        op: 0,
        len: len as u32,
        ts_ns: now_ns(),
    }
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`.
#[inline(always)]
pub fn on_exec(ctx: &RawTracePointContext) -> u32 {
    let o = offsets();
    if !offsets_valid() {
        return 0;
    }
    let Some(rec) = EXEC_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch record; tail writes are masked within EXEC_DATA_CAP.
    unsafe {
        let ExecRecord { fixed: r, data } = &mut *rec;
        r.hdr = header(kind::EXEC, 0);
        fill_task_info(&mut r.task);
        r.old_pid = ctx.arg::<u64>(1) as u32;
        r.flags = 0;
        let mm: u64 = read(current_task(), off(&o.task_mm));
        // The exe is what actually runs: for a script, the interpreter (comm and argv name
        // the script).
        let exe_file: u64 = read(mm, off(&o.mm_exe_file));
        let (mnt, dentry) = file_path(exe_file);
        let (exe_len, truncated) = if dentry != 0 {
            write_dentry_path(data.as_mut_ptr(), mnt, dentry, PATH_BUF_CAP)
        } else {
            (0, false)
        };
        if truncated {
            r.flags |= FLAG_PATH_TRUNCATED;
        }
        r.exe_len = exe_len as u16;
        let arg_start: u64 = read(mm, off(&o.mm_arg_start));
        let arg_end: u64 = read(mm, off(&o.mm_arg_end));
        let mut n = arg_end.saturating_sub(arg_start) as usize;
        if n > ARGS_CAP {
            n = ARGS_CAP;
            r.flags |= FLAG_ARGS_TRUNCATED;
        }
        let args_off = exe_len & MASK;
        let got = bpf_probe_read_user(
            data.as_mut_ptr().add(args_off) as *mut c_void,
            (n & (2 * ARGS_CAP - 1)) as u32,
            arg_start as *const c_void,
        );
        r.args_len = if got == 0 { n as u16 } else { 0 };
        let len = EXEC_RECORD_FIXED + args_off + (r.args_len as usize & (2 * ARGS_CAP - 1));
        r.hdr.len = len as u32;
        if bpf_ringbuf_output(
            &raw const EVENTS as *mut c_void,
            rec as *mut c_void,
            len as u64,
            0,
        ) != 0
        {
            count_lost(LOSS_EXEC);
        }
    }
    0
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`; threads are
/// not processes and are skipped.
#[inline(always)]
pub fn on_fork(ctx: &RawTracePointContext) -> u32 {
    let o = offsets();
    if !offsets_valid() {
        return 0;
    }
    let child: u64 = ctx.arg(1);
    let child_pid: u32 = read(child, off(&o.task_pid));
    let child_tgid: u32 = read(child, off(&o.task_tgid));
    if child_pid != child_tgid {
        return 0;
    }
    let mut task = TaskInfo::default();
    fill_task_info(&mut task);
    let rec = ForkRecord {
        hdr: header(kind::FORK, core::mem::size_of::<ForkRecord>()),
        task,
        child_pid: child_tgid,
        _pad: 0,
    };
    if EVENTS.output::<ForkRecord>(&rec, 0).is_err() {
        count_lost(LOSS_FORK);
    }
    0
}

/// `sched_process_exit(struct task_struct *p, ...)`: only the thread group leader's exit is the
/// process's.
#[inline(always)]
pub fn on_exit(_ctx: &RawTracePointContext) -> u32 {
    let o = offsets();
    if !offsets_valid() {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    if (id >> 32) as u32 != id as u32 {
        return 0;
    }
    let mut task = TaskInfo::default();
    fill_task_info(&mut task);
    let rec = ExitRecord {
        hdr: header(kind::EXIT, core::mem::size_of::<ExitRecord>()),
        task,
        exit_code: read::<i32>(current_task(), off(&o.task_exit_code)),
        _pad: 0,
    };
    if EVENTS.output::<ExitRecord>(&rec, 0).is_err() {
        count_lost(LOSS_EXIT);
    }
    0
}
