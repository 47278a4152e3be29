//! The store's transactions against the in-memory driver: every kill
//! point of every operation, replayed by reopening the store.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::driver::fake::Fake;

fn open(dir: &Path, fake: &Fake) -> Result<Store> {
    let lock = lock_store(dir, Duration::ZERO)?;
    Store::open(dir, lock, Box::new(fake.clone()))
}

/// Runs `op` on a store whose driver panics at mutating call `k`;
/// returns whether it ran to completion.
fn run_killed_at(dir: &Path, fake: &Fake, k: usize, op: &dyn Fn(&mut Store)) -> bool {
    let at = fake.state().calls + k;
    fake.state().crash_at = Some(at);
    let mut store = open(dir, fake).unwrap();
    let done = catch_unwind(AssertUnwindSafe(|| op(&mut store))).is_ok();
    fake.state().crash_at = None;
    drop(store); // a killed process drops its lock too
    done
}

fn assert_consistent(store: &Store, fake: &Fake) {
    let mut want: Vec<LayerId> = store.layers().map(|l| l.id.clone()).collect();
    want.sort();
    assert_eq!(fake.owners(), want, "devices and layer records disagree");
    let left: Vec<_> = std::fs::read_dir(store.dir.join(journal::DIR))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "journals left: {left:?}");
}

#[test]
fn plain_store_create_killed_at_every_step_leaves_no_trace() {
    let t = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let base = open(t.path(), &fake)
        .unwrap()
        .create_layer(None, Some("base"), None)
        .unwrap();
    let mut steps = 0;
    loop {
        let done = run_killed_at(t.path(), &fake, steps, &|s| {
            s.create_layer(Some("base"), Some("child"), Some(&mut &b"content"[..]))
                .unwrap();
        });
        let store = open(t.path(), &fake).unwrap();
        assert_consistent(&store, &fake);
        if done {
            assert!(store.layer("child").is_ok());
            break;
        }
        assert!(
            store.layer("child").is_err(),
            "a killed create left its layer"
        );
        assert_eq!(store.layers().count(), 1);
        assert_eq!(store.layer("base").unwrap().id, base);
        steps += 1;
    }
    assert_eq!(steps, 2, "create and apply are the two kill points");
}

#[test]
fn plain_store_create_killed_after_its_record_is_undone() {
    let t = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let id = open(t.path(), &fake)
        .unwrap()
        .create_layer(None, Some("x"), None)
        .unwrap();
    // As if killed between writing the record and removing the journal.
    let j = Journal {
        op: "create layer".into(),
        create: vec![id.clone()],
        ..Journal::default()
    };
    // A dead transaction's: its lock file is not held.
    thinpool::record::write(
        &t.path().join(journal::DIR).join("0123456789abcdef.json"),
        &j,
    )
    .unwrap();
    std::fs::write(
        t.path().join(journal::DIR).join("0123456789abcdef.lock"),
        "",
    )
    .unwrap();
    let store = open(t.path(), &fake).unwrap();
    assert_eq!(store.layers().count(), 0);
    assert_eq!(store.repairs().len(), 1, "{:?}", store.repairs());
    assert!(store.repairs()[0].contains("undid the creation"));
    assert_consistent(&store, &fake);
}

#[test]
fn plain_store_drops_a_claims_journal_torn_by_a_power_cut_and_keeps_what_was_recorded() {
    let t = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let (kept, lost) = {
        let mut store = open(t.path(), &fake).unwrap();
        let kept = store.create_layer(None, Some("kept"), None).unwrap();
        let lost = store.create_layer(None, Some("lost"), None).unwrap();
        (kept, lost)
    };
    // After a power cut: `lost`'s record never reached the disk (its
    // resource did), and the claims-only journal of the create is torn.
    std::fs::remove_file(layer_path(t.path(), &lost)).unwrap();
    let jdir = t.path().join(journal::DIR);
    let name = format!("0123456789abcdef{}", txn::CLAIMS_SUFFIX);
    std::fs::write(jdir.join(format!("{name}.json")), b"thinlayer-rec").unwrap();
    std::fs::write(jdir.join(format!("{name}.lock")), "").unwrap();
    let store = open(t.path(), &fake).unwrap();
    assert!(store.layer("kept").is_ok_and(|l| l.id == kept));
    assert!(store.layer("lost").is_err());
    let said = store.repairs().join("\n");
    assert!(said.contains("dropped the torn claims journal"), "{said}");
    assert!(said.contains("which no layer claimed"), "{said}");
    assert_consistent(&store, &fake);
    drop(store);
    // A journal written durably is never torn: damage to one is refused.
    std::fs::write(jdir.join("fedcba9876543210.json"), b"thinlayer-rec").unwrap();
    std::fs::write(jdir.join("fedcba9876543210.lock"), "").unwrap();
    let err = open(t.path(), &fake).unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
}

#[test]
fn plain_store_remove_killed_at_every_step_is_finished() {
    let t = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    open(t.path(), &fake)
        .unwrap()
        .create_layer(None, Some("gone"), None)
        .unwrap();
    let done = run_killed_at(t.path(), &fake, 0, &|s| {
        s.remove_layer("gone").unwrap();
    });
    assert!(!done);
    let store = open(t.path(), &fake).unwrap();
    assert!(
        store.layer("gone").is_err(),
        "a killed remove was not finished"
    );
    assert!(store.repairs()[0].contains("finished removing"));
    assert_consistent(&store, &fake);
}

#[test]
fn plain_store_failed_changeset_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let mut store = open(t.path(), &fake).unwrap();
    let err = store
        .create_layer(None, Some("bad"), Some(&mut &b"bad"[..]))
        .unwrap_err();
    assert!(err.to_string().contains("invalid changeset"), "{err}");
    assert_eq!(store.layers().count(), 0);
    assert_consistent(&store, &fake);
}

#[test]
fn plain_store_refuses_what_would_lose_layers() {
    let t = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let mut store = open(t.path(), &fake).unwrap();
    let a = store.create_layer(None, Some("a"), None).unwrap();
    store.create_layer(Some("a"), Some("b"), None).unwrap();
    let err = store.remove_layer("a").unwrap_err().to_string();
    assert!(
        err.contains("is in use") && err.contains("parent of 1 layer (b"),
        "{err}"
    );
    let err = store
        .create_layer(None, Some("a"), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("already exists"), "{err}");
    let err = store
        .create_layer(Some("nope"), None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no layer 'nope'"), "{err}");
    let err = store
        .create_layer(None, Some("../x"), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid layer name"), "{err}");
    assert_eq!(store.layer(&a.as_str()[..6]).unwrap().id, a);
    assert_eq!(store.layers().count(), 2);
    assert_consistent(&store, &fake);
    store.remove_layer("b").unwrap();
    store.remove_layer("a").unwrap();
    assert_consistent(&store, &fake);
}

#[test]
fn plain_store_frees_orphans_and_reports_missing_resources() {
    let t = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let id = open(t.path(), &fake)
        .unwrap()
        .create_layer(None, Some("a"), None)
        .unwrap();
    fake.state().devices.insert(
        99,
        LayerId::try_from("0123456789abcdef0123456789abcdef".to_string()).unwrap(),
    );
    let store = open(t.path(), &fake).unwrap();
    assert!(
        store
            .repairs()
            .iter()
            .any(|r| r.contains("no layer claimed")),
        "{:?}",
        store.repairs()
    );
    assert_consistent(&store, &fake);
    drop(store);
    fake.state().devices.clear();
    let err = open(t.path(), &fake).unwrap_err().to_string();
    assert!(
        err.contains(&format!("layer {id}")) && err.contains("missing"),
        "{err}"
    );
}

/// While one store's transaction has its driver at work, the store is not
/// locked: another opens it at once, cannot take what the transaction
/// claimed (its new layer's name, its parent), and does unrelated work.
/// Starts creating layer `child` on `base` in another thread, and returns
/// once its driver is at work (holding no store lock); the create finishes
/// when the sender sends.
fn create_held_in_its_driver(
    dir: &Path,
    fake: &Fake,
) -> (
    std::thread::JoinHandle<Result<LayerId>>,
    std::sync::mpsc::Sender<()>,
) {
    use std::sync::mpsc;
    let (started_tx, started) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    fake.state().hold_next_create = Some((started_tx, go_rx));
    let (dir, f2) = (dir.to_path_buf(), fake.clone());
    let slow = std::thread::spawn(move || {
        open(&dir, &f2)
            .unwrap()
            .create_layer(Some("base"), Some("child"), None)
    });
    started
        .recv_timeout(Duration::from_secs(20))
        .expect("the slow create never reached its driver");
    (slow, go)
}

#[test]
fn plain_store_works_beside_a_transaction_whose_driver_is_busy() {
    let t = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    open(t.path(), &fake)
        .unwrap()
        .create_layer(None, Some("base"), None)
        .unwrap();
    let (slow, go) = create_held_in_its_driver(t.path(), &fake);
    // Opened with no wait at all: the slow create holds no store lock.
    let mut other = open(t.path(), &fake).unwrap();
    assert!(other.repairs().is_empty(), "{:?}", other.repairs());
    let err = other
        .create_layer(None, Some("child"), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("already exists"), "{err}");
    let err = other.remove_layer("base").unwrap_err().to_string();
    assert!(err.contains("is making a layer on it"), "{err}");
    other.create_layer(None, Some("beside"), None).unwrap();
    drop(other);
    go.send(()).unwrap();
    slow.join().unwrap().unwrap();
    let store = open(t.path(), &fake).unwrap();
    for n in ["base", "child", "beside"] {
        assert!(store.layer(n).is_ok(), "{n} is missing");
    }
    assert_eq!(
        store.layer("child").unwrap().parent,
        Some(store.layer("base").unwrap().id.clone())
    );
    assert_consistent(&store, &fake);
}

#[test]
fn plain_store_parked_comes_back_only_if_no_one_took_its_lock_or_was_mid_transaction() {
    let t = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let mut s = open(t.path(), &fake).unwrap();
    s.create_layer(None, Some("base"), None).unwrap();
    let parked = s.park();
    // Let go: another opener gets the lock at once.
    drop(open(t.path(), &fake).unwrap());
    // Someone took the lock meanwhile: the caller must read anew.
    let later = open(t.path(), &fake).unwrap().park();
    assert!(later.is_later_than(&parked) && !parked.is_later_than(&later));
    assert!(parked.resume().unwrap().is_none());
    drop(later);
    // No one did: the same store, holding its lock again.
    let s = open(t.path(), &fake).unwrap();
    let s = s.park().resume().unwrap().expect("no one took the lock");
    assert!(s.layer("base").is_ok());
    assert!(
        open(t.path(), &fake).is_err(),
        "a resumed store holds its lock"
    );
    drop(s);
    // Parked while another transaction was live: read anew, even though
    // no one has taken the lock since (only a fresh read sees its end).
    let (slow, go) = create_held_in_its_driver(t.path(), &fake);
    let beside = open(t.path(), &fake).unwrap().park();
    assert!(beside.resume().unwrap().is_none());
    go.send(()).unwrap();
    slow.join().unwrap().unwrap();
    assert_consistent(&open(t.path(), &fake).unwrap(), &fake);
}

#[test]
fn plain_store_reopened_after_others_changed_it_reads_it_anew_over_the_same_driver() {
    let t = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let mut s = open(t.path(), &fake).unwrap();
    s.create_layer(None, Some("base"), None).unwrap();
    let parked = s.park();
    // Another opener changes the store meanwhile.
    open(t.path(), &fake)
        .unwrap()
        .create_layer(None, Some("beside"), None)
        .unwrap();
    let s = parked
        .reopen()
        .unwrap()
        .expect("the driver finds its system");
    assert!(s.layer("beside").is_ok(), "the other's layer is not seen");
    assert!(
        open(t.path(), &fake).is_err(),
        "a reopened store holds its lock"
    );
    // Parked while another transaction was live: reopened after it
    // ended, the store has its layer.
    drop(s);
    let (slow, go) = create_held_in_its_driver(t.path(), &fake);
    let beside = open(t.path(), &fake).unwrap().park();
    go.send(()).unwrap();
    slow.join().unwrap().unwrap();
    let s = beside
        .reopen()
        .unwrap()
        .expect("the driver finds its system");
    assert!(s.layer("child").is_ok(), "the finished layer is not seen");
    assert_consistent(&s, &fake);
}

#[test]
fn plain_image_names_normalize_to_name_and_tag() {
    assert_eq!(normalize_image_name("alpine").unwrap(), "alpine:latest");
    assert_eq!(
        normalize_image_name("docker.io/library/alpine:3").unwrap(),
        "alpine:3"
    );
    assert_eq!(
        normalize_image_name("docker.io/example/app:1.0").unwrap(),
        "example/app:1.0"
    );
    assert_eq!(
        normalize_image_name("library/alpine:3.19").unwrap(),
        "library/alpine:3.19"
    );
    assert_eq!(
        normalize_image_name("localhost:5000/app:v1").unwrap(),
        "localhost:5000/app:v1"
    );
    assert_eq!(
        normalize_image_name("localhost:5000/app").unwrap(),
        "localhost:5000/app:latest"
    );
    for bad in [
        "", ":tag", "UPPER", "a//b", "a:", "a:-x", "a b", "../x", "-a",
    ] {
        assert!(normalize_image_name(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn plain_store_containers_over_a_layer_share_one_init_layer_that_goes_with_it() {
    let t = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let mut s = open(t.path(), &fake).unwrap();
    let base = s.create_layer(None, Some("base"), None).unwrap();
    let [i1, w1] = s
        .create_container_layers(&base, "c1", b"placeholders", None)
        .unwrap();
    let [i2, w2] = s
        .create_container_layers(&base, "c2", b"placeholders", None)
        .unwrap();
    assert_eq!(i1, i2, "the second container reuses the first's init layer");
    assert_ne!(w1, w2);
    let init = s.layer_record(&i1).unwrap();
    assert!(init.init && init.container.is_none());
    assert_eq!(init.parent.as_ref(), Some(&base));
    for w in [&w1, &w2] {
        assert_eq!(s.layer_record(w).unwrap().parent.as_ref(), Some(&i1));
    }
    let mut users = s.container_users(&base);
    users.sort();
    assert_eq!(users, vec!["c1", "c2"]);
    // Nothing is built on it or mounted from it but containers.
    let err = s.create_layer(Some(i1.as_str()), None, None).unwrap_err();
    assert!(err.to_string().contains("the init layer"), "{err}");
    let err = s.mount_layer(i1.as_str()).unwrap_err();
    assert!(err.to_string().contains("the init layer"), "{err}");
    // It stays while a container stands on it, and keeps its parent.
    let err = s.remove_layer("base").unwrap_err();
    assert!(err.to_string().contains("parent of"), "{err}");
    s.remove_container_layers(&[w1]).unwrap();
    assert!(s.prunable().unwrap().is_empty());
    s.remove_container_layers(&[w2]).unwrap();
    // Unused, prune would take it; removing its parent takes it too.
    assert_eq!(s.prunable().unwrap(), vec![i1.clone()]);
    s.remove_layer("base").unwrap();
    assert_eq!(s.layers().count(), 0);
    assert_consistent(&s, &fake);
}

#[test]
fn plain_store_a_container_create_killed_at_every_step_leaves_a_whole_init_layer_or_none() {
    let t = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let base = open(t.path(), &fake)
        .unwrap()
        .create_layer(None, Some("base"), None)
        .unwrap();
    let mut steps = 0;
    loop {
        let b = base.clone();
        let done = run_killed_at(t.path(), &fake, steps, &|s| {
            s.create_container_layers(&b, "c1", b"placeholders", None)
                .unwrap();
        });
        let store = open(t.path(), &fake).unwrap();
        assert_consistent(&store, &fake);
        let inits: Vec<_> = store.layers().filter(|l| l.init).collect();
        assert!(inits.len() <= 1, "{inits:?}");
        let rws: Vec<_> = store.layers().filter(|l| l.container.is_some()).collect();
        if done {
            assert_eq!((inits.len(), rws.len()), (1, 1));
            break;
        }
        assert!(rws.is_empty(), "a killed create left its writable layer");
        steps += 1;
        assert!(steps < 10, "the create never finished");
    }
    // The init layer's create and apply, then the writable layer's create
    // (a kill after the init layer is made keeps it, for the next try).
    assert_eq!(steps, 3);
}

#[test]
fn plain_store_record_cache_reads_what_a_fresh_read_does_and_decodes_only_changes() {
    let d = tempfile::tempdir().unwrap();
    let img = |id: &str, names: &[&str]| ImageRecord {
        id: id.to_string(),
        names: names.iter().map(|n| n.to_string()).collect(),
        layers: vec![],
        created_unix: 1,
        architecture: None,
        os: None,
    };
    let write = |r: &ImageRecord| {
        thinpool::record::write(&d.path().join(format!("{}.json", r.id)), r).unwrap()
    };
    let sorted = |mut v: Vec<ImageRecord>| {
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    };
    let mut cache = RecordCache::<ImageRecord>::default();
    let fresh = || sorted(read_dir_records::<ImageRecord>(d.path()).unwrap());
    write(&img("a", &["x:1"]));
    write(&img("b", &[]));
    std::fs::write(d.path().join("a.split"), b"not a record").unwrap();
    assert_eq!(sorted(cache.read_dir(d.path()).unwrap()), fresh());
    assert_eq!(fresh().len(), 2);
    // One rewritten, one removed, one added: the read is the fresh one's.
    write(&img("a", &["x:1", "x:2"]));
    std::fs::remove_file(d.path().join("b.json")).unwrap();
    write(&img("c", &["y:1"]));
    let got = sorted(cache.read_dir(d.path()).unwrap());
    assert_eq!(got, fresh());
    assert_eq!(got[0].names, ["x:1", "x:2"]);
    assert_eq!(cache.files.len(), 2, "a removed file is forgotten");
    // An unchanged file is not decoded again: its cached record stands
    // in for the bytes it was decoded from.
    let a = std::ffi::OsString::from("a.json");
    cache.files.get_mut(&a).unwrap().1.names = vec!["cached".into()];
    let got = sorted(cache.read_dir(d.path()).unwrap());
    assert_eq!(got[0].names, ["cached"]);
    // A file whose bytes changed is decoded, and a corrupt one is an
    // error, as in a fresh read.
    std::fs::write(d.path().join("a.json"), b"garbage").unwrap();
    assert!(cache.read_dir(d.path()).is_err());
    assert!(read_dir_records::<ImageRecord>(d.path()).is_err());
}
