//! Bytes from outside (paths, argv, names) as text for people and machines, without losing
//! any of them.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Bytes as text for display: printable UTF-8 kept, `\` doubled, control characters and bytes
/// that are not UTF-8 as `\xNN`. Everything ctrwatch prints that came from outside (paths,
/// command lines, names from other processes) goes through this, so that no file name can
/// inject a line or a terminal escape into a log or a table.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(out, "\\x{b:02x}");
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// [`escape_bytes`] of a string.
pub fn escape(s: &str) -> String {
    escape_bytes(s.as_bytes())
}

/// [`escape_bytes`] of an OS path, for log lines and error messages.
pub fn escape_path(p: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    escape_bytes(p.as_os_str().as_bytes())
}

/// Lower-case hex of `bytes` (digests, exact bytes of paths that are not UTF-8).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// The bytes of a lower- or upper-case hex string; None if it is not one.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    let b = text.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    b.chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Text of bytes that are only ever displayed (exe, argv, xattr names): the string when it is
/// UTF-8, else its [`escape_bytes`] form.
pub fn lossless_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => escape_bytes(bytes),
    }
}

/// A path exactly as the kernel gave it: any bytes but NUL. It serializes as a JSON string:
/// the text when it is UTF-8, else the [`escape_bytes`] form (the exact bytes then travel
/// beside it in hex, see `FileEvent`'s `path_hex`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathBytes(pub Vec<u8>);

impl PathBytes {
    /// The display form (see [`escape_bytes`]).
    pub fn display(&self) -> String {
        escape_bytes(&self.0)
    }
    /// Whether the bytes are valid UTF-8 (then the JSON string is exact).
    pub fn is_utf8(&self) -> bool {
        std::str::from_utf8(&self.0).is_ok()
    }
    /// The exact bytes in hex when the JSON string cannot hold them, else None.
    pub fn hex_if_not_utf8(&self) -> Option<String> {
        (!self.is_utf8()).then(|| hex(&self.0))
    }
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for PathBytes {
    fn from(v: Vec<u8>) -> Self {
        PathBytes(v)
    }
}

impl From<&[u8]> for PathBytes {
    fn from(v: &[u8]) -> Self {
        PathBytes(v.to_vec())
    }
}

impl Serialize for PathBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.serialize_str(&escape_bytes(&self.0)),
        }
    }
}

impl<'de> Deserialize<'de> for PathBytes {
    /// The string's UTF-8 bytes. A path that was not UTF-8 comes back in its display form;
    /// readers that need its exact bytes take them from the `*_hex` field beside it.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| PathBytes(s.into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_control_and_invalid_bytes() {
        assert_eq!(escape_bytes(b"a b"), "a b");
        assert_eq!(escape_bytes(b"a\nb"), "a\\x0ab");
        assert_eq!(escape_bytes(b"a\x1b[31m"), "a\\x1b[31m");
        assert_eq!(escape_bytes(b"a\xffb"), "a\\xffb");
        assert_eq!(escape_bytes(b"a\\b"), "a\\\\b");
        assert_eq!(escape_bytes("é".as_bytes()), "é");
        // C1 controls are escaped byte by byte.
        assert_eq!(escape_bytes("\u{85}".as_bytes()), "\\xc2\\x85");
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(b"/r/\xff"), "2f722fff");
        assert_eq!(unhex("2f722fff").as_deref(), Some(&b"/r/\xff"[..]));
        assert_eq!(unhex("2F"), Some(vec![0x2f]));
        assert_eq!(unhex("2"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn non_utf8_paths_serialize_as_their_display_form() -> Result<(), serde_json::Error> {
        let p = PathBytes(b"/r/\xff".to_vec());
        assert_eq!(serde_json::to_string(&p)?, "\"/r/\\\\xff\"");
        assert_eq!(p.hex_if_not_utf8().as_deref(), Some("2f722fff"));
        assert_eq!(PathBytes(b"/ok".to_vec()).hex_if_not_utf8(), None);
        Ok(())
    }
}
