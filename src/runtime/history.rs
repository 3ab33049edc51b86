//! Undo / redo by action id. Writes with origin `sync` are never recorded.

use std::collections::HashMap;

use bevy_ecs::resource::Resource;

use crate::core::{Entry, Keyed, OpMeta, Origin, Plan, Record};

/// One undoable action: the state of each record it touched, before it.
pub(crate) struct Action<T: Record> {
    pub id: String,
    pub before: Vec<(T::Id, Option<Entry<T>>)>,
}

/// The undo and redo stacks of store `T`.
#[derive(Resource)]
pub struct HistoryLog<T: Record> {
    pub(crate) undo: Vec<Action<T>>,
    pub(crate) redo: Vec<Action<T>>,
    frame: u64,
    limit: usize,
}

impl<T: Record> Default for HistoryLog<T> {
    fn default() -> Self {
        Self { undo: Vec::new(), redo: Vec::new(), frame: 0, limit: 256 }
    }
}

impl<T: Record> HistoryLog<T> {
    /// Action ids that can be undone, newest last.
    pub fn undoable(&self) -> impl Iterator<Item = &str> {
        self.undo.iter().map(|a| a.id.as_str())
    }

    /// Action ids that can be redone, newest last.
    pub fn redoable(&self) -> impl Iterator<Item = &str> {
        self.redo.iter().map(|a| a.id.as_str())
    }

    /// Records a commit's successful user writes, grouped by action id (writes without one
    /// form one group per frame).
    pub(crate) fn record(&mut self, plan: &Plan<T>, metas: &[OpMeta], ok: &[bool]) {
        self.frame += 1;
        let mut groups: HashMap<String, Vec<(T::Id, Option<Entry<T>>)>> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        for inv in &plan.inverse {
            let Some(meta) = metas.get(inv.op) else { continue };
            if meta.origin != Origin::User && meta.origin != Origin::Mirror || !ok.get(inv.op).copied().unwrap_or(false)
            {
                continue;
            }
            let key = meta.action_id.clone().unwrap_or_else(|| format!("frame-{}", self.frame));
            let g = groups.entry(key.clone()).or_insert_with(|| {
                order.push(key.clone());
                Vec::new()
            });
            if !g.iter().any(|(id, _)| id == &inv.id) {
                g.push((inv.id.clone(), inv.prev.clone()));
            }
        }
        for key in order {
            if let Some(before) = groups.remove(&key) {
                match self.undo.last_mut() {
                    Some(last) if last.id == key => {
                        for (id, prev) in before {
                            if !last.before.iter().any(|(i, _)| *i == id) {
                                last.before.push((id, prev));
                            }
                        }
                    }
                    _ => self.undo.push(Action { id: key, before }),
                }
                self.redo.clear();
            }
        }
        if self.undo.len() > self.limit {
            let extra = self.undo.len() - self.limit;
            self.undo.drain(..extra);
        }
    }
}

/// Keeps `Keyed` in scope for `T::Id`.
fn _uses_keyed<T: Keyed>() {}
