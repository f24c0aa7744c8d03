//! SIGHUP moves the metrics listener (`[metrics] listen`) without a restart: the real daemon,
//! real signals, real TCP on 127.0.0.1. A new address that cannot be bound refuses the reload
//! and the old listener goes on; a good one is served from then on, and the old one closes.
//! Needs root.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests: a failed expect is the test failing, with its message"
)]

use std::{
    ffi::{OsStr, OsString},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    time::Duration,
};

use serde_json::Value;
use tests::{Watcher, ctrwatch, temp_dir, write_config};

/// Generous: the machine running the tests may be loaded.
const DEADLINE: Duration = Duration::from_secs(60);

/// A port free on 127.0.0.1 now.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// `GET /metrics` at `addr`: the body, or why not.
fn scrape(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

fn serves(addr: SocketAddr) -> bool {
    scrape(addr).is_ok_and(|b| b.starts_with("HTTP/1.1 200") && b.contains("ctrwatch_"))
}

/// Waits until `done` holds, within [`DEADLINE`]; fails showing `seen()`.
fn until(what: &str, done: impl Fn() -> bool, seen: impl Fn() -> String) {
    tests::wait_until(what, DEADLINE, done, seen);
}

fn status(store: &Path) -> Value {
    let (_, out, _) = ctrwatch(&[
        OsStr::new("status"),
        OsStr::new("--store"),
        store.as_os_str(),
        OsStr::new("--json"),
    ]);
    serde_json::from_str(out.trim()).unwrap_or(Value::Null)
}

#[test]
fn a_reload_moves_the_metrics_listener_and_a_busy_address_is_refused() {
    tests::require_root();
    let base = temp_dir("reload-metrics");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir root");
    let store = base.join("store/events.db");
    let config = base.join("ctrwatch.toml");
    let listen = |addr: SocketAddr| format!("[metrics]\nlisten = \"{addr}\"\n");
    let first = free_addr();
    write_config(&config, &listen(first));
    let args: Vec<OsString> = vec![
        "run".into(),
        "--root".into(),
        root.clone().into(),
        "--store".into(),
        store.clone().into(),
        "--config".into(),
        config.clone().into(),
    ];
    let daemon = Watcher::start_command(&args);
    until(
        "the first address serves",
        || serves(first),
        || daemon.stderr(),
    );

    // An address in use: refused, the first one still serves, status says why.
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_addr = busy.local_addr().expect("addr");
    write_config(&config, &listen(busy_addr));
    daemon.signal(libc::SIGHUP);
    until(
        "the reload refused for the busy address",
        || {
            status(&store)["daemon"]["config_reload_error"]
                .as_str()
                .is_some_and(|e| e.contains(&busy_addr.to_string()))
        },
        || format!("{}\n{}", status(&store), daemon.stderr()),
    );
    assert!(
        serves(first),
        "the old listener stopped on a refused reload"
    );
    drop(busy);

    // A free one: served from then on; the first one closes.
    let second = free_addr();
    write_config(&config, &listen(second));
    daemon.signal(libc::SIGHUP);
    until(
        "the second address serves",
        || serves(second),
        || daemon.stderr(),
    );
    until(
        "the first address closed",
        || scrape(first).is_err(),
        || scrape(first).unwrap_or_default(),
    );
    // The status snapshot is written about once a second: the refusal clears there.
    until(
        "the refusal cleared in status",
        || status(&store)["daemon"]["config_reload_failed"].is_null(),
        || status(&store).to_string(),
    );
    let after = status(&store);
    assert!(
        after["daemon"]["config_restart_pending"]
            .as_array()
            .is_none_or(|k| k.is_empty()),
        "{after}"
    );
    daemon.stop();
    let _ = std::fs::remove_dir_all(base);
}

/// The listener moved to the same port on another address: 127.0.0.1:P to 0.0.0.0:P and back
/// (each bind is refused with EADDRINUSE while the other listens): the old one is closed
/// first and the new one served. When the new one cannot listen even then (another process
/// holds 127.0.0.2:P, which the wildcard covers), the reload is refused and the old listener
/// is back. On a daemon that binds the new address before closing the old, the first move is
/// refused.
#[test]
fn a_reload_moves_the_metrics_listener_to_the_same_port_on_another_address() {
    tests::require_root();
    let base = temp_dir("reload-metrics-port");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir root");
    let store = base.join("store/events.db");
    let config = base.join("ctrwatch.toml");
    let listen = |addr: SocketAddr| format!("[metrics]\nlisten = \"{addr}\"\n");
    let first = free_addr();
    let port = first.port();
    let wildcard: SocketAddr = format!("0.0.0.0:{port}").parse().expect("addr");
    let other: SocketAddr = format!("127.0.0.2:{port}").parse().expect("addr");
    write_config(&config, &listen(first));
    let args: Vec<OsString> = vec![
        "run".into(),
        "--root".into(),
        root.clone().into(),
        "--store".into(),
        store.clone().into(),
        "--config".into(),
        config.clone().into(),
    ];
    let mut daemon = Watcher::start_command(&args);
    until(
        "the first address serves",
        || serves(first),
        || daemon.stderr(),
    );
    let reloads = |n: usize| {
        until(
            &format!("{n} good reload(s)"),
            || {
                daemon
                    .stderr()
                    .matches("reloaded the configuration")
                    .count()
                    >= n
            },
            || daemon.stderr(),
        );
    };

    // To the wildcard on the same port: served on every loopback address.
    write_config(&config, &listen(wildcard));
    daemon.signal(libc::SIGHUP);
    reloads(1);
    until("served on 127.0.0.2", || serves(other), || daemon.stderr());
    assert!(serves(first), "{}", daemon.stderr());

    // Back to 127.0.0.1: 127.0.0.2 closes.
    write_config(&config, &listen(first));
    daemon.signal(libc::SIGHUP);
    reloads(2);
    until(
        "127.0.0.2 closed",
        || scrape(other).is_err(),
        || daemon.stderr(),
    );
    assert!(serves(first), "{}", daemon.stderr());

    // The wildcard again, while another process holds 127.0.0.2:P: refused, the old back.
    let held = TcpListener::bind(other).expect("bind 127.0.0.2");
    write_config(&config, &listen(wildcard));
    daemon.signal(libc::SIGHUP);
    until(
        "the reload refused",
        || {
            daemon
                .stderr()
                .contains("reloading the configuration failed")
        },
        || daemon.stderr(),
    );
    until(
        "the old listener back",
        || serves(first),
        || daemon.stderr(),
    );
    drop(held);
    assert!(
        daemon.wait_exit(Duration::ZERO).is_none(),
        "the daemon exited"
    );
    daemon.stop();
    let _ = std::fs::remove_dir_all(base);
}

/// The inode of the socket listening on `addr` (IPv4), from /proc/net/tcp: another inode
/// after a reload means the listener was closed and opened again.
fn listening_inode(addr: SocketAddr) -> Option<u64> {
    let SocketAddr::V4(v4) = addr else {
        return None;
    };
    // /proc/net/tcp shows the address as the in-memory u32 in hex (little-endian here).
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // local_address is field 1, st field 3 (0A: LISTEN), inode field 9.
        (f.get(1) == Some(&want.as_str()) && f.get(3) == Some(&"0A"))
            .then(|| f.get(9).and_then(|i| i.parse().ok()))
            .flatten()
    })
}

/// A move to the same port on another specific address that another process holds
/// (127.0.0.1:P to 127.0.0.2:P): the old listener is not what is in the way, so it is never
/// closed: the reload is refused and the very same socket (same inode) still listens. On a
/// daemon that closes the old listener first for any `Address already in use` on the same
/// port, the socket is closed and bound again (another inode), or lost.
#[test]
fn another_process_on_the_new_address_never_closes_the_old_listener() {
    tests::require_root();
    let base = temp_dir("reload-metrics-other");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("mkdir root");
    let store = base.join("store/events.db");
    let config = base.join("ctrwatch.toml");
    let listen = |addr: SocketAddr| format!("[metrics]\nlisten = \"{addr}\"\n");
    let first = free_addr();
    let other: SocketAddr = format!("127.0.0.2:{}", first.port()).parse().expect("addr");
    write_config(&config, &listen(first));
    let args: Vec<OsString> = vec![
        "run".into(),
        "--root".into(),
        root.clone().into(),
        "--store".into(),
        store.clone().into(),
        "--config".into(),
        config.clone().into(),
    ];
    let mut daemon = Watcher::start_command(&args);
    until(
        "the first address serves",
        || serves(first),
        || daemon.stderr(),
    );
    let inode = listening_inode(first).expect("the listener in /proc/net/tcp");

    let held = TcpListener::bind(other).expect("bind 127.0.0.2");
    write_config(&config, &listen(other));
    daemon.signal(libc::SIGHUP);
    until(
        "the reload refused for 127.0.0.2",
        || {
            status(&store)["daemon"]["config_reload_error"]
                .as_str()
                .is_some_and(|e| e.contains(&other.to_string()))
        },
        || format!("{}\n{}", status(&store), daemon.stderr()),
    );
    assert_eq!(
        listening_inode(first),
        Some(inode),
        "the old listener was closed (and bound again) for another process's address:\n{}",
        daemon.stderr()
    );
    assert!(serves(first), "{}", daemon.stderr());
    assert!(
        !daemon.stderr().contains("no longer served"),
        "{}",
        daemon.stderr()
    );
    drop(held);
    assert!(
        daemon.wait_exit(Duration::ZERO).is_none(),
        "the daemon exited"
    );
    daemon.stop();
    let _ = std::fs::remove_dir_all(base);
}
