//! thinlayer: container storage at block level.
//!
//! # The model
//!
//! ```text
//! root (--root, 0700)
//! ├── pool            one dm thin-pool: data + metadata, loop-backed sparse
//! │                   files by default (crate `thinpool`)
//! │   ├── base        a thin device with an empty filesystem (ext4 or xfs)
//! │   └── layers      every layer is a thin snapshot of its parent (or of
//! │                   the base): O(1) to make, copy-on-write per block
//! ├── thin/           the layer store: layer and image records, journal
//! ├── overlay/        the overlay driver's store: the same model, layers
//! │                   as directories stacked with overlayfs
//! ├── containers/     a container = an init layer + a writable layer over
//! │                   an image's top layer, in one driver's store
//! └── volumes/        data that outlives containers: directories, mounts,
//!                     or thin devices of their own in the pool
//! ```
//!
//! A [`store::Store`] keeps the graph (layers, parents, names, images) and
//! makes every change a journaled transaction; a [`driver::Driver`] owns the
//! resource behind each layer (for [`driver::thin::ThinDriver`], a thin
//! device). Layers are filled from OCI changesets ([`changeset`]), and
//! images come from `docker save` archives or OCI layouts ([`image`]).
//! [`container::Containers`] makes containers from images and mounts their
//! [`volume`]s in them; it holds the lock taken before any store's.
//! [`config::Config`] is the configuration file a front end reads its
//! defaults from.

#![warn(missing_docs)]

pub mod changeset;
pub mod config;
pub mod container;
pub mod driver;
pub mod error;
pub mod fsys;
pub mod image;
pub mod import;
pub mod layer;
pub mod mount;
pub mod phase;
pub mod pool;
pub mod progress;
pub mod root;
pub mod save;
pub mod snapshots;
pub mod store;
pub mod system;
pub mod text;
pub mod util;
pub mod volume;

pub use error::{Error, Result};
pub use root::Root;
pub use store::Store;
pub use thinpool;
