//! The path walk verified once: the file-operation programs hand the work that walks a path
//! over to a few programs reached by `bpf_tail_call`.
//!
//! Why: the kernel verifies every instruction of a program on each path through it, and the
//! dentry walk (path.rs) is most of what every file-operation program verified when it was
//! inlined in each of them (docs/startup.md). Verification is nearly all of a fresh start. A
//! tail-called program is verified once, whatever number of programs jump to it. `bpf_loop`
//! would verify a loop body once too, but only from 5.17 on: tail calls work on every kernel
//! ctrwatch supports.
//!
//! How: the program attached to the tracepoint (an enter or an exit of file_ops.rs) does what
//! needs no walk, stores what the next stage needs in this CPU's [`STAGE`] (the syscall's
//! [`Spec`], its arguments, its result) and jumps to the stage's slot in [`STAGES`]. A tail
//! call does not return; when it fails (an empty slot: never once the daemon has filled the
//! array, which it does before it attaches a hook) the caller goes on and counts the loss, so
//! that nothing is dropped silently.
//!
//! - [`ENTER_PATH`] resolves the first path of a syscall (or the file of its fd), asks the
//!   root filter and stores the operation in `PENDING` when it is under a root; otherwise it
//!   jumps to [`ENTER_PATH2`] for the second path of rename and link.
//! - [`EXIT_PATH`] writes the first path into the record the exit began in `SCRATCH`, and
//!   sends it, or jumps to [`EXIT_PATH2`], which writes the second path and sends it.
//! - [`WRITE_PATH`] asks whether the file a write-family syscall writes to is under a root
//!   (its enter stored the file), and remembers the write for its exit.
//! - [`EVENT_PATH`] writes the path of a write aggregate's file into the record begun in
//!   `SCRATCH` (reported at close, dup2, or when its exit binds the fd) and sends it.
//!
//! The exec record's path stays inlined in `sched_process_exec`: a raw tracepoint program
//! can only tail-call programs of its own type (one more array, for one program).
//!
//! The array is a map like the others: the daemon fills it after loading and pins it with the
//! rest, so that the stages keep running while no daemon holds it (the kernel empties a
//! `PROG_ARRAY` when its last user reference goes: a pin is one).

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, ProgramArray},
    programs::TracePointContext,
};
use watcher_common::TAIL_CALLED_PROGRAMS;

use crate::{file_ops::Spec, maps::Pending};

/// The slots of [`STAGES`]: positions in `watcher_common::TAIL_CALLED_PROGRAMS`, which is
/// where the daemon reads which program goes in which slot.
pub const ENTER_PATH: u32 = 0;
pub const ENTER_PATH2: u32 = 1;
pub const EXIT_PATH: u32 = 2;
pub const EXIT_PATH2: u32 = 3;
pub const WRITE_PATH: u32 = 4;
pub const EVENT_PATH: u32 = 5;
const _: () = assert!(TAIL_CALLED_PROGRAMS.len() == 6);

/// The stages, by slot; filled by the daemon.
#[map]
pub static STAGES: ProgramArray =
    ProgramArray::with_max_entries(TAIL_CALLED_PROGRAMS.len() as u32, 0);

/// What the next stage works on.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Stage {
    /// The syscall's arguments as its exit program lays them out, its op and number.
    pub pending: Pending,
    /// The syscall's result (exits).
    pub ret: i64,
    /// How the arguments map onto the record (the exit program's spec).
    pub spec: Spec,
}

/// This CPU's stage state. A tail call runs on the CPU of its caller, before anything else runs
/// there.
#[map]
pub static STAGE: PerCpuArray<Stage> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's stage state.
#[inline(always)]
pub fn stage() -> Option<*mut Stage> {
    STAGE.get_ptr_mut(0)
}

/// Jumps to the program in `slot`. Returns only when the jump failed.
#[inline(always)]
pub fn jump(ctx: &TracePointContext, slot: u32) {
    // SAFETY: the stages are tracepoint programs, as the callers; they read no more of the
    // context than [`STAGE`] (every argument they need is there).
    unsafe { STAGES.tail_call(ctx, slot) };
}
