//! The containers' crash safety against the in-memory driver, in the plain
//! tier: a `create` or `rm` killed at each of its driver calls, then the
//! next open (its recovery) must leave the whole container or nothing.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::driver::fake::Fake;
use crate::driver::DriverKind;

fn root(dir: &Path, fake: &Fake) -> Root {
    Root::new(dir)
        .unwrap()
        .with_lock_timeout(Duration::ZERO)
        .with_fake_driver(fake.clone())
}

/// A root with one layer, `base`, in the (fake) overlay store.
fn setup() -> (tempfile::TempDir, Fake) {
    let t = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    root(t.path(), &fake)
        .open_store(DriverKind::Overlay, &Default::default())
        .unwrap()
        .create_layer(None, Some("base"), None)
        .unwrap();
    (t, fake)
}

fn request() -> NewContainer {
    NewContainer {
        name: Some("web".into()),
        layer: Some("base".into()),
        driver: DriverKind::Overlay,
        volumes: vec!["/data".into(), "named:/srv".into()],
        ..NewContainer::default()
    }
}

/// Runs `op` with the driver panicking (the test's SIGKILL) at its `k`-th
/// mutating call from now; returns whether `op` completed.
fn killed_at(r: &Root, fake: &Fake, k: usize, op: &dyn Fn(&mut Containers)) -> bool {
    let at = fake.state().calls + k;
    fake.state().crash_at = Some(at);
    let mut c = Containers::open(r).unwrap();
    let done = catch_unwind(AssertUnwindSafe(|| op(&mut c))).is_ok();
    fake.state().crash_at = None;
    done
}

/// Every device has a layer record and every layer a device; every
/// container is whole; no volume exists that no container or user made.
fn assert_consistent(r: &Root, fake: &Fake) -> Vec<String> {
    let store = r
        .open_store(DriverKind::Overlay, &Default::default())
        .unwrap();
    let mut layers: Vec<LayerId> = store.layers().map(|l| l.id.clone()).collect();
    layers.sort();
    assert_eq!(fake.owners(), layers, "devices and layer records disagree");
    drop(store);
    let mut c = Containers::open(r).unwrap();
    for info in c.list().unwrap() {
        assert_eq!(info.record.state, State::Created);
        assert_eq!(
            info.record.layers.len(),
            2,
            "a container without its layers"
        );
    }
    let mut vols: Vec<String> = c
        .volume_list(None)
        .unwrap()
        .into_iter()
        .map(|v| v.record.name)
        .collect();
    vols.sort();
    vols
}

#[test]
fn plain_container_create_killed_at_every_step_leaves_all_or_nothing() {
    let (t, fake) = setup();
    let r = root(t.path(), &fake);
    let mut kills = 0;
    loop {
        let done = killed_at(&r, &fake, kills, &|c| {
            c.create(&request()).unwrap();
        });
        let c = Containers::open(&r).unwrap();
        if done {
            assert!(c.get("web").is_ok());
            drop(c);
            let vols = assert_consistent(&r, &fake);
            assert_eq!(vols.len(), 2, "{vols:?}");
            assert!(vols.contains(&"named".to_string()));
            break;
        }
        assert!(
            c.repairs()
                .iter()
                .any(|x| x.contains("undid the creation of container web")),
            "kill {kills} was not repaired: {:?}",
            c.repairs()
        );
        assert!(c.get("web").is_err(), "a killed create left its container");
        drop(c);
        assert_eq!(assert_consistent(&r, &fake), Vec::<String>::new());
        kills += 1;
    }
    // init layer made and filled, writable layer made: three kill points,
    // each landed mid-create and was undone.
    assert_eq!(kills, 3);
}

#[test]
fn plain_container_rm_killed_mid_way_is_finished() {
    let (t, fake) = setup();
    let r = root(t.path(), &fake);
    Containers::open(&r).unwrap().create(&request()).unwrap();
    for k in [0, 1] {
        let (t2, fake2) = if k == 0 {
            (None, fake.clone())
        } else {
            let (t2, f2) = setup();
            Containers::open(&root(t2.path(), &f2))
                .unwrap()
                .create(&request())
                .unwrap();
            (Some(t2), f2)
        };
        let dir = t2.as_ref().map_or(t.path(), |d| d.path());
        let r = root(dir, &fake2);
        let done = killed_at(&r, &fake2, k, &|c| {
            c.remove("web", false, true).unwrap();
        });
        // Removing the writable layer is the one kill point: the init
        // layer is shared, and stays for the next container.
        if k == 1 {
            assert!(done, "rm has one kill point, not two");
            continue;
        }
        assert!(!done, "the kill at step {k} did not land");
        let c = Containers::open(&r).unwrap();
        assert!(
            c.repairs()
                .iter()
                .any(|x| x.contains("finished removing container web")),
            "{:?}",
            c.repairs()
        );
        assert!(c.get("web").is_err());
        drop(c);
        // rm -v: the anonymous volume went, the named one stays.
        assert_eq!(assert_consistent(&r, &fake2), vec!["named".to_string()]);
    }
}

#[test]
fn plain_containers_of_a_destroyed_pool_are_forgotten() {
    let (t, fake) = setup();
    let r = root(t.path(), &fake);
    let mut c = Containers::open(&r).unwrap();
    let mut rec = c.create(&request()).unwrap();
    // As if it were a thin container and `pool destroy --force` was killed
    // after the pool went: the next open forgets it.
    rec.driver = DriverKind::Thin;
    c.save(&rec).unwrap();
    drop(c);
    let c = Containers::open(&r).unwrap();
    assert!(c.get("web").is_err());
    assert!(
        c.repairs()[0].contains("forgot 1 container(s) and 0 thin volume(s)"),
        "{:?}",
        c.repairs()
    );
}

#[test]
fn plain_overlay_container_with_a_size_is_refused_before_anything_is_made() {
    let (t, fake) = setup();
    let r = root(t.path(), &fake);
    let calls = fake.state().calls;
    let mut req = request();
    req.size = Some(thinpool::Bytes(32 << 20));
    let err = Containers::open(&r).unwrap().create(&req).unwrap_err();
    assert!(err.to_string().contains("invalid size"), "{err}");
    assert_eq!(fake.state().calls, calls, "the driver was called");
    assert!(Containers::open(&r).unwrap().list().unwrap().is_empty());
}

/// A container another live process is creating (its `creating` record,
/// its liveness lock held) is left alone by this process's recovery and
/// refused by its commands; once that process is gone, the next open
/// undoes it.
#[test]
fn plain_a_create_in_flight_elsewhere_is_not_undone_until_its_process_is_gone() {
    let (t, fake) = setup();
    let r = root(t.path(), &fake);
    let rec = Containers::open(&r).unwrap().create(&request()).unwrap();
    let dir = r.containers_dir();
    // As another process would leave it mid-create, holding its lock.
    let mut creating = rec.clone();
    creating.state = State::Creating;
    thinpool::record::write(&dir.join(&rec.id).join("config.json"), &creating).unwrap();
    let alive = LockGuard::acquire(&dir.join(format!("{}.lock", rec.id)), Duration::ZERO).unwrap();
    let c = Containers::open(&r).unwrap();
    assert!(c.repairs().is_empty(), "{:?}", c.repairs());
    let err = c.get("web").unwrap_err().to_string();
    assert!(err.contains("still creating it"), "{err}");
    drop(c);
    drop(alive);
    let c = Containers::open(&r).unwrap();
    assert_eq!(
        c.repairs(),
        ["undid the creation of container web".to_string()]
    );
    assert!(c.get("web").is_err());
    assert!(!dir.join(format!("{}.lock", rec.id)).exists());
    drop(c);
    assert_consistent(&r, &fake);
}
