//! root tier: loop devices over backing files, on the host.

use std::fs;

use thinpool::loopback;
use thinpool::testing::{require_root, Scratch};
use thinpool::Bytes;

#[test]
fn root_loop_attach_is_idempotent_and_found_by_inode() {
    require_root();
    let s = Scratch::new("loop");
    let file = s.path().join("backing");
    fs::File::create(&file).unwrap().set_len(32 << 20).unwrap();
    assert_eq!(loopback::find(&file).unwrap(), None);
    let a = loopback::attach(&file).unwrap();
    let b = loopback::attach(&file).unwrap();
    assert_eq!(a, b, "a second attach bound a second loop device");
    assert_eq!(a.size().unwrap(), Bytes(32 << 20));
    // Found by inode, not by name: a rename does not lose it.
    let moved = s.path().join("moved");
    fs::rename(&file, &moved).unwrap();
    assert_eq!(loopback::find(&moved).unwrap(), Some(a.clone()));
    loopback::detach_file(&moved).unwrap();
    assert_eq!(loopback::find(&moved).unwrap(), None);
    loopback::detach_file(&moved).unwrap(); // idempotent
}

#[test]
fn root_loop_capacity_follows_a_grown_file() {
    require_root();
    let s = Scratch::new("cap");
    let file = s.path().join("backing");
    let f = fs::File::create(&file).unwrap();
    f.set_len(16 << 20).unwrap();
    let lo = loopback::attach(&file).unwrap();
    f.set_len(48 << 20).unwrap();
    assert_eq!(lo.size().unwrap(), Bytes(16 << 20));
    lo.refresh_capacity().unwrap();
    assert_eq!(lo.size().unwrap(), Bytes(48 << 20));
    drop(s);
    assert_eq!(
        loopback::find(&file).ok().flatten(),
        None,
        "scratch cleanup left the loop"
    );
}
