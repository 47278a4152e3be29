//! Every device-mapper name and uuid a pool uses is built here.
//!
//! A name is `thinlayer-<format>-<pool id>-<role>`: the prefix says the
//! device is ours, the format version lets a later layout coexist, and the
//! pool id (random, made at `pool create`) keeps two roots on one machine
//! apart. Cleanup lists the kernel's devices and touches only names that
//! start with [`PoolNames::prefix`]. The dm uuid carries the same parts and
//! is checked when an existing device is adopted, so a device that merely
//! has a familiar name is never mistaken for ours.

use std::fmt;

use devicemapper::{DmName, DmNameBuf, DmUuidBuf};
use serde::{Deserialize, Serialize};

use crate::units::ThinId;

/// The prefix of every dm name this crate makes.
pub const PREFIX: &str = "thinlayer";
/// Bumped when the naming scheme changes.
pub const FORMAT: u32 = 1;
/// The kernel's limit for dm names and uuids (DM_NAME_LEN - 1).
pub const DM_NAME_MAX: usize = 127;

/// A pool's identity: 16 lowercase hex digits, random at creation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PoolId(String);

impl PoolId {
    /// A new random id from the kernel's random source.
    pub fn generate() -> std::io::Result<PoolId> {
        let mut buf = [0u8; 8];
        getrandom(&mut buf)?;
        Ok(PoolId(buf.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// The id's 16 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

impl TryFrom<String> for PoolId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            Ok(PoolId(s))
        } else {
            Err(format!("'{s}' is not a pool id (16 lowercase hex digits)"))
        }
    }
}

impl From<PoolId> for String {
    fn from(p: PoolId) -> String {
        p.0
    }
}

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a device is for within its pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The linear device over the metadata backing.
    Meta,
    /// The linear device over the data backing.
    Data,
    /// The thin-pool target.
    Pool,
    /// A thin device of the pool.
    Thin(ThinId),
}

impl Role {
    /// Where a device of this role comes in a pool's teardown: thin
    /// devices first (they hold the pool open), then the pool, then the
    /// linear devices it holds open.
    pub fn removal_order(self) -> u8 {
        match self {
            Role::Thin(_) => 0,
            Role::Pool => 1,
            Role::Data => 2,
            Role::Meta => 3,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Meta => f.write_str("meta"),
            Role::Data => f.write_str("data"),
            Role::Pool => f.write_str("pool"),
            Role::Thin(id) => write!(f, "thin-{id}"),
        }
    }
}

/// Builds the names of one pool's devices.
#[derive(Clone, Debug)]
pub struct PoolNames {
    id: PoolId,
}

impl PoolNames {
    /// The names of the devices of pool `id`.
    pub fn new(id: PoolId) -> PoolNames {
        PoolNames { id }
    }

    /// Every device of this pool has a name starting with this.
    pub fn prefix(&self) -> String {
        format!("{PREFIX}-{FORMAT}-{}-", self.id)
    }

    /// The dm name of the device of `role`, as a string.
    pub fn name_string(&self, role: Role) -> String {
        format!("{}{role}", self.prefix())
    }

    /// The dm name of the device of `role`.
    pub fn name(&self, role: Role) -> DmNameBuf {
        let s = self.name_string(role);
        // The longest role is `thin-16777215`: the name is at most 43 bytes,
        // far below the kernel's 127, and uses only [a-z0-9-].
        debug_assert!(s.len() <= DM_NAME_MAX);
        DmNameBuf::new(s).expect("dm names built here are short and plain ascii")
    }

    /// The dm uuid of the device of `role`.
    pub fn uuid(&self, role: Role) -> DmUuidBuf {
        let s = format!("{}-{FORMAT}-{}-{role}", PREFIX.to_uppercase(), self.id);
        DmUuidBuf::new(s).expect("dm uuids built here are short and plain ascii")
    }

    /// Which role a kernel device name plays in this pool, if it is ours.
    pub fn role_of(&self, name: &DmName) -> Option<Role> {
        let rest = name.to_string();
        let rest = rest.strip_prefix(&self.prefix())?;
        match rest {
            "meta" => Some(Role::Meta),
            "data" => Some(Role::Data),
            "pool" => Some(Role::Pool),
            _ => {
                let id = rest.strip_prefix("thin-")?;
                // Only the canonical spelling, so `thin-007` is not ours.
                let n: u32 = id.parse().ok()?;
                (n.to_string() == id && n <= ThinId::MAX.0).then_some(Role::Thin(ThinId(n)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> PoolNames {
        PoolNames::new(PoolId::try_from("0123456789abcdef".to_string()).unwrap())
    }

    #[test]
    fn plain_names_carry_prefix_format_pool_and_role() {
        let n = names();
        assert_eq!(
            n.name(Role::Pool).to_string(),
            "thinlayer-1-0123456789abcdef-pool"
        );
        assert_eq!(
            n.name(Role::Thin(ThinId(42))).to_string(),
            "thinlayer-1-0123456789abcdef-thin-42"
        );
        assert_eq!(
            n.uuid(Role::Meta).to_string(),
            "THINLAYER-1-0123456789abcdef-meta"
        );
        let longest = n.name(Role::Thin(ThinId::MAX)).to_string();
        assert!(longest.len() <= DM_NAME_MAX);
    }

    #[test]
    fn plain_role_of_recognises_only_our_own_names() {
        let n = names();
        for role in [Role::Meta, Role::Data, Role::Pool, Role::Thin(ThinId(7))] {
            assert_eq!(n.role_of(&n.name(role)), Some(role));
        }
        let other = PoolNames::new(PoolId::try_from("fedcba9876543210".to_string()).unwrap());
        assert_eq!(n.role_of(&other.name(Role::Pool)), None);
        for foreign in [
            "thinlayer-1-0123456789abcdef-thin-007",
            "thinlayer-1-0123456789abcdef-thin-",
            "thinlayer-1-0123456789abcdef-thin-99999999",
            "thinlayer-1-0123456789abcdef-other",
            "docker-8:1-123-pool",
        ] {
            let name = DmNameBuf::new(foreign.to_string()).unwrap();
            assert_eq!(n.role_of(&name), None, "{foreign}");
        }
    }

    #[test]
    fn plain_pool_ids_are_random_hex() {
        let a = PoolId::generate().unwrap();
        let b = PoolId::generate().unwrap();
        assert_ne!(a, b);
        assert!(PoolId::try_from(a.to_string()).is_ok());
        assert!(PoolId::try_from("XYZ".to_string()).is_err());
        assert!(PoolId::try_from("0123456789ABCDEF".to_string()).is_err());
    }
}
