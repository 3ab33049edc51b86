//! Undo / redo by action id. Writes with origin `sync` are never recorded. The rules are on
//! [`HistoryLog`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bevy_ecs::message::Messages;
use bevy_ecs::resource::Resource;
use bevy_ecs::system::{Deferred, Res, ResMut, SystemBuffer, SystemMeta, SystemParam};
use bevy_ecs::world::DeferredWorld;

use super::messages::{Ticket, WriteIntent};
use super::store::Store;
use super::writer::{WriteOptions, ensure_key, meta};
use crate::core::{Change, Entry, IdMap, Inverse, Op, OpMeta, Origin, Record, UpsertMode};

/// One record an action touched: its state before the action, and its record after it.
pub(crate) struct Touch<T: Record> {
    pub id: T::Id,
    pub before: Option<Entry<T>>,
    pub after: Option<Arc<T>>,
}

/// One undoable action: the state of each record it touched, before it (and after it: a record
/// changed since by something history does not record — sync, a rollback — is left alone).
pub(crate) struct Action<T: Record> {
    pub id: String,
    /// Named by the game (`WriteOptions::action`), not a per-frame group.
    pub named: bool,
    pub touched: Vec<Touch<T>>,
    at: IdMap<T::Id, usize>,
    /// Idempotency keys of its writes not confirmed yet (an executor's copy written back with
    /// the same key moves `after`).
    keys: HashSet<String>,
}

impl<T: Record> Action<T> {
    /// An action about to hold up to `capacity` records.
    fn new(id: String, named: bool, capacity: usize) -> Self {
        Self {
            id,
            named,
            touched: Vec::with_capacity(capacity),
            at: IdMap::with_capacity_and_hasher(capacity, Default::default()),
            keys: HashSet::new(),
        }
    }

    /// Adds a record: a record already held keeps its earlier `before` and takes the newer
    /// `after`.
    fn add(&mut self, id: T::Id, before: Option<Entry<T>>, after: Option<Arc<T>>) {
        match self.at.entry(id) {
            std::collections::hash_map::Entry::Occupied(o) => self.touched[*o.get()].after = after,
            std::collections::hash_map::Entry::Vacant(v) => {
                let id = v.key().clone();
                v.insert(self.touched.len());
                self.touched.push(Touch { id, before, after });
            }
        }
    }

    fn overlaps(&self, other: &Action<T>) -> bool {
        let (small, large) = if self.at.len() <= other.at.len() { (self, other) } else { (other, self) };
        small.at.keys().any(|id| large.at.contains_key(id))
    }
}

/// The undo and redo stacks of store `T`.
///
/// The reduce system records each commit's successful writes of origin `user` and `mirror`
/// into [`HistoryLog<T>`]: for every action, the state of each record it touched *before* it.
/// Writes without an action id form one group per commit (one per frame); writes with
/// [`WriteOptions::action`] are grouped by that id, across frames: a later write of the same
/// action joins its group as long as no other recorded action touched the same records in
/// between (otherwise it starts a new group of the same name). Give each action its own id
/// (`"buy-sword#42"`): two purchases with the same id would undo together.
///
/// Undo and redo go through [`History<T>`]: they write intents of origin `history` through the
/// normal write path (so they persist through the store's route and settle with tickets like
/// any write) and are never recorded as new actions. A new recorded action clears the redo
/// stack.
///
/// Each action also remembers the state it left each record in. A record whose state has
/// changed since through something history does not record — a pulled change, a conflict's
/// write-back, a rollback of a failed write — is left as it is by undo and redo: undo never
/// reverts what sync brought in.
#[derive(Resource)]
pub struct HistoryLog<T: Record> {
    pub(crate) undo: Vec<Action<T>>,
    pub(crate) redo: Vec<Action<T>>,
    /// States queued by undo / redo and not committed yet (what the store will hold).
    queued: HashMap<T::Id, Option<Entry<T>>>,
    frame: u64,
    limit: usize,
}

impl<T: Record> Default for HistoryLog<T> {
    fn default() -> Self {
        Self { undo: Vec::new(), redo: Vec::new(), queued: HashMap::new(), frame: 0, limit: 256 }
    }
}

impl<T: Record> HistoryLog<T> {
    /// Action ids that can be undone, newest last. Writes without an action id are grouped
    /// as `frame-<n>`.
    pub fn undoable(&self) -> impl Iterator<Item = &str> {
        self.undo.iter().map(|a| a.id.as_str())
    }

    /// Action ids that can be redone, newest last.
    pub fn redoable(&self) -> impl Iterator<Item = &str> {
        self.redo.iter().map(|a| a.id.as_str())
    }

    /// Whether there is an action to undo.
    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    /// Whether there is an action to redo.
    pub fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    /// Whether some recorded write still waits for its executor's copy (by idempotency key).
    pub(crate) fn awaits_copies(&self) -> bool {
        self.undo.iter().chain(&self.redo).any(|a| !a.keys.is_empty())
    }

    /// Forgets every action (undo and redo).
    pub fn clear(&mut self) {
        self.undo.clear();
        self.redo.clear();
    }

    /// Records a commit's successful user and mirror writes, grouped by action id (writes
    /// without one form one group per commit, that is per frame). Origins `sync` and
    /// `history` are never recorded.
    pub(crate) fn record(&mut self, changes: &[Change<T>], inverse: &[Inverse<T>], metas: &[OpMeta], ok: &[bool]) {
        self.frame += 1;
        // The commit applies whatever undo / redo queued before it.
        self.queued.clear();
        let recorded = |op: usize| {
            metas.get(op).is_some_and(|m| matches!(m.origin, Origin::User | Origin::Mirror))
                && ok.get(op).copied().unwrap_or(false)
        };
        let awaiting = self.undo.iter().chain(&self.redo).any(|a| !a.keys.is_empty());
        let confirms = |op: usize| {
            awaiting && metas.get(op).is_some_and(|m| m.origin == Origin::Sync && !m.idempotency_key.is_empty())
        };
        if !inverse.iter().any(|inv| recorded(inv.op) || confirms(inv.op)) {
            return;
        }
        let afters = after_states(changes, inverse);

        // An executor's copy of a recorded write (same idempotency key) is what the write left.
        for (inv, after) in inverse.iter().zip(&afters) {
            if !confirms(inv.op) {
                continue;
            }
            let Some(key) = metas.get(inv.op).map(|m| &m.idempotency_key) else { continue };
            let Some(a) = self.undo.iter_mut().chain(self.redo.iter_mut()).rev().find(|a| a.keys.contains(key)) else {
                continue;
            };
            a.keys.remove(key);
            let Some(&i) = a.at.get(&inv.id) else { continue };
            let t = &mut a.touched[i];
            let prev = inv.prev.as_ref().map(|e| &*e.record);
            // Optimistic: the store held the write's value; otherwise it held the state before.
            if same_state(prev, t.after.as_deref()) || same_state(prev, t.before.as_ref().map(|e| &*e.record)) {
                t.after = after.cloned();
            }
        }

        let recorded_count = inverse.iter().filter(|inv| recorded(inv.op)).count();
        let mut groups: Vec<Action<T>> = Vec::new();
        for (inv, after) in inverse.iter().zip(&afters) {
            if !recorded(inv.op) {
                continue;
            }
            let Some(meta) = metas.get(inv.op) else { continue };
            let named = meta.action_id.as_deref();
            let at = groups.iter().position(|g| match named {
                Some(a) => g.named && g.id == a,
                None => !g.named,
            });
            let g = match at {
                Some(i) => &mut groups[i],
                None => {
                    let id = named.map_or_else(|| format!("frame-{}", self.frame), str::to_owned);
                    // A frame's group usually takes every recorded write of the commit (sized
                    // by those: the action stays on the undo stack).
                    let capacity = if named.is_some() { 0 } else { recorded_count };
                    groups.push(Action::new(id, named.is_some(), capacity));
                    let last = groups.len() - 1;
                    &mut groups[last]
                }
            };
            g.add(inv.id.clone(), inv.prev.clone(), after.cloned());
            if !meta.idempotency_key.is_empty() {
                g.keys.insert(meta.idempotency_key.clone());
            }
        }
        if groups.is_empty() {
            return;
        }
        self.redo.clear();
        for g in groups {
            self.push(g);
        }
        self.trim();
    }

    /// Pushes a recorded group: a named one joins the newest action of the same name when no
    /// action after that one touched the records of either (the joined action moves to the top).
    fn push(&mut self, g: Action<T>) {
        if g.named
            && let Some(i) = self.undo.iter().rposition(|a| a.named && a.id == g.id)
            && !self.undo[i + 1..].iter().any(|later| later.overlaps(&self.undo[i]) || later.overlaps(&g))
        {
            let mut a = self.undo.remove(i);
            for t in g.touched {
                a.add(t.id, t.before, t.after);
            }
            a.keys.extend(g.keys);
            self.undo.push(a);
            return;
        }
        self.undo.push(g);
    }

    fn trim(&mut self) {
        if self.undo.len() > self.limit {
            let extra = self.undo.len() - self.limit;
            self.undo.drain(..extra);
        }
    }
}

/// Why an action could not be undone.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// No undoable action has this id.
    #[error("no undoable action named {0:?}")]
    UnknownAction(String),
    /// A newer action changed some of the same records: undo that one first.
    #[error("action {action:?} cannot be undone alone: the newer action {newer:?} changed the same records")]
    Overlaps {
        /// The action asked for.
        action: String,
        /// The newest action in the way.
        newer: String,
    },
}

/// An undo or redo that was started: its writes settle as
/// [`WriteSettled<T>`](crate::runtime::WriteSettled) messages with these tickets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryStep {
    /// The action undone or redone.
    pub action: String,
    /// One ticket per record written back (records already in the wanted state are skipped).
    pub tickets: Vec<Ticket>,
}

/// Intents made by [`History`], written as messages when the system's commands are applied (so
/// that a system may hold both a `History<T>` and a `Writer<T>`).
pub struct HistoryIntents<T: Record>(Vec<WriteIntent<T>>);

impl<T: Record> Default for HistoryIntents<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T: Record> SystemBuffer for HistoryIntents<T> {
    fn queue(&mut self, _meta: &SystemMeta, mut world: DeferredWorld) {
        if self.0.is_empty() {
            return;
        }
        match world.get_resource_mut::<Messages<WriteIntent<T>>>() {
            Some(mut m) => {
                m.write_batch(self.0.drain(..));
            }
            None => self.0.clear(),
        }
    }
}

/// Undo and redo of store `T`, from a system.
///
/// ```no_run
/// # use atoma::prelude::*;
/// # #[derive(Record, Clone, serde::Serialize, serde::Deserialize)] #[record(store = "p")]
/// # struct Player { id: u32 }
/// fn on_undo_key(mut history: History<Player>) {
///     if let Some(step) = history.undo() {
///         println!("undoing {} ({} writes)", step.action, step.tickets.len());
///     }
/// }
/// ```
///
/// Each call reads the records' current states (so that the opposite step can restore them)
/// and queues intents of origin `history`: an upsert of each touched record's earlier state, or
/// a delete where it did not exist. They are applied in this frame's commit (when called
/// before `PostUpdate`). If such a write fails, the store is rolled back as for any write, but
/// the step stays taken.
#[derive(SystemParam)]
pub struct History<'w, 's, T: Record> {
    log: ResMut<'w, HistoryLog<T>>,
    store: Res<'w, Store<T>>,
    intents: Deferred<'s, HistoryIntents<T>>,
}

impl<T: Record> History<'_, '_, T> {
    /// Undoes the newest action.
    pub fn undo(&mut self) -> Option<HistoryStep> {
        let action = self.log.undo.pop()?;
        let (now, step) = self.restore(action);
        self.log.redo.push(now);
        Some(step)
    }

    /// Redoes the newest undone action.
    pub fn redo(&mut self) -> Option<HistoryStep> {
        let action = self.log.redo.pop()?;
        let (now, step) = self.restore(action);
        self.log.undo.push(now);
        self.log.trim();
        Some(step)
    }

    /// Undoes the newest action named `action`, which need not be the newest action — as long
    /// as no newer action changed the same records.
    pub fn undo_action(&mut self, action: &str) -> Result<HistoryStep, HistoryError> {
        let Some(i) = self.log.undo.iter().rposition(|a| a.id == action) else {
            return Err(HistoryError::UnknownAction(action.to_owned()));
        };
        if let Some(newer) = self.log.undo[i + 1..].iter().rev().find(|later| later.overlaps(&self.log.undo[i])) {
            return Err(HistoryError::Overlaps { action: action.to_owned(), newer: newer.id.clone() });
        }
        let a = self.log.undo.remove(i);
        let (now, step) = self.restore(a);
        self.log.redo.push(now);
        Ok(step)
    }

    /// Whether there is an action to undo.
    pub fn can_undo(&self) -> bool {
        self.log.can_undo()
    }

    /// Whether there is an action to redo.
    pub fn can_redo(&self) -> bool {
        self.log.can_redo()
    }

    /// The undo and redo stacks.
    pub fn log(&self) -> &HistoryLog<T> {
        &self.log
    }

    /// Forgets every action.
    pub fn clear(&mut self) {
        self.log.clear();
    }

    /// Queues the writes that bring each record of `action` back to its state before it;
    /// returns the opposite step (the records' states now) and the step. A record whose
    /// current state is not the one the action left (a sync change, a rollback since) is left
    /// alone.
    fn restore(&mut self, action: Action<T>) -> (Action<T>, HistoryStep) {
        let mut now = Action::new(action.id.clone(), action.named, action.touched.len());
        let mut tickets = Vec::new();
        let opts = WriteOptions::default().action(action.id.clone());
        for Touch { id, before, after } in action.touched {
            let current = match self.log.queued.get(&id) {
                Some(q) => q.clone(),
                None => self.store.entry(&id).cloned(),
            };
            if !same_state(current.as_ref().map(|e| &*e.record), after.as_deref()) {
                continue;
            }
            let op = match (&before, &current) {
                (Some(b), Some(c)) if same(&*b.record, &*c.record) => None,
                (Some(b), _) => Some(Op::Upsert {
                    record: T::clone(&b.record),
                    merge: false,
                    mode: UpsertMode::Loose,
                    base_version: None,
                }),
                (None, Some(_)) => Some(Op::Delete { id: id.clone(), base_version: None }),
                (None, None) => None,
            };
            if let Some(op) = op {
                let ticket = Ticket::next();
                let mut meta = meta(&opts, Origin::History);
                ensure_key(&mut meta, ticket);
                now.keys.insert(meta.idempotency_key.clone());
                self.intents.0.push(WriteIntent { ticket, op, meta });
                tickets.push(ticket);
                self.log.queued.insert(id.clone(), before.clone());
            }
            let wanted = before.as_ref().map(|e| e.record.clone());
            now.add(id, current, wanted);
        }
        (now, HistoryStep { action: action.id, tickets })
    }
}

/// The record each inverse entry's operation left (`None`: absent), aligned with
/// `inverse`: the state before the next operation on the same record, else the commit's
/// final state.
fn after_states<'p, T: Record>(changes: &'p [Change<T>], inverse: &'p [Inverse<T>]) -> Vec<Option<&'p Arc<T>>> {
    let mut next: IdMap<&T::Id, Option<&Arc<T>>> =
        changes.iter().map(|(id, e)| (id, e.as_ref().map(|e| &e.record))).collect();
    let mut out: Vec<Option<&Arc<T>>> = inverse
        .iter()
        .rev()
        .map(|inv| {
            let after = next.get(&inv.id).copied().flatten();
            next.insert(&inv.id, inv.prev.as_ref().map(|e| &e.record));
            after
        })
        .collect();
    out.reverse();
    out
}

/// Whether two states of a record (`None`: absent) are the same.
fn same_state<T: Record>(a: Option<&T>, b: Option<&T>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => same(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Whether two records have the same JSON form.
fn same<T: Record>(a: &T, b: &T) -> bool {
    // Equal bytes are the common case and cheap to see; maps with another key order are
    // compared as values.
    matches!((serde_json::to_vec(a), serde_json::to_vec(b)), (Ok(x), Ok(y)) if x == y)
        || matches!((serde_json::to_value(a), serde_json::to_value(b)), (Ok(x), Ok(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Table, Versions, reduce};

    #[derive(crate::Record, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    #[record(store = "things")]
    struct Thing {
        id: u32,
        name: String,
    }

    fn thing(id: u32, name: &str) -> Thing {
        Thing { id, name: name.into() }
    }

    fn meta(origin: Origin, key: &str) -> OpMeta {
        OpMeta { origin, idempotency_key: key.into(), ..OpMeta::default() }
    }

    /// Reduces `ops` over `table`, records the plan, applies it.
    fn commit(log: &mut HistoryLog<Thing>, table: &mut Table<Thing>, ops: Vec<(Op<Thing>, OpMeta)>) {
        let metas: Vec<OpMeta> = ops.iter().map(|(_, m)| m.clone()).collect();
        let plan = reduce(table, ops, Versions::Client, None);
        let ok: Vec<bool> = plan.results.iter().map(Result::is_ok).collect();
        log.record(&plan.changes, &plan.inverse, &metas, &ok);
        table.apply(plan.changes);
    }

    fn after(log: &HistoryLog<Thing>) -> Option<Thing> {
        log.undo.last().and_then(|a| a.touched.first()).and_then(|t| t.after.as_deref().cloned())
    }

    #[test]
    fn the_executors_copy_of_a_recorded_write_is_its_after_state() {
        let mut log = HistoryLog::<Thing>::default();
        let mut table = Table::new(std::iter::empty());
        commit(&mut log, &mut table, vec![(Op::Create(thing(1, "a")), meta(Origin::User, "k1"))]);
        assert_eq!(after(&log), Some(thing(1, "a")));
        // A pulled change (no key of ours; reduced over a copy of the table) does not move it…
        let pulled = Op::Remote { id: 1, version: 1, record: Some(thing(1, "theirs")) };
        let mut t2 = Table::new(std::iter::empty());
        t2.apply(vec![(1, Some(Entry::new(thing(1, "a"), 0)))]);
        commit(&mut log, &mut t2, vec![(pulled, meta(Origin::Sync, ""))]);
        assert_eq!(after(&log), Some(thing(1, "a")));
        // …the ack of the write itself (its key), with the executor's copy, does.
        let ack = Op::Writeback { id: 1, version: 1, record: Some(thing(1, "a (stored)")) };
        commit(&mut log, &mut table, vec![(ack, meta(Origin::Sync, "k1"))]);
        assert_eq!(after(&log), Some(thing(1, "a (stored)")));
        assert_eq!(log.undoable().count(), 1, "acks are not actions");
    }

    #[test]
    fn after_states_follow_each_operation() {
        let table: Table<Thing> = Table::new(std::iter::empty());
        let ops = vec![
            (Op::Create(thing(1, "a")), meta(Origin::User, "k1")),
            (Op::Create(thing(2, "x")), meta(Origin::User, "k2")),
            (
                Op::Update { id: 1, base_version: None, with: crate::core::UpdateWith::Replace(thing(1, "b")) },
                meta(Origin::User, "k3"),
            ),
            (Op::Delete { id: 2, base_version: None }, meta(Origin::User, "k4")),
        ];
        let plan = reduce(&table, ops, Versions::Client, None);
        let names: Vec<Option<&str>> =
            after_states(&plan.changes, &plan.inverse).iter().map(|t| t.map(|t| t.name.as_str())).collect();
        assert_eq!(names, vec![Some("a"), Some("x"), Some("b"), None]);
    }
}
