//! The floor of part (a): the same work as the batched frame, written as the bare loop a
//! hand-tuned program would run, with none of atoma's bookkeeping. It shows how much of the
//! frame is the work itself on this machine, and how much is atoma.
//!
//! The work: 10,000 closure updates (`level` and `score` set) of distinct random records of a
//! 100,000-record table, each record found by id, copied, changed by its boxed closure, its
//! `guild` compared (an `eq` index that does not change) and stored as a new `Arc`; then the
//! two ordered indexes, held as sorted vectors of `(key, slot)`, take the removed and added
//! entries: both lists sorted, merged into the index in one pass. The loop prefetches what an
//! update reads (the slot, the record, its two strings) a few updates ahead, as atoma's
//! reducer does.
//!
//! Left out, because a bare loop needs none of them: messages and tickets, per-write results,
//! inverse patches and history, the writes sent to the executor and their flights, the
//! overlay that lets several ops of a frame touch one record, validation, the `Committed`
//! message. The replaced records are kept (history would keep them) and freed untimed.
//!
//! Two variants, both timed per frame: one thread, and two threads (each updates half of the
//! records, then each merges one index), which is the most the bench machine's two cores
//! allow. The second thread is a parked pool thread, as atoma's helpers are.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bevy_tasks::{TaskPool, TaskPoolBuilder};

use super::{Player, Rng, median, new_player};

/// The table: records in slots, found by id; two ordered indexes.
struct Bare {
    slots: Vec<Arc<Player>>,
    by_id: HashMap<u64, u32, foldhash::fast::RandomState>,
    level: Entries,
    score: Entries,
}

/// One update as a game system hands it over: an id and a boxed closure.
type Update = (u64, Box<dyn FnOnce(&mut Player) + Send>);

/// A changed record: its slot, its state before and after.
type Changed = (u32, Arc<Player>, Arc<Player>);

/// Asks the processor to load the cache line at `p`: a hint, like atoma's own.
#[inline(always)]
#[cfg_attr(target_arch = "x86_64", expect(unsafe_code, reason = "the floor prefetches as atoma's reducer does"))]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` never faults and reads nothing into the program, whatever the
    // address; SSE is part of every x86_64 target.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

impl Bare {
    fn new(records: u64) -> Self {
        let mut rng = Rng(7);
        let slots: Vec<Arc<Player>> = (1..=records).map(|id| Arc::new(new_player(id, &mut rng))).collect();
        let by_id = slots.iter().enumerate().map(|(s, p)| (p.id, s as u32)).collect();
        let index = |key: fn(&Player) -> i64| {
            let mut v: Entries = slots.iter().enumerate().map(|(s, p)| (key(p), s as u32)).collect();
            v.sort_unstable();
            v
        };
        let level = index(|p| p.level);
        let score = index(|p| p.score);
        Self { slots, by_id, level, score }
    }

    /// Copies, changes and stores anew the records of `updates` (read-only on the table).
    fn reduce(&self, updates: Vec<Update>) -> Vec<Changed> {
        let at: Vec<u32> = updates.iter().filter_map(|(id, _)| self.by_id.get(id).copied()).collect();
        let mut out = Vec::with_capacity(updates.len());
        for (i, ((_, f), &s)) in updates.into_iter().zip(&at).enumerate() {
            if let Some(&a) = at.get(i + 16) {
                prefetch(Arc::as_ptr(&self.slots[a as usize]));
            }
            if let Some(&a) = at.get(i + 8) {
                let p = &self.slots[a as usize];
                prefetch(p.name.as_ptr());
                prefetch(p.guild.as_ptr());
            }
            let old = self.slots[s as usize].clone();
            let mut next = Player::clone(&old);
            f(&mut next);
            // The `eq` index on `guild` changes only when the guild does.
            std::hint::black_box(next.guild == old.guild);
            out.push((s, old, Arc::new(next)));
        }
        out
    }

    /// Stores the new records in their slots.
    fn store(&mut self, changed: &[Changed]) {
        for (s, _, new) in changed {
            self.slots[*s as usize] = new.clone();
        }
    }
}

/// Entries of an ordered index: (key, slot).
type Entries = Vec<(i64, u32)>;

/// Takes `remove` out of `index` and puts `add` in, in one merge pass.
fn merge(index: &mut Entries, mut remove: Entries, mut add: Entries) {
    remove.sort_unstable();
    add.sort_unstable();
    let mut out = Vec::with_capacity(index.len() + add.len());
    let mut remove = remove.iter().peekable();
    let mut add = add.iter().peekable();
    for e in index.iter() {
        while let Some(a) = add.next_if(|a| *a < e) {
            out.push(*a);
        }
        if remove.next_if(|r| *r == e).is_some() {
            continue;
        }
        out.push(*e);
    }
    out.extend(add);
    *index = out;
}

/// The edits of one ordered index: (removed, added).
fn edits(changed: &[Changed], key: fn(&Player) -> i64) -> (Entries, Entries) {
    changed.iter().map(|(s, old, new)| ((key(old), *s), (key(new), *s))).unzip()
}

/// `n` updates of distinct random records, as in the batched frame.
fn updates(rng: &mut Rng, records: u64, n: usize) -> Vec<Update> {
    super::random_updates(rng, records, n)
        .into_iter()
        .filter_map(|i| match i {
            super::Intent::Update { id, level, score } => {
                let f: Box<dyn FnOnce(&mut Player) + Send> = Box::new(move |p: &mut Player| {
                    p.level = level;
                    p.score = score;
                });
                Some((id, f))
            }
            super::Intent::Create(_) => None,
        })
        .collect()
}

/// One frame on one thread.
fn frame_one(t: &mut Bare, u: Vec<Update>) -> Vec<Changed> {
    let changed = t.reduce(u);
    t.store(&changed);
    let (rl, al) = edits(&changed, |p| p.level);
    merge(&mut t.level, rl, al);
    let (rs, as_) = edits(&changed, |p| p.score);
    merge(&mut t.score, rs, as_);
    changed
}

/// The floor's second thread: parked between frames, as atoma's helpers are (a thread
/// spawned per frame starts 1–3 ms late on the bench machine, more than the work it takes).
fn helper() -> &'static TaskPool {
    static POOL: OnceLock<TaskPool> = OnceLock::new();
    POOL.get_or_init(|| TaskPoolBuilder::new().num_threads(1).thread_name("floor-helper".into()).build())
}

/// One frame on two threads: each reduces half, then each merges one index.
fn frame_two(t: &mut Bare, mut u: Vec<Update>) -> Vec<Changed> {
    let back = u.split_off(u.len() / 2);
    let (mut changed, mut rest) = (Vec::new(), Vec::new());
    let table = &*t;
    helper().scope(|scope| {
        let rest = &mut rest;
        scope.spawn(async move { *rest = table.reduce(back) });
        changed = table.reduce(u);
    });
    changed.extend(rest);
    t.store(&changed);
    let Bare { level, score, .. } = t;
    let c = &changed;
    helper().scope(|scope| {
        scope.spawn(async move {
            let (r, a) = edits(c, |p| p.score);
            merge(score, r, a);
        });
        let (r, a) = edits(c, |p| p.level);
        merge(level, r, a);
    });
    changed
}

/// The medians of `runs` floor frames of `batch` updates over `records`: (one thread, two).
pub(crate) fn measure(records: u64, batch: usize, runs: usize) -> (Duration, Duration) {
    let mut t = Bare::new(records);
    let mut rng = Rng(42);
    let mut kept: Vec<Vec<Changed>> = Vec::new();
    let mut one = Vec::with_capacity(runs);
    let mut two = Vec::with_capacity(runs);
    // The first two frames warm up (untimed); the variants alternate.
    for round in 0..runs + 2 {
        for two_threads in [false, true] {
            let u = updates(&mut rng, records, batch);
            let start = Instant::now();
            let changed = if two_threads { frame_two(&mut t, u) } else { frame_one(&mut t, u) };
            let d = start.elapsed();
            if round >= 2 {
                if two_threads { two.push(d) } else { one.push(d) }
            }
            // History keeps the replaced records for a while; they are freed untimed.
            kept.push(changed);
            if kept.len() > 4 {
                kept.remove(0);
            }
        }
    }
    assert!(t.level.len() == records as usize && t.score.len() == records as usize, "an index lost entries");
    assert!(t.level.windows(2).all(|w| w[0] < w[1]), "the level index is out of order");
    let check = |s: u32| t.level.binary_search(&(t.slots[s as usize].level, s)).is_ok();
    assert!((0..records as u32).all(check), "the level index does not match the records");
    (median(&one), median(&two))
}
