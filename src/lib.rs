//! thinlayer: container storage at block level.
//!
//! # The model
//!
//! ```text
//! root (--root, 0700)
//! └── pool            one dm thin-pool: data + metadata, loop-backed sparse
//!     │               files by default (crate `thinpool`)
//!     └── thin device blocks allocated on first write, 64 KiB by default
//!         └── layer   an image or container layer is a thin snapshot of
//!                     its parent: O(1) to make, copy-on-write per block
//! volumes             data that outlives containers, beside the layers
//! ```
//!
//! This crate is the library behind the `thinlayer` command: [`Root`] is
//! the state directory and the way in to the pool. The pool and its thin
//! devices are managed by the `thinpool` crate, re-exported here.

pub mod error;
pub mod root;

pub use error::{Error, Result};
pub use root::Root;
pub use thinpool;
