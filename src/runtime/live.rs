//! `LiveQuery<T>`: a component whose results atoma refreshes in frames where its store
//! changed (and when the query itself is new or changed) — never otherwise.

use bevy_ecs::change_detection::DetectChangesMut;
use bevy_ecs::component::Component;
use bevy_ecs::system::{Query as EcsQuery, Res};

use super::store::Store;
use crate::core::{Compiled, PageInfo, Query, QueryError, Record};

/// A query kept fresh by atoma. Spawn it on an entity; read `ids()` / `records(&store)`.
#[derive(Component)]
pub struct LiveQuery<T: Record> {
    query: Query,
    compiled: Result<Compiled, QueryError>,
    ids: Vec<T::Id>,
    page_info: PageInfo,
    seen: Option<u64>,
    refreshes: u64,
}

impl<T: Record> LiveQuery<T> {
    /// A live query.
    pub fn new(query: Query) -> Self {
        let compiled = query.compile();
        Self { query, compiled, ids: Vec::new(), page_info: PageInfo::default(), seen: None, refreshes: 0 }
    }

    /// Replaces the query (results refresh this frame).
    pub fn set_query(&mut self, query: Query) {
        self.compiled = query.compile();
        self.query = query;
        self.seen = None;
    }

    /// The query.
    pub fn query(&self) -> &Query {
        &self.query
    }

    /// The matching ids, in order.
    pub fn ids(&self) -> &[T::Id] {
        &self.ids
    }

    /// Paging of the results.
    pub fn page_info(&self) -> &PageInfo {
        &self.page_info
    }

    /// Why the query is invalid, if it is.
    pub fn error(&self) -> Option<&QueryError> {
        self.compiled.as_ref().err()
    }

    /// The matching records, in order.
    pub fn records<'s>(&'s self, store: &'s Store<T>) -> impl Iterator<Item = &'s T> + 's {
        self.ids.iter().filter_map(|id| store.get(id))
    }

    /// How many times the results were recomputed.
    pub fn refreshes(&self) -> u64 {
        self.refreshes
    }
}

/// The `Publish` system that refreshes live queries of store `T`.
pub(crate) fn refresh_live<T: Record>(store: Res<Store<T>>, mut live: EcsQuery<&mut LiveQuery<T>>) {
    let rev = store.revision();
    for mut lq in &mut live {
        if lq.seen == Some(rev) {
            continue;
        }
        let lq_ref = lq.bypass_change_detection();
        lq_ref.seen = Some(rev);
        let Ok(q) = &lq_ref.compiled else { continue };
        let Ok(page) = store.query_compiled(q) else { continue };
        let ids: Vec<T::Id> = page.records().map(|r| r.id().clone()).collect();
        lq_ref.refreshes += 1;
        if ids != lq_ref.ids || page.page_info != lq_ref.page_info {
            lq_ref.ids = ids;
            lq_ref.page_info = page.page_info;
            lq.set_changed();
        }
    }
}
