//! The HTTP client of the sinks: ureq with rustls on ring. TLS trusts the system's roots
//! (`/etc/ssl/certs/ca-certificates.crt`, Debian's bundle) plus the sink's `ca_file`; one
//! request may take the sink's `timeout` in all (connect, send, answer). Redirects are not
//! followed (a receiver that moved is a configuration to fix, and a POST must not be replayed
//! to wherever a redirect points). Proxies from the environment (`HTTPS_PROXY`, ...) are
//! used as ureq reads them.
//!
//! The answer's body is read up to [`MAX_BODY`] bytes: enough for every receiver's error
//! message; a receiver cannot make the daemon buffer more.

use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};

use crate::sinks::{Request, Response};

/// The system's CA bundle (Debian, Ubuntu; `ca-certificates`).
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// At most this much of an answer's body is read.
pub const MAX_BODY: u64 = 64 * 1024;

/// A client that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA file could not be read or holds no certificate.
    #[error("CA file {path}: {message}")]
    CaFile {
        /// The file (escaped).
        path: String,
        /// Why.
        message: String,
    },
}

/// Why a request got no answer (the text may quote the URL: scrub it before showing).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SendError(pub String);

/// One sink's HTTP client.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
}

fn certificates(pem: &[u8]) -> Vec<Certificate<'static>> {
    ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect()
}

impl Client {
    /// A client whose requests take at most `timeout`, trusting the system's roots and those
    /// of `ca_file`.
    pub fn new(timeout: Duration, ca_file: Option<&Path>) -> Result<Client, ClientError> {
        let mut roots = match std::fs::read(SYSTEM_ROOTS) {
            Ok(pem) => certificates(&pem),
            Err(e) => {
                log::warn!(
                    "alerts: cannot read the system CA bundle {SYSTEM_ROOTS} ({e}): HTTPS \
                     receivers are trusted only through a sink's ca_file"
                );
                Vec::new()
            }
        };
        if let Some(path) = ca_file {
            let shown = ctrwatch_event::escape_path(path);
            // Read as the configuration check read it: a regular file, root's, bounded.
            let pem =
                ctrwatch_config::files::read_trusted(path, ctrwatch_config::files::MAX_CA_FILE)
                    .map_err(|e| ClientError::CaFile {
                        path: shown.clone(),
                        message: e.to_string(),
                    })?;
            let extra = certificates(&pem);
            if extra.is_empty() {
                return Err(ClientError::CaFile {
                    path: shown,
                    message: "no PEM certificate in it".into(),
                });
            }
            roots.extend(extra);
        }
        // ring, not aws-lc-rs: it builds without cmake and a C toolchain's assembler, and is
        // what the rest of the node's Rust uses. rustls 0.23.48 deprecates it for lacking
        // post-quantum key exchange, which no alert receiver needs yet.
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::Specific(Arc::new(roots)))
            .unversioned_rustls_crypto_provider(Arc::new(provider))
            .build();
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("ctrwatch/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build()
            .new_agent();
        Ok(Client { agent })
    }

    /// POSTs the request (JSON) and reads the answer.
    pub fn post(&self, req: &Request) -> Result<Response, SendError> {
        let mut builder = self
            .agent
            .post(&req.url)
            .header("Content-Type", "application/json");
        for (k, v) in &req.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let mut resp = builder.send(&req.body[..]).map_err(describe)?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let mut bytes = Vec::new();
        // A body cut short (the receiver hung up) still leaves its status: judged on that.
        let _ = resp
            .body_mut()
            .as_reader()
            .take(MAX_BODY)
            .read_to_end(&mut bytes);
        Ok(Response {
            status,
            retry_after,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }
}

/// A readable reason without ureq's internals.
fn describe(e: ureq::Error) -> SendError {
    let text = match e {
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
            std::io::ErrorKind::ConnectionReset => "connection reset".into(),
            std::io::ErrorKind::TimedOut => "timed out".into(),
            _ => format!("I/O error: {io}"),
        },
        other => other.to_string(),
    };
    SendError(ctrwatch_event::escape(&text))
}

/// `Retry-After`: delay-seconds, or an HTTP date (IMF-fixdate, `Sun, 06 Nov 1994 08:49:37
/// GMT`) turned into the time from `now`. A date in the past is no wait.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn parse_http_date(text: &str) -> Option<SystemTime> {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let rest = text.split_once(", ")?.1;
    let parts: Vec<&str> = rest.split(' ').collect();
    if parts.len() != 5 || parts[4] != "GMT" {
        return None;
    }
    let day: u32 = parts[0].parse().ok()?;
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = months.iter().position(|m| *m == parts[1])? as u32 + 1;
    let year: i64 = parts[2].parse().ok()?;
    let hms: Vec<u64> = parts[3]
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 || hms[0] > 23 || hms[1] > 59 || hms[2] > 60 || !(1..=31).contains(&day) {
        return None;
    }
    // Days from the epoch (Howard Hinnant's days_from_civil).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * i64::from(m) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + (hms[0] * 3600 + hms[1] * 60 + hms[2]) as i64;
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example).
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(SystemTime::UNIX_EPOCH)
        );
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2000 12:00:00 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(951_825_600))
        );
    }

    #[test]
    fn a_missing_ca_file_is_an_error() {
        let e = Client::new(
            Duration::from_secs(1),
            Some(Path::new("/nonexistent/ca.pem")),
        );
        assert!(matches!(e, Err(ClientError::CaFile { .. })));
    }
}
