//! Entity mirroring (opt-in per store): each record as an entity with a `Mirror<T>` component.
//! The rules (capture, publish, change detection, despawning) are on [`Mirror`].

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};

use bevy_app::{App, PostUpdate};
use bevy_ecs::change_detection::DetectChangesMut;
use bevy_ecs::component::Component;
use bevy_ecs::entity::Entity;
use bevy_ecs::lifecycle::RemovedComponents;
use bevy_ecs::message::{MessageReader, MessageWriter};
use bevy_ecs::query::Changed;
use bevy_ecs::resource::Resource;
use bevy_ecs::schedule::IntoScheduleConfigs;
use bevy_ecs::system::{Commands, Query, Res, ResMut};
use serde_json::Value as Json;

use super::messages::{Ticket, WriteIntent, WriteSettled};
use super::plugin::AtomaSystems;
use super::reduce::StoreState;
use super::store::Store;
use super::writer::{WriteOptions, meta};
use crate::core::{Entry, Op, Origin, Record, UpdateWith};

/// A record mirrored onto an entity. Change it from a game system and atoma writes the change
/// to the store; store changes (remote ones included) update, spawn or despawn entities.
///
/// Opt in per store with [`StoreConfig::mirror`](crate::runtime::StoreConfig::mirror): each
/// record of the store is then an entity carrying `Mirror<T>` (the record) and [`MirrorOf<T>`]
/// (its id and server version), from start-up on. [`MirrorEntities<T>`] maps ids to entities.
///
/// **Game → store** (`AtomaSystems::Capture`, `PostUpdate`, before the reduce): a mirrored
/// entity whose `Mirror<T>` changed (`Changed<Mirror<T>>`) becomes one update intent (a
/// replace, origin [`Origin::Mirror`](crate::core::Origin::Mirror)) — but only when its value
/// really differs from the store's copy (and from the value atoma already sent for it and is
/// waiting to hear about). The comparison
/// is on the records' JSON (`T` has no `PartialEq` bound). A rejected write (a failed
/// validation, a changed id) settles as an error and the entity is refreshed from the store.
///
/// **Store → game** (`AtomaSystems::Publish`, after the reduce): every record a commit
/// changed — the game's own writes, remote changes, write-backs, rollbacks, records a
/// [`Reader`](crate::runtime::Reader) brought in — is brought onto its entity: spawned when new,
/// despawned when deleted, and its `Mirror<T>` replaced when its value differs.
///
/// **Change detection and echo.** When atoma replaces a `Mirror<T>` it does so as an ordinary
/// mutable access, so game systems see remote changes with `Changed<Mirror<T>>` (and new
/// entities with `Added<Mirror<T>>`). That change is also seen by the capture system the next
/// frame, but the value then equals the store's copy, so no intent is made: the value
/// comparison is what prevents an echo, not bypassing change detection. atoma writes the
/// component only when the value differs, so a game's own change does not come back as a
/// second `Changed`. (`MirrorOf<T>` is updated, and marked changed, when the version moves.)
///
/// **Despawning** a mirrored entity does **not** delete the record: the entity is a view of the
/// store, and atoma spawns a fresh one in the next `Publish` (a `Mirror<T>` or `MirrorOf<T>`
/// removed from a live entity is put back on it).
/// Delete records with [`Writer::delete`](crate::runtime::Writer::delete); their entity is
/// despawned in the same frame's `Publish`. Entities the game spawns with a `Mirror<T>` of its
/// own (without a `MirrorOf<T>`, which only atoma can make) are not mirrored: create records
/// with [`Writer::create`](crate::runtime::Writer::create) and their entity appears.
///
/// Change mirrors in `Update` (or anywhere before `AtomaSystems::Capture`): a change made after
/// the capture of a frame is picked up the next frame, unless a store change of that record
/// replaces it first.
#[derive(Component, Debug, Clone)]
pub struct Mirror<T: Record>(pub T);

impl<T: Record> Deref for Mirror<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Record> DerefMut for Mirror<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// Which record a mirrored entity shows, and the record's server version. Only atoma makes and
/// changes it: the id here, not the one inside [`Mirror<T>`], decides which record a change
/// goes to.
#[derive(Component)]
pub struct MirrorOf<T: Record> {
    id: T::Id,
    version: u64,
}

impl<T: Record> MirrorOf<T> {
    /// The record's id.
    pub fn id(&self) -> &T::Id {
        &self.id
    }
    /// The record's server version (0: never confirmed).
    pub fn version(&self) -> u64 {
        self.version
    }
}

impl<T: Record> std::fmt::Debug for MirrorOf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorOf").field("id", &self.id).field("version", &self.version).finish()
    }
}

/// The entity of each mirrored record of store `T` (a resource, present when the store mirrors).
#[derive(Resource)]
pub struct MirrorEntities<T: Record> {
    by_id: HashMap<T::Id, Entity>,
    by_entity: HashMap<Entity, T::Id>,
    /// The value last sent for a record, not settled yet (by id).
    pending: HashMap<T::Id, (Ticket, Json)>,
    /// Unsettled intents made by the capture system.
    tickets: HashMap<Ticket, T::Id>,
}

impl<T: Record> Default for MirrorEntities<T> {
    fn default() -> Self {
        Self { by_id: HashMap::new(), by_entity: HashMap::new(), pending: HashMap::new(), tickets: HashMap::new() }
    }
}

impl<T: Record> MirrorEntities<T> {
    /// The entity of a record.
    pub fn get(&self, id: &T::Id) -> Option<Entity> {
        self.by_id.get(id).copied()
    }
    /// The record an entity mirrors.
    pub fn id_of(&self, entity: Entity) -> Option<&T::Id> {
        self.by_entity.get(&entity)
    }
    /// How many records are mirrored.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
    /// Whether no record is mirrored.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
    /// Each mirrored id and its entity, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&T::Id, Entity)> {
        self.by_id.iter().map(|(id, e)| (id, *e))
    }

    fn bind(&mut self, id: T::Id, entity: Entity) {
        if let Some(old) = self.by_id.insert(id.clone(), entity) {
            self.by_entity.remove(&old);
        }
        self.by_entity.insert(entity, id);
    }

    fn forget(&mut self, id: &T::Id) {
        if let Some(e) = self.by_id.remove(id) {
            self.by_entity.remove(&e);
        }
        self.pending.remove(id);
    }
}

/// Whether two records have the same JSON form (`None`: one does not serialize).
fn same<T: Record>(a: &T, b: &T) -> Option<bool> {
    Some(serde_json::to_value(a).ok()? == serde_json::to_value(b).ok()?)
}

fn bundle<T: Record>(entry: &Entry<T>) -> (Mirror<T>, MirrorOf<T>) {
    (Mirror(T::clone(&entry.record)), MirrorOf { id: entry.record.id().clone(), version: entry.version })
}

/// Sets up mirroring of store `T` (called by `add_store` when the config asks for it): spawns
/// the entities of the records the store starts with, and adds the capture and publish systems.
pub(crate) fn register<T: Record>(app: &mut App) {
    let world = app.world_mut();
    let entries: Vec<Entry<T>> =
        world.get_resource::<Store<T>>().map(|s| s.table.iter().cloned().collect()).unwrap_or_default();
    let mut index = MirrorEntities::<T>::default();
    for entry in &entries {
        let entity = world.spawn(bundle(entry)).id();
        index.bind(entry.record.id().clone(), entity);
    }
    world.insert_resource(index);
    app.add_systems(PostUpdate, capture::<T>.in_set(AtomaSystems::Capture))
        .add_systems(PostUpdate, publish::<T>.in_set(AtomaSystems::Publish));
}

/// Mirrored entities whose `Mirror<T>` changed since the capture system last ran.
type ChangedMirrors<'w, 's, T> = Query<'w, 's, (Entity, &'static Mirror<T>, &'static MirrorOf<T>), Changed<Mirror<T>>>;

/// `Capture`: changed mirrors whose value differs from the store's become update intents.
fn capture<T: Record>(
    changed: ChangedMirrors<T>,
    store: Res<Store<T>>,
    mut mirror: ResMut<MirrorEntities<T>>,
    mut intents: MessageWriter<WriteIntent<T>>,
) {
    for (entity, m, of) in &changed {
        // Only the entity atoma keeps for the record (not a copy the game cloned).
        if mirror.by_id.get(&of.id) != Some(&entity) {
            continue;
        }
        let Some(current) = store.get(&of.id) else { continue };
        let Ok(value) = serde_json::to_value(&m.0) else { continue };
        if serde_json::to_value(current).is_ok_and(|c| c == value)
            || mirror.pending.get(&of.id).is_some_and(|(_, sent)| *sent == value)
        {
            continue;
        }
        let ticket = Ticket::next();
        let op = Op::Update { id: of.id.clone(), base_version: None, with: UpdateWith::Replace(m.0.clone()) };
        intents.write(WriteIntent { ticket, op, meta: meta(&WriteOptions::default(), Origin::Mirror) });
        // An earlier unsettled ticket of the record stays in `tickets` until it settles.
        let mirror = &mut *mirror;
        mirror.pending.insert(of.id.clone(), (ticket, value));
        mirror.tickets.insert(ticket, of.id.clone());
    }
}

/// `Publish`: entities catch up with the records the frame's commit changed, with failed
/// mirror writes, and with mirrored entities the game despawned.
fn publish<T: Record>(
    mut state: ResMut<StoreState<T>>,
    store: Res<Store<T>>,
    mut mirror: ResMut<MirrorEntities<T>>,
    mut settled: MessageReader<WriteSettled<T>>,
    mut removed: (RemovedComponents<Mirror<T>>, RemovedComponents<MirrorOf<T>>),
    mut mirrors: Query<(&mut Mirror<T>, &mut MirrorOf<T>)>,
    mut commands: Commands,
) {
    if state.mirror_dirty.is_empty() && settled.is_empty() && removed.0.is_empty() && removed.1.is_empty() {
        return;
    }
    let mut refresh = std::mem::take(&mut state.bypass_change_detection().mirror_dirty);
    let mirror = &mut *mirror;
    if mirror.tickets.is_empty() {
        settled.clear();
    } else {
        for s in settled.read() {
            let Some(id) = mirror.tickets.remove(&s.ticket) else { continue };
            if mirror.pending.get(&id).is_some_and(|(t, _)| *t == s.ticket) {
                mirror.pending.remove(&id);
            }
            if s.result.is_err() {
                refresh.push(id);
            }
        }
    }
    for entity in removed.0.read().chain(removed.1.read()) {
        if let Some(id) = mirror.by_entity.get(&entity) {
            refresh.push(id.clone());
        }
    }
    refresh.sort_unstable();
    refresh.dedup();
    for id in refresh.drain(..) {
        let entity = mirror.by_id.get(&id).copied();
        match (store.entry(&id), entity) {
            (None, None) => {}
            (None, Some(e)) => {
                mirror.forget(&id);
                if let Ok(mut ec) = commands.get_entity(e) {
                    ec.try_despawn();
                }
            }
            (Some(entry), Some(e)) => {
                if let Ok((mut m, mut of)) = mirrors.get_mut(e) {
                    match same(&m.0, &*entry.record) {
                        Some(true) => {}
                        Some(false) => m.0 = T::clone(&entry.record),
                        // Cannot compare: refresh without a change the capture would act on.
                        None => m.bypass_change_detection().0 = T::clone(&entry.record),
                    }
                    if of.version != entry.version {
                        of.version = entry.version;
                    }
                } else if let Ok(mut ec) = commands.get_entity(e) {
                    // The game removed the components but kept the entity: put them back.
                    ec.try_insert(bundle(entry));
                } else {
                    let new = commands.spawn(bundle(entry)).id();
                    mirror.bind(id, new);
                }
            }
            (Some(entry), None) => {
                let new = commands.spawn(bundle(entry)).id();
                mirror.bind(id, new);
            }
        }
    }
    // Give the buffer back (it keeps its capacity); reduce may have added nothing since.
    let state = state.bypass_change_detection();
    if state.mirror_dirty.is_empty() {
        state.mirror_dirty = refresh;
    }
}
