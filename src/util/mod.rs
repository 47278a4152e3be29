//! The bottom room: random ids, the clock, and running the external tools
//! that own a format (mkfs, resize2fs, mount(8)). Everything above uses
//! these, so each is done one way.

pub mod du;
pub mod ids;
#[cfg(test)]
pub(crate) mod prop;
pub mod text;
pub mod time;
pub mod tool;
