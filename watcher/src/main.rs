//! `ctrwatch`: who changed containerd's image storage, when, and was it containerd?

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use watcher::{
    containerd,
    daemon::{self, RunOptions},
    kernel::{btf_offsets, capabilities::Capabilities},
    queries::{self, Output, QueryArgs, Window},
    store::{self, DeleteOptions, PathMatch, StoreOptions},
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

#[derive(Subcommand)]
enum Command {
    /// Stream file operations under the roots to stdout until interrupted (Ctrl-C / SIGTERM).
    #[command(
        after_help = "Examples:\n  ctrwatch watch\n  ctrwatch watch --root /var/lib/containerd --json | jq .\n\nWith no --root, watches /var/lib/containerd /run/containerd\n/var/lib/rancher/k3s/agent/containerd /run/k3s/containerd and every containerd\ninstance that `ctrwatch roots` finds."
    )]
    Watch {
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Run as the daemon: watch, and keep every event, loss record and start/stop in the
    /// history store (what the systemd service runs).
    #[command(
        after_help = "The store is SQLite (WAL): queries run while the daemon writes.\n\
Retention prunes the oldest events first and records that it did (see `ctrwatch gaps`)."
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
        /// Also print events to stdout (readable lines, or JSON with --json).
        #[arg(long)]
        print: bool,
    },
    /// Every recorded operation on a file, newest first: who, when, with what result.
    #[command(
        after_help = "PATH is a host path, or a path inside an image or container (/pause,\n\
/usr/lib/x86_64-linux-gnu/libjq.so.1): then it matches that file in every snapshot.\n\n\
Examples:\n  ctrwatch history /pause\n  ctrwatch history /var/lib/containerd/io.containerd.content.v1.content/ingest --since 2h"
    )]
    History {
        /// A host path, or a path inside an image or container (e.g. /pause).
        path: PathBuf,
        #[command(flatten)]
        q: PathArgs,
    },
    /// Who deleted (unlinked, removed, renamed away, whited out) a file, newest first.
    #[command(
        after_help = "Examples:\n  ctrwatch who-deleted /pause\n  ctrwatch who-deleted /usr/lib/x86_64-linux-gnu/libjq.so.1 --truncations"
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
        after_help = "String filters match exactly, or as globs when they contain * ? [.\n\n\
Examples:\n  ctrwatch query --op unlink --op rmdir --since 1day\n  ctrwatch query --path '/var/lib/containerd/**/fs/pause' --json\n  ctrwatch query --exe '*/bash' --unit cleanup.service"
    )]
    Query {
        /// Operation (repeatable): create, open_write, truncate, modify, fallocate, unlink,
        /// rmdir, rename, link, symlink, mknod, mkdir, setxattr, removexattr, chmod, chown.
        #[arg(long = "op", value_name = "OP")]
        ops: Vec<String>,
        /// Path glob: `*` within a component, `**` across components.
        #[arg(long, value_name = "GLOB")]
        path: Option<PathBuf>,
        #[arg(long)]
        pid: Option<u32>,
        #[arg(long)]
        comm: Option<String>,
        #[arg(long)]
        exe: Option<String>,
        /// systemd unit, e.g. containerd.service.
        #[arg(long)]
        unit: Option<String>,
        /// Container id (or a prefix of it).
        #[arg(long)]
        container: Option<String>,
        /// `ok` or an errno name (ENOENT...).
        #[arg(long)]
        result: Option<String>,
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
    /// Show what this kernel supports and which hooks ctrwatch would use.
    Probe,
    /// Show the containerd instances found on this node, why, and the directories watched
    /// when no --root is given.
    Roots,
}

/// Options shared by `watch` and `run`.
#[derive(clap::Args)]
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
}

impl WatchArgs {
    fn options(self) -> WatchOptions {
        WatchOptions {
            roots: self.roots,
            json: self.json,
            ring_buffer_bytes: self.ring_buffer_mb * 1024 * 1024,
            root_refresh: Duration::from_secs(self.root_refresh.max(1)),
            process_grace: Duration::from_secs(120),
            trust: watcher::containerd::attribution::Trust {
                exes: self.trust_exes,
                units: self.trust_units,
            },
        }
    }
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
    /// At most this many events (newest first).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Match PATH only as a host path (`host`), only inside snapshots (`inner`), or both.
    #[arg(long = "match", value_enum, default_value_t = MatchArg::Auto)]
    matching: MatchArg,
    /// One JSON object per line, with the same fields as `watch --json`.
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

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Watch { watch } => run_watch(watch.options()),
        Command::Run {
            watch,
            store,
            retention_days,
            retention_mb,
            print,
        } => run_daemon(RunOptions {
            watch: watch.options(),
            store,
            store_options: StoreOptions {
                retention_age: (retention_days > 0)
                    .then(|| Duration::from_secs(retention_days * 24 * 3600)),
                retention_bytes: (retention_mb > 0).then(|| retention_mb * 1024 * 1024),
                ..StoreOptions::default()
            },
            echo: print,
        }),
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
        Command::Query {
            ops,
            path,
            pid,
            comm,
            exe,
            unit,
            container,
            result,
            q,
        } => {
            let args = QueryArgs {
                ops,
                path,
                pid,
                comm,
                exe,
                unit,
                container,
                result,
                window: q.window(),
            };
            return query_result(queries::query(&q.store, &args, &q.output()));
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
        Command::Probe => probe(),
        Command::Roots => {
            let instances = containerd::discover(&containerd::DiscoveryEnv::system());
            print!("{}", containerd::describe(&instances));
            println!("watched when no --root is given:");
            for r in watch::discovered_roots() {
                println!("  {}", r.display());
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("ctrwatch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
    runtime.block_on(daemon::run(opts))
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
    runtime.block_on(watch::run(opts, &mut sink))
}

fn probe() -> anyhow::Result<()> {
    let caps = Capabilities::probe();
    println!("{}", caps.summary());
    match caps.best_backend() {
        Some(b) => println!("backend: {}", b.name()),
        None => println!("backend: none usable"),
    }
    let offsets = btf_offsets::kernel_offsets().context("kernel struct offsets from BTF")?;
    println!("kernel struct offsets from BTF: {offsets:?}");
    Ok(())
}
