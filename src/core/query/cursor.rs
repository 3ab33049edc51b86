//! Opaque cursor tokens: a position in a sort order (the sort keys and id of one record).
//!
//! A token is base64url of a small JSON array `[sortFingerprint, [keys…], id]`. The fingerprint
//! ties a token to the sort it came from, so a token from another sort is an error instead of
//! a silently wrong page. Positions are keys, not offsets: pages stay stable when records are
//! inserted or deleted elsewhere in the order.

use super::compile::CursorPos;
use super::eval::SortKey;
use crate::core::value::Key;

/// Why a cursor token cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CursorError {
    /// Not a token this engine made.
    #[error("cursor token is malformed: {0}")]
    Malformed(&'static str),
    /// A token from a query with another sort.
    #[error("cursor token belongs to a query with a different sort")]
    OtherSort,
}

fn fingerprint(sort: &[SortKey]) -> u64 {
    // FNV-1a: stable across processes and builds, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for s in sort {
        for b in s.path.bytes().chain([u8::from(s.desc), 0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h & ((1 << 53) - 1) // exact in a JSON number
}

/// Makes the token of a position.
pub(crate) fn encode_cursor(sort: &[SortKey], keys: &[Key], id: &str) -> String {
    let json = serde_json::json!([fingerprint(sort), keys.iter().map(Key::to_json).collect::<Vec<_>>(), id]);
    b64_encode(json.to_string().as_bytes())
}

/// Reads a token back, checking that it belongs to `sort`.
pub(crate) fn decode_cursor(token: &str, sort: &[SortKey]) -> Result<CursorPos, CursorError> {
    let bytes = b64_decode(token).ok_or(CursorError::Malformed("not base64url"))?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| CursorError::Malformed("not JSON"))?;
    let parts = json.as_array().ok_or(CursorError::Malformed("not an array"))?;
    let [fp, keys, id] = parts.as_slice() else {
        return Err(CursorError::Malformed("wrong length"));
    };
    if fp.as_u64() != Some(fingerprint(sort)) {
        return Err(CursorError::OtherSort);
    }
    let keys = keys.as_array().ok_or(CursorError::Malformed("keys not a list"))?;
    if keys.len() != sort.len() {
        return Err(CursorError::OtherSort);
    }
    let keys = keys.iter().map(Key::from_json).collect::<Option<Vec<_>>>().ok_or(CursorError::Malformed("bad key"))?;
    let id = id.as_str().ok_or(CursorError::Malformed("id not a string"))?.to_owned();
    Ok(CursorPos { keys, id })
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.as_bytes().chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            let v = ALPHABET.iter().position(|a| a == c)? as u32;
            n |= v << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_every_length() {
        for len in 0..40u8 {
            let bytes: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(b64_decode(&b64_encode(&bytes)).as_deref(), Some(bytes.as_slice()));
        }
        assert!(b64_decode("a").is_none());
        assert!(b64_decode("a=bc").is_none());
    }

    #[test]
    fn tokens_round_trip_and_are_tied_to_their_sort() {
        let sort = vec![SortKey { path: "score".into(), desc: true }];
        let t = encode_cursor(&sort, &[Key::Float(2.5)], "p7");
        let pos = decode_cursor(&t, &sort).expect("decodes");
        assert_eq!(pos, CursorPos { keys: vec![Key::Float(2.5)], id: "p7".into() });
        let other = vec![SortKey { path: "score".into(), desc: false }];
        assert_eq!(decode_cursor(&t, &other), Err(CursorError::OtherSort));
        assert!(matches!(decode_cursor("!!", &sort), Err(CursorError::Malformed(_))));
    }
}
