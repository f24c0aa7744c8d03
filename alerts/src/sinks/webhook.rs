//! The generic webhook: a POST of the alert's JSON body exactly as the outbox keeps it,
//! signed the Standard Webhooks way (<https://www.standardwebhooks.com/>):
//!
//! * `webhook-id`: the alert id and revision (`ctw-….2`): the same on every retry of one
//!   revision, so a receiver deduplicates retries, and new for each revision;
//! * `webhook-timestamp`: the attempt's time, in seconds since the epoch;
//! * `webhook-signature`: `v1,` + base64 of HMAC-SHA256 over `id.timestamp.body`, keyed with
//!   the base64-decoded part of the `whsec_…` secret (only when a secret is configured).
//!
//! Custom headers and a bearer token are added as configured.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ctrwatch_config::SinkConfig;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use super::{Request, Target};
use crate::alert::AlertBody;

/// The Standard Webhooks secret's prefix.
pub const SECRET_PREFIX: &str = "whsec_";

/// The HMAC key of a `whsec_<base64>` secret.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret.strip_prefix(SECRET_PREFIX).ok_or_else(|| {
        "a webhook secret is a Standard Webhooks secret: \"whsec_\" followed by base64".to_owned()
    })?;
    let key = BASE64
        .decode(b64.trim())
        .map_err(|_| "the webhook secret after \"whsec_\" is not base64".to_owned())?;
    if key.is_empty() {
        return Err("the webhook secret after \"whsec_\" is empty".into());
    }
    Ok(key)
}

/// `webhook-id` of a revision: `<alert id>.<rev>`.
pub fn message_id(alert: &AlertBody) -> String {
    format!("{}.{}", alert.id, alert.rev)
}

/// `v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>`.
pub fn signature(key: &[u8], msg_id: &str, timestamp: i64, body: &str) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// The POST of `body_text` to `target`.
pub fn request(
    config: &SinkConfig,
    key: Option<&[u8]>,
    target: &Target,
    body_text: &str,
    alert: &AlertBody,
    now_ns: i64,
) -> Request {
    let msg_id = message_id(alert);
    let timestamp = now_ns.div_euclid(1_000_000_000);
    let mut headers = vec![
        ("webhook-id".to_owned(), msg_id.clone()),
        ("webhook-timestamp".to_owned(), timestamp.to_string()),
    ];
    if let Some(key) = key {
        headers.push((
            "webhook-signature".to_owned(),
            signature(key, &msg_id, timestamp, body_text),
        ));
    }
    if let Some(token) = &config.bearer_token {
        headers.push((
            "Authorization".to_owned(),
            format!("Bearer {}", token.expose()),
        ));
    }
    for (k, v) in &config.headers {
        headers.push((k.clone(), v.clone()));
    }
    Request {
        url: target.url().to_owned(),
        headers,
        body: body_text.as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{Alert, Node};
    use crate::sinks::{Sink, tests::sink_config};
    use ctrwatch_config::{Secret, SinkKind};

    #[test]
    fn secrets_decode_only_from_whsec_base64() {
        assert_eq!(decode_secret("whsec_AAEC"), Ok(vec![0, 1, 2]));
        assert!(decode_secret("AAEC").is_err());
        assert!(decode_secret("whsec_!!").is_err());
        assert!(decode_secret("whsec_").is_err());
    }

    /// The example of the Standard Webhooks specification (its reference libraries' test
    /// vector): secret, id, timestamp and body give this signature.
    #[test]
    fn signature_matches_the_specification_example() -> Result<(), String> {
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
        let sig = signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        Ok(())
    }

    #[test]
    fn requests_carry_the_body_as_stored_and_the_headers() -> Result<(), Box<dyn std::error::Error>>
    {
        let mut c = sink_config(
            SinkKind::Webhook,
            &["https://hooks.example.com/x"],
            Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        );
        c.bearer_token = Some(Secret::new("tok"));
        c.headers.insert("X-Team".into(), "edge".into());
        let sink = Sink::new(c, &crate::target_key::TEST_KEY)?;
        let mut a = Alert::test_alert(Node::default(), 0);
        a.rev = 3;
        let text = a.body_json()?;
        let body = AlertBody::parse(&text)?;
        let req = sink.request(
            &sink.targets[0],
            &text,
            &body,
            1_614_265_330_500_000_000,
            &Default::default(),
        );
        assert_eq!(req.body, text.as_bytes());
        let h = |k: &str| {
            req.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        let id = format!("{}.3", a.id);
        assert_eq!(h("webhook-id"), Some(id.clone()));
        assert_eq!(h("webhook-timestamp").as_deref(), Some("1614265330"));
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
        assert_eq!(
            h("webhook-signature"),
            Some(signature(&key, &id, 1614265330, &text))
        );
        assert_eq!(h("Authorization").as_deref(), Some("Bearer tok"));
        assert_eq!(h("X-Team").as_deref(), Some("edge"));
        Ok(())
    }
}
