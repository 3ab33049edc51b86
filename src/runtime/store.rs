//! `Store<T>`: a store's records and indexes as a Bevy resource any system can query.

use bevy_ecs::resource::Resource;

use crate::core::{Compiled, Entry, Explain, Include, Included, Query, QueryError, QueryPage, Record, Table, include};

/// The records of one store, indexed. Read it with `Res<Store<T>>`; write through
/// [`Writer<T>`](crate::runtime::Writer).
#[derive(Resource)]
pub struct Store<T: Record> {
    pub(crate) table: Table<T>,
    pub(crate) revision: u64,
}

impl<T: Record> Store<T> {
    pub(crate) fn new(table: Table<T>) -> Self {
        Self { table, revision: 0 }
    }

    /// The record with this id.
    pub fn get(&self, id: &T::Id) -> Option<&T> {
        self.table.get(id)
    }

    /// The record with this id and its server version.
    pub fn entry(&self, id: &T::Id) -> Option<&Entry<T>> {
        self.table.entry(id)
    }

    /// Whether the store holds this id.
    pub fn contains(&self, id: &T::Id) -> bool {
        self.table.contains(id)
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// All records, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.table.iter().map(|e| &*e.record)
    }

    /// Runs a query over the indexes (synchronous, local).
    pub fn query(&self, q: &Query) -> Result<QueryPage<'_, T>, QueryError> {
        self.table.query(&q.compile()?)
    }

    /// Runs an already compiled query (compile once, run every frame).
    pub fn query_compiled(&self, q: &Compiled) -> Result<QueryPage<'_, T>, QueryError> {
        self.table.query(q)
    }

    /// Says how a query runs: which indexes it uses.
    pub fn explain(&self, q: &Query) -> Result<Explain, QueryError> {
        self.table.explain(&q.compile()?)
    }

    /// Resolves a relation for a page of this store's records against another store, with one
    /// indexed lookup.
    pub fn include<'t, U: Record>(
        &self,
        inc: &Include,
        page: &[&T],
        target: &'t Store<U>,
    ) -> Result<Included<'t, U>, QueryError> {
        include(inc, page, &target.table)
    }

    /// Grows by one on every commit: compare to see whether the store changed.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The underlying table.
    pub fn table(&self) -> &Table<T> {
        &self.table
    }
}
