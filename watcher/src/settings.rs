//! `ctrwatch run`'s settings from its three sources: a flag given on the command line (or by
//! its environment variable) wins over the configuration file, which wins over the built-in
//! defaults (docs/operations.md, "The configuration file"). The file's meaning and checks are
//! `ctrwatch_config`'s; this module only merges.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::WatchArgs;
use anyhow::{Context as _, bail};
use ctrwatch_config::{Backend, Config};
use ctrwatch_event::escape_path;
use watcher::{
    containerd::attribution::Trust,
    daemon::{Reloader, RunOptions},
    secrets::Masker,
    status::LoadedConfig,
    store::{StoreGroup, StoreOptions},
    watch::WatchOptions,
};

/// `run`'s flags.
#[derive(Clone)]
pub struct RunFlags {
    pub watch: WatchArgs,
    pub store: PathBuf,
    pub retention_days: u64,
    pub retention_mb: u64,
    pub store_group: Option<StoreGroup>,
    pub store_lock_wait: u64,
    pub print: bool,
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `--pin-dir`: pin the programs in bpffs there, adopt those pinned by the previous daemon.
    pub pin_dir: Option<PathBuf>,
}

/// The configuration `run` uses: the file named by `--config`, else the default file if it
/// exists, else the built-in defaults. A file root does not alone control is refused: it
/// decides what is trusted and what is watched. Also returns the file read, if any, and when
/// (`ctrwatch status` shows it).
pub fn load(explicit: Option<&Path>) -> anyhow::Result<(Config, Option<LoadedConfig>)> {
    let path = match explicit {
        Some(p) => p,
        None => {
            let default = Path::new(ctrwatch_config::DEFAULT_PATH);
            match std::fs::symlink_metadata(default) {
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok((Config::default(), None)),
                _ => default,
            }
        }
    };
    let unusable = |errors: &[ctrwatch_config::ConfigError]| {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        anyhow::anyhow!(
            "the configuration {} is not usable (check it with `ctrwatch config check`):\n{}",
            escape_path(path),
            lines.join("\n")
        )
    };
    // Never blocks (a FIFO at the path), refuses what is not a regular file: also read again
    // on SIGHUP, while capturing.
    let text = match ctrwatch_config::read_file(path, true) {
        Ok(text) => text,
        Err(ctrwatch_config::ReadError::Unusable(e)) => return Err(unusable(&[e])),
        Err(ctrwatch_config::ReadError::Untrusted { uid, mode, .. }) => bail!(
            "refusing the configuration {}: it must be root's and writable by root alone (owner uid {uid}, mode {mode:04o}), as it decides what is watched and trusted",
            escape_path(path)
        ),
    };
    let loaded = LoadedConfig {
        path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
        loaded_at: std::time::SystemTime::now(),
    };
    let config = Config::from_text(path, &text).map_err(|errors| unusable(&errors))?;
    Ok((config, Some(loaded)))
}

/// What SIGHUP runs: [`load`] the same file again (`--config`, `CTRWATCH_CONFIG`, or the
/// default), and make `run`'s settings of it with the same flags over it (`given`: the ids
/// of the flags given), checking everything the start checks, the sinks included.
pub fn reloader(
    explicit: Option<PathBuf>,
    flags: RunFlags,
    given: std::collections::BTreeSet<String>,
) -> Reloader {
    // The default file existed at the start: it must still exist at a reload. Falling back to
    // the built-in defaults when it is gone would silently drop the node's secret masks and
    // trusted writers; a reload then fails instead, and says why.
    let explicit = explicit.or_else(|| {
        let default = PathBuf::from(ctrwatch_config::DEFAULT_PATH);
        std::fs::symlink_metadata(&default)
            .is_ok()
            .then_some(default)
    });
    Reloader::new(move || resolve(explicit.as_deref(), flags.clone(), &|id| given.contains(id)))
}

/// `run`'s settings from the file (see [`load`]) and the flags given over it, with every check
/// the start makes before it attaches anything, the sinks' included (secrets, CA files).
/// SIGHUP's reload and `config check` run exactly this.
pub fn resolve(
    explicit: Option<&Path>,
    flags: RunFlags,
    given: &dyn Fn(&str) -> bool,
) -> anyhow::Result<RunOptions> {
    let (file, loaded) = load(explicit)?;
    let options = run_options(flags, given, &file)?;
    // Checks only: the names of the targets do not matter here.
    watcher::alerting::Alerting::from_config(
        options.config.clone(),
        &ctrwatch_alerts::target_key::TargetKey::Legacy,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(RunOptions {
        config_file: loaded,
        ..options
    })
}

/// The logger's filter for `run`: `RUST_LOG` when set (the logger reads it), else the file's
/// `log_level` for ctrwatch's own lines and warnings from its libraries, as
/// [`watcher::logging::DAEMON_FILTER`] does for the default level.
pub fn log_filter(file: &Config) -> String {
    watcher::logging::daemon_filter(file.log_level)
}

/// `watch`'s and `run`'s watch settings: the flags that were given (`given(id)`: clap's
/// argument id, on the command line or by environment) over `file`.
pub fn watch_options(
    f: WatchArgs,
    given: &dyn Fn(&str) -> bool,
    file: &Config,
) -> anyhow::Result<WatchOptions> {
    let w = &file.watch;
    // --root names exactly what is watched; the file's roots add to discovery unless it
    // turns discovery off.
    let (roots, discover) = if given("roots") {
        (f.roots, false)
    } else {
        (w.roots.clone(), w.discover)
    };
    if !discover && roots.is_empty() {
        bail!(
            "nothing to watch: discovery is off ([watch] discover = false) and no root is named ([watch] roots or --root)"
        );
    }
    let ring_buffer_mb = if given("ring_buffer_mb") {
        f.ring_buffer_mb
    } else {
        w.ring_buffer_mb
    };
    let root_refresh = if given("root_refresh") {
        Duration::from_secs(f.root_refresh.max(1))
    } else {
        w.root_refresh
    };
    let trust = Trust {
        exes: if given("trust_exes") {
            f.trust_exes
        } else {
            w.trust_exes.clone()
        },
        units: if given("trust_units") {
            f.trust_units
        } else {
            w.trust_units.clone()
        },
    };
    let mask_args = if given("mask_args") {
        f.mask_args
    } else {
        w.mask_args
            .iter()
            .map(|p| watcher::secrets::pattern(p))
            .collect::<Result<Vec<_>, _>>()
            .context("[watch] mask_args")?
    };
    let default_masks = if given("no_default_masks") {
        !f.no_default_masks
    } else {
        w.default_masks
    };
    let backend = if given("backend") {
        f.backend
    } else {
        w.backend
    };
    match backend {
        Backend::Auto | Backend::Tracepoint => {}
        // The kernel's answer, now: `config check` says invalid where `run` would refuse it
        // (the start checks it again, kernel/backend.rs).
        Backend::Fentry => {
            use watcher::kernel::{backend, btf_offsets};
            let btf = btf_offsets::KernelBtf::open(Path::new(btf_offsets::VMLINUX_BTF));
            let probe = backend::probe_fentry(btf.as_ref());
            backend::check_requested(backend, &probe)?;
        }
        Backend::Lsm => bail!(
            "[watch] backend = {:?}: this ctrwatch has no LSM programs yet; use auto, tracepoint or fentry",
            backend.name()
        ),
    }
    // Protect mode: the kernel's start (kernel/mod.rs) attaches the LSM programs where BPF LSM
    // is usable; where it is not, the daemon says so loudly and watches only.
    let protect = if given("protect") {
        f.protect
    } else {
        w.protect
    };
    Ok(WatchOptions {
        roots,
        discover,
        json: f.json,
        ring_buffer_bytes: ring_buffer_mb * 1024 * 1024,
        root_refresh,
        process_grace: Duration::from_secs(120),
        trust,
        masker: Masker::with_patterns(mask_args, default_masks),
        pin_dir: None,
        backend,
        protect,
    })
}

/// `run`'s settings: the flags that were given over `file`.
pub fn run_options(
    flags: RunFlags,
    given: &dyn Fn(&str) -> bool,
    file: &Config,
) -> anyhow::Result<RunOptions> {
    let mut watch = watch_options(flags.watch, given, file)?;
    watch.pin_dir = flags.pin_dir;
    let s = &file.store;
    let store = if given("store") {
        flags.store
    } else {
        s.path.clone()
    };
    let retention_days = if given("retention_days") {
        flags.retention_days
    } else {
        s.retention_days
    };
    let retention_mb = if given("retention_mb") {
        flags.retention_mb
    } else {
        s.retention_mb
    };
    let group = if given("store_group") {
        flags.store_group
    } else {
        s.group
            .as_deref()
            .map(StoreGroup::resolve)
            .transpose()
            .map_err(|e| anyhow::anyhow!("[store] group: {e}"))?
    };
    Ok(RunOptions {
        watch,
        store,
        store_options: StoreOptions {
            retention_age: (retention_days > 0)
                .then(|| Duration::from_secs(retention_days.saturating_mul(24 * 3600))),
            // Saturating: a limit beyond what a disk holds is no limit, not an overflow.
            retention_bytes: (retention_mb > 0).then(|| retention_mb.saturating_mul(1024 * 1024)),
            group,
            lock_wait: Duration::from_secs(flags.store_lock_wait),
            ..StoreOptions::default()
        },
        echo: flags.print,
        // Alerts: [alerts], [rules.<id>], [[sinks]].
        config: file.clone(),
        // Set by the caller, which knows which file was read.
        config_file: None,
        reload: None,
        metrics_listen: if given("metrics_listen") {
            flags.metrics_listen
        } else {
            file.metrics.listen
        },
    })
}
