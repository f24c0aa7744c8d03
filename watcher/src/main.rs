//! `ctrwatch`: who changed containerd's image storage, when, and was it containerd?

use std::{path::PathBuf, process::ExitCode};

mod config_cmd;
mod settings;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand, parser::ValueSource};
use watcher::{
    containerd,
    daemon::{self, RunOptions},
    kernel::{btf_offsets, capabilities::Capabilities},
    queries::{self, Output, QueryArgs, Window},
    store::{self, DeleteOptions, PathMatch},
    watch::{self, StdoutSink, WatchOptions},
};

#[derive(Parser)]
#[command(
    name = "ctrwatch",
    version,
    about = "Watches containerd's content and snapshot storage with eBPF and tells who changed what",
    long_about = "Watches containerd's content and snapshot storage (and k3s's) with eBPF: every \
write, truncate, create, delete, rename, link, mknod, chmod/chown and xattr change under the \
watched roots, attributed to the process that did it (exe, command line, parent chain, systemd \
unit, container), filtered in the kernel. Needs root."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What the query commands print without `--json` (their `--help` says it).
macro_rules! table_help {
    () => {
        "Output: one row per event, TIME OP RESULT PATH PID COMM/EXE, at most 160 columns (a \
cell too wide is cut with a visible \u{2026}); under it, indented, what is known about the \
event: the whole path, the verdict (foreign, owner, container) and its reason, the path \
inside the image, the image(s), the layer, the command line with its arguments, unit, \
parents. --json prints every field."
    };
}

#[derive(Subcommand)]
enum Command {
    /// Stream file operations under the roots to stdout until interrupted (Ctrl-C / SIGTERM).
    #[command(
        after_help = "Examples:\n  ctrwatch watch\n  ctrwatch watch --root /var/lib/containerd --json | jq .\n\nWith no --root, watches /var/lib/containerd /run/containerd\n/var/lib/rancher/k3s/agent/containerd /run/k3s/containerd and every trusted\ncontainerd instance that `ctrwatch roots` finds (it also lists what it refused, and why).\n\nSecrets in command lines (--password=..., tokens, URL credentials...) are masked as\nprocesses are captured; see --mask-arg."
    )]
    Watch {
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Run as the daemon: watch, and keep every event, loss record and start/stop in the
    /// history store (what the systemd service runs).
    #[command(
        after_help = "The store is SQLite (WAL): queries run while the daemon writes.\n\
Retention prunes the oldest events first and records that it did (see `ctrwatch gaps`).\n\n\
The store is root's (directory 0700, files 0600) unless --store-group lets a group read it.\n\
One daemon per store, whatever name reaches it (hardlink, symlink): a second one waits\n\
--store-lock-wait seconds, then exits 1. A corrupt store is moved aside to\n\
NAME.corrupt-<time> and a new one started (a store_reset gap); on a full disk the daemon\n\
captures anyway, counts what it cannot store and records it once space returns.\n\
Stop it with SIGTERM (or Ctrl-C): what was captured until then is stored, and the time until\n\
the next start is recorded as downtime (with --pin-dir the pinned programs go on capturing\n\
and the next start stores what they captured: no downtime). If stdout goes away (--print\n\
into a closed pipe or a hung-up terminal), only the printing stops.\n\n\
SIGHUP (systemctl reload) reads the same configuration file again, checked as at the start,\n\
while capture goes on; flags still win over it. Applied at once: [watch] roots, discover,\n\
root_refresh, trust_exes, trust_units, mask_args, default_masks. The other keys (store,\n\
ring buffer, log level, metrics, alerts, rules, sinks) take effect at the next start: a\n\
change is logged and shown by `ctrwatch status`. A file that does not check out is refused\n\
as a whole; the daemon runs on as before and says why (log, status, a config-invalid alert).\n\n\
As a systemd service (the package's ctrwatch.service, Type=notify): READY=1 once capture is\n\
on, STATUS= lines, WATCHDOG=1 from the event loop (WatchdogSec=), STOPPING=1 on SIGTERM; log\n\
lines carry journal priorities. RUST_LOG=debug logs more."
    )]
    Run {
        #[command(flatten)]
        watch: WatchArgs,
        /// The history database.
        #[arg(long, default_value_os_t = store::default_path(), value_name = "FILE")]
        store: PathBuf,
        /// Keep events for this many days (0: no limit by age).
        #[arg(long, default_value_t = 30, value_name = "DAYS")]
        retention_days: u64,
        /// Keep the database under this many MiB, pruning the oldest events (0: no limit).
        #[arg(long, default_value_t = 256, value_name = "MIB")]
        retention_mb: u64,
        /// Also print events to stdout (readable lines, or JSON with --json). Printing stops
        /// if stdout fails; recording goes on.
        #[arg(long)]
        print: bool,
        /// Let the members of this group (a name or a gid) read the history with `ctrwatch
        /// query`, `history`, `gaps`...: the store's directory becomes 0750 and its files
        /// 0640, owned by the group. Default: root only (0700, 0600). The history holds every
        /// command line seen, secrets included: give it to trusted operators only.
        #[arg(long, value_name = "GROUP", value_parser = store_group)]
        store_group: Option<store::StoreGroup>,
        /// Wait this long for another writer's lock on the store before giving up (a daemon
        /// killed with -9 holds it until the kernel has detached its programs).
        #[arg(long, default_value_t = 30, value_name = "SECONDS")]
        store_lock_wait: u64,
        /// The configuration file (TOML; `ctrwatch config example` prints every key). Default:
        /// /etc/ctrwatch/ctrwatch.toml if it exists, else the built-in defaults. A flag given
        /// here (or by its environment variable) wins over the file, the file over the
        /// defaults. Check a file with `ctrwatch config check FILE`.
        #[arg(long, env = "CTRWATCH_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9847; overrides
        /// `[metrics] listen`). Off unless given here or in the file. An address that cannot
        /// be listened on stops `run` at start; one that is not loopback is allowed, with a
        /// warning: the metrics tell who can reach it what this node's ctrwatch sees.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Pin the programs and their maps in this bpffs directory (the service uses
        /// /sys/fs/bpf/ctrwatch; bpffs is mounted on /sys/fs/bpf if it is not). They then
        /// outlive the daemon: after a stop (SIGTERM) or a crash they go on capturing into the
        /// ring buffer, and the next `run` with the same directory and the same build adopts
        /// them and reads what they captured meanwhile (a restart loses nothing); another
        /// build replaces them and records the time it could not see as downtime. `ctrwatch
        /// unpin` removes them. One directory per daemon. Default: no pins, the programs are
        /// detached at the stop.
        #[arg(long, value_name = "DIR")]
        pin_dir: Option<PathBuf>,
    },
    /// Remove the programs and maps `run --pin-dir` pinned: they stop capturing. For a daemon
    /// stopped outside systemd, and the package's removal; the service's `ExecStopPost=` runs
    /// it with --if-stopping, so that `systemctl stop` ends capture while a restart keeps the
    /// programs for the next daemon to adopt.
    #[command(
        after_help = "Refused (exit 1, nothing removed) while a daemon runs with DIR (it holds DIR's\n\
lock; with --if-stopping and a stop job, unpin waits 10 s for it first), and when DIR is\n\
not on bpffs, is a symbolic link, or is not owned by root or writable by group or others.\n\
Nothing inside DIR is followed: a symbolic link there is never descended. Exit 0 also\n\
when there was nothing to remove, and when --if-stopping keeps the pins.\n\n\
Examples:\n  ctrwatch unpin\n  \
ExecStopPost=-/usr/bin/ctrwatch unpin --pin-dir /sys/fs/bpf/ctrwatch --if-stopping ctrwatch.service"
    )]
    Unpin {
        /// The directory given to `run --pin-dir`.
        #[arg(long, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
        pin_dir: PathBuf,
        /// Remove the pins only if systemd has a `stop` job queued on UNIT (`systemctl stop`,
        /// a shutdown): for the unit's `ExecStopPost=`. A `restart` job (`systemctl restart`,
        /// the package's upgrade) or none (Restart= after a crash or an exit) keeps them for
        /// the next daemon to adopt; so does an answer systemctl does not give within 10 s
        /// (with a warning). Asks `systemctl list-jobs UNIT` (/usr/bin/systemctl, else
        /// /bin/systemctl; never one found on PATH).
        #[arg(long, value_name = "UNIT")]
        if_stopping: Option<String>,
    },
    /// Every recorded operation on a file, newest first: who, when, with what result.
    #[command(
        after_help = concat!(
            "PATH is a host path, or a path inside an image or container (/pause,\n\
/usr/lib/x86_64-linux-gnu/libjq.so.1): then it matches that file in every snapshot.\n\n",
            table_help!(),
            "\n\nExamples:\n  ctrwatch history /pause\n  ctrwatch history /var/lib/containerd/io.containerd.content.v1.content/ingest --since 2h"
        )
    )]
    History {
        /// A host path, or a path inside an image or container (e.g. /pause).
        path: PathBuf,
        #[command(flatten)]
        q: PathArgs,
    },
    /// Who deleted (unlinked, removed, renamed away, whited out) a file, newest first.
    #[command(
        after_help = concat!(
            table_help!(),
            "\n\nExamples:\n  ctrwatch who-deleted /pause\n  ctrwatch who-deleted /usr/lib/x86_64-linux-gnu/libjq.so.1 --truncations"
        )
    )]
    WhoDeleted {
        /// A host path, or a path inside an image or container (e.g. /pause).
        path: PathBuf,
        #[command(flatten)]
        q: PathArgs,
        /// Also truncations to size zero (files that became empty).
        #[arg(long)]
        truncations: bool,
        /// Also attempts that failed (they deleted nothing).
        #[arg(long)]
        failed: bool,
    },
    /// Search the history with filters (all given filters must match).
    #[command(
        after_help = concat!(
            "String filters match exactly, or as globs when they contain * ? [.\n\n",
            table_help!(),
            "\n\nExamples:\n  ctrwatch query --op unlink --op rmdir --since 1day\n  ctrwatch query --path '/var/lib/containerd/**/fs/pause' --json\n  ctrwatch query --exe '*/bash' --unit cleanup.service"
        )
    )]
    Query {
        #[command(flatten)]
        filter: QueryArgs,
        #[command(flatten)]
        q: PathArgs,
    },
    /// Where the history is incomplete: kernel loss, daemon downtime, records the store could
    /// not write, pruned history.
    Gaps {
        #[arg(long, default_value_os_t = store::default_path(), value_name = "FILE")]
        store: PathBuf,
        /// Start of the window: a duration ago (2h, 3days) or an RFC 3339 time.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Is the daemon running on this store, since when, what does it watch, how many events
    /// has it stored and lost, how big is its store, were its last alerts delivered.
    #[command(after_help = STATUS_HELP)]
    Status {
        /// The daemon's history database.
        #[arg(long, default_value_os_t = store::default_path(), value_name = "FILE")]
        store: PathBuf,
        /// One JSON object with the same facts (times RFC 3339).
        #[arg(long)]
        json: bool,
    },
    /// The alerts raised, newest first, with their delivery state per sink (and per URL of
    /// a sink): delivered, pending (attempts, next attempt, last error) or dropped.
    #[command(
        after_help = "Alerts wait in the store's outbox until every sink that takes them has them.\n\
Examples:\n  ctrwatch alerts\n  ctrwatch alerts --since 1h --json | jq 'select(.deliveries[].state == \"pending\")'"
    )]
    Alerts {
        /// The history database (the outbox is in it).
        #[arg(long, default_value_os_t = store::default_path(), value_name = "FILE")]
        store: PathBuf,
        /// Only alerts whose last event is at or after this time: a duration ago (2h,
        /// 3days) or an RFC 3339 time.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// At most this many alerts (newest first).
        #[arg(long, default_value_t = 100, value_parser = limit_arg)]
        limit: usize,
        /// One JSON object per alert.
        #[arg(long)]
        json: bool,
    },
    /// Alert sinks: `ctrwatch alert test` sends a test alert.
    Alert {
        #[command(subcommand)]
        command: AlertCommand,
    },
    /// Show what this kernel supports and which hooks ctrwatch would use: tracefs, BTF, the
    /// hook families (a test fentry program is loaded, attached and detached; whether `bpf`
    /// is an active LSM), the rename-target hooks, the struct offsets read from BTF.
    Probe {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the containerd instances found on this node and why, what discovery refused and
    /// why (processes and config files root does not control alone, system directories), and
    /// the directories watched when no --root is given.
    Roots,
    /// Check a containerd root offline: content digests and sizes, ingests, every layer
    /// snapshot against its tar, snapshot and runtime metadata, and what keeps removed
    /// content alive. Reads only; containerd may be running.
    #[command(after_help = AUDIT_HELP)]
    Audit {
        #[command(flatten)]
        audit: AuditArgs,
    },
    /// Check a configuration file before it is deployed, or print the example that documents
    /// every key.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write the man pages or a shell completion script (what the package installs; `cargo
    /// xtask deb` calls it).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a file as `ctrwatch run --config` reads it, and show what it sets (defaults
    /// filled in; sink URLs without their secret paths).
    #[command(
        after_help = "Exit status: 0 valid, 2 invalid (every problem is listed, each as
FILE:LINE:COLUMN: KEY: what is wrong), 1 unreadable.

Examples:
  ctrwatch config check
  ctrwatch config check ./edge.toml && scp ./edge.toml node:/etc/ctrwatch/ctrwatch.toml"
    )]
    Check {
        /// The file.
        #[arg(default_value = ctrwatch_config::DEFAULT_PATH, value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the example configuration that ships with ctrwatch: every key, its default and
    /// what it means (start a node's file from it).
    Example,
}

#[derive(Subcommand)]
enum AlertCommand {
    /// Send a test alert (rule `heartbeat`, "ctrwatch test alert from NODE") to every sink of
    /// the configuration, or to SINK, through the same formatting, signing and HTTP client as
    /// the daemon (not through the outbox), and print each receiver's answer.
    #[command(
        after_help = "Exit status: 0 every receiver accepted it, 1 one did not (its answer is printed),\n\
2 the configuration or the sink name is wrong.\n\n\
Examples:\n  ctrwatch alert test\n  ctrwatch alert test --config /etc/ctrwatch/ctrwatch.toml dingtalk"
    )]
    Test {
        /// The configuration file with the `[[sinks]]`.
        #[arg(long, default_value = ctrwatch_config::DEFAULT_PATH, value_name = "FILE")]
        config: PathBuf,
        /// Only this sink (its `name`).
        sink: Option<String>,
    },
}

#[derive(Subcommand)]
enum Generate {
    /// The man pages ctrwatch(1) and ctrwatch-SUBCOMMAND(1), into DIR.
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// The completion script for SHELL, on stdout.
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
}

const AUDIT_HELP: &str = "Exit status: 0 clean (information only), 1 problems found, 2 could not audit.\n\n\
Findings are grouped by severity (critical, error, warning, info); each names the image and\n\
layer it belongs to and the ctr commands that fix it. The class names (`layer-file-truncated`,\n\
`blob-digest-mismatch`, ...) are stable: see docs/audit.md.\n\n\
Examples:\n  ctrwatch audit\n  ctrwatch audit --root /var/lib/rancher/k3s/agent/containerd --image docker.io/rancher/mirrored-pause:3.6\n  \
ctrwatch audit --content-only --json | jq '.findings[] | select(.severity == \"critical\")'\n  \
ctrwatch audit --since-watch      # who last touched each damaged file (from `ctrwatch run`'s history)";

/// Options of `audit`.
#[derive(clap::Args)]
struct AuditArgs {
    /// The containerd root to audit (repeatable). Default: every containerd instance found on
    /// the node (see `ctrwatch roots`), e.g. /var/lib/containerd.
    #[arg(long = "root", value_name = "DIR")]
    roots: Vec<PathBuf>,
    /// Only this image (repeatable; its name as `ctr images ls` shows it, any namespace) and
    /// its content and layers.
    #[arg(long = "image", value_name = "NAME")]
    images: Vec<String>,
    /// Only this snapshot (repeatable): its directory id (`snapshots/<id>`), snapshotter key or
    /// chainID.
    #[arg(long = "snapshot", value_name = "ID|KEY")]
    snapshots: Vec<String>,
    /// Only the content store: blob digests and sizes, orphans, ingests.
    #[arg(long, conflicts_with = "layers_only")]
    content_only: bool,
    /// Only the layer replay: each layer's tar against its snapshot directory.
    #[arg(long)]
    layers_only: bool,
    /// One JSON document per audited root instead of the report.
    #[arg(long)]
    json: bool,
    /// Threads for hashing and replay (default: one per CPU).
    #[arg(long, default_value_t = 0, value_name = "N")]
    threads: usize,
    /// Name who last touched each damaged path, from the history store of `ctrwatch run`.
    #[arg(long)]
    since_watch: bool,
    /// The history database read by --since-watch.
    #[arg(long, default_value_os_t = store::default_path(), value_name = "FILE")]
    store: PathBuf,
    /// No progress bar (it is drawn on stderr only when stderr is a terminal).
    #[arg(long)]
    no_progress: bool,
}

/// Options shared by `watch` and `run`.
#[derive(clap::Args, Clone)]
struct WatchArgs {
    /// A directory to watch (repeatable). It may be a symlink or a bind mount, and need not
    /// exist yet. Default: the usual containerd and k3s locations plus every containerd
    /// instance found on the node (see `ctrwatch roots`).
    #[arg(long = "root", value_name = "DIR")]
    roots: Vec<PathBuf>,
    /// One JSON object per line instead of readable lines.
    #[arg(long)]
    json: bool,
    /// Kernel ring buffer size in MiB (a power of two). Larger absorbs longer bursts.
    #[arg(long, default_value_t = 16, value_name = "MIB", value_parser = ring_buffer_mib)]
    ring_buffer_mb: u32,
    /// Seconds between re-resolving the roots (new symlinks, bind mounts, roots created
    /// later).
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    root_refresh: u64,
    /// An executable trusted to write under containerd roots (repeatable): its events get the
    /// verdict `owner`, not `foreign`.
    #[arg(long = "trust-exe", value_name = "PATH")]
    trust_exes: Vec<PathBuf>,
    /// A systemd unit whose processes are trusted to write under containerd roots
    /// (repeatable), e.g. `my-cleanup.service`.
    #[arg(long = "trust-unit", value_name = "UNIT")]
    trust_units: Vec<String>,
    /// Also mask what this regular expression matches in each command-line argument
    /// (repeatable): the match becomes `***`, or only its first capture group if it has one,
    /// e.g. `--mask-arg 'sk-[A-Za-z0-9]+'` or `--mask-arg '--vault-key=(.*)'`. Adds to the
    /// built-in rules (passwords, tokens, keys, URL credentials...: docs/operations.md).
    /// Masking happens at capture: neither the output nor the history holds the secret.
    #[arg(long = "mask-arg", value_name = "REGEX", value_parser = mask_pattern)]
    mask_args: Vec<watcher::secrets::Pattern>,
    /// Do not apply the built-in masking rules (only --mask-arg patterns).
    #[arg(long)]
    no_default_masks: bool,
    /// Which kernel hooks to use: `auto` (the default: the richest the kernel accepts),
    /// `tracepoint` (syscall tracepoints only), `fentry` (refused at the start when the
    /// kernel refuses fentry programs: `ctrwatch probe` says). In this version every
    /// operation is still captured through syscall tracepoints; fentry is probed and reported
    /// (docs/kernels.md). Overrides `[watch] backend`.
    #[arg(long, default_value = "auto", value_name = "BACKEND", value_parser = backend_arg)]
    backend: ctrwatch_config::Backend,
    /// Protect mode (BPF LSM kernels only): `off` (the default) watches only; `enforce`
    /// denies, with EPERM, a foreign process's unlink, rename, truncate, open for writing,
    /// setxattr and removexattr inside the content store's blobs, containerd's metadata
    /// databases and the layers committed when the daemon starts (never blocked: the daemon,
    /// the trusted executables, each discovered containerd's executable wherever it is
    /// installed (k3s, rke2) and the shims and runc beside it, and containerd, its shim and
    /// runc in /usr; each trusted executable is logged); `dry-run` runs the same checks and
    /// blocks nothing (a denied call is recorded with its EPERM result; denials and
    /// would-denials are not events of their own yet). Where BPF LSM is not usable (`ctrwatch probe`), dry-run and enforce start
    /// watch-only and say so in the log (and, with `run`, in `status`, the
    /// `ctrwatch_protect_active` metric and a `protect-unavailable` alert). Overrides
    /// `[watch] protect`; a reload does not change it (restart-only).
    #[arg(long, default_value = "off", value_name = "MODE", value_parser = protect_arg)]
    protect: ctrwatch_config::ProtectMode,
}

/// Checks a `--protect` name.
fn protect_arg(s: &str) -> Result<ctrwatch_config::ProtectMode, String> {
    ctrwatch_config::ProtectMode::from_name(s).ok_or_else(|| {
        format!(
            "{}: not a protect mode; use off, dry-run or enforce",
            ctrwatch_event::escape(s)
        )
    })
}

/// Checks a `--backend` name.
fn backend_arg(s: &str) -> Result<ctrwatch_config::Backend, String> {
    match ctrwatch_config::Backend::from_name(s) {
        Some(ctrwatch_config::Backend::Lsm) => {
            Err("lsm: this ctrwatch has no LSM programs yet; use auto, tracepoint or fentry".into())
        }
        Some(b) => Ok(b),
        None => Err(format!(
            "{}: not a backend; use auto, tracepoint or fentry",
            ctrwatch_event::escape(s)
        )),
    }
}

/// Checks and compiles a `--mask-arg` pattern.
fn mask_pattern(s: &str) -> Result<watcher::secrets::Pattern, String> {
    watcher::secrets::pattern(s).map_err(|e| match e {
        watcher::secrets::MaskError::BadPattern { source, .. } => {
            format!("not a valid regular expression: {source}")
        }
    })
}

/// Options shared by the query commands.
#[derive(clap::Args)]
struct PathArgs {
    /// The history database.
    #[arg(long, default_value_os_t = store::default_path(), value_name = "FILE")]
    store: PathBuf,
    /// Only events at or after this time: a duration ago (90s, 2h, 3days) or an RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only events at or before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// At most this many events (newest first). At least 1; a number larger than the store
    /// holds (however large) shows every event.
    #[arg(long, default_value_t = 1000, value_parser = limit_arg)]
    limit: usize,
    /// Match PATH only as a host path (`host`), only inside snapshots (`inner`), or both.
    #[arg(long = "match", value_enum, default_value_t = MatchArg::Auto)]
    matching: MatchArg,
    /// One JSON object per line, with the same fields as `watch --json` (instead of the
    /// table: one row per event, and under it what is known about it).
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MatchArg {
    Auto,
    Host,
    Inner,
}

impl PathArgs {
    fn window(&self) -> Window {
        Window {
            since: self.since.clone(),
            until: self.until.clone(),
            limit: Some(self.limit),
        }
    }
    fn matching(&self) -> PathMatch {
        match self.matching {
            MatchArg::Auto => PathMatch::Auto,
            MatchArg::Host => PathMatch::Host,
            MatchArg::Inner => PathMatch::Inner,
        }
    }
    fn output(&self) -> Output {
        Output { json: self.json }
    }
}

/// `--limit`: a positive number of events. 0 is refused rather than guessed at (some tools
/// read it as "none", others as "no limit"); a number beyond what fits is the same as the
/// largest one: no limit.
fn limit_arg(s: &str) -> Result<usize, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a number of events"));
    }
    match s.parse::<usize>() {
        Ok(0) => Err(
            "must be at least 1 (to see every event, give a large number, e.g. 1000000000)".into(),
        ),
        Ok(n) => Ok(n),
        // Only digits, so only too large: clamped.
        Err(_) => Ok(usize::MAX),
    }
}

fn store_group(s: &str) -> Result<store::StoreGroup, String> {
    store::StoreGroup::resolve(s)
}

fn ring_buffer_mib(s: &str) -> Result<u32, String> {
    let v: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of MiB"))?;
    if v == 0 || !v.is_power_of_two() || v > 1024 {
        return Err(format!(
            "{v} MiB: the ring buffer size must be a power of two between 1 and 1024 MiB"
        ));
    }
    Ok(v)
}

const STATUS_HELP: &str = "\
Reads the daemon's store (read-only, as the query commands; root or the store's group):
the status the daemon writes there every second with its heartbeat, the runs, the
store's size and oldest event, and the newest 5 alerts with each sink's delivery state.
The daemon runs when a process holds the store's writer lock and its status is fresh
(under 10 s old); a lock holder with an older status is reported as not responding.

Exit codes: 0 the daemon runs; 1 it does not run (or does not respond; the text says
when the last run ended, and whether cleanly), or another failure; 2 bad usage; 3 no
store; 4 store locked; 5 store damaged; 6 store schema of another version; 7 disk full;
8 this user may not read the store.

Examples:
  ctrwatch status
  ctrwatch status --json | jq .daemon.events
  ctrwatch status --store /var/lib/ctrwatch/events.db || systemctl status ctrwatch";

/// Where the packaged service pins its programs (`run --pin-dir`).
const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ctrwatch";

fn main() -> ExitCode {
    watcher::logging::install_panic_hook();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // `run` sets up its logger once its configuration file is read (the file's log_level).
    match cli.command {
        Command::Run { .. } => {}
        Command::Watch { .. } => watcher::logging::init(watcher::logging::DAEMON_FILTER),
        _ => watcher::logging::init(watcher::logging::COMMAND_FILTER),
    }
    let result = match cli.command {
        Command::Watch { watch } => {
            // `watch` reads no file: the flags over the built-in defaults.
            let given = given_in(&matches, "watch");
            settings::watch_options(watch, &given, &ctrwatch_config::Config::default())
                .and_then(run_watch)
        }
        run @ Command::Run { .. } => {
            let Some((flags, config)) = run_flags(run) else {
                return ExitCode::FAILURE;
            };
            // Which flags were given (on the command line or by their environment variable):
            // those win over the configuration file.
            let given = given_in(&matches, "run");
            // SIGHUP reads the same file again, with the same flags over it.
            let reload =
                settings::reloader(config.clone(), flags.clone(), given_ids(&matches, "run"));
            settings::load(config.as_deref())
                .and_then(|(file, loaded)| {
                    watcher::logging::init(&settings::log_filter(&file));
                    let options = settings::run_options(flags, &given, &file);
                    options.map(|o| RunOptions {
                        config_file: loaded,
                        reload: Some(reload),
                        ..o
                    })
                })
                .and_then(run_daemon)
        }
        Command::History { path, q } => {
            return query_result(queries::history(
                &q.store,
                &path,
                q.matching(),
                &q.window(),
                &q.output(),
            ));
        }
        Command::WhoDeleted {
            path,
            q,
            truncations,
            failed,
        } => {
            let opts = DeleteOptions {
                truncations,
                failed,
                ..DeleteOptions::new()
            };
            return query_result(queries::who_deleted(
                &q.store,
                &path,
                q.matching(),
                opts,
                &q.window(),
                &q.output(),
            ));
        }
        Command::Query { filter, q } => {
            return query_result(queries::query(&q.store, &filter, &q.window(), &q.output()));
        }
        Command::Gaps {
            store,
            since,
            until,
            json,
        } => {
            let w = Window {
                since,
                until,
                limit: None,
            };
            return query_result(queries::gaps(&store, &w, &Output { json }));
        }
        Command::Status { store, json } => {
            return match watcher::status::status(&store, json) {
                Ok(code) => code,
                Err(e) => query_result(Err(e)),
            };
        }
        Command::Alerts {
            store,
            since,
            limit,
            json,
        } => {
            let w = Window {
                since,
                until: None,
                limit: Some(limit),
            };
            return query_result(queries::alerts(&store, &w, &Output { json }));
        }
        Command::Alert {
            command: AlertCommand::Test { config, sink },
        } => return watcher::alerting::alert_test(&config, sink.as_deref()),
        Command::Audit { audit } => return run_audit(audit),
        Command::Config(ConfigCommand::Example) => write_stdout(ctrwatch_config::EXAMPLE),
        Command::Config(ConfigCommand::Check { file }) => return config_check(&file),
        Command::Generate { what } => generate(what),
        Command::Probe { json } => probe(json),
        Command::Unpin {
            pin_dir,
            if_stopping,
        } => unpin(&pin_dir, if_stopping.as_deref()),
        Command::Roots => {
            let found = containerd::discover_all(&containerd::DiscoveryEnv::system());
            let mut text = containerd::describe(&found);
            text.push_str("watched when no --root is given:\n");
            for r in watch::roots_of(&found) {
                text.push_str(&format!("  {}\n", ctrwatch_event::escape_path(&r)));
            }
            write_stdout(&text)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            watcher::logging::print_error(&watcher::logging::error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// How long `unpin --if-stopping` waits for the pin directory's lock when the unit is
/// stopping: its daemon has exited when `ExecStopPost=` runs, so a lock still held is another
/// daemon's (or one in its last instants); longer than that, it is refused.
const UNPIN_STOPPING_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `ctrwatch unpin`: removes every pin set in `pin_dir` (the directory itself stays); with
/// `if_stopping`, only when systemd is stopping that unit for good. Refused when the directory
/// is not on bpffs or others than root can change it, and while a daemon holds its lock.
fn unpin(pin_dir: &std::path::Path, if_stopping: Option<&str>) -> anyhow::Result<()> {
    use watcher::kernel::pins::{PinDirFd, PinError};
    let mut lock_wait = std::time::Duration::ZERO;
    if let Some(unit) = if_stopping {
        lock_wait = UNPIN_STOPPING_LOCK_WAIT;
        let shown_unit = ctrwatch_event::escape(unit);
        let shown_dir = ctrwatch_event::escape_path(pin_dir);
        match watcher::service_job::query(unit, watcher::service_job::QUERY_TIMEOUT) {
            Ok(job) if job.stays_stopped() => {
                write_stdout(&format!(
                    "{shown_unit} has a stop job queued: it stays stopped, removing the pins\n"
                ))?;
            }
            Ok(job) => {
                let why = match job {
                    watcher::service_job::UnitJob::None => {
                        "no job queued (Restart= starts it again)".to_string()
                    }
                    watcher::service_job::UnitJob::Restart => "a restart job queued".to_string(),
                    watcher::service_job::UnitJob::Other(kind) => {
                        format!("a {} job queued", ctrwatch_event::escape(&kind))
                    }
                    watcher::service_job::UnitJob::Stop => "a stop job queued".to_string(),
                };
                return write_stdout(&format!(
                    "{shown_unit} has {why}: keeping the pins in {shown_dir} for the next \
                     daemon to adopt\n"
                ));
            }
            Err(e) => {
                log::warn!(
                    "cannot tell whether {shown_unit} is stopping or restarting ({e}): keeping \
                     the pins in {shown_dir}; `ctrwatch unpin --pin-dir {shown_dir}` removes them"
                );
                return Ok(());
            }
        }
    }
    let shown = ctrwatch_event::escape_path(pin_dir);
    let context = || format!("not removing the pins in {shown}");
    let dir = match PinDirFd::open(pin_dir) {
        Ok(dir) => dir,
        Err(PinError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return write_stdout(&format!("no pins in {shown}\n"));
        }
        Err(e) => return Err(e).with_context(context),
    };
    dir.check_safe().with_context(context)?;
    // Held until the end: a daemon starting meanwhile waits for it (pins::lock).
    dir.lock(lock_wait).with_context(context)?;
    let removed = dir
        .remove_sets(None)
        .with_context(|| format!("removing the pins in {shown}"))?;
    if removed.is_empty() {
        write_stdout(&format!("no pins in {shown}\n"))
    } else {
        write_stdout(&format!(
            "removed the pinned programs and maps in {shown}: {}\n",
            removed.join(", ")
        ))
    }
}

/// `run`'s flags at their defaults: `config check` judges a file as `ctrwatch run --config
/// FILE` would use it, with no other flag.
fn default_run_flags() -> anyhow::Result<settings::RunFlags> {
    run_flags(Cli::try_parse_from(["ctrwatch", "run"])?.command)
        .map(|(flags, _config)| flags)
        .ok_or_else(|| anyhow::anyhow!("`run` parsed as another command"))
}

/// `run`'s flags as the settings take them, and its `--config`; None for another command.
fn run_flags(command: Command) -> Option<(settings::RunFlags, Option<PathBuf>)> {
    let Command::Run {
        watch,
        store,
        retention_days,
        retention_mb,
        print,
        store_group,
        store_lock_wait,
        config,
        metrics_listen,
        pin_dir,
    } = command
    else {
        return None;
    };
    let flags = settings::RunFlags {
        watch,
        store,
        retention_days,
        retention_mb,
        store_group,
        store_lock_wait,
        print,
        metrics_listen,
        pin_dir,
    };
    Some((flags, config))
}

/// `ctrwatch config check`: the report on stdout when valid, the problems on stderr when not.
/// Valid means `run` would start with it: after the file's own checks, the ones `run` makes
/// (the file's owner and mode when run as root, the backend, the store group, the sinks'
/// files), the same code a reload runs.
fn config_check(file: &std::path::Path) -> ExitCode {
    let checked = match config_cmd::check(file) {
        config_cmd::Checked::Valid(report) => {
            match default_run_flags()
                .and_then(|flags| settings::resolve(Some(file), flags, &|_| false))
            {
                Ok(_) => config_cmd::Checked::Valid(report),
                Err(e) => config_cmd::Checked::Invalid(format!(
                    "{}\n{}: invalid (`ctrwatch run` would refuse it)\n",
                    watcher::logging::error_text(&e),
                    ctrwatch_event::escape_path(file)
                )),
            }
        }
        other => other,
    };
    match checked {
        config_cmd::Checked::Valid(report) => match write_stdout(&report) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ctrwatch: error: {}", watcher::logging::error_text(&e));
                ExitCode::FAILURE
            }
        },
        config_cmd::Checked::Invalid(problems) => {
            eprint!("{problems}");
            ExitCode::from(config_cmd::INVALID)
        }
        config_cmd::Checked::Unreadable(problem) => {
            eprint!("ctrwatch: error: {problem}");
            ExitCode::FAILURE
        }
    }
}

/// Whether a flag of `subcommand` was given on the command line or by its environment
/// variable (not left at its default): given flags win over the configuration file.
fn given_in<'a>(matches: &'a clap::ArgMatches, subcommand: &str) -> impl Fn(&str) -> bool + 'a {
    let sub = matches.subcommand_matches(subcommand);
    move |id: &str| {
        sub.and_then(|m| m.value_source(id))
            .is_some_and(|s| matches!(s, ValueSource::CommandLine | ValueSource::EnvVariable))
    }
}

/// The ids of the arguments of `subcommand` given on the command line or by environment (as
/// [`given_in`] answers for one).
fn given_ids(matches: &clap::ArgMatches, subcommand: &str) -> std::collections::BTreeSet<String> {
    let given = given_in(matches, subcommand);
    matches
        .subcommand_matches(subcommand)
        .map(|m| {
            m.ids()
                .map(|id| id.as_str().to_owned())
                .filter(|id| given(id))
                .collect()
        })
        .unwrap_or_default()
}

fn query_result(r: Result<(), queries::QueryError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(queries::QueryError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ctrwatch: error: {e}");
            e.exit_code()
        }
    }
}

fn run_daemon(opts: RunOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = runtime.block_on(daemon::run(opts));
    // A reload still reading a file that never answers (a sink's CA file on a FIFO) must not
    // hold up the exit: everything captured is stored by now.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run_watch(opts: WatchOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut sink = StdoutSink::new(opts.json);
    runtime
        .block_on(watch::run(opts, &mut sink))
        .map(|_stopped_at| ())
}

/// Prints `text` to stdout; a closed pipe (`ctrwatch probe | head`) is an error the caller
/// treats as success, not a panic as with `print!`.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Man pages and completions from the CLI definition itself, so they always match `--help`.
fn generate(what: Generate) -> anyhow::Result<()> {
    use clap::CommandFactory as _;
    match what {
        Generate::Man { dir } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating {}", ctrwatch_event::escape_path(&dir)))?;
            clap_mangen::generate_to(Cli::command(), &dir).with_context(|| {
                format!("writing man pages in {}", ctrwatch_event::escape_path(&dir))
            })
        }
        Generate::Completions { shell } => {
            // Into memory first: clap_complete panics when its writer fails.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ctrwatch", &mut script);
            write_stdout(&String::from_utf8_lossy(&script))
        }
    }
}

fn probe(json: bool) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let caps = Capabilities::probe();
    if json {
        #[derive(serde::Serialize)]
        struct ProbeJson<'a> {
            capabilities: &'a Capabilities,
            backend: Option<&'static str>,
            /// Why the struct offsets the programs need cannot be read from BTF (None: they
            /// can; the text output lists them).
            offsets_error: Option<String>,
        }
        let out = ProbeJson {
            capabilities: &caps,
            backend: caps.best_backend().map(|b| b.name()),
            offsets_error: btf_offsets::kernel_offsets().err().map(|e| e.to_string()),
        };
        return write_stdout(&(serde_json::to_string(&out)? + "\n"));
    }
    let mut text = String::new();
    let _ = writeln!(text, "{}", caps.summary());
    match caps.best_backend() {
        Some(b) => {
            let _ = writeln!(text, "backend: {}", b.name());
        }
        None => text.push_str("backend: none usable\n"),
    }
    for family in [&caps.fentry, &caps.lsm] {
        let _ = writeln!(
            text,
            "hook family {}: {} ({})",
            family.family,
            family.state.name(),
            family.detail
        );
    }
    let btf = btf_offsets::KernelBtf::open(std::path::Path::new(btf_offsets::VMLINUX_BTF));
    for (_, prototype) in watcher::kernel::backend::fentry_target_prototypes(btf.as_ref()) {
        let _ = writeln!(text, "fentry target {prototype}");
    }
    for hook in &caps.rename_target_hooks {
        let _ = writeln!(
            text,
            "rename target hook {}: {} ({})",
            hook.name,
            if hook.available {
                "available"
            } else {
                "unavailable"
            },
            hook.note
        );
    }
    let offsets = btf_offsets::kernel_offsets().context("kernel struct offsets from BTF")?;
    text.push_str("kernel struct offsets from BTF (bytes):\n");
    for line in btf_offsets::describe_offsets(&offsets) {
        let _ = writeln!(text, "  {line}");
    }
    write_stdout(&text)
}

/// The history store as the audit's `--since-watch` asks it: the newest operation on a host
/// path.
struct StoreHistory(store::Store);

impl watcher::audit::report::History for StoreHistory {
    fn last_touched(
        &self,
        host_path: &[u8],
    ) -> Result<Option<ctrwatch_event::FileEvent>, watcher::audit::report::HistoryError> {
        let q = store::PathQuery {
            matching: store::PathMatch::Host,
            limit: Some(1),
            ..store::PathQuery::new(host_path)
        };
        Ok(self.0.history(&q)?.into_iter().next())
    }
}

/// `ctrwatch audit`: exit 0 clean, 1 findings, 2 could not audit (any root).
fn run_audit(args: AuditArgs) -> ExitCode {
    use watcher::audit::{self, Options, Progress};
    let found = containerd::discover_all(&containerd::DiscoveryEnv::system());
    if args.roots.is_empty() {
        // Why a root the operator expected is not audited.
        containerd::log_refusals(&found.refused);
    }
    let instances = found.instances;
    let layouts: Vec<containerd::RootLayout> = if args.roots.is_empty() {
        instances
            .iter()
            .filter(|i| i.exists && i.root.join("io.containerd.metadata.v1.bolt").is_dir())
            .map(|i| i.layout())
            .collect()
    } else {
        args.roots
            .iter()
            .map(|r| {
                let canon = std::fs::canonicalize(r).unwrap_or_else(|_| r.clone());
                instances
                    .iter()
                    .find(|i| i.root == canon)
                    .map(|i| i.layout())
                    .unwrap_or_else(|| containerd::RootLayout::new(r))
            })
            .collect()
    };
    if layouts.is_empty() {
        eprintln!(
            "ctrwatch: error: no containerd root found on this node (see `ctrwatch roots`); give one with --root DIR"
        );
        return ExitCode::from(2);
    }
    let mut worst = 0u8;
    for layout in layouts {
        let root = layout.root.clone();
        let opts = Options {
            layout,
            images: args.images.clone(),
            snapshots: args.snapshots.clone(),
            content_only: args.content_only,
            layers_only: args.layers_only,
            threads: args.threads,
        };
        // `--since-watch`: the history store, opened here (read-only) and handed to the
        // audit's report, which never opens SQLite itself.
        let history = match args
            .since_watch
            .then(|| store::Store::open_read_only(&args.store))
            .transpose()
        {
            Ok(h) => h.map(StoreHistory),
            Err(e) => {
                eprintln!(
                    "ctrwatch: error: cannot audit {}: history store {}: {e}",
                    ctrwatch_event::escape_path(&root),
                    args.store.display()
                );
                worst = 2;
                continue;
            }
        };
        let progress = if args.no_progress {
            Progress::hidden()
        } else {
            Progress::for_stderr()
        };
        let audited = audit::run(&opts, progress).and_then(|mut report| {
            if let Some(h) = &history {
                report.attach_history(&args.store, h)?;
            }
            Ok(report)
        });
        match audited {
            Ok(report) => {
                let out = if args.json {
                    match serde_json::to_string(&report) {
                        Ok(s) => s + "\n",
                        Err(e) => {
                            eprintln!("ctrwatch: error: cannot encode the report: {e}");
                            worst = 2;
                            continue;
                        }
                    }
                } else {
                    audit::report::render_text(&report)
                };
                if let Err(e) = write_stdout(&out) {
                    if is_broken_pipe(&e) {
                        return ExitCode::from(worst.max(report.exit_code() as u8));
                    }
                    eprintln!(
                        "ctrwatch: error: writing the report: {}",
                        watcher::logging::error_text(&e)
                    );
                    return ExitCode::from(2);
                }
                worst = worst.max(report.exit_code() as u8);
            }
            Err(e) => {
                eprintln!(
                    "ctrwatch: error: cannot audit {}: {e}",
                    ctrwatch_event::escape_path(&root)
                );
                worst = 2;
            }
        }
    }
    ExitCode::from(worst)
}
