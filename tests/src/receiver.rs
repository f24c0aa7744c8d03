//! A real HTTP receiver on 127.0.0.1 for the alert tests: it records every request and
//! answers as told (accept, refuse connections, 500, slow, 200 with an error code, 429 with
//! `Retry-After`), and checks the signatures of Standard Webhooks, DingTalk and Feishu with
//! its own HMAC-SHA256 and base64 (written here from the definitions, not ctrwatch's code).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

/// How the receiver answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200 (or the path's usual success answer, see [`Receiver::start`]).
    Accept,
    /// The port is closed: connections are refused.
    Refuse,
    /// This status, with a short body.
    Status(u16),
    /// Waits this long before answering 200 (longer than the client's timeout).
    Slow(Duration),
    /// HTTP 200 with this body (e.g. `{"errcode":310000,...}`).
    Body200(String),
    /// 429 with `Retry-After: N`.
    RetryAfter(u64),
    /// Holds each request (read in full) unanswered until the mode changes, at most 120 s,
    /// then answers as the new mode says (`Accept`: recorded as accepted). While held, a
    /// request counts in [`Receiver::held`]: a test can act while a delivery is in flight.
    Hold,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    /// `/path?query`.
    pub target: String,
    /// Header names lowercased.
    pub headers: BTreeMap<String, String>,
    /// The request body.
    pub body: Vec<u8>,
    /// When it arrived.
    pub at: Instant,
    /// The mode it was answered in.
    pub answered: Mode,
}

impl Received {
    /// The header `name` (lowercase), if it was sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    /// The query parameter `key`, URL-decoded.
    pub fn query(&self, key: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| url_decode(v))
        })
    }
    /// Whether the receiver accepted it (what ctrwatch should consider delivered).
    pub fn accepted(&self) -> bool {
        self.answered == Mode::Accept
    }
}

struct State {
    mode: Mode,
    received: Vec<Received>,
    listener: Option<TcpListener>,
    /// Requests read and held unanswered now ([`Mode::Hold`]).
    held: usize,
}

/// The receiver; stops when dropped.
pub struct Receiver {
    /// Where it listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What a path answers on success: the robots' JSON, Slack's `ok`, 200 for the rest.
fn success_body(path: &str) -> &'static str {
    if path.contains("feishu") {
        r#"{"code":0,"msg":"success"}"#
    } else if path.contains("dingtalk") || path.contains("wecom") {
        r#"{"errcode":0,"errmsg":"ok"}"#
    } else if path.contains("slack") {
        "ok"
    } else {
        ""
    }
}

impl Receiver {
    /// Listens on 127.0.0.1, a free port, answering in `mode`.
    pub fn start(mode: Mode) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Accept,
            received: Vec::new(),
            listener: Some(listener),
            held: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || accept_loop(state, stop))
        };
        let r = Receiver {
            addr,
            state,
            stop,
            thread: Some(thread),
        };
        r.set_mode(mode);
        r
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Changes how it answers from now on. `Refuse` closes the port; any other mode opens it
    /// again (same port).
    pub fn set_mode(&self, mode: Mode) {
        let mut s = self.state.lock().expect("receiver state");
        if mode == Mode::Refuse {
            s.listener = None;
        } else if s.listener.is_none() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match TcpListener::bind(self.addr) {
                    Ok(l) => {
                        l.set_nonblocking(true).expect("nonblocking");
                        s.listener = Some(l);
                        break;
                    }
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => panic!("rebinding {}: {e}", self.addr),
                }
            }
        }
        s.mode = mode;
    }

    /// Requests read in full and held unanswered now ([`Mode::Hold`]); not in
    /// [`Receiver::received`] until answered.
    pub fn held(&self) -> usize {
        self.state.lock().map(|s| s.held).unwrap_or(0)
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.state
            .lock()
            .map(|s| s.received.clone())
            .unwrap_or_default()
    }

    /// Waits until `pred` holds for the requests so far (at most `timeout`); returns them.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.received();
            if pred(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "receiver: {what} not within {timeout:?}; {} requests received: {:#?}",
                r.len(),
                r.iter()
                    .map(|x| (
                        x.target.clone(),
                        String::from_utf8_lossy(&x.body).into_owned()
                    ))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(state: Arc<Mutex<State>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let accepted = {
            let s = match state.lock() {
                Ok(s) => s,
                Err(_) => return,
            };
            match &s.listener {
                Some(l) => l.accept().ok(),
                None => None,
            }
        };
        match accepted {
            Some((stream, _)) => {
                let state = Arc::clone(&state);
                std::thread::spawn(move || {
                    let _ = serve(stream, &state);
                });
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split(' ').nth(1).unwrap_or("").to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let mut body = Vec::new();
    if let Some(len) = headers
        .get("content-length")
        .and_then(|l| l.parse::<usize>().ok())
    {
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    let mut mode = state.lock().map(|s| s.mode.clone()).unwrap_or(Mode::Accept);
    if mode == Mode::Hold {
        if let Ok(mut s) = state.lock() {
            s.held += 1;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while mode == Mode::Hold && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            mode = state.lock().map(|s| s.mode.clone()).unwrap_or(Mode::Accept);
        }
        if let Ok(mut s) = state.lock() {
            s.held -= 1;
        }
    }
    let path = target.split('?').next().unwrap_or("").to_owned();
    let (status, extra, text): (u16, String, String) = match &mode {
        Mode::Accept | Mode::Refuse | Mode::Hold => {
            (200, String::new(), success_body(&path).to_owned())
        }
        Mode::Status(s) => (*s, String::new(), "receiver says no".into()),
        Mode::Slow(d) => {
            std::thread::sleep(*d);
            (200, String::new(), success_body(&path).to_owned())
        }
        Mode::Body200(b) => (200, String::new(), b.clone()),
        Mode::RetryAfter(n) => (429, format!("Retry-After: {n}\r\n"), "slow down".into()),
    };
    if let Ok(mut s) = state.lock() {
        s.received.push(Received {
            target,
            headers,
            body,
            at: Instant::now(),
            answered: mode,
        });
    }
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{text}",
        text.len()
    )?;
    out.flush()
}

/// HMAC-SHA256 (RFC 2104) over SHA-256, 64-byte blocks.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 decoding (padding optional).
pub fn unbase64(text: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = B64.iter().position(|b| *b == c)? as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    Some(out)
}

/// Decodes `%XX` escapes and `+` (a space) of a URL query value.
pub fn url_decode(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Checks a Standard Webhooks request against `secret` (`whsec_…`): the signature over
/// `id.timestamp.body`, and a timestamp within 5 minutes.
pub fn verify_standard_webhook(r: &Received, secret: &str) -> Result<(), String> {
    let key = unbase64(
        secret
            .strip_prefix("whsec_")
            .ok_or("secret without whsec_")?,
    )
    .ok_or("secret not base64")?;
    let id = r.header("webhook-id").ok_or("no webhook-id")?;
    let ts = r
        .header("webhook-timestamp")
        .ok_or("no webhook-timestamp")?;
    let sig = r
        .header("webhook-signature")
        .ok_or("no webhook-signature")?;
    let t: i64 = ts.parse().map_err(|_| "timestamp not a number")?;
    if (now_s() - t).abs() > 300 {
        return Err(format!("timestamp {t} more than 5 minutes off"));
    }
    let mut msg = format!("{id}.{ts}.").into_bytes();
    msg.extend_from_slice(&r.body);
    let expected = format!("v1,{}", base64(&hmac_sha256(&key, &msg)));
    if sig.split(' ').any(|s| s == expected) {
        Ok(())
    } else {
        Err(format!("signature {sig} != {expected}"))
    }
}

/// Checks a DingTalk request: `timestamp` (ms, within an hour) and `sign` in the query,
/// `sign = base64(HMAC-SHA256(key = secret, msg = timestamp + "\n" + secret))`.
pub fn verify_dingtalk(r: &Received, secret: &str) -> Result<(), String> {
    let ts = r.query("timestamp").ok_or("no timestamp in the URL")?;
    let sign = r.query("sign").ok_or("no sign in the URL")?;
    let t: i64 = ts.parse().map_err(|_| "timestamp not a number")?;
    if (now_s() * 1000 - t).abs() > 3_600_000 {
        return Err(format!("timestamp {t} more than an hour off"));
    }
    let expected = base64(&hmac_sha256(
        secret.as_bytes(),
        format!("{ts}\n{secret}").as_bytes(),
    ));
    if sign == expected {
        Ok(())
    } else {
        Err(format!("sign {sign} != {expected}"))
    }
}

/// Checks a Feishu request: `timestamp` (s, within an hour) and `sign` in the body,
/// `sign = base64(HMAC-SHA256(key = timestamp + "\n" + secret, msg = ""))`.
pub fn verify_feishu(r: &Received, secret: &str) -> Result<(), String> {
    let v = r.json();
    let ts = v["timestamp"]
        .as_str()
        .ok_or("no timestamp string in the body")?;
    let sign = v["sign"].as_str().ok_or("no sign in the body")?;
    let t: i64 = ts.parse().map_err(|_| "timestamp not a number")?;
    if (now_s() - t).abs() > 3600 {
        return Err(format!("timestamp {t} more than an hour off"));
    }
    let expected = base64(&hmac_sha256(format!("{ts}\n{secret}").as_bytes(), b""));
    if sign == expected {
        Ok(())
    } else {
        Err(format!("sign {sign} != {expected}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_and_base64_match_known_values() {
        // RFC 4231 test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(unbase64("Zm9vYg==").as_deref(), Some(&b"foob"[..]));
        assert_eq!(url_decode("a%2Bb%3D"), "a+b=");
    }
}
