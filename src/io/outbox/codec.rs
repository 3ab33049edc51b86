//! How an outbox item is stored: a compact, versioned binary layout (format 2), written
//! once per write on the frame's transaction — or the JSON of [`OutboxItem`] that files
//! written before format 2 hold (still read; rewritten in format 2 when the item changes).
//!
//! Format 2, all integers little-endian, strings and JSON as `u32 length ‖ bytes`:
//!
//! ```text
//! 2  flags(in flight 1, sent 2)  since_ms:i64  attempts:u32  next_attempt_ms:i64  created_ms:i64
//! resource  entity_id  entry_id  action:u8  present(entityId 1, baseVersion 2, value 4, ops 8, options 16)
//! [item.entityId]  [baseVersion:u64]  idempotency_key  client_time_ms:i64  [ops JSON]  [options JSON]  [value JSON]
//! ```
//!
//! The value goes last as raw JSON, so a local-first write can hand over the bytes it just
//! stored for the record instead of encoding the record a second time.

use serde::Serialize;

use super::{ItemState, OutboxItem};
use crate::core::WriteAction;
use crate::protocol::{ItemMeta, StandardError, WireWriteEntry, WriteItem};

/// The first byte of a format-2 item (never the first byte of a JSON document).
const FORMAT_2: u8 = 2;

const IN_FLIGHT: u8 = 1;
const SENT: u8 = 2;

const HAS_ENTITY_ID: u8 = 1;
const HAS_BASE: u8 = 2;
const HAS_VALUE: u8 = 4;
const HAS_OPS: u8 = 8;
const HAS_OPTIONS: u8 = 16;

/// Where an item is and how its pushes went: everything but the write itself.
#[derive(Clone, Copy, Debug)]
pub(super) struct Header {
    pub state: ItemState,
    pub attempts: u32,
    pub next_attempt_ms: i64,
    pub created_ms: i64,
    pub sent: bool,
}

impl Header {
    /// A write just queued.
    pub fn new(created_ms: i64) -> Self {
        Self { state: ItemState::Pending, attempts: 0, next_attempt_ms: 0, created_ms, sent: false }
    }

    fn of(item: &OutboxItem) -> Self {
        Self {
            state: item.state,
            attempts: item.attempts,
            next_attempt_ms: item.next_attempt_ms,
            created_ms: item.created_ms,
            sent: item.sent,
        }
    }
}

fn corrupt(seq: u64, why: impl std::fmt::Display) -> StandardError {
    StandardError::adapter("CORRUPT_OUTBOX", format!("outbox item {seq}: {why}"))
}

fn too_long(what: &str) -> StandardError {
    StandardError::invalid_write(format!("outbox item: {what} is longer than 4 GiB"))
}

fn put_len(buf: &mut Vec<u8>, n: usize, what: &str) -> Result<(), StandardError> {
    let n = u32::try_from(n).map_err(|_| too_long(what))?;
    buf.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8], what: &str) -> Result<(), StandardError> {
    put_len(buf, b.len(), what)?;
    buf.extend_from_slice(b);
    Ok(())
}

fn put_json<T: Serialize + ?Sized>(buf: &mut Vec<u8>, v: &T, what: &str) -> Result<(), StandardError> {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut *buf, v)
        .map_err(|e| StandardError::internal(format!("outbox encoding of the {what}: {e}")))?;
    let n = u32::try_from(buf.len() - at - 4).map_err(|_| too_long(what))?;
    buf[at..at + 4].copy_from_slice(&n.to_le_bytes());
    Ok(())
}

fn action_byte(a: WriteAction) -> u8 {
    match a {
        WriteAction::Create => 0,
        WriteAction::Update => 1,
        WriteAction::Upsert => 2,
        WriteAction::Delete => 3,
        WriteAction::Patch => 4,
    }
}

/// Encodes an item into `buf` (cleared first). `base_version` replaces the entry's; `value`,
/// when given, is the JSON of the entry's value, already encoded (it must be equivalent).
pub(super) fn encode(
    buf: &mut Vec<u8>,
    header: &Header,
    resource: &str,
    entity_id: &str,
    entry: &WireWriteEntry,
    base_version: Option<u64>,
    value: Option<&[u8]>,
) -> Result<(), StandardError> {
    buf.clear();
    let (flags, since) = match header.state {
        ItemState::Pending => (0, 0),
        ItemState::InFlight { since_ms } => (IN_FLIGHT, since_ms),
    };
    buf.push(FORMAT_2);
    buf.push(flags | if header.sent { SENT } else { 0 });
    buf.extend_from_slice(&since.to_le_bytes());
    buf.extend_from_slice(&header.attempts.to_le_bytes());
    buf.extend_from_slice(&header.next_attempt_ms.to_le_bytes());
    buf.extend_from_slice(&header.created_ms.to_le_bytes());
    put_bytes(buf, resource.as_bytes(), "resource")?;
    put_bytes(buf, entity_id.as_bytes(), "record id")?;
    put_bytes(buf, entry.entry_id.as_bytes(), "entry id")?;
    buf.push(action_byte(entry.action));
    let item = &entry.item;
    let mut present = 0;
    if item.entity_id.is_some() {
        present |= HAS_ENTITY_ID;
    }
    if base_version.is_some() {
        present |= HAS_BASE;
    }
    if value.is_some() || item.value.is_some() {
        present |= HAS_VALUE;
    }
    if item.ops.is_some() {
        present |= HAS_OPS;
    }
    if entry.options.is_some() {
        present |= HAS_OPTIONS;
    }
    buf.push(present);
    if let Some(id) = &item.entity_id {
        put_bytes(buf, id.as_bytes(), "entity id")?;
    }
    if let Some(b) = base_version {
        buf.extend_from_slice(&b.to_le_bytes());
    }
    put_bytes(buf, item.meta.idempotency_key.as_bytes(), "idempotency key")?;
    buf.extend_from_slice(&item.meta.client_time_ms.to_le_bytes());
    if let Some(ops) = &item.ops {
        put_json(buf, ops, "patch ops")?;
    }
    if let Some(options) = &entry.options {
        put_json(buf, options, "options")?;
    }
    match (value, &item.value) {
        (Some(bytes), _) => put_bytes(buf, bytes, "value")?,
        (None, Some(v)) => put_json(buf, v, "value")?,
        (None, None) => {}
    }
    Ok(())
}

/// Encodes a whole item (its own value) into `buf`.
pub(super) fn encode_item(buf: &mut Vec<u8>, item: &OutboxItem) -> Result<(), StandardError> {
    encode(buf, &Header::of(item), &item.resource, &item.entity_id, &item.entry, item.entry.item.base_version, None)
}

struct Reader<'a> {
    b: &'a [u8],
    seq: u64,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StandardError> {
        let Some((head, rest)) = self.b.split_at_checked(n) else {
            return Err(corrupt(self.seq, "truncated"));
        };
        self.b = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], StandardError> {
        let seq = self.seq;
        self.take(N)?.try_into().map_err(|_| corrupt(seq, "truncated"))
    }
    fn u8(&mut self) -> Result<u8, StandardError> {
        Ok(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, StandardError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, StandardError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, StandardError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], StandardError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self, what: &str) -> Result<String, StandardError> {
        let seq = self.seq;
        let b = self.bytes()?;
        std::str::from_utf8(b).map(str::to_owned).map_err(|_| corrupt(seq, format!("its {what} is not UTF-8")))
    }
    fn json<T: for<'de> serde::Deserialize<'de>>(&mut self, what: &str) -> Result<T, StandardError> {
        let seq = self.seq;
        let b = self.bytes()?;
        serde_json::from_slice(b).map_err(|e| corrupt(seq, format!("its {what}: {e}")))
    }
}

/// Decodes an item stored under `seq`, in either format. Never panics: anything unreadable is
/// a `CORRUPT_OUTBOX` error naming the item.
pub(super) fn decode(seq: u64, bytes: &[u8]) -> Result<OutboxItem, StandardError> {
    match bytes.first() {
        Some(&FORMAT_2) => decode_2(seq, &bytes[1..]),
        // Files written before format 2 hold each item as the JSON of `OutboxItem`.
        Some(b'{' | b' ' | b'\t' | b'\n' | b'\r') => {
            let mut item: OutboxItem = serde_json::from_slice(bytes).map_err(|e| corrupt(seq, e))?;
            item.seq = seq;
            Ok(item)
        }
        Some(other) => Err(corrupt(seq, format!("unknown format {other} (written by a newer atoma?)"))),
        None => Err(corrupt(seq, "empty")),
    }
}

/// What the indexes need of an item: its record and where it is.
pub(super) struct Brief {
    pub resource: String,
    pub entity_id: String,
    pub state: ItemState,
    pub next_attempt_ms: i64,
}

/// Decodes only an item's [`Brief`] (format 2: its header; older JSON items: all of it).
pub(super) fn decode_brief(seq: u64, bytes: &[u8]) -> Result<Brief, StandardError> {
    if bytes.first() != Some(&FORMAT_2) {
        let it = decode(seq, bytes)?;
        return Ok(Brief {
            resource: it.resource,
            entity_id: it.entity_id,
            state: it.state,
            next_attempt_ms: it.next_attempt_ms,
        });
    }
    let mut r = Reader { b: &bytes[1..], seq };
    let flags = r.u8()?;
    let since_ms = r.i64()?;
    let _attempts = r.u32()?;
    let next_attempt_ms = r.i64()?;
    let _created_ms = r.i64()?;
    Ok(Brief {
        resource: r.string("resource")?,
        entity_id: r.string("record id")?,
        state: if flags & IN_FLIGHT != 0 { ItemState::InFlight { since_ms } } else { ItemState::Pending },
        next_attempt_ms,
    })
}

fn decode_2(seq: u64, bytes: &[u8]) -> Result<OutboxItem, StandardError> {
    let mut r = Reader { b: bytes, seq };
    let flags = r.u8()?;
    let since_ms = r.i64()?;
    let attempts = r.u32()?;
    let next_attempt_ms = r.i64()?;
    let created_ms = r.i64()?;
    let resource = r.string("resource")?;
    let entity_id = r.string("record id")?;
    let entry_id = r.string("entry id")?;
    let action = match r.u8()? {
        0 => WriteAction::Create,
        1 => WriteAction::Update,
        2 => WriteAction::Upsert,
        3 => WriteAction::Delete,
        4 => WriteAction::Patch,
        other => return Err(corrupt(seq, format!("unknown action {other}"))),
    };
    let present = r.u8()?;
    let item_entity_id = if present & HAS_ENTITY_ID != 0 { Some(r.string("entity id")?) } else { None };
    let base_version = if present & HAS_BASE != 0 { Some(r.u64()?) } else { None };
    let idempotency_key = r.string("idempotency key")?;
    let client_time_ms = r.i64()?;
    let ops = if present & HAS_OPS != 0 { Some(r.json("patch ops")?) } else { None };
    let options = if present & HAS_OPTIONS != 0 { Some(r.json("options")?) } else { None };
    let value = if present & HAS_VALUE != 0 { Some(r.json("value")?) } else { None };
    if !r.b.is_empty() {
        return Err(corrupt(seq, format!("{} bytes after its end", r.b.len())));
    }
    Ok(OutboxItem {
        seq,
        resource,
        entity_id,
        entry: WireWriteEntry {
            entry_id,
            action,
            item: WriteItem {
                entity_id: item_entity_id,
                base_version,
                value,
                ops,
                meta: ItemMeta { idempotency_key, client_time_ms },
            },
            options,
        },
        state: if flags & IN_FLIGHT != 0 { ItemState::InFlight { since_ms } } else { ItemState::Pending },
        attempts,
        next_attempt_ms,
        created_ms,
        sent: flags & SENT != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::PatchOp;
    use crate::protocol::{UpsertOptions, WriteOptions};

    fn item(entry: WireWriteEntry, state: ItemState) -> OutboxItem {
        OutboxItem {
            seq: 7,
            resource: "players".into(),
            entity_id: "p1".into(),
            entry,
            state,
            attempts: 3,
            next_attempt_ms: 1234,
            created_ms: -5,
            sent: true,
        }
    }

    fn full_entry() -> WireWriteEntry {
        WireWriteEntry {
            entry_id: "e1".into(),
            action: WriteAction::Upsert,
            item: WriteItem {
                entity_id: Some("p1".into()),
                base_version: Some(9),
                value: Some(serde_json::json!({"id": "p1", "n": 1.5, "s": "é\"x", "a": [1, {"b": null}]})),
                ops: Some(vec![PatchOp::Inc { path: "n".into(), value: 1.into() }]),
                meta: ItemMeta { idempotency_key: "k\u{0}1".into(), client_time_ms: 42 },
            },
            options: Some(WriteOptions { merge: Some(true), returning: None, upsert: Some(UpsertOptions::default()) }),
        }
    }

    #[test]
    fn round_trips_every_field() {
        let mut buf = Vec::new();
        for it in [
            item(full_entry(), ItemState::InFlight { since_ms: 77 }),
            item(
                WireWriteEntry {
                    entry_id: String::new(),
                    action: WriteAction::Delete,
                    item: WriteItem {
                        entity_id: None,
                        base_version: None,
                        value: None,
                        ops: None,
                        meta: ItemMeta { idempotency_key: "k".into(), client_time_ms: 0 },
                    },
                    options: None,
                },
                ItemState::Pending,
            ),
        ] {
            encode_item(&mut buf, &it).expect("encodes");
            assert_eq!(decode(7, &buf).expect("decodes"), it);
        }
    }

    #[test]
    fn reads_the_json_items_of_older_files() {
        let it = item(full_entry(), ItemState::Pending);
        let json = serde_json::to_vec(&it).expect("json");
        assert_eq!(decode(7, &json).expect("decodes"), it);
    }

    #[test]
    fn damaged_items_are_clear_errors_never_panics() {
        let mut buf = Vec::new();
        encode_item(&mut buf, &item(full_entry(), ItemState::Pending)).expect("encodes");
        // Every truncation, and every single-byte change, either decodes or is CORRUPT_OUTBOX.
        for n in 0..buf.len() {
            let e = decode(7, &buf[..n]).expect_err("a truncated item");
            assert_eq!(e.code, "CORRUPT_OUTBOX", "{e:?}");
        }
        for i in 0..buf.len() {
            for x in [0u8, 1, 0x7f, 0xff] {
                let mut b = buf.clone();
                b[i] ^= x;
                if let Err(e) = decode(7, &b) {
                    assert_eq!(e.code, "CORRUPT_OUTBOX", "{e:?}");
                }
            }
        }
        let e = decode(7, &[200, 1, 2]).expect_err("a newer format");
        assert!(e.message.contains("unknown format 200"), "{e:?}");
        assert_eq!(decode(7, b"{\"seq\":").expect_err("bad json").code, "CORRUPT_OUTBOX");
    }
}
