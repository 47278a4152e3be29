//! containerd's model on the store, against the in-memory driver.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::driver::fake::Fake;
use crate::store::lock_store;

fn open(dir: &std::path::Path, fake: &Fake) -> Store {
    let lock = lock_store(dir, Duration::ZERO).unwrap();
    Store::open(dir, lock, Box::new(fake.clone())).unwrap()
}

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn plain_snapshots_follow_containerd_s_model() {
    let t = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let mut s = open(t.path(), &fake);
    let active = SnapshotKind::Active;
    let m = create(&mut s, active, "k1", None, labels(&[("a", "1")]), None).unwrap();
    assert_eq!(m[0].options, ["rw"]);
    let e = create(&mut s, active, "k1", None, BTreeMap::new(), None).unwrap_err();
    assert!(matches!(e, Error::Exists { .. }), "{e}");
    // A parent must exist and be committed.
    let e = create(&mut s, active, "k2", Some("nope"), BTreeMap::new(), None).unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    let e = create(&mut s, active, "k2", Some("k1"), BTreeMap::new(), None).unwrap_err();
    assert!(matches!(e, Error::Precondition(_)), "{e}");
    // Commit is a record change: the layer stays the same.
    let layer = stat(&s, "k1").unwrap().layer;
    let c = commit(&mut s, "base", "k1", None).unwrap();
    assert_eq!((c.kind, c.layer.clone()), (SnapshotKind::Committed, layer));
    assert_eq!(c.labels, labels(&[("a", "1")]));
    assert!(matches!(stat(&s, "k1"), Err(Error::NotFound { .. })));
    let e = mounts(&mut s, "base").unwrap_err();
    assert!(matches!(e, Error::Precondition(_)), "{e}");
    // A view over it, read-only; a view cannot be committed.
    let v = create(
        &mut s,
        SnapshotKind::View,
        "v",
        Some("base"),
        BTreeMap::new(),
        None,
    )
    .unwrap();
    assert_eq!(v[0].options, ["ro"]);
    let e = commit(&mut s, "v2", "v", None).unwrap_err();
    assert!(matches!(e, Error::Precondition(_)), "{e}");
    create(&mut s, active, "k2", Some("base"), BTreeMap::new(), None).unwrap();
    let e = commit(&mut s, "base", "k2", None).unwrap_err();
    assert!(matches!(e, Error::Exists { .. }), "{e}");
    assert_eq!(stat(&s, "k2").unwrap().parent.as_deref(), Some("base"));
    // Remove refuses a parent with children.
    let e = remove(&mut s, "base").unwrap_err();
    assert!(matches!(e, Error::Precondition(_)), "{e}");
    // Labels: all, or one by field path.
    let i = update(&mut s, "k2", labels(&[("x", "1"), ("y", "2")]), &[]).unwrap();
    assert_eq!(i.labels, labels(&[("x", "1"), ("y", "2")]));
    let i = update(
        &mut s,
        "k2",
        labels(&[("x", "9")]),
        &["labels.x".into(), "labels.y".into()],
    )
    .unwrap();
    assert_eq!(i.labels, labels(&[("x", "9")]));
    let e = update(&mut s, "k2", BTreeMap::new(), &["name".into()]).unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    // Walk with filters.
    let names = |f: &[&str]| -> Vec<String> {
        let f: Vec<String> = f.iter().map(|x| x.to_string()).collect();
        walk(&s, &Filters::parse(&f).unwrap())
            .into_iter()
            .map(|i| i.name)
            .collect()
    };
    assert_eq!(names(&[]), ["base", "k2", "v"]);
    assert_eq!(names(&["kind==committed"]), ["base"]);
    assert_eq!(names(&["parent==base,labels.x==9"]), ["k2"]);
    // A snapshot's layer is an ordinary layer of the store.
    assert_eq!(s.layers().count(), 3);
    drop(s);
    let mut s = open(t.path(), &fake);
    assert_eq!(stat(&s, "base").unwrap().kind, SnapshotKind::Committed);
    remove(&mut s, "k2").unwrap();
    remove(&mut s, "v").unwrap();
    remove(&mut s, "base").unwrap();
    assert_eq!(s.layers().count(), 0);
    assert!(matches!(
        remove(&mut s, "base"),
        Err(Error::NotFound { .. })
    ));
    for bad in ["", "a\0b"] {
        let e = create(&mut s, active, bad, None, BTreeMap::new(), None).unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }), "{e}");
    }
}
