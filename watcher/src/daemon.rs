//! `ctrwatch run`: the daemon. Watches like `watch`, and keeps every event, every loss record
//! and its own start/stop in the history store.
//!
//! The ring buffer is drained on the watch loop; SQLite writes happen on one writer thread fed
//! through a bounded queue, so a slow disk never stalls draining. When the queue is full the
//! event is counted, and the count becomes a `loss` record (kind `store_queue`): the history
//! says where it is incomplete instead of hiding it.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::mpsc::{
        Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;

mod bench;
pub use bench::{PipelineResult, bench_pipeline};

use crate::{
    event::{Clock, FileEvent, LossEvent, monotonic_ns},
    store::{DaemonStore, StoreOptions},
    watch::{self, Sink, StdoutSink, WatchOptions},
};

/// Events waiting for the writer: absorbs the writer's pauses (commits, checkpoints) under a
/// flood, ~0.6 s of 100 000 events/s. A queued event with its process and containerd
/// descriptions takes about 2.5 KiB (measured: 262 144 of them held ~650 MB), so a full
/// queue costs ~160 MB.
const QUEUE: usize = 65_536;
/// The writer commits at least this often (events are acknowledged when committed): a crash
/// loses at most the last second, which the next start records as downtime from the last
/// heartbeat (also every second). Under a flood, fewer and larger commits are cheaper: every
/// commit rewrites the newest segment's index pages it touched, nearly all of them.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// ...or when this many events are waiting in the open transaction (also the store
/// benchmark's batch).
pub(crate) const COMMIT_BATCH: usize = 100_000;
/// Messages the writer takes from its queue between two looks at the clock.
const BURST: usize = 1024;
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const PRUNE_EVERY: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub watch: WatchOptions,
    pub store: PathBuf,
    pub store_options: StoreOptions,
    /// Also print events to stdout, as `watch` does.
    pub echo: bool,
}

enum Msg {
    Event(Box<FileEvent>),
    Loss(LossEvent),
}

/// The sink that hands records to the writer thread: the daemon's path from the ring buffer to
/// disk (also driven by the pipeline benchmark, `daemon::bench`).
pub struct StoreSink {
    tx: Option<SyncSender<Msg>>,
    /// Events dropped because the writer's queue was full, not yet reported.
    queue_lost: u64,
    queue_lost_since: Option<u64>,
    /// Events dropped at the queue since the start, reported or not.
    queue_lost_total: u64,
    echo: Option<StdoutSink>,
    clock: Clock,
    writer: Option<JoinHandle<anyhow::Result<()>>>,
}

impl StoreSink {
    /// Starts the writer thread on a store whose run has begun ([`DaemonStore::begin_run`]).
    pub fn start(store: DaemonStore, echo: Option<StdoutSink>) -> anyhow::Result<StoreSink> {
        let (tx, rx) = sync_channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(store, rx))
            .context("starting the store writer")?;
        Ok(StoreSink {
            tx: Some(tx),
            queue_lost: 0,
            queue_lost_since: None,
            queue_lost_total: 0,
            echo,
            clock: Clock::now(),
            writer: Some(writer),
        })
    }

    /// Events dropped because the writer's queue was full, since the start.
    pub fn queue_lost_total(&self) -> u64 {
        self.queue_lost_total
    }

    fn send(&mut self, msg: Msg, block: bool) -> std::io::Result<()> {
        let Some(tx) = &self.tx else {
            return Err(std::io::Error::other("the store writer has stopped"));
        };
        let result = if block {
            tx.send(msg).map_err(|_| TrySendError::Disconnected(()))
        } else {
            tx.try_send(msg).map_err(|e| match e {
                TrySendError::Full(_) => TrySendError::Full(()),
                TrySendError::Disconnected(_) => TrySendError::Disconnected(()),
            })
        };
        match result {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(())) => {
                self.queue_lost += 1;
                self.queue_lost_total += 1;
                self.queue_lost_since.get_or_insert_with(monotonic_ns);
                Ok(())
            }
            Err(TrySendError::Disconnected(())) => {
                Err(std::io::Error::other("the store writer has stopped"))
            }
        }
    }

    /// Reports events dropped at the queue as a loss record.
    fn report_queue_loss(&mut self) -> std::io::Result<()> {
        if self.queue_lost == 0 {
            return Ok(());
        }
        let now = monotonic_ns();
        let from = self.queue_lost_since.take().unwrap_or(now);
        let loss = LossEvent {
            time: self.clock.rfc3339(now),
            op: "loss",
            from: self.clock.rfc3339(from),
            to: self.clock.rfc3339(now),
            lost: self.queue_lost,
            kinds: BTreeMap::from([("store_queue", self.queue_lost)]),
        };
        self.queue_lost = 0;
        log::warn!(
            "the store writer fell behind: {} events not stored",
            loss.lost
        );
        if let Some(echo) = &mut self.echo {
            echo.loss(&loss)?;
        }
        self.send(Msg::Loss(loss), true)
    }

    /// Stops the writer after it has stored everything queued.
    pub fn close(mut self) -> anyhow::Result<()> {
        self.report_queue_loss()?;
        drop(self.tx.take());
        match self.writer.take() {
            Some(w) => w
                .join()
                .map_err(|_| anyhow::anyhow!("the store writer panicked"))?,
            None => Ok(()),
        }
    }
}

impl Sink for StoreSink {
    fn file_event(&mut self, ev: Box<FileEvent>) -> std::io::Result<()> {
        if let Some(echo) = &mut self.echo {
            echo.file_event(ev.clone())?;
        }
        self.send(Msg::Event(ev), false)
    }
    fn loss(&mut self, ev: &LossEvent) -> std::io::Result<()> {
        if let Some(echo) = &mut self.echo {
            echo.loss(ev)?;
        }
        self.send(Msg::Loss(ev.clone()), true)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.report_queue_loss()?;
        if let Some(echo) = &mut self.echo {
            echo.flush()?;
        }
        Ok(())
    }
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    // Creates the store's directory with its mode, waits for another writer's lock, moves a
    // corrupt store aside, and on a full disk counts until it can write.
    let mut store = DaemonStore::open(&opts.store, opts.store_options.clone())
        .with_context(|| format!("opening the event store {}", opts.store.display()))?;
    if let Some(gap) = store
        .begin_run(SystemTime::now())
        .context("recording the daemon start")?
    {
        log::warn!("the previous run did not stop cleanly: downtime recorded as {gap:?}");
    }
    let mut sink = StoreSink::start(store, opts.echo.then(|| StdoutSink::new(opts.watch.json)))?;
    eprintln!("ctrwatch: storing history in {}", opts.store.display());
    let watched = watch::run(opts.watch, &mut sink).await;
    let closed = sink.close();
    watched?;
    closed
}

/// The writer thread: appends, commits in batches, heartbeats, prunes; on the end of the
/// queue commits what is left and records a clean stop.
fn write_loop(mut store: DaemonStore, rx: Receiver<Msg>) -> anyhow::Result<()> {
    // Stored events are freed on another thread: each is a tree of ~20 allocations made by
    // the watch loop, and under a flood freeing them was ~7 % of the writer's time, the
    // daemon's bottleneck. Handed over a burst at a time; if that thread is gone or behind,
    // the writer frees them itself.
    let (free_tx, free_rx) = sync_channel::<Vec<Box<FileEvent>>>(4);
    let freer = std::thread::Builder::new()
        .name("store-free".into())
        .spawn(move || free_rx.into_iter().for_each(drop))
        .ok();
    let mut stored: Vec<Box<FileEvent>> = Vec::with_capacity(BURST);
    let mut warn = Warner::default();
    let mut pending = 0usize;
    let mut last_commit = Instant::now();
    let mut last_heartbeat = Instant::now();
    // Prune soon after start (a store may have aged while the daemon was down).
    let mut last_prune = Instant::now() - PRUNE_EVERY + Duration::from_secs(5);
    loop {
        // One message (or the timeout), then whatever else is queued, up to a burst: the
        // clocks below are read once per burst, not once per event.
        let mut closed = false;
        let mut next = Some(rx.recv_timeout(COMMIT_EVERY));
        let mut taken = 0;
        while let Some(msg) = next.take() {
            match msg {
                Ok(Msg::Event(ev)) => {
                    warn.report(store.append_event(&ev), "storing an event");
                    stored.push(ev);
                    pending += 1;
                }
                Ok(Msg::Loss(loss)) => {
                    warn.report(store.append_loss(&loss), "storing a loss record");
                    pending += 1;
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
            taken += 1;
            if taken >= BURST || pending >= COMMIT_BATCH {
                break;
            }
            next = match rx.try_recv() {
                Ok(msg) => Some(Ok(msg)),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => Some(Err(RecvTimeoutError::Disconnected)),
            };
        }
        if !stored.is_empty() {
            // Full or gone: the returned burst is dropped here.
            let _ = free_tx.try_send(std::mem::replace(&mut stored, Vec::with_capacity(BURST)));
        }
        if closed || pending >= COMMIT_BATCH || last_commit.elapsed() >= COMMIT_EVERY {
            if pending > 0 || store.unstored().is_some() {
                warn.report(store.flush().map(|_| ()), "committing events");
            }
            pending = 0;
            last_commit = Instant::now();
        }
        if closed {
            drop(free_tx);
            if let Some(t) = freer {
                let _ = t.join();
            }
            store
                .end_run(SystemTime::now())
                .context("recording the daemon stop")?;
            return Ok(());
        }
        if last_heartbeat.elapsed() >= HEARTBEAT_EVERY {
            warn.report(store.heartbeat(SystemTime::now()), "heartbeat");
            last_heartbeat = Instant::now();
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            match store.prune(SystemTime::now()) {
                Ok(Some(r)) => log::info!("retention: {r:?}"),
                Ok(None) => {}
                Err(e) => log::warn!("retention: {e}"),
            }
            last_prune = Instant::now();
        }
    }
}

/// Store errors on the write path are not fatal: a full disk degrades the store (it counts
/// what it could not keep and records the gap when space returns). They are logged at most
/// once per interval: a full disk would otherwise log once per event.
#[derive(Default)]
struct Warner {
    last: Option<Instant>,
    suppressed: u64,
}

impl Warner {
    const EVERY: Duration = Duration::from_secs(10);

    fn report<T>(&mut self, r: Result<T, crate::store::StoreError>, what: &str) {
        let Err(e) = r else { return };
        if self.last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            log::warn!("{what}: {e} ({} similar errors not shown)", self.suppressed);
        } else {
            log::warn!("{what}: {e}");
        }
        self.suppressed = 0;
        self.last = Some(Instant::now());
    }
}
