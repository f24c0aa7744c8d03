//! The stages of the tracepoint programs: the programs that walk paths, reached by
//! `bpf_tail_call` through the `STAGES` program array instead of being inlined in every
//! file-operation program, so that the kernel verifies the walk a few times instead of dozens
//! (watcher-ebpf/src/stages.rs; docs/startup.md). The daemon loads them with the other
//! programs, fills the array before it attaches any hook, and pins the array with the other
//! maps: the kernel empties a program array when its last user reference goes, and the pin
//! keeps one while no daemon runs. A daemon that adopts a pin set checks that every slot still
//! holds its stage.

use std::collections::HashMap;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};

use aya::{
    Ebpf,
    maps::{Map, ProgramArray},
    programs::{Program, ProgramError},
};
use watcher_common::TAIL_CALLED_PROGRAMS;

use super::{KernelError, kernel_name_matches};

/// The program array's name in the object (watcher-ebpf/src/stages.rs).
const STAGES_MAP: &str = "STAGES";

/// Puts each loaded stage in its slot of `STAGES`. Takes the stages' load results from
/// `loaded`: a stage that did not load fails the start, as a hook's program does.
pub fn fill(
    ebpf: &mut Ebpf,
    loaded: &mut HashMap<String, Result<(), ProgramError>>,
) -> Result<(), KernelError> {
    let mut fds = Vec::new();
    for (slot, name) in (0u32..).zip(TAIL_CALLED_PROGRAMS) {
        let program_error = |source| KernelError::Program {
            name: (*name).to_string(),
            source,
        };
        match loaded.get_mut(*name) {
            Some(result) => std::mem::replace(result, Ok(())).map_err(program_error)?,
            None => return Err(program_error(ProgramError::NotLoaded)),
        }
        let Some(Program::TracePoint(stage)) = ebpf.program(name) else {
            return Err(program_error(ProgramError::NotLoaded));
        };
        let fd = stage.fd().map_err(program_error)?.try_clone()?;
        fds.push((slot, fd));
    }
    let map = ebpf
        .map_mut(STAGES_MAP)
        .ok_or(KernelError::MissingMap(STAGES_MAP))?;
    let map_error = |source| KernelError::Map {
        name: STAGES_MAP,
        source,
    };
    let mut array = ProgramArray::try_from(map).map_err(map_error)?;
    for (slot, fd) in &fds {
        array.set(*slot, fd, 0).map_err(map_error)?;
    }
    Ok(())
}

/// Does every slot of an adopted `STAGES` hold its stage? `program_names`: the name of each
/// loaded program, by id.
pub fn check_adopted(
    maps: &HashMap<String, Map>,
    program_names: &HashMap<u32, Vec<u8>>,
) -> Result<(), KernelError> {
    let adopt_error = |detail: String| KernelError::Adopt {
        what: format!("map {STAGES_MAP}"),
        detail,
    };
    let Some(Map::ProgramArray(data)) = maps.get(STAGES_MAP) else {
        return Err(adopt_error("missing, or not a program array".into()));
    };
    for (slot, name) in (0u32..).zip(TAIL_CALLED_PROGRAMS) {
        let id = program_in_slot(data.fd().as_fd(), slot)
            .map_err(|e| adopt_error(format!("slot {slot} ({name}): {e}")))?;
        match id.map(|id| (id, program_names.get(&id))) {
            None => return Err(adopt_error(format!("slot {slot} ({name}) is empty"))),
            Some((_, Some(kernel))) if !kernel_name_matches(kernel, name) => {
                return Err(adopt_error(format!(
                    "slot {slot} holds {}, not {name}",
                    ctrwatch_event::escape_bytes(kernel)
                )));
            }
            Some((id, None)) => {
                return Err(adopt_error(format!(
                    "slot {slot} ({name}) holds program {id}, which is not loaded"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// `union bpf_attr` as BPF_MAP_LOOKUP_ELEM reads it.
#[repr(C)]
struct MapLookupAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The id of the program in `slot` of a program array (the kernel gives ids, not descriptors,
/// to userspace lookups; aya 0.14 has no lookup on a `ProgramArray`); None when it is empty.
fn program_in_slot(map: BorrowedFd<'_>, slot: u32) -> std::io::Result<Option<u32>> {
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    let mut id: u32 = 0;
    let attr = MapLookupAttr {
        map_fd: u32::try_from(map.as_raw_fd()).map_err(std::io::Error::other)?,
        _pad: 0,
        key: std::ptr::from_ref(&slot) as u64,
        value: std::ptr::from_mut(&mut id) as u64,
        flags: 0,
    };
    // SAFETY: `attr` is a live, initialised `repr(C)` prefix of `union bpf_attr`; the kernel
    // writes 4 bytes (the value size of a program array) to `value`, which is `id`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            std::ptr::from_ref(&attr),
            std::mem::size_of::<MapLookupAttr>(),
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(id))
}
