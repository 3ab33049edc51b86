//! The Bevy side of sync: the `SyncStatus` resource, `SyncEvent` messages, the `SyncControl`
//! system parameter (barriers, pull / push now, dead letters), and the `Receive` system that
//! routes what the sync lanes learned to the stores.

use std::collections::HashSet;

use bevy_ecs::message::MessageWriter;
use bevy_ecs::resource::Resource;
use bevy_ecs::system::{Res, ResMut, SystemParam};
use crossbeam_channel::Receiver;

use super::flush::{IoRuntimeRes, Outgoing};
use crate::io::outbox::DeadLetter;
use crate::io::{SyncEngine, SyncEvent, SyncMode, SyncOutput};

/// What the sync engine is doing, for a game's UI. Updated every frame from the lanes.
#[derive(Resource, Debug, Clone, Default)]
pub struct SyncStatus {
    /// The mode (`None` until the lanes start).
    pub mode: Option<SyncMode>,
    /// Writes waiting in the outbox.
    pub pending: usize,
    /// Writes pushed and not yet answered.
    pub in_flight: usize,
    /// Writes that will not go through by themselves: inspect, then retry or drop them with
    /// [`SyncControl`].
    pub dead_letters: Vec<DeadLetter>,
    /// The pull cursor.
    pub cursor: Option<String>,
    /// Whether the notification stream is open.
    pub connected: bool,
    /// The last error a lane met.
    pub last_error: Option<String>,
    /// Barriers reached so far.
    pub barriers_reached: HashSet<u64>,
}

impl SyncStatus {
    /// Whether a barrier was reached.
    pub fn reached(&self, barrier: u64) -> bool {
        self.barriers_reached.contains(&barrier)
    }
}

/// The link between the plugin and the sync engine.
#[derive(Resource)]
pub(crate) struct SyncLink {
    pub engine: SyncEngine,
    pub rx: Receiver<SyncOutput>,
    pub started: bool,
    /// Barriers asked for this frame, started on the flush thread after the frame's writes.
    pub barriers: Vec<u64>,
}

/// Starts the frame's barriers once its writes went to the engine (`Last`, before `flush`:
/// the flush thread starts them after it handed the frame's writes over).
/// Run condition of [`receive_sync`]: the lanes are not started yet, or sent something.
pub(crate) fn has_sync_output(link: Res<SyncLink>) -> bool {
    !link.started || !link.rx.is_empty()
}

/// Run condition of [`start_barriers`].
pub(crate) fn has_barriers(link: Res<SyncLink>) -> bool {
    !link.barriers.is_empty()
}

pub(crate) fn start_barriers(mut link: ResMut<SyncLink>, io: Res<IoRuntimeRes>, mut outgoing: ResMut<Outgoing>) {
    if link.barriers.is_empty() {
        return;
    }
    let ids = std::mem::take(&mut link.barriers);
    if let Some(h) = io.io.handle() {
        for id in ids {
            let engine = link.engine.clone();
            let h = h.clone();
            outgoing.after(Box::new(move || engine.start_barrier(id, &h)));
        }
    }
}

/// The `Receive` system: starts the lanes on the first frame (once every store is
/// registered), then routes their output: changes to the stores' inbound queues, events to
/// `SyncStatus` and `SyncEvent` messages.
pub(crate) fn receive_sync(
    mut link: ResMut<SyncLink>,
    io: Res<IoRuntimeRes>,
    mut status: ResMut<SyncStatus>,
    mut events: MessageWriter<SyncEvent>,
) {
    let link = &mut *link;
    if !link.started {
        if let Some(h) = io.io.handle() {
            link.engine.start(&h);
        }
        link.started = true;
    }
    if link.rx.is_empty() {
        return;
    }
    for out in link.rx.try_iter() {
        match out {
            // Each synced store has a sink: its changes go there, decoded on the lane's thread.
            SyncOutput::Apply { .. } => {}
            SyncOutput::Event(e) => {
                match &e {
                    SyncEvent::Started { mode } => status.mode = Some(*mode),
                    SyncEvent::Outbox { stats, dead } => {
                        status.pending = stats.pending;
                        status.in_flight = stats.in_flight;
                        status.dead_letters = dead.clone();
                    }
                    SyncEvent::Pulled { cursor, .. } => status.cursor = Some(cursor.clone()),
                    SyncEvent::Connected => status.connected = true,
                    SyncEvent::Disconnected { error } => {
                        status.connected = false;
                        status.last_error = Some(error.clone());
                    }
                    SyncEvent::PushFailed { error } | SyncEvent::PullFailed { error } => {
                        status.last_error = Some(error.to_string());
                    }
                    SyncEvent::Undecodable { resource, id, error } => {
                        status.last_error = Some(format!("{resource} record {id} was not applied: {error}"));
                    }
                    SyncEvent::BarrierReached { id } => {
                        status.barriers_reached.insert(*id);
                    }
                    _ => {}
                }
                events.write(e);
            }
        }
    }
}

/// Controls the sync engine from a system.
#[derive(SystemParam)]
pub struct SyncControl<'w> {
    link: ResMut<'w, SyncLink>,
}

impl SyncControl<'_> {
    /// A barrier for a loading screen: `SyncStatus::reached(id)` turns true (and a
    /// `SyncEvent::BarrierReached` arrives) once every write made so far — this frame's
    /// included — is acked (or dead) and pulled back.
    pub fn barrier(&mut self) -> u64 {
        let id = self.link.engine.new_barrier();
        // Started after this frame's writes reach the engine.
        self.link.barriers.push(id);
        id
    }
    /// Pulls now.
    pub fn pull_now(&self) {
        self.link.engine.pull_now();
    }
    /// Pushes now.
    pub fn push_now(&self) {
        self.link.engine.push_now();
    }
    /// Puts a dead letter back in the outbox (true if it existed).
    pub fn retry_dead(&self, seq: u64) -> bool {
        self.link.engine.resolve_dead(seq, true).unwrap_or(false)
    }
    /// Drops a dead letter for good (true if it existed).
    pub fn drop_dead(&self, seq: u64) -> bool {
        self.link.engine.resolve_dead(seq, false).unwrap_or(false)
    }
}
