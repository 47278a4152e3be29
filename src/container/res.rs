//! The stores and the pool a containers' command needs, opened when first
//! needed and always in the lock order of [`crate::root`]: a store's lock,
//! then the pool's. The thin store is opened with the pool, and the same
//! [`PoolHandle`] serves thin volumes.

use std::path::PathBuf;

use super::ContainerRecord;
use crate::driver::overlay::OverlayOptions;
use crate::driver::DriverKind;
use crate::error::Result;
use crate::pool::PoolHandle;
use crate::root::Root;
use crate::store::{ParkedStore, Store};
use crate::volume::{PoolAccess, Volumes};

pub(super) struct Res<'r> {
    pub(super) root: &'r Root,
    stores: Vec<(DriverKind, OverlayOptions, Store)>,
    /// The pool of the open thin store.
    pool: Option<PoolHandle>,
    /// Stores let go of while the containers' lock was ([`Res::park`]),
    /// with the pool of the thin one.
    parked: Vec<(DriverKind, OverlayOptions, ParkedStore)>,
    parked_pool: Option<PoolHandle>,
    volumes_dir: PathBuf,
    reconciled: bool,
    pub(super) repairs: Vec<String>,
}

impl<'r> Res<'r> {
    pub(super) fn new(root: &'r Root) -> Res<'r> {
        Res {
            root,
            stores: vec![],
            pool: None,
            parked: vec![],
            parked_pool: None,
            volumes_dir: root.volumes_dir(),
            reconciled: false,
            repairs: vec![],
        }
    }

    /// The store of `kind`; overlay stores mount with `opts`.
    pub(super) fn store(&mut self, kind: DriverKind, opts: &OverlayOptions) -> Result<&mut Store> {
        let opts = match kind {
            DriverKind::Thin => OverlayOptions::default(),
            DriverKind::Overlay => opts.clone(),
        };
        if let Some(i) = self
            .stores
            .iter()
            .position(|(k, o, _)| *k == kind && *o == opts)
        {
            return Ok(&mut self.stores[i].2);
        }
        if let Some(i) = self
            .parked
            .iter()
            .position(|(k, o, _)| *k == kind && *o == opts)
        {
            let (_, _, parked) = self.parked.swap_remove(i);
            let pool = match kind {
                DriverKind::Thin => self.parked_pool.take(),
                DriverKind::Overlay => None,
            };
            if let Some(store) = parked.reopen()? {
                if pool.is_some() {
                    self.pool = pool;
                }
                self.keep(kind, opts, store);
                let last = self.stores.len() - 1;
                return Ok(&mut self.stores[last].2);
            }
        }
        match kind {
            DriverKind::Thin => {
                self.open_thin()?;
            }
            DriverKind::Overlay => {
                let store = self.root.open_store(kind, &opts)?;
                self.keep(kind, opts, store);
            }
        }
        let last = self.stores.len() - 1;
        Ok(&mut self.stores[last].2)
    }

    /// Opens the thin store and, with it, the pool; returns the pool.
    fn open_thin(&mut self) -> Result<PoolHandle> {
        let (store, pool) = self.root.open_thin_store()?;
        self.keep(DriverKind::Thin, OverlayOptions::default(), store);
        self.pool = Some(pool.clone());
        Ok(pool)
    }

    /// Keeps a newly opened store, closing the one of the same driver
    /// (each holds its store's lock), and reports its repairs.
    fn keep(&mut self, kind: DriverKind, opts: OverlayOptions, store: Store) {
        self.stores.retain(|(k, _, _)| *k != kind);
        self.repairs.extend(store.repairs().iter().cloned());
        self.stores.push((kind, opts, store));
    }

    /// The pool, opening the thin store (which opens it) if needed.
    fn thin_pool(&mut self) -> Result<PoolHandle> {
        if self.pool.is_none() && self.parked.iter().any(|(k, _, _)| *k == DriverKind::Thin) {
            self.store(DriverKind::Thin, &OverlayOptions::default())?;
        }
        match &self.pool {
            Some(p) => Ok(p.clone()),
            None => self.open_thin(),
        }
    }

    /// The store holding `rec`'s layers.
    pub(super) fn open_store(&mut self, rec: &ContainerRecord) -> Result<&mut Store> {
        self.store(rec.driver, &rec.overlay_options)
    }

    /// Closes every store and the pool (the caller takes them itself).
    pub(super) fn release(&mut self) {
        self.stores.clear();
        self.pool = None;
        self.parked.clear();
        self.parked_pool = None;
    }

    /// Lets go of every store's lock, keeping what each read (and the
    /// thin store's pool) for when it is needed again: then it takes its
    /// lock back and, if others changed the store meanwhile, reads it anew
    /// ([`ParkedStore::reopen`]) without opening its driver again.
    pub(super) fn park(&mut self) {
        for (kind, opts, store) in self.stores.drain(..) {
            self.parked.retain(|(k, o, _)| !(*k == kind && *o == opts));
            self.parked.push((kind, opts, store.park()));
        }
        if let Some(pool) = self.pool.take() {
            self.parked_pool = Some(pool);
        }
    }
}

impl PoolAccess for Res<'_> {
    fn pool(&mut self) -> Result<PoolHandle> {
        let pool = self.thin_pool()?;
        if !self.reconciled {
            self.reconciled = true;
            let freed = Volumes::at(&self.volumes_dir).reconcile_thin(&pool)?;
            self.repairs
                .extend(freed.into_iter().map(|f| format!("freed {f}")));
        }
        Ok(pool)
    }
}
