//! Progress of long work (an image import), reported to whoever shows it.

/// Receives progress of an image import. Every method has a default that
/// ignores it.
pub trait Progress {
    /// Layer `index` of `count` starts; `size` is its blob's size if known.
    fn layer_start(&self, _index: usize, _count: usize, _size: Option<u64>) {}
    /// `bytes` more of the current blob were read.
    fn advance(&self, _bytes: u64) {}
    /// Layer `index` is in the store; `reused`: it was already there.
    fn layer_done(&self, _index: usize, _reused: bool) {}
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}
