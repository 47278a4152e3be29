//! What to type next: the libraries say what is wrong; the command line
//! adds the thinlayer command that helps, from the error's type.

use thinpool::Error as PoolError;

/// A `: do this` suffix for the error, or nothing.
pub fn hint(e: &anyhow::Error) -> String {
    for cause in e.chain() {
        if let Some(h) = cause.downcast_ref::<thinlayer::Error>().and_then(for_error) {
            return h;
        }
        if let Some(h) = cause.downcast_ref::<PoolError>().and_then(for_pool) {
            return h;
        }
    }
    String::new()
}

fn for_error(e: &thinlayer::Error) -> Option<String> {
    match e {
        thinlayer::Error::NoPool { .. } => Some(": create one with `thinlayer pool create`".into()),
        thinlayer::Error::Pool(p) => for_pool(p),
        _ => None,
    }
}

fn for_pool(e: &PoolError) -> Option<String> {
    let h = match e {
        PoolError::NoPool { .. } => ": create one with `thinlayer pool create`",
        _ => return None,
    };
    Some(h.into())
}
