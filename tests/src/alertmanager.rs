//! A real Prometheus Alertmanager (Debian's `prometheus-alertmanager`, installed by `cargo
//! xtask setup`) for the alert tests: two instances clustered on loopback ports, each with its
//! own storage directory, queried through their v2 API.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The Alertmanager binary Debian installs.
pub const BINARY: &str = "/usr/bin/prometheus-alertmanager";

/// A free TCP port on 127.0.0.1 (bound, then released for the child to take).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A plain HTTP/1.1 request to 127.0.0.1 (no client library: what the test sees is what the
/// server said). Returns (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(_) => return (0, String::new()),
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let body = body.unwrap_or("");
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = match text.split_once("\r\n\r\n") {
        Some((head, rest))
            if head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked") =>
        {
            dechunk(rest)
        }
        Some((_, rest)) => rest.to_owned(),
        None => String::new(),
    };
    (status, body)
}

fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        text = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// One running instance.
pub struct Instance {
    /// Its HTTP API and UI.
    pub web: SocketAddr,
    /// Its cluster (gossip) listener.
    pub cluster: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl Instance {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.web)
    }

    /// `GET /api/v2/alerts` (active, silenced and inhibited, unprocessed included).
    pub fn alerts(&self) -> Vec<Value> {
        let (status, body) = http(self.web, "GET", "/api/v2/alerts", None);
        assert_eq!(status, 200, "GET /api/v2/alerts: {status} {body}");
        serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// Stops the instance (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const CONFIG: &str = "route:\n  receiver: blackhole\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: blackhole\n";

fn start_one(dir: &Path, web: u16, cluster: u16, peer: Option<u16>) -> Instance {
    assert!(
        Path::new(BINARY).exists(),
        "{BINARY} is missing: run `cargo xtask setup` (installs Debian's prometheus-alertmanager)"
    );
    std::fs::create_dir_all(dir.join("data")).expect("mkdir");
    let config = dir.join("alertmanager.yml");
    std::fs::write(&config, CONFIG).expect("config");
    let mut cmd = Command::new(BINARY);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .arg(format!("--cluster.listen-address=127.0.0.1:{cluster}"))
        .arg(format!("--cluster.advertise-address=127.0.0.1:{cluster}"))
        .arg("--cluster.gossip-interval=50ms")
        .arg("--cluster.pushpull-interval=1s")
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("stderr.log")).expect("log"),
        ));
    if let Some(p) = peer {
        cmd.arg(format!("--cluster.peer=127.0.0.1:{p}"));
    }
    // SAFETY: prctl in the child before exec; async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd.spawn().expect("starting prometheus-alertmanager");
    Instance {
        web: SocketAddr::from(([127, 0, 0, 1], web)),
        cluster: SocketAddr::from(([127, 0, 0, 1], cluster)),
        child,
        dir: dir.to_path_buf(),
    }
}

/// Two clustered instances, ready (their `/-/ready` answers 200 and each sees the other as a
/// cluster peer).
pub struct Pair {
    /// The first instance.
    pub a: Instance,
    /// The second instance, peered with the first.
    pub b: Instance,
}

impl Pair {
    /// Starts two instances under `dir`, peered, and waits until both are ready.
    pub fn start(dir: &Path) -> Pair {
        let (wa, ca, wb, cb) = (free_port(), free_port(), free_port(), free_port());
        let a = start_one(&dir.join("a"), wa, ca, Some(cb));
        let b = start_one(&dir.join("b"), wb, cb, Some(ca));
        let pair = Pair { a, b };
        let deadline = Instant::now() + Duration::from_secs(60);
        for inst in [&pair.a, &pair.b] {
            loop {
                let (status, body) = http(inst.web, "GET", "/api/v2/status", None);
                let peers = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["cluster"]["peers"].as_array().map(Vec::len))
                    .unwrap_or(0);
                if status == 200 && peers >= 2 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "alertmanager on {} not clustered within 60 s (status {status}, {peers} peers): {}",
                    inst.web,
                    std::fs::read_to_string(inst.dir.join("stderr.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        pair
    }

    /// The two instances' base URLs.
    pub fn urls(&self) -> [String; 2] {
        [self.a.url(), self.b.url()]
    }
}
