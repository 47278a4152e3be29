//! The bottom room: random ids, the clock, and running the external tools
//! that own a format (mkfs, resize2fs, mount(8)). Everything above uses
//! these, so each is done one way.

pub mod du;
pub mod ids;
pub mod time;
pub mod tool;
