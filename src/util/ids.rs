//! Random names: layer, container and volume ids, overlay short links.

use crate::error::{Error, Result};

/// `bytes` random bytes from the kernel's generator, as lowercase hex.
pub fn random_hex(bytes: usize) -> Result<String> {
    Ok(random_bytes(bytes)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// `len` random characters of `alphabet` (at most 256 symbols).
pub fn random_from(alphabet: &[u8], len: usize) -> Result<String> {
    Ok(random_bytes(len)?
        .iter()
        .map(|b| alphabet[*b as usize % alphabet.len()] as char)
        .collect())
}

/// The first 12 characters of an id, as listings show it; a shorter or
/// malformed id (a damaged record) is shown whole rather than panicking.
pub fn short(id: &str) -> &str {
    match id.char_indices().nth(12) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| {
        let io = match e.raw_os_error() {
            Some(n) => std::io::Error::from_raw_os_error(n),
            None => std::io::Error::other(e.to_string()),
        };
        Error::io("reading random bytes from", "getrandom(2)")(io)
    })?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_random_names_have_the_asked_shape() {
        let a = random_hex(16).unwrap();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(a, random_hex(16).unwrap());
        let l = random_from(b"AB", 64).unwrap();
        assert_eq!(l.len(), 64);
        assert!(l.bytes().all(|b| b == b'A' || b == b'B'));
    }

    #[test]
    fn plain_short_ids_never_panic_on_malformed_ids() {
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
        assert_eq!(short(""), "");
        assert_eq!(short("ééééééééééééé"), "éééééééééééé");
    }
}
