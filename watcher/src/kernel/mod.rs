//! The kernel side as the daemon sees it: probe what the running kernel allows, compute struct
//! offsets from its BTF, load the eBPF object, attach every hook the kernel has, and hand out
//! the ring buffer and maps.

pub mod backend;
pub mod btf_offsets;
pub mod capabilities;
pub mod pins;
pub mod ring;
pub mod stages;
pub mod workers;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, LpmTrie, Map, MapData, PerCpuArray},
    programs::{
        Program, ProgramError, RawTracePoint, TracePoint,
        links::{FdLink, LinkType, PinnedLink},
        raw_trace_point::RawTracePointLink,
        trace_point::TracePointLink,
    },
};
use watcher_common::{LOSS_SLOTS, ROOT_KEY_CAP, RootEntry, WriteAgg, WriteKey};

use capabilities::{Backend, Capabilities};

/// The eBPF object built by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/watcher"));

/// Unmaps the pages of [`EBPF_OBJECT`] from the process once the programs are loaded. The
/// object (~6 MiB: its BTF and debug information come with it) is read once, when it is
/// parsed; its pages, part of the binary's read-only data, then stay in the daemon's RSS for
/// nothing. They are the file's own pages, never written: dropping them (MADV_DONTNEED on a
/// private read-only file mapping) only clears our page-table entries, and a later read would
/// fault them in again from the binary. Pages the object shares with other data at its ends
/// are left alone.
pub fn release_object_pages() {
    // SAFETY: sysconf has no preconditions.
    let Ok(page) = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) else {
        return;
    };
    if page == 0 {
        return;
    }
    let start = EBPF_OBJECT.as_ptr() as usize;
    let end = start + EBPF_OBJECT.len();
    let first = start.next_multiple_of(page);
    let last = end / page * page;
    if last > first {
        // SAFETY: whole pages inside the object, which lives in the binary's read-only,
        // file-backed mapping; their contents are the same when faulted in again.
        let rc = unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_DONTNEED,
            )
        };
        if rc != 0 {
            log::debug!(
                "releasing the eBPF object's pages: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Why the kernel side could not be set up.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant's #[error] message says what it is"
)]
pub enum KernelError {
    #[error("kernel offsets: {0}")]
    Btf(#[from] btf_offsets::BtfError),
    #[error("no usable hook family on this kernel: {0}")]
    NoBackend(String),
    #[error("loading the eBPF object failed (are you root with CAP_BPF/CAP_SYS_ADMIN?): {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {}: {source}", ctrwatch_event::escape(name))]
    Program {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {}: {source}", ctrwatch_event::escape(name))]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {0} in the eBPF object is not a ring buffer")]
    NotRingBuffer(&'static str),
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("root prefix longer than {max} bytes: {prefix}")]
    RootTooLong { prefix: String, max: usize },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("pins: {0}")]
    Pins(#[from] pins::PinError),
    #[error("pinning {what}: {source}")]
    Pin {
        what: String,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("loading the programs: a worker {0}")]
    Worker(String),
    #[error("adopting the pinned {what}: {detail}")]
    Adopt { what: String, detail: String },
    #[error(transparent)]
    Backend(#[from] backend::ChoiceError),
}

/// How a program of the object attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProgramKind {
    TracePoint,
    RawTracePoint,
    /// fentry/fexit (kernel/backend.rs).
    Tracing,
    /// A kind no backend attaches (always listed as unavailable).
    Other,
}

/// Where a program is attached: its hooks, each a link named after it. A syscall tracepoint
/// program shared by several syscalls (`watcher_common::SHARED_PROGRAMS`) is attached to each
/// of their tracepoints; a stage reached by tail calls (`watcher_common::TAIL_CALLED_PROGRAMS`)
/// nowhere; any other program to the hook of its own name.
fn hooks_of(program: &str, kind: ProgramKind) -> Vec<String> {
    if kind == ProgramKind::TracePoint && watcher_common::tail_call_slot(program).is_some() {
        return Vec::new();
    }
    match watcher_common::shared_tracepoints(program) {
        Some(tracepoints) if kind == ProgramKind::TracePoint => {
            tracepoints.iter().map(|t| (*t).to_string()).collect()
        }
        _ => vec![program.to_string()],
    }
}

/// One hook of this build: the program attached there, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ExpectedHook {
    program: String,
    kind: ProgramKind,
}

/// What this build's eBPF object holds, read from its ELF sections (nothing is loaded): the
/// hooks a pin set must account for (one link each) and the maps it must hold.
struct ExpectedObject {
    /// By hook name (the tracepoint's; a link's pin is named so).
    hooks: std::collections::BTreeMap<String, ExpectedHook>,
    /// By name, with their types (`bpf_map_type`); the global sections (a dot in the name)
    /// are not pinned (see [`KernelWatch::pin`]).
    maps: std::collections::BTreeMap<String, u32>,
}

impl ExpectedObject {
    fn read() -> Result<Self, KernelError> {
        use aya_obj::ProgramSection;
        let object = aya_obj::Object::parse(EBPF_OBJECT).map_err(|e| KernelError::Adopt {
            what: "pins".into(),
            detail: format!("reading this build's eBPF object: {e}"),
        })?;
        let mut hooks = std::collections::BTreeMap::new();
        for (name, program) in &object.programs {
            let kind = match program.section {
                ProgramSection::TracePoint => ProgramKind::TracePoint,
                ProgramSection::RawTracePoint => ProgramKind::RawTracePoint,
                ProgramSection::FEntry { .. } | ProgramSection::FExit { .. } => {
                    ProgramKind::Tracing
                }
                _ => ProgramKind::Other,
            };
            for hook in hooks_of(name, kind) {
                let expected = ExpectedHook {
                    program: name.clone(),
                    kind,
                };
                if hooks.insert(hook.clone(), expected).is_some() {
                    return Err(KernelError::Adopt {
                        what: "pins".into(),
                        detail: format!("this build attaches two programs to {hook}"),
                    });
                }
            }
        }
        let maps = object
            .maps
            .iter()
            .filter(|(name, _)| !name.contains('.'))
            .map(|(name, map)| (name.clone(), map.map_type()))
            .collect();
        Ok(ExpectedObject { hooks, maps })
    }

    /// Every hook of the object is in the set once, attached (`links`) or unavailable, and
    /// nothing else is; a syscall tracepoint this kernel has is attached.
    fn check_hooks(
        &self,
        links: &[String],
        unavailable: &[String],
        caps: &Capabilities,
    ) -> Result<(), KernelError> {
        let hooks_error = |detail: String| KernelError::Adopt {
            what: "hooks".into(),
            detail,
        };
        let mut seen = BTreeSet::new();
        for name in links.iter().chain(unavailable) {
            if !self.hooks.contains_key(name) {
                return Err(hooks_error(format!(
                    "{}: not a hook of this build",
                    ctrwatch_event::escape(name)
                )));
            }
            if !seen.insert(name.as_str()) {
                return Err(hooks_error(format!(
                    "{}: both attached and unavailable",
                    ctrwatch_event::escape(name)
                )));
            }
        }
        let missing: Vec<&String> = self
            .hooks
            .keys()
            .filter(|name| !seen.contains(name.as_str()))
            .collect();
        if !missing.is_empty() {
            return Err(hooks_error(format!("not pinned: {missing:?}")));
        }
        for name in unavailable {
            if self.hooks.get(name).map(|h| h.kind) == Some(ProgramKind::TracePoint)
                && caps.has_syscall_tracepoint(name)
            {
                return Err(hooks_error(format!(
                    "{}: listed as unavailable, but this kernel has it",
                    ctrwatch_event::escape(name)
                )));
            }
        }
        Ok(())
    }
}

/// Whether the name the kernel gives an object (truncated to `BPF_OBJ_NAME_LEN - 1` bytes;
/// empty on kernels that do not name them) is `name`'s.
fn kernel_name_matches(kernel: &[u8], name: &str) -> bool {
    const BPF_OBJ_NAME_MAX: usize = 15;
    let name = name.as_bytes();
    kernel.is_empty() || kernel == &name[..name.len().min(BPF_OBJ_NAME_MAX)]
}

/// The slot of the `CAPTURE` map that holds the daemon's thread-group id (the eBPF side's
/// `CAPTURE_SELF_TGID`).
const CAPTURE_SELF_TGID: u32 = 1;

/// How long a start waits for the daemon that still holds the pin directory (it is stopping:
/// the store's lock, waited for first, normally covers it).
const PIN_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How the programs that capture came to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Loaded and attached by this process.
    Loaded,
    /// Loaded now, replacing the pins of another build (their names): what they captured
    /// since their daemon last read it is not read.
    Replaced(Vec<String>),
    /// Adopted from the pins of a previous daemon of this build: they kept capturing into
    /// the ring buffer, which is read from where that daemon left it.
    Adopted,
}

/// Settings for [`KernelWatch::load`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_buffer_bytes: u32,
    /// Thread-group id whose activity is never reported (the daemon itself).
    pub self_tgid: u32,
    /// The backend asked for (`--backend`, `[watch] backend`).
    pub backend: ctrwatch_config::Backend,
    /// Protect mode (`[watch] protect`, `run --protect`): the LSM programs are attached and the
    /// mode set where BPF LSM is usable ([`KernelWatch::protect`] says what is in force).
    pub protect: ctrwatch_config::ProtectMode,
}

/// What was attached, for status output and logs.
#[derive(Clone, Debug, Default)]
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
pub struct Attachment {
    pub backend: String,
    /// The other hook families' probe results ([`Capabilities::families`]).
    pub families: Vec<backend::FamilyProbe>,
    /// Hooks attached, by tracepoint name (a program shared by several has several).
    pub attached: Vec<String>,
    /// Hooks this kernel does not have (e.g. syscalls newer than the kernel).
    pub unavailable: Vec<String>,
}

/// An attached hook; dropping it detaches it, unless it is pinned (then removing its pin
/// does: `ctrwatch unpin`, [`pins::remove_sets`]).
enum Link {
    TracePoint(TracePointLink),
    RawTracePoint(RawTracePointLink),
    /// fentry/fexit (kernel/backend.rs).
    Tracing(FdLink),
    Pinned(PinnedLink),
    /// Opened from a pin when adopting (dropping it closes our descriptor; the pin keeps the
    /// program attached).
    Adopted(FdLink),
}

/// Loaded and attached programs. Capture is off until [`KernelWatch::set_capture`] turns it on.
/// Dropping it detaches everything that is not pinned.
#[allow(
    missing_docs,
    reason = "the fields are named for what they hold; the type's doc says what it is"
)]
pub struct KernelWatch {
    links: Vec<Link>,
    /// Every map of the object, by name (taken out of the loaded object, or opened from pins).
    maps: HashMap<String, Map>,
    /// The ring buffer's size in bytes (the pinned one's when adopted).
    ring_buffer_bytes: u32,
    /// The pin set the programs and maps are pinned in, if any.
    pins: Option<pins::PinSet>,
    /// The pin directory's lock ([`pins::lock`]), held while this daemon uses it.
    pin_lock: Option<std::fs::File>,
    pub origin: Origin,
    pub attachment: Attachment,
    pub capabilities: Capabilities,
    /// Protect mode asked for and in force.
    pub protect: ProtectState,
    /// The protect programs' links (BPF LSM), never pinned: they detach with this daemon.
    #[allow(
        dead_code,
        reason = "held for its drop: dropping the links detaches the protect programs"
    )]
    protect_links: Vec<FdLink>,
}

/// Protect mode as asked for and as in force: `status`, the `ctrwatch_protect_active`
/// metric and the `protect-unavailable` alert say it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProtectState {
    /// `[watch] protect` or `run --protect`.
    pub requested: ctrwatch_config::ProtectMode,
    /// What the programs do: `off` where the mode asked for cannot run.
    pub in_force: ctrwatch_config::ProtectMode,
    /// Why the mode asked for is not in force (None: it is, or `off` was asked for).
    pub unavailable: Option<String>,
    /// Protect programs attached (one per LSM hook).
    pub programs: usize,
}

impl ProtectState {
    /// `requested` cannot run, for `why` (nothing when `off` was asked for).
    pub fn unavailable(requested: ctrwatch_config::ProtectMode, why: &str) -> ProtectState {
        ProtectState {
            requested,
            in_force: ctrwatch_config::ProtectMode::Off,
            unavailable: (requested != ctrwatch_config::ProtectMode::Off).then(|| why.to_owned()),
            programs: 0,
        }
    }
}

/// Attaches the protect programs when `requested` is not `off` and BPF LSM is usable; where it
/// is not (refused, `bpf` not an active LSM, no hook's prototype known), says so loudly and
/// leaves protect mode off: the daemon watches only.
fn attach_protect(
    ebpf: &mut aya::Ebpf,
    capabilities: &Capabilities,
    requested: ctrwatch_config::ProtectMode,
) -> (ProtectState, Vec<FdLink>) {
    if requested == ctrwatch_config::ProtectMode::Off {
        return (ProtectState::default(), Vec::new());
    }
    let attached = if capabilities.lsm.state == backend::FamilyState::Usable {
        btf_offsets::KernelBtf::open(Path::new(btf_offsets::VMLINUX_BTF))
            .map_err(|e| format!("the kernel's BTF: {e}"))
            .and_then(|btf| backend::attach_lsm(ebpf, &btf).map_err(|e| e.to_string()))
    } else {
        Err(format!(
            "BPF LSM is not usable here: {}",
            capabilities.lsm.summary()
        ))
    };
    let state = match attached {
        Ok(lsm) if !lsm.links.is_empty() => {
            for (hook, why) in &lsm.not_needed {
                log::info!(
                    "protect = {:?}: a program of the LSM hook {hook} is not attached, and leaves no hole: {}",
                    requested.name(),
                    ctrwatch_event::escape(why)
                );
            }
            for (hook, why) in &lsm.skipped {
                log::error!(
                    "protect = {:?}: the LSM hook {hook} is not guarded: {}",
                    requested.name(),
                    ctrwatch_event::escape(why)
                );
            }
            let links: Vec<FdLink> = lsm.links.into_iter().map(|(_, link)| link).collect();
            let state = ProtectState {
                requested,
                in_force: requested,
                unavailable: None,
                programs: links.len(),
            };
            return (state, links);
        }
        Ok(lsm) => ProtectState::unavailable(
            requested,
            &format!(
                "no protect program could be attached: {}",
                lsm.skipped
                    .iter()
                    .map(|(hook, why)| format!("{hook}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ),
        Err(why) => ProtectState::unavailable(requested, &why),
    };
    (state, Vec::new())
}

impl KernelWatch {
    /// Loads and attaches the programs, unpinned: they are detached when this is dropped.
    pub fn load(opts: &LoadOptions) -> Result<Self, KernelError> {
        let step = StartStep::begin();
        // aya's loader parses the kernel's BTF as it is created (for CO-RE relocations, which
        // this object has none of: the programs read kernel structs at the offsets computed
        // here, `OFFSETS`; aya 0.14 has no way to skip that parse). It is the slowest parse
        // of the start, so it runs on a thread of its own while ours (the capability probe
        // and the offsets share one) runs here.
        let aya_parse = || {
            let step = StartStep::begin();
            let loader = EbpfLoader::new();
            let _ = step.done("kernel BTF parsed by aya");
            loader
        };
        let (loader, probed) = std::thread::scope(|scope| {
            // A refused thread (a task limit) is not a failure: the parse then runs here,
            // after ours.
            let loader = std::thread::Builder::new()
                .name("aya-btf".into())
                .spawn_scoped(scope, aya_parse)
                .inspect_err(|e| log::debug!("aya's BTF parse runs on this thread: {e}"))
                .ok();
            let probed = (|| {
                let btf = btf_offsets::KernelBtf::open(Path::new(btf_offsets::VMLINUX_BTF));
                let capabilities = Capabilities::probe_with_btf(btf.as_ref());
                let backend = capabilities
                    .best_backend()
                    .ok_or_else(|| KernelError::NoBackend(capabilities.summary()))?;
                backend::check_requested(opts.backend, &capabilities.fentry)?;
                let offsets = btf_offsets::offsets_from_btf(&btf?)?;
                Ok::<_, KernelError>((capabilities, backend, offsets))
            })();
            let loader = match loader.map(std::thread::ScopedJoinHandle::join) {
                Some(Ok(loader)) => Ok(loader),
                Some(Err(panic)) => Err(KernelError::Worker(format!(
                    "panicked (aya's BTF parse): {}",
                    workers::panic_message(panic.as_ref())
                ))),
                None => Ok(aya_parse()),
            };
            (loader, probed)
        });
        let mut loader = loader?;
        let (capabilities, backend, offsets) = probed?;
        let step = step.done("capability probe, kernel BTF and offsets");
        let mut ebpf = loader
            .override_global("OFFSETS", &offsets, true)
            .map_max_entries("EVENTS", opts.ring_buffer_bytes)
            .load(EBPF_OBJECT)?;
        let step = step.done("eBPF object parsed, maps created");
        let (mut attachment, links) = attach(&mut ebpf, backend, &capabilities, opts.backend)?;
        let (protect, protect_links) = attach_protect(&mut ebpf, &capabilities, opts.protect);
        if let Some(f) = attachment.families.iter_mut().find(|f| f.family == "lsm") {
            f.programs_attached = protect_links.len();
        }
        let _ = step.done("programs loaded and attached");
        let names: Vec<String> = ebpf.maps().map(|(name, _)| name.to_owned()).collect();
        let maps = names
            .into_iter()
            .filter_map(|name| ebpf.take_map(&name).map(|map| (name, map)))
            .collect();
        let mut kernel = KernelWatch {
            links,
            protect_links,
            maps,
            ring_buffer_bytes: opts.ring_buffer_bytes,
            pins: None,
            pin_lock: None,
            origin: Origin::Loaded,
            attachment,
            capabilities,
            protect,
        };
        kernel.set_self_tgid(opts.self_tgid)?;
        // The mode stays 0 (off) here: the daemon sets it (watch.rs) once the store's paths
        // are protected and containerd's executables trusted, not before (in enforce mode
        // the discovered containerd's own writes would be denied in between).
        if kernel.protect.in_force != ctrwatch_config::ProtectMode::Off {
            kernel.trust_tgid(opts.self_tgid)?;
        }
        Ok(kernel)
    }

    /// Sets the LSM programs' mode (0 off, 1 dry-run, 2 enforce).
    pub fn set_protect_mode(
        &mut self,
        mode: ctrwatch_config::ProtectMode,
    ) -> Result<(), KernelError> {
        let value: u32 = match mode {
            ctrwatch_config::ProtectMode::Off => 0,
            ctrwatch_config::ProtectMode::DryRun => 1,
            ctrwatch_config::ProtectMode::Enforce => 2,
        };
        let mut m: Array<_, u32> =
            Array::try_from(self.map_mut("PROTECT_MODE")?).map_err(|source| KernelError::Map {
                name: "PROTECT_MODE",
                source,
            })?;
        m.set(0, value, 0).map_err(|source| KernelError::Map {
            name: "PROTECT_MODE",
            source,
        })
    }

    /// A process the protect programs never block (the daemon itself).
    pub fn trust_tgid(&mut self, tgid: u32) -> Result<(), KernelError> {
        let mut m: aya::maps::HashMap<_, u32, u8> =
            aya::maps::HashMap::try_from(self.map_mut("TRUSTED_TGIDS")?).map_err(|source| {
                KernelError::Map {
                    name: "TRUSTED_TGIDS",
                    source,
                }
            })?;
        m.insert(tgid, 1, 0).map_err(|source| KernelError::Map {
            name: "TRUSTED_TGIDS",
            source,
        })
    }

    /// Protects the inode of `path` (a layer's `fs` dir, the blobs dir, meta.db) and what is
    /// below it (within the programs' walk depth).
    /// Returns the (st_dev, st_ino) protected, for [`KernelWatch::unprotect`].
    pub fn protect_path(&mut self, path: &Path) -> Result<(u64, u64), KernelError> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| KernelError::Worker(format!("PROTECTED: {}: {e}", path.display())))?;
        let id = (meta.dev(), meta.ino());
        self.inode_map_insert_id("PROTECTED", id)?;
        Ok(id)
    }

    /// Stops protecting the inode (st_dev, st_ino) [`KernelWatch::protect_path`] protected.
    pub fn unprotect(&mut self, id: (u64, u64)) -> Result<(), KernelError> {
        let name = "PROTECTED";
        let key = inode_key(id);
        let mut m: aya::maps::HashMap<_, watcher_common::InodeKey, u8> =
            aya::maps::HashMap::try_from(self.map_mut(name)?)
                .map_err(|source| KernelError::Map { name, source })?;
        // Gone already is done: the LSM program takes the key of an inode whose removal it
        // allowed out itself (lsm.rs, forget_removed), and aya reports a missing key as the
        // system call's ENOENT.
        match m.remove(&key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(source) => Err(KernelError::Map { name, source }),
        }
    }

    /// Trusts the executable inode (st_dev, st_ino): the one a running process executes
    /// (`/proc/PID/exe`), also when its path now names another file.
    pub fn trust_exe_inode(&mut self, id: (u64, u64)) -> Result<(), KernelError> {
        self.inode_map_insert_id("TRUSTED_EXES", id)
    }

    /// Trusts the executable at `path` (containerd, its shims, runc): its processes are
    /// never blocked.
    pub fn trust_exe(&mut self, path: &Path) -> Result<(), KernelError> {
        self.inode_map_insert("TRUSTED_EXES", path)
    }

    fn inode_map_insert(&mut self, name: &'static str, path: &Path) -> Result<(), KernelError> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| KernelError::Worker(format!("{name}: {}: {e}", path.display())))?;
        self.inode_map_insert_id(name, (meta.dev(), meta.ino()))
    }

    fn inode_map_insert_id(
        &mut self,
        name: &'static str,
        id: (u64, u64),
    ) -> Result<(), KernelError> {
        let key = inode_key(id);
        let mut m: aya::maps::HashMap<_, watcher_common::InodeKey, u8> =
            aya::maps::HashMap::try_from(self.map_mut(name)?)
                .map_err(|source| KernelError::Map { name, source })?;
        m.insert(key, 1, 0)
            .map_err(|source| KernelError::Map { name, source })
    }

    /// With `pin_dir`: adopts the programs and maps pinned there by a previous daemon of this
    /// build, or else loads them (removing the pins of any other build) and pins them there.
    /// Without: [`KernelWatch::load`].
    pub fn start(opts: &LoadOptions, pin_dir: Option<&Path>) -> Result<Self, KernelError> {
        let Some(pin_dir) = pin_dir else {
            return Self::load(opts);
        };
        // A syscall tracepoint can be pinned only as a perf-event bpf_link, which kernels
        // have since 5.15: on older ones (Debian 11's 5.10) aya attaches by ioctl, and the
        // service runs unpinned (as without --pin-dir) rather than failing to start.
        if let Some(release) = kernel_release()
            && release < (5, 15)
        {
            log::warn!(
                "not pinning the programs in {}: this kernel ({}.{}) has no perf-event links                  to pin (5.15 or later); a restart is a downtime here",
                ctrwatch_event::escape_path(pin_dir),
                release.0,
                release.1
            );
            return Self::load(opts);
        }
        pins::prepare(pin_dir)?;
        let lock = pins::lock(pin_dir, PIN_LOCK_WAIT)?;
        let name = pins::set_name(EBPF_OBJECT);
        let set = pins::PinSet::new(pin_dir, &name);
        if set.is_complete() {
            let removed = pins::remove_sets(pin_dir, Some(&name))?;
            if !removed.is_empty() {
                log::warn!("removed pins of another build next to ours: {removed:?}");
            }
            match Self::adopt(opts, set.clone()) {
                Ok(mut kernel) => {
                    kernel.pin_lock = Some(lock);
                    return Ok(kernel);
                }
                // Removed and loaded again below: a start that cannot adopt must still start.
                Err(e) => log::warn!(
                    "the programs pinned in {} could not be adopted ({e}): replacing them",
                    ctrwatch_event::escape_path(pin_dir)
                ),
            }
        }
        // Another build's, ours left half-made (a crash while pinning), or not adoptable.
        let removed = pins::remove_sets(pin_dir, None)?;
        let mut kernel = Self::load(opts)?;
        kernel.pin_lock = Some(lock);
        kernel.origin = if removed.is_empty() {
            Origin::Loaded
        } else {
            Origin::Replaced(removed)
        };
        if let Err(e) = kernel.pin(set.clone()) {
            // Half a set is worse than none: the next start would replace it anyway.
            let _ = pins::remove_set(&set);
            kernel.pins = None;
            return Err(e);
        }
        Ok(kernel)
    }

    /// Pins every map and every link in `set` (created here), then marks it complete.
    fn pin(&mut self, set: pins::PinSet) -> Result<(), KernelError> {
        set.create()?;
        for (name, map) in &self.maps {
            // The object's global sections (.rodata, .bss): bpffs refuses names with a dot,
            // and only the programs use them (they hold them).
            if name.contains('.') {
                continue;
            }
            map.pin(set.maps().join(name))
                .map_err(|source| KernelError::Pin {
                    what: format!("map {}", ctrwatch_event::escape(name)),
                    source,
                })?;
        }
        // `attach` pushed a link and its name together, in the same order.
        let names = self.attachment.attached.clone();
        if names.len() != self.links.len() {
            return Err(KernelError::Adopt {
                what: "links".into(),
                detail: format!("{} links for {} hooks", self.links.len(), names.len()),
            });
        }
        let links = std::mem::take(&mut self.links);
        for (name, link) in names.iter().zip(links) {
            let fd: Result<FdLink, _> = match link {
                Link::TracePoint(l) => FdLink::try_from(l),
                Link::RawTracePoint(l) => Ok(FdLink::from(l)),
                Link::Tracing(l) => Ok(l),
                Link::Pinned(p) => Ok(FdLink::from(p)),
                Link::Adopted(l) => Ok(l),
            };
            let fd = fd.map_err(|e| KernelError::Adopt {
                what: format!("link {}", ctrwatch_event::escape(name)),
                detail: format!("not a bpf_link, cannot be pinned: {e}"),
            })?;
            let pinned = fd
                .pin(set.links().join(name))
                .map_err(|source| KernelError::Pin {
                    what: format!("link {}", ctrwatch_event::escape(name)),
                    source,
                })?;
            self.links.push(Link::Pinned(pinned));
        }
        for name in &self.attachment.unavailable {
            let path = set.unavailable().join(name);
            std::fs::create_dir(&path).map_err(|source| pins::PinError::Io { path, source })?;
        }
        set.mark_complete()?;
        self.pins = Some(set);
        Ok(())
    }

    /// Opens the maps and links of a complete pin set of this build. Nothing is loaded or
    /// attached: the programs never stopped.
    fn adopt(opts: &LoadOptions, set: pins::PinSet) -> Result<Self, KernelError> {
        let capabilities = Capabilities::probe();
        let backend = capabilities
            .best_backend()
            .ok_or_else(|| KernelError::NoBackend(capabilities.summary()))?;
        backend::check_requested(opts.backend, &capabilities.fentry)?;
        // Only a set that holds every map and hook this build expects is adopted: one with a
        // hook missing (removed by hand, or by a removal that did not finish) would leave the
        // daemon blind to that hook's operations without a word.
        let expected = ExpectedObject::read()?;
        let map_names = pins::PinSet::names(&set.maps())?;
        let wanted_maps: Vec<&String> = expected.maps.keys().collect();
        if map_names.iter().collect::<Vec<_>>() != wanted_maps {
            return Err(KernelError::Adopt {
                what: "maps".into(),
                detail: format!("the set has {map_names:?}, this build has {wanted_maps:?}"),
            });
        }
        let mut maps = HashMap::new();
        for name in map_names {
            let adopt_error = |detail: String| KernelError::Adopt {
                what: format!("map {}", ctrwatch_event::escape(&name)),
                detail,
            };
            let data = MapData::from_pin(set.maps().join(&name))
                .map_err(|e| adopt_error(e.to_string()))?;
            let info = data.info().map_err(|e| adopt_error(e.to_string()))?;
            let kernel_type = info.map_type().map_err(|e| adopt_error(e.to_string()))? as u32;
            let wanted_type = expected.maps.get(&name).copied();
            if Some(kernel_type) != wanted_type {
                return Err(adopt_error(format!(
                    "of type {kernel_type}, this build's is {wanted_type:?}"
                )));
            }
            if !kernel_name_matches(info.name(), &name) {
                return Err(adopt_error(format!(
                    "the kernel calls it {}",
                    ctrwatch_event::escape_bytes(info.name())
                )));
            }
            let map = Map::from_map_data(data).map_err(|e| adopt_error(e.to_string()))?;
            maps.insert(name, map);
        }
        // The programs' stages (tail calls): a set whose array lost an entry would count a
        // loss for every operation instead of reporting it.
        let program_names: HashMap<u32, Vec<u8>> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|info| (info.id(), info.name().to_vec()))
            .collect();
        stages::check_adopted(&maps, &program_names)?;
        let ring_buffer_bytes = match maps.get("EVENTS") {
            Some(Map::RingBuf(data)) => {
                data.info()
                    .map(|info| info.max_entries())
                    .map_err(|e| KernelError::Adopt {
                        what: "map EVENTS".into(),
                        detail: e.to_string(),
                    })?
            }
            Some(_) => return Err(KernelError::NotRingBuffer("EVENTS")),
            None => return Err(KernelError::MissingMap("EVENTS")),
        };
        if ring_buffer_bytes != opts.ring_buffer_bytes {
            log::warn!(
                "the adopted ring buffer has {} MiB, not the {} MiB asked for: the size takes \
                 effect when the programs are loaded again (after `ctrwatch unpin`)",
                ring_buffer_bytes >> 20,
                opts.ring_buffer_bytes >> 20
            );
        }
        let mut links = Vec::new();
        let mut attachment = Attachment {
            backend: backend.name().to_string(),
            families: capabilities.families(),
            ..Default::default()
        };
        attachment.unavailable = pins::PinSet::names(&set.unavailable())?;
        let link_names = pins::PinSet::names(&set.links())?;
        expected.check_hooks(&link_names, &attachment.unavailable, &capabilities)?;
        let pinned_fentry: Vec<&str> = link_names
            .iter()
            .filter(|name| expected.hooks.get(*name).map(|h| h.kind) == Some(ProgramKind::Tracing))
            .map(String::as_str)
            .collect();
        backend::pinned_backend_matches(opts.backend, &capabilities.fentry_hooks, &pinned_fentry)
            .map_err(|detail| KernelError::Adopt {
            what: "backend".into(),
            detail,
        })?;
        // `program_names` (above): what the kernel says a link runs.
        for name in link_names {
            let adopt_error = |detail: String| KernelError::Adopt {
                what: format!("link {}", ctrwatch_event::escape(&name)),
                detail,
            };
            let link = FdLink::from(
                PinnedLink::from_pin(set.links().join(&name))
                    .map_err(|e| adopt_error(e.to_string()))?,
            );
            let info = link.info().map_err(|e| adopt_error(e.to_string()))?;
            let link_type = info.link_type().map_err(|e| adopt_error(e.to_string()))?;
            let hook = expected.hooks.get(&name);
            let wanted_type = match hook.map(|h| h.kind) {
                Some(ProgramKind::TracePoint) => Some(LinkType::PerfEvent),
                Some(ProgramKind::RawTracePoint) => Some(LinkType::RawTracePoint),
                Some(ProgramKind::Tracing) => Some(LinkType::Tracing),
                _ => None,
            };
            if Some(link_type) != wanted_type {
                return Err(adopt_error(format!(
                    "a {link_type:?} link, this build attaches it as {wanted_type:?}"
                )));
            }
            // Kernels that name programs say which one the link runs.
            if let Some(program) = program_names.get(&info.program_id())
                && let Some(hook) = hook
                && !kernel_name_matches(program, &hook.program)
            {
                return Err(adopt_error(format!(
                    "runs program {}",
                    ctrwatch_event::escape_bytes(program)
                )));
            }
            links.push(Link::Adopted(link));
            attachment.attached.push(name);
        }
        let fentry_links = attachment
            .attached
            .iter()
            .filter(|name| expected.hooks.get(*name).map(|h| h.kind) == Some(ProgramKind::Tracing))
            .count();
        if let Some(f) = attachment
            .families
            .iter_mut()
            .find(|f| f.family == "fentry")
        {
            f.programs_attached = fentry_links;
        }
        // The protect programs are not pinned (kernel/pins.rs): adopted programs run without
        // them until the programs are loaded again.
        let protect = ProtectState::unavailable(
            opts.protect,
            "the programs were adopted from a previous daemon's pins and the protect programs \
             are not pinned with them (they attach only when the programs are loaded: \
             `ctrwatch unpin`, then start again)",
        );
        let mut kernel = KernelWatch {
            links,
            protect_links: Vec::new(),
            maps,
            ring_buffer_bytes,
            pins: Some(set),
            pin_lock: None,
            origin: Origin::Adopted,
            attachment,
            capabilities,
            protect,
        };
        kernel.set_self_tgid(opts.self_tgid)?;
        Ok(kernel)
    }

    /// The ring buffer's size in bytes, as loaded (or adopted).
    pub fn ring_buffer_bytes(&self) -> u32 {
        self.ring_buffer_bytes
    }

    /// Are the programs pinned (they outlive this process until `ctrwatch unpin`)?
    pub fn is_pinned(&self) -> bool {
        self.pins.is_some()
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, KernelError> {
        self.maps.get_mut(name).ok_or(KernelError::MissingMap(name))
    }

    fn map(&self, name: &'static str) -> Result<&Map, KernelError> {
        self.maps.get(name).ok_or(KernelError::MissingMap(name))
    }

    fn capture_slot(&mut self, slot: u32, value: u32) -> Result<(), KernelError> {
        let mut switch: Array<_, u32> =
            Array::try_from(self.map_mut("CAPTURE")?).map_err(|source| KernelError::Map {
                name: "CAPTURE",
                source,
            })?;
        switch
            .set(slot, value, 0)
            .map_err(|source| KernelError::Map {
                name: "CAPTURE",
                source,
            })
    }

    /// The process whose file activity the programs never report.
    fn set_self_tgid(&mut self, tgid: u32) -> Result<(), KernelError> {
        self.capture_slot(CAPTURE_SELF_TGID, tgid)
    }

    /// The loss totals already reported (by this daemon or, adopted, by its predecessor): the
    /// baseline of the next report. Zero for freshly loaded programs.
    pub fn reported_losses(&self) -> Result<Vec<u64>, KernelError> {
        let reported: Array<_, u64> =
            Array::try_from(self.map("REPORTED_LOST")?).map_err(|source| KernelError::Map {
                name: "REPORTED_LOST",
                source,
            })?;
        (0..LOSS_SLOTS)
            .map(|slot| {
                reported.get(&slot, 0).map_err(|source| KernelError::Map {
                    name: "REPORTED_LOST",
                    source,
                })
            })
            .collect()
    }

    /// Remembers `totals` as reported (see [`KernelWatch::reported_losses`]).
    pub fn set_reported_losses(&mut self, totals: &[u64]) -> Result<(), KernelError> {
        let mut reported: Array<_, u64> =
            Array::try_from(self.map_mut("REPORTED_LOST")?).map_err(|source| KernelError::Map {
                name: "REPORTED_LOST",
                source,
            })?;
        for (slot, total) in (0..LOSS_SLOTS).zip(totals) {
            reported
                .set(slot, *total, 0)
                .map_err(|source| KernelError::Map {
                    name: "REPORTED_LOST",
                    source,
                })?;
        }
        Ok(())
    }

    /// Turns capture on or off in every program at once (the `CAPTURE` switch each program
    /// checks first). Off after [`KernelWatch::load`]: turn it on once the roots are set. A
    /// program already past the check when capture is turned off still finishes its record;
    /// [`KernelWatch::detach`] waits for those.
    pub fn set_capture(&mut self, on: bool) -> Result<(), KernelError> {
        self.capture_slot(0, u32::from(on))
    }

    /// The ring buffer of records, of `size_bytes` (as loaded); take it once.
    pub fn take_ring_buffer(&mut self, size_bytes: u32) -> Result<ring::EventRing, KernelError> {
        let map = self
            .maps
            .remove("EVENTS")
            .ok_or(KernelError::MissingMap("EVENTS"))?;
        let aya::maps::Map::RingBuf(data) = map else {
            return Err(KernelError::NotRingBuffer("EVENTS"));
        };
        Ok(ring::EventRing::new(data, size_bytes)?)
    }

    /// Replaces the set of watched path prefixes in the kernel filter, and forgets the cached
    /// per-file verdicts (they were computed against the old set).
    pub fn set_root_prefixes(&mut self, prefixes: &[Vec<u8>]) -> Result<(), KernelError> {
        let map = self.map_mut("ROOTS")?;
        let mut trie: LpmTrie<_, [u8; ROOT_KEY_CAP], RootEntry> =
            LpmTrie::try_from(map).map_err(|source| KernelError::Map {
                name: "ROOTS",
                source,
            })?;
        let old: Vec<_> = trie.keys().filter_map(Result::ok).collect();
        for (index, prefix) in prefixes.iter().enumerate() {
            if prefix.len() > ROOT_KEY_CAP {
                return Err(KernelError::RootTooLong {
                    prefix: String::from_utf8_lossy(prefix).into_owned(),
                    max: ROOT_KEY_CAP,
                });
            }
            let mut data = [0u8; ROOT_KEY_CAP];
            data[..prefix.len()].copy_from_slice(prefix);
            let key = aya::maps::lpm_trie::Key::new((prefix.len() * 8) as u32, data);
            trie.insert(
                &key,
                RootEntry {
                    index: index as u32,
                },
                0,
            )
            .map_err(|source| KernelError::Map {
                name: "ROOTS",
                source,
            })?;
        }
        for key in old {
            let len = key.prefix_len() as usize / 8;
            let still = prefixes
                .iter()
                .any(|p| p.len() == len && p[..] == key.data()[..len]);
            if !still {
                let _ = trie.remove(&key);
            }
        }
        self.clear_verdicts()
    }

    fn clear_verdicts(&mut self) -> Result<(), KernelError> {
        let map = self.map_mut("VERDICTS")?;
        // aya's HashMap also handles LRU hash maps.
        let mut verdicts: BpfHashMap<_, [u64; 2], u32> =
            BpfHashMap::try_from(map).map_err(|source| KernelError::Map {
                name: "VERDICTS",
                source,
            })?;
        let keys: Vec<_> = verdicts.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = verdicts.remove(&key);
        }
        Ok(())
    }

    /// Per-slot totals of records the kernel could not deliver, summed over CPUs.
    pub fn lost_counts(&self) -> Result<Vec<u64>, KernelError> {
        let map = self.map("LOST")?;
        let lost: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| KernelError::Map {
                name: "LOST",
                source,
            })?;
        let mut totals = vec![0u64; LOSS_SLOTS as usize];
        for (slot, total) in totals.iter_mut().enumerate() {
            let values = lost
                .get(&(slot as u32), 0)
                .map_err(|source| KernelError::Map {
                    name: "LOST",
                    source,
                })?;
            *total = values.iter().sum();
        }
        Ok(totals)
    }

    /// Removes and returns the write aggregates of process `tgid` (it exited without closing).
    pub fn take_write_aggregates(
        &mut self,
        tgid: u32,
    ) -> Result<Vec<(WriteKey, WriteAgg)>, KernelError> {
        self.take_write_aggregates_of(Some(tgid))
    }

    /// Removes and returns every write aggregate (files still open at the stop: their writes
    /// so far are reported then).
    pub fn take_all_write_aggregates(&mut self) -> Result<Vec<(WriteKey, WriteAgg)>, KernelError> {
        self.take_write_aggregates_of(None)
    }

    fn take_write_aggregates_of(
        &mut self,
        tgid: Option<u32>,
    ) -> Result<Vec<(WriteKey, WriteAgg)>, KernelError> {
        let map = self.map_mut("WRITES")?;
        let mut writes: BpfHashMap<_, WriteKey, WriteAgg> =
            BpfHashMap::try_from(map).map_err(|source| KernelError::Map {
                name: "WRITES",
                source,
            })?;
        let mine: Vec<(WriteKey, WriteAgg)> = writes
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| tgid.is_none_or(|t| k.tgid == t))
            .collect();
        for (key, _) in &mine {
            let _ = writes.remove(key);
        }
        Ok(mine)
    }
}

impl KernelWatch {
    /// Detaches every program that is not pinned (pinned ones stay attached: see
    /// `ctrwatch unpin`); the maps (and the ring buffer) stay readable. Detaching waits
    /// for the programs that were running (see below), so once it returns what they captured
    /// is in the ring buffer or counted as lost.
    ///
    /// Detaching a tracepoint waits for an RCU grace period in the kernel (tens of ms each);
    /// one after the other, 92 of them took 6.4 s here. Part of that work overlaps across
    /// threads, so the links are dropped from several threads at once (3.6 s; the rest is
    /// serialised by the kernel's event_mutex).
    pub fn detach(&mut self) {
        const THREADS: usize = 16;
        let links = std::mem::take(&mut self.links);
        for failure in workers::run_all("detach", THREADS, links, drop)
            .into_iter()
            .filter_map(Result::err)
        {
            log::error!("detaching a hook: a worker {failure}");
        }
    }
}

impl Drop for KernelWatch {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Loads and attaches every program the chosen backend uses and the kernel has; returns what
/// was attached and the links (owned, so that detaching can be done in parallel).
fn attach(
    ebpf: &mut Ebpf,
    backend: Backend,
    caps: &Capabilities,
    requested: ctrwatch_config::Backend,
) -> Result<(Attachment, Vec<Link>), KernelError> {
    let mut links = Vec::new();
    let mut attachment = Attachment {
        backend: backend.name().to_string(),
        ..Default::default()
    };
    // What this kernel can take: a syscall the kernel lacks, a rename-target hook it cannot
    // use, or a program kind this backend does not attach are listed, not loaded. A program
    // is loaded when the kernel has at least one of its hooks.
    let mut wanted = BTreeSet::new();
    // (hook, program)
    let mut hooks: Vec<(String, String)> = Vec::new();
    for (name, program) in ebpf.programs() {
        let (kind, usable) = match program {
            Program::TracePoint(_) => (ProgramKind::TracePoint, None),
            Program::RawTracePoint(_) => (
                ProgramKind::RawTracePoint,
                Some(caps.rename_target_hook_usable(name) != Some(false)),
            ),
            // backend::attach_fentry's, below.
            Program::FEntry(_) | Program::FExit(_) => continue,
            _ => (ProgramKind::Other, Some(false)),
        };
        if kind == ProgramKind::TracePoint && watcher_common::tail_call_slot(name).is_some() {
            // A stage of the tracepoint programs (stages.rs): loaded with them, attached nowhere.
            wanted.insert(name.to_string());
            continue;
        }
        for hook in hooks_of(name, kind) {
            if usable.unwrap_or_else(|| caps.has_syscall_tracepoint(&hook)) {
                wanted.insert(name.to_string());
                hooks.push((hook, name.to_string()));
            } else {
                attachment.unavailable.push(hook);
            }
        }
    }
    let step = StartStep::begin();
    let mut loaded = load_in_parallel(ebpf, &wanted)?;
    let step = step.done(&format!("{} programs loaded (verified)", wanted.len()));
    // Before any hook is attached: a program that finds its stage missing counts a loss.
    stages::fill(ebpf, &mut loaded)?;
    // Sorted so that exits attach before enters: an enter without its exit would leave
    // pending entries behind.
    let ordered: BTreeSet<(u8, &String, &String)> = hooks
        .iter()
        .map(|(hook, name)| (u8::from(!hook.starts_with("sys_exit_")), hook, name))
        .collect();
    for (_, hook, name) in ordered {
        let Some(program) = ebpf.program_mut(name) else {
            continue;
        };
        let program_error = |source| KernelError::Program {
            name: name.clone(),
            source,
        };
        // A program's load result is taken by its first hook (a failure ends the start there,
        // or leaves an optional raw tracepoint, which has one hook, unattached).
        let load = match loaded.get_mut(name.as_str()) {
            Some(result) => std::mem::replace(result, Ok(())),
            None => Err(ProgramError::NotLoaded),
        };
        match program {
            Program::TracePoint(tp) => {
                let tp: &mut TracePoint = tp;
                load.map_err(program_error)?;
                let id = tp.attach("syscalls", hook).map_err(program_error)?;
                links.push(Link::TracePoint(tp.take_link(id).map_err(program_error)?));
            }
            Program::RawTracePoint(rtp) => {
                let rtp: &mut RawTracePoint = rtp;
                let optional = caps.rename_target_hook_usable(name).is_some();
                let attached = load
                    .and_then(|()| rtp.attach(hook))
                    .and_then(|id| rtp.take_link(id));
                match attached {
                    Ok(link) => links.push(Link::RawTracePoint(link)),
                    // A rename-target hook only adds the `overwritten` detail: without it
                    // renames are still reported, so a refusal is a warning, not a failure.
                    Err(e) if optional => {
                        log::warn!(
                            "{name}: not attached, renames will not say what they replaced: {e}"
                        );
                        attachment.unavailable.push(hook.clone());
                        continue;
                    }
                    Err(e) => return Err(program_error(e)),
                }
            }
            _ => {
                attachment.unavailable.push(hook.clone());
                continue;
            }
        }
        attachment.attached.push(hook.clone());
    }
    let fentry = backend::attach_fentry(ebpf, requested, &caps.fentry_hooks)?;
    attachment.families = caps.families();
    if let Some(f) = attachment
        .families
        .iter_mut()
        .find(|f| f.family == "fentry")
    {
        f.programs_attached = fentry.links.len();
    }
    for (name, link) in fentry.links {
        links.push(Link::Tracing(link));
        attachment.attached.push(name);
    }
    attachment.unavailable.extend(fentry.unavailable);
    let _ = step.done(&format!("{} programs attached", attachment.attached.len()));
    Ok((attachment, links))
}

/// The kernel's `s_dev` encoding of a userspace `st_dev` (major 12 bits << 20 | minor).
/// The protect maps' key of the inode (st_dev, st_ino).
fn inode_key((dev, ino): (u64, u64)) -> watcher_common::InodeKey {
    watcher_common::InodeKey {
        dev: new_encode_dev(dev),
        _pad: 0,
        ino,
    }
}

fn new_encode_dev(dev: u64) -> u32 {
    let major = ((dev >> 8) & 0xfff) as u32 | (((dev >> 32) & !0xfff) as u32);
    let minor = (dev & 0xff) as u32 | (((dev >> 12) & !0xff) as u32);
    (major << 20) | minor
}

/// One step of the start-up, timed for the debug log (`RUST_LOG=debug`): where the time
/// between the start and READY goes (docs/startup.md, `cargo xtask bench startup`).
pub struct StartStep(std::time::Instant);

impl StartStep {
    /// The step begins now.
    pub fn begin() -> Self {
        StartStep(std::time::Instant::now())
    }

    /// Logs the step's duration and begins the next one (drop it after the last).
    pub fn done(self, what: &str) -> Self {
        log::debug!("start-up: {what} in {:.1?}", self.0.elapsed());
        Self::begin()
    }
}

/// Loads (verifies) the named programs on every CPU at once and returns each one's result.
/// Verification is nearly all of start-up: about a hundred BPF_PROG_LOADs of 40–400 ms each,
/// against well under a second for the BTF, the maps and every attach together (measured with
/// `strace -T`); privileged loads take no common lock in the kernel, so they scale with the
/// CPUs. Attaching stays sequential and ordered.
fn load_in_parallel(
    ebpf: &mut Ebpf,
    wanted: &BTreeSet<String>,
) -> Result<HashMap<String, Result<(), ProgramError>>, KernelError> {
    let queue: Vec<(&str, &mut Program)> = ebpf
        .programs_mut()
        .filter(|(name, _)| wanted.contains(*name))
        .collect();
    let workers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, queue.len().max(1));
    let mut loaded = HashMap::new();
    for result in workers::run_all("load", workers, queue, |(name, program)| {
        let started = std::time::Instant::now();
        let result = match program {
            Program::TracePoint(tp) => tp.load(),
            Program::RawTracePoint(rtp) => rtp.load(),
            _ => Ok(()),
        };
        log::debug!(
            "start-up: program {name} loaded in {:.1?}",
            started.elapsed()
        );
        (name.to_string(), result)
    }) {
        let (name, result) = result.map_err(KernelError::Worker)?;
        loaded.insert(name, result);
    }
    Ok(loaded)
}

/// The ring buffer's producer and consumer positions, mapped read-only from the map (the
/// kernel exposes them on the map's first two pages: the consumer position, then the
/// producer's): how far the programs are ahead of the daemon, for the metrics. aya 0.14
/// does not expose them, so they are mapped again here; the mapping keeps the map alive.
pub struct RingPositions {
    consumer: std::ptr::NonNull<libc::c_void>,
    producer: std::ptr::NonNull<libc::c_void>,
    page: usize,
    size_bytes: u64,
}

// SAFETY: the pages are only read, with atomic loads; the mapping lives as long as the value.
unsafe impl Send for RingPositions {}
// SAFETY: as above.
unsafe impl Sync for RingPositions {}

impl RingPositions {
    /// Maps the positions of the ring buffer `fd` of `size_bytes` data bytes.
    pub fn map(fd: std::os::fd::BorrowedFd<'_>, size_bytes: u32) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| std::io::Error::other("page size"))?;
        let map = |offset: usize| -> std::io::Result<std::ptr::NonNull<libc::c_void>> {
            let offset = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
            // SAFETY: a new shared read-only mapping of one page of the map; nothing else is
            // touched.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    page,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    offset,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            std::ptr::NonNull::new(p).ok_or_else(|| std::io::Error::other("mmap returned null"))
        };
        let consumer = map(0)?;
        let producer = match map(page) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: mapped above with this length, not used after.
                unsafe { libc::munmap(consumer.as_ptr(), page) };
                return Err(e);
            }
        };
        Ok(RingPositions {
            consumer,
            producer,
            page,
            size_bytes: u64::from(size_bytes),
        })
    }

    fn load(p: std::ptr::NonNull<libc::c_void>) -> u64 {
        // SAFETY: the page is mapped for as long as self lives, page-aligned (so the u64 at its
        // start is aligned), and the kernel updates it with atomic stores.
        let atomic = unsafe { &*(p.as_ptr() as *const std::sync::atomic::AtomicU64) };
        atomic.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl crate::metrics::RingFillSource for RingPositions {
    fn fill(&self) -> crate::metrics::RingFill {
        // Consumer first: the producer read after it is never behind it.
        let consumer = Self::load(self.consumer);
        let producer = Self::load(self.producer);
        crate::metrics::RingFill {
            used_bytes: producer.saturating_sub(consumer).min(self.size_bytes),
            size_bytes: self.size_bytes,
        }
    }
}

impl Drop for RingPositions {
    fn drop(&mut self) {
        // SAFETY: both were mapped with this length by `map` and are not used after.
        unsafe {
            libc::munmap(self.consumer.as_ptr(), self.page);
            libc::munmap(self.producer.as_ptr(), self.page);
        }
    }
}

/// The running kernel's (major, minor) version (uname's release); None if unreadable.
fn kernel_release() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of shared programs and the object agree: each program the table names is a
    /// tracepoint program of this build, attached where the table says, and every syscall
    /// tracepoint has one program. A name out of step (a program renamed, or a table entry
    /// for a program that no longer exists) would leave syscalls unwatched without a word.
    #[test]
    fn every_syscall_tracepoint_has_one_program_of_this_build() {
        let expected = ExpectedObject::read().expect("this build's object");
        let programs: BTreeSet<&str> = expected
            .hooks
            .values()
            .map(|h| h.program.as_str())
            .collect();
        for (program, tracepoints) in watcher_common::SHARED_PROGRAMS {
            assert!(
                programs.contains(program),
                "{program}: not a program of the object"
            );
            for tracepoint in *tracepoints {
                assert_eq!(
                    expected.hooks.get(*tracepoint),
                    Some(&ExpectedHook {
                        program: (*program).to_string(),
                        kind: ProgramKind::TracePoint,
                    }),
                    "{tracepoint}"
                );
            }
        }
        let tracepoints: BTreeSet<&str> = expected
            .hooks
            .iter()
            .filter(|(_, h)| h.kind == ProgramKind::TracePoint)
            .map(|(name, _)| name.as_str())
            .collect();
        // Each syscall's enter has its exit (which ends what the enter began), except the
        // write family's close and dup2/dup3, which only end a write aggregate.
        let enter_only = ["sys_enter_close", "sys_enter_dup2", "sys_enter_dup3"];
        for tracepoint in &tracepoints {
            let partner = if let Some(syscall) = tracepoint.strip_prefix("sys_enter_") {
                format!("sys_exit_{syscall}")
            } else if let Some(syscall) = tracepoint.strip_prefix("sys_exit_") {
                format!("sys_enter_{syscall}")
            } else {
                panic!("{tracepoint}: not a syscall tracepoint");
            };
            assert!(
                enter_only.contains(tracepoint) || tracepoints.contains(partner.as_str()),
                "{tracepoint} has a program, {partner} none"
            );
        }
        // 44 syscalls with an enter and an exit, and the three enter-only ones: as many hooks
        // as before any program was shared.
        assert_eq!(tracepoints.len(), 91, "{tracepoints:?}");
    }

    /// Every stage the daemon puts in the `STAGES` array is a tracepoint program of this
    /// build (the programs jump to it by slot: a name out of step would leave a slot empty
    /// and every operation counted lost), and none is attached anywhere.
    #[test]
    fn every_stage_is_a_tracepoint_program_attached_nowhere() {
        let object = aya_obj::Object::parse(EBPF_OBJECT).expect("this build's object");
        let expected = ExpectedObject::read().expect("this build's object");
        for (slot, stage) in (0u32..).zip(watcher_common::TAIL_CALLED_PROGRAMS) {
            let program = object
                .programs
                .get(*stage)
                .unwrap_or_else(|| panic!("{stage}: not a program of the object"));
            assert!(
                matches!(program.section, aya_obj::ProgramSection::TracePoint),
                "{stage}: not a tracepoint program"
            );
            assert_eq!(watcher_common::tail_call_slot(stage), Some(slot));
            assert!(
                expected.hooks.values().all(|h| h.program != *stage),
                "{stage} is attached to a hook"
            );
        }
        assert!(
            expected.maps.contains_key("STAGES"),
            "the stage array is pinned with the maps"
        );
    }
}
