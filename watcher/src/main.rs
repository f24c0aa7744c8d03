//! `ctrwatch`: who changed containerd's image storage, when, and was it containerd?

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use watcher::{
    kernel::{btf_offsets, capabilities::Capabilities},
    watch::{self, DEFAULT_ROOTS, StdoutSink, WatchOptions},
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
        after_help = "Examples:\n  ctrwatch watch\n  ctrwatch watch --root /var/lib/containerd --json | jq .\n\nWith no --root, watches the default containerd and k3s locations:\n  /var/lib/containerd /run/containerd /var/lib/rancher/k3s/agent/containerd /run/k3s/containerd"
    )]
    Watch {
        /// A directory to watch (repeatable). It may be a symlink or a bind mount, and need not
        /// exist yet.
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
    },
    /// Show what this kernel supports and which hooks ctrwatch would use.
    Probe,
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
        Command::Watch {
            roots,
            json,
            ring_buffer_mb,
            root_refresh,
        } => {
            let roots = if roots.is_empty() {
                DEFAULT_ROOTS.iter().map(PathBuf::from).collect()
            } else {
                roots
            };
            let opts = WatchOptions {
                roots,
                json,
                ring_buffer_bytes: ring_buffer_mb * 1024 * 1024,
                root_refresh: Duration::from_secs(root_refresh.max(1)),
                process_grace: Duration::from_secs(120),
            };
            run_watch(opts)
        }
        Command::Probe => probe(),
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
