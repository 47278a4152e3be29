//! dm tier: the pool and its thin devices against a real kernel (run in
//! the VM with `vm-tests/dm-tier.sh`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use devicemapper::{DevId, DM};
use thinpool::lock::LockGuard;
use thinpool::names::{PoolNames, Role};
use thinpool::pool::{AutoextendChange, Autoextended, PoolRecord, SettingsChange};
use thinpool::recovery::PendingOp;
use thinpool::testing::{require_dm, Scratch};
use thinpool::{
    BackingRequest, Bytes, CreateOptions, Error, Pool, PoolOpenOptions, SizeChange, ThinId,
    TransactionId,
};

fn small_pool(s: &Scratch) -> Pool {
    let opts = CreateOptions {
        data: BackingRequest::File(Some(Bytes(256 << 20))),
        ..CreateOptions::default()
    };
    Pool::create(&s.path().join("pool"), &opts).expect("creating a pool")
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn write_at(dev: &Path, offset: u64, data: &[u8]) {
    let mut f = OpenOptions::new().write(true).open(dev).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn read_at(dev: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = File::open(dev).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0; len];
    f.read_exact(&mut buf).unwrap();
    buf
}

fn message(pool: &Pool, msg: &str) {
    let names = PoolNames::new(pool.record().id.clone());
    let name = names.name(Role::Pool);
    DM::new()
        .unwrap()
        .target_msg(&DevId::Name(&name), None, msg)
        .unwrap_or_else(|e| panic!("message {msg}: {e}"));
}

fn rewrite_record(dir: &Path, f: impl FnOnce(&mut PoolRecord)) {
    // As the last change left it: its operation committed by the kernel.
    let mut rec = thinpool::testing::settled_record(dir);
    f(&mut rec);
    thinpool::testing::write_record(dir, &rec);
}

#[test]
fn dm_thin_data_survives_deactivate_and_activate() {
    require_dm();
    let s = Scratch::new("survive");
    let dir = s.path().join("pool");
    let mut pool = small_pool(&s);
    let id = pool.create_thin(Bytes(64 << 20), "t").unwrap();
    let dev = pool.activate_thin(id).unwrap();
    let data = pattern(7, 1 << 20);
    write_at(&dev, 5 << 20, &data);
    pool.deactivate().unwrap();
    assert!(
        s.dm_devices_under().is_empty(),
        "{:?}",
        s.dm_devices_under()
    );
    assert!(s.loops_under().is_empty());
    drop(pool);

    let mut pool = Pool::open(&dir).unwrap();
    assert!(!pool.is_active());
    pool.activate().unwrap();
    pool.activate().unwrap(); // idempotent
    let dev = pool.activate_thin(id).unwrap();
    assert_eq!(read_at(&dev, 5 << 20, data.len()), data);
    pool.destroy(true).unwrap();
    assert!(s.dm_devices_under().is_empty());
    assert!(!dir.join("data").exists() && !dir.join("metadata").exists());
}

#[test]
fn dm_grow_online_keeps_data_and_refuses_shrinking() {
    require_dm();
    let s = Scratch::new("grow");
    let opts = CreateOptions {
        data: BackingRequest::File(Some(Bytes(64 << 20))),
        ..CreateOptions::default()
    };
    let mut pool = Pool::create(&s.path().join("pool"), &opts).unwrap();
    let id = pool.create_thin(Bytes(256 << 20), "t").unwrap();
    let dev = pool.activate_thin(id).unwrap();
    let data = pattern(3, 4 << 20);
    write_at(&dev, 0, &data);

    pool.grow(
        Some(SizeChange::By(Bytes(64 << 20))),
        Some(SizeChange::To(Bytes(32 << 20))),
    )
    .unwrap();
    let st = pool.status().unwrap();
    assert_eq!(st.data.total_bytes, Bytes(128 << 20));
    assert_eq!(st.metadata.total_bytes, Bytes(32 << 20));
    assert_eq!(read_at(&dev, 0, data.len()), data);
    // The device stayed usable across the reload, and the new space is
    // there: write more than the old pool held.
    let more = pattern(9, 80 << 20);
    write_at(&dev, 8 << 20, &more);
    assert_eq!(read_at(&dev, 8 << 20, more.len()), more);
    assert!(pool.status().unwrap().data.used_bytes.unwrap() > Bytes(64 << 20));

    let err = pool
        .grow(Some(SizeChange::To(Bytes(96 << 20))), None)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("shrinking a pool is not supported"),
        "{err}"
    );
    assert_eq!(pool.status().unwrap().data.total_bytes, Bytes(128 << 20));
    pool.destroy(true).unwrap();
}

#[test]
fn dm_snapshot_shares_blocks_and_isolates_writes() {
    require_dm();
    let s = Scratch::new("snap");
    let mut pool = small_pool(&s);
    let origin = pool.create_thin(Bytes(64 << 20), "origin").unwrap();
    let odev = pool.activate_thin(origin).unwrap();
    let a = pattern(1, 1 << 20);
    write_at(&odev, 0, &a);
    let used_before = pool.status().unwrap().data.used_bytes.unwrap();

    let snap = pool.snapshot_thin(origin, "snap").unwrap();
    assert_eq!(pool.thins()[&snap].origin, Some(origin));
    // O(1): the snapshot maps the origin's blocks without copying them.
    assert_eq!(pool.status().unwrap().data.used_bytes.unwrap(), used_before);
    let sdev = pool.activate_thin(snap).unwrap();
    assert_eq!(read_at(&sdev, 0, a.len()), a);
    let block = pool.record().block_size.bytes().0;
    let b = pattern(2, block as usize);
    write_at(&sdev, 0, &b);
    assert_eq!(
        read_at(&odev, 0, a.len()),
        a,
        "a write to the snapshot reached its origin"
    );
    assert_eq!(read_at(&sdev, 0, b.len()), b);
    // Exactly one block was copied.
    assert_eq!(
        pool.status().unwrap().data.used_bytes.unwrap(),
        Bytes(used_before.0 + block)
    );
    pool.destroy(true).unwrap();
}

#[test]
fn dm_recovery_keeps_a_create_the_kernel_made_and_drops_one_it_never_got() {
    require_dm();
    let s = Scratch::new("settle");
    let dir = s.path().join("pool");
    let mut pool = small_pool(&s);
    let keep = pool.create_thin(Bytes(16 << 20), "keep").unwrap();
    let made = pool.record().next_thin_id;
    let never = ThinId(made.0 + 1);
    let tx = pool.record().transaction_id;
    // As if the power went after `create_thin` reached the kernel, taking
    // the unsynced commit entry with it: the layer that asked for the
    // device may have reported success.
    message(&pool, &format!("create_thin {made}"));
    drop(pool);
    rewrite_record(&dir, |r| {
        r.pending = Some(PendingOp::Create {
            id: made,
            size: Bytes(16 << 20),
            tag: "made".into(),
        });
        r.next_thin_id = ThinId(made.0 + 1);
    });
    let mut pool = Pool::open(&dir).unwrap();
    assert_eq!(pool.record().pending, None);
    assert_eq!(
        pool.thins().keys().copied().collect::<Vec<_>>(),
        vec![keep, made]
    );
    assert_eq!(pool.thins()[&made].tag, "made");
    let dev = pool.activate_thin(made).unwrap();
    write_at(&dev, 0, b"usable");
    pool.deactivate_thin(made).unwrap();
    drop(pool);
    // As if killed after the pending entry, before the message.
    rewrite_record(&dir, |r| {
        r.pending = Some(PendingOp::Snapshot {
            id: never,
            origin: keep,
            size: Bytes(16 << 20),
            tag: "never".into(),
        });
        r.next_thin_id = ThinId(never.0 + 1);
    });
    let pool = Pool::open(&dir).unwrap();
    assert_eq!(pool.record().pending, None);
    assert!(!pool.thins().contains_key(&never));
    // The kernel does not have the id: making it now succeeds. Nothing
    // moved the kernel's transaction id.
    message(&pool, &format!("create_thin {never}"));
    message(&pool, &format!("delete {never}"));
    assert_eq!(pool.status().unwrap().transaction_id, tx);
    assert_eq!(pool.record().transaction_id, tx);
    pool.destroy(true).unwrap();
}

#[test]
fn dm_recovery_commits_a_create_of_the_transaction_id_protocol() {
    require_dm();
    let s = Scratch::new("commit");
    let dir = s.path().join("pool");
    let pool = small_pool(&s);
    let next = pool.record().next_thin_id;
    let r = pool.record().transaction_id;
    // A record written by the earlier protocol, which moved the kernel's
    // transaction id after each change: the kernel one past it is the
    // commit.
    message(&pool, &format!("create_thin {next}"));
    message(&pool, &format!("set_transaction_id {r} {}", r.next()));
    drop(pool);
    rewrite_record(&dir, |rec| {
        rec.pending = Some(PendingOp::Create {
            id: next,
            size: Bytes(16 << 20),
            tag: "done".into(),
        });
        rec.next_thin_id = ThinId(next.0 + 1);
    });
    let mut pool = Pool::open(&dir).unwrap();
    assert_eq!(pool.record().transaction_id, r.next());
    assert_eq!(pool.thins()[&next].tag, "done");
    let dev = pool.activate_thin(next).unwrap();
    write_at(&dev, 0, b"usable");
    // Written whole: the next change's entries follow the new id.
    pool.create_thin(Bytes(16 << 20), "after").unwrap();
    drop(dev);
    drop(pool);
    let pool = Pool::open(&dir).unwrap();
    assert_eq!(pool.thins().len(), 2);
    pool.destroy(true).unwrap();
}

#[test]
fn dm_recovery_finishes_a_half_done_delete() {
    require_dm();
    let s = Scratch::new("redo");
    let dir = s.path().join("pool");
    let mut pool = small_pool(&s);
    let id = pool.create_thin(Bytes(16 << 20), "gone").unwrap();
    let other = pool.create_thin(Bytes(16 << 20), "also gone").unwrap();
    // Killed after `delete` reached the kernel, before its commit entry.
    message(&pool, &format!("delete {id}"));
    drop(pool);
    rewrite_record(&dir, |r| r.pending = Some(PendingOp::Delete { id }));
    let pool = Pool::open(&dir).unwrap();
    assert_eq!(
        pool.thins().keys().copied().collect::<Vec<_>>(),
        vec![other]
    );
    assert_eq!(pool.record().pending, None);
    drop(pool);
    // Killed before `delete` reached the kernel: it is sent again.
    rewrite_record(&dir, |r| r.pending = Some(PendingOp::Delete { id: other }));
    let pool = Pool::open(&dir).unwrap();
    assert!(pool.thins().is_empty());
    assert_eq!(pool.record().pending, None);
    assert_eq!(
        pool.status().unwrap().transaction_id,
        pool.record().transaction_id
    );
    pool.destroy(false).unwrap();
}

#[test]
fn dm_a_shared_open_takes_a_clean_pool_beside_readers_and_leaves_repairs_to_the_writer() {
    require_dm();
    let s = Scratch::new("shared");
    let dir = s.path().join("pool");
    let lock = dir.join(thinpool::pool::LOCK_FILE);
    let no_wait = PoolOpenOptions {
        lock_timeout: Duration::ZERO,
    };
    let mut pool = small_pool(&s);
    let keep = pool.create_thin(Bytes(16 << 20), "keep").unwrap();
    drop(pool);
    // Beside another reader: taken over, and holding no lock once open.
    let reader = LockGuard::acquire_shared(&lock, Duration::ZERO).unwrap();
    let err = Pool::open_with(&dir, &no_wait).unwrap_err();
    assert!(
        matches!(err, Error::Lock(_)),
        "a writer went past a reader: {err}"
    );
    let mut shared = Pool::open_shared(&dir, &no_wait).unwrap();
    assert!(shared.is_active());
    assert_eq!(
        shared.thins().keys().copied().collect::<Vec<_>>(),
        vec![keep]
    );
    drop(reader);
    drop(LockGuard::acquire(&lock, Duration::ZERO).expect("the shared open kept the lock"));
    // Its changes take the lock for themselves.
    let made = shared.create_thin(Bytes(16 << 20), "made").unwrap();
    drop(shared);
    // A writer at work keeps readers out.
    let writer = LockGuard::acquire(&lock, Duration::ZERO).unwrap();
    let err = Pool::open_shared(&dir, &no_wait).unwrap_err();
    assert!(
        matches!(err, Error::Lock(_)),
        "a reader went past a writer: {err}"
    );
    drop(writer);
    // A dead process's change and a device it left: the shared open
    // leaves them to the exclusive one, which finishes them.
    let mut pool = Pool::open(&dir).unwrap();
    let left = pool.activate_thin(made).unwrap();
    assert!(left.exists());
    let next = pool.record().next_thin_id;
    message(&pool, &format!("create_thin {next}"));
    drop(pool);
    rewrite_record(&dir, |r| {
        r.thins.remove(&made);
        r.pending = Some(PendingOp::Create {
            id: next,
            size: Bytes(16 << 20),
            tag: "lost".into(),
        });
        r.next_thin_id = ThinId(next.0 + 1);
    });
    let shared = Pool::open_shared(&dir, &no_wait).unwrap();
    assert_eq!(shared.record().pending, None);
    // The kernel has the pending create: it was made.
    assert_eq!(
        shared.thins().keys().copied().collect::<Vec<_>>(),
        vec![keep, next]
    );
    let names = PoolNames::new(shared.record().id.clone());
    let leftover = names.name_string(Role::Thin(made));
    assert!(
        !s.dm_devices_under().contains(&leftover),
        "{leftover} left: {:?}",
        s.dm_devices_under()
    );
    drop(LockGuard::acquire(&lock, Duration::ZERO).expect("the fallback kept the lock"));
    drop(shared);
    Pool::open(&dir).unwrap().destroy(true).unwrap();
}

#[test]
fn dm_open_refuses_a_record_the_kernel_contradicts() {
    require_dm();
    let s = Scratch::new("mismatch");
    let dir = s.path().join("pool");
    let pool = small_pool(&s);
    message(&pool, "set_transaction_id 0 5");
    drop(pool);
    let err = Pool::open(&dir).unwrap_err();
    assert!(matches!(err, Error::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("kernel is at 5"), "{err}");
    // Deactivated, the same check runs against the superblock on disk.
    let mut rec = thinpool::testing::settled_record(&dir);
    rec.transaction_id = TransactionId(5);
    thinpool::testing::write_record(&dir, &rec);
    let mut pool = Pool::open(&dir).unwrap();
    pool.deactivate().unwrap();
    drop(pool);
    rewrite_record(&dir, |r| r.transaction_id = TransactionId(9));
    let mut pool = Pool::open(&dir).unwrap();
    let err = pool.activate().unwrap_err();
    assert!(
        err.to_string().contains("metadata is at transaction 5"),
        "{err}"
    );
    assert!(
        s.dm_devices_under().is_empty(),
        "a refused activation left devices"
    );
    rewrite_record(&dir, |r| r.transaction_id = TransactionId(5));
    drop(pool);
    Pool::open(&dir).unwrap().destroy(false).unwrap();
}

#[test]
fn dm_a_mounted_thin_device_blocks_deactivation_and_destroy() {
    require_dm();
    let s = Scratch::new("busy");
    let mut pool = small_pool(&s);
    let id = pool.create_thin(Bytes(64 << 20), "mounted").unwrap();
    let dev = pool.activate_thin(id).unwrap();
    let ok = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&dev)
        .status()
        .unwrap();
    assert!(ok.success());
    let mnt = s.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    assert!(Command::new("mount")
        .arg(&dev)
        .arg(&mnt)
        .status()
        .unwrap()
        .success());

    let err = pool.deactivate().unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("thin device 0 (mounted) is in use"),
        "{err}"
    );
    assert!(
        pool.status().unwrap().active,
        "a refused deactivation deactivated the pool"
    );
    drop(pool);
    let pool = Pool::open(&s.path().join("pool")).unwrap();
    let err = pool.destroy(true).unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err}");

    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    let mut pool = Pool::open(&s.path().join("pool")).unwrap();
    pool.activate().unwrap();
    let err = pool.delete_thin(ThinId(99)).unwrap_err();
    assert!(matches!(err, Error::NoSuchThin(_)), "{err}");
    pool.delete_thin(id).unwrap();
    pool.destroy(false).unwrap();
    let leftover: Vec<String> = s.dm_devices_under();
    assert!(leftover.is_empty(), "{leftover:?}");
}

#[test]
fn dm_full_pool_with_error_policy_fails_writes_with_enospc() {
    require_dm();
    let s = Scratch::new("full");
    let opts = CreateOptions {
        data: BackingRequest::File(Some(Bytes(8 << 20))),
        ..CreateOptions::default()
    };
    let mut pool = Pool::create(&s.path().join("pool"), &opts).unwrap();
    let id = pool.create_thin(Bytes(64 << 20), "big").unwrap();
    let dev = pool.activate_thin(id).unwrap();
    // O_DIRECT, so the error comes straight from the bio, not from a
    // later writeback (which reports every failure as EIO).
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&dev)
        .unwrap();
    // O_DIRECT wants a 4K-aligned buffer: a 4K-aligned megabyte inside a
    // slightly larger one.
    let buf = vec![0u8; (1 << 20) + 4096];
    let addr = buf.as_ptr() as usize;
    let start = addr.next_multiple_of(4096) - addr;
    let chunk = &buf[start..start + (1 << 20)];
    let mut err = None;
    for _ in 0..16 {
        if let Err(e) = f.write_all(chunk) {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("writing 16M into an 8M pool succeeded");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(f);
    let st = pool.status().unwrap();
    assert_eq!(st.mode, Some(thinpool::PoolMode::OutOfDataSpace));
    assert_eq!(st.data.used_bytes, Some(st.data.total_bytes));
    // New devices are refused (their first write would fail); deleting,
    // which frees space, still works.
    let thins = pool.thins().len();
    assert!(matches!(
        pool.snapshot_thin(id, "more"),
        Err(thinpool::Error::OutOfDataSpace)
    ));
    assert!(matches!(
        pool.create_thin(Bytes(1 << 20), "more"),
        Err(thinpool::Error::OutOfDataSpace)
    ));
    assert_eq!(pool.thins().len(), thins, "a refused device was recorded");
    pool.deactivate_thin(id).unwrap();
    pool.delete_thin(id).unwrap();
    let st = pool.status().unwrap();
    assert_eq!(st.data.used_bytes, Some(Bytes(0)), "{st:?}");
    pool.destroy(true).unwrap();
}

#[test]
fn dm_names_of_two_pools_never_collide() {
    require_dm();
    let (a, b) = (Scratch::new("a"), Scratch::new("b"));
    let (pa, pb) = (small_pool(&a), small_pool(&b));
    assert_ne!(pa.record().id, pb.record().id);
    let (da, db) = (a.dm_devices_under(), b.dm_devices_under());
    assert_eq!(da.len(), 3, "{da:?}");
    assert_eq!(db.len(), 3, "{db:?}");
    assert!(da.iter().all(|n| !db.contains(n)));
    pa.destroy(false).unwrap();
    assert_eq!(
        b.dm_devices_under(),
        db,
        "destroying one pool touched the other"
    );
    pb.destroy(false).unwrap();
}

/// A pool of 256M data and the smallest metadata the target takes (2M:
/// 512 blocks of 4K), with reserve `min_free`.
fn tiny_metadata_pool(s: &Scratch, min_free: thinpool::MinFree) -> Pool {
    let opts = CreateOptions {
        data: BackingRequest::File(Some(Bytes(256 << 20))),
        metadata: BackingRequest::File(Some(Bytes(2 << 20))),
        min_free,
        ..CreateOptions::default()
    };
    Pool::create(&s.path().join("pool"), &opts).unwrap()
}

/// Creates 1M thin devices until one is refused: how many were made, and
/// the refusal. Each costs at least one metadata block (its mapping
/// tree's root).
fn create_until_refused(pool: &mut Pool) -> (usize, Error) {
    let mut made = 0;
    loop {
        match pool.create_thin(Bytes(1 << 20), &format!("t{made}")) {
            Ok(_) => made += 1,
            Err(e) => return (made, e),
        }
        assert!(made < 5000, "the metadata never ran low");
    }
}

/// The metadata running out, every way: refused at the reserve while the
/// pool is still rw; with the reserve at 0, the kernel turns the pool
/// read-only and the create that hit it keeps its undo pending; an offline
/// grow brings it back; then autoextend and an online grow of the
/// metadata alone reach the kernel.
#[test]
fn dm_metadata_running_out_is_refused_at_the_reserve_and_recovered_past_it() {
    require_dm();
    let s = Scratch::new("meta-full");
    let mut pool = tiny_metadata_pool(&s, thinpool::MinFree::DEFAULT);
    let (made, err) = create_until_refused(&mut pool);
    match &err {
        Error::BelowReserve { space, .. } => assert_eq!(*space, "metadata", "{err}"),
        e => panic!("expected the metadata reserve to refuse, got: {e}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("pool grow") || msg.contains("min-free"),
        "{msg}"
    );
    assert!(made > 100, "refused after only {made} devices: {msg}");
    let st = pool.status().unwrap();
    // Refused while the kernel still writes: rw, nothing flagged, every
    // device the record has is in the metadata.
    assert_eq!(st.mode, Some(thinpool::PoolMode::Rw), "{st:?}");
    assert_eq!(st.needs_check, Some(false));
    assert_eq!(st.thin_devices, made);
    let used = st.metadata.used_bytes.unwrap().0;
    assert!(
        used * 100 >= st.metadata.total_bytes.0 * 85,
        "refused with {used} of {} used",
        st.metadata.total_bytes
    );

    // No reserve: the kernel runs out and turns the pool read-only (it
    // grows no read-only pool); the failed create's undo waits, so
    // nothing is forgotten.
    let zero = SettingsChange {
        min_free: Some(thinpool::MinFree::new(0).unwrap()),
        ..SettingsChange::default()
    };
    pool.set(&zero).unwrap();
    let (more, err) = create_until_refused(&mut pool);
    let made = made + more;
    let st = pool.status().unwrap();
    eprintln!(
        "metadata exhausted after {made} devices: {err}; mode {:?}, needs_check {:?}",
        st.mode, st.needs_check
    );
    assert_eq!(st.thin_devices, made, "a failed create was recorded");
    assert_eq!(st.mode, Some(thinpool::PoolMode::ReadOnly), "{st:?}");
    assert!(
        matches!(err, Error::Rollback { .. } | Error::ReadOnly),
        "{err}"
    );
    assert!(st.advice.unwrap().contains("pool grow --metadata-size"));
    assert!(matches!(
        pool.create_thin(Bytes(1 << 20), "refused"),
        Err(Error::ReadOnly | Error::UndoPending { .. })
    ));
    // As the advice says: deactivated, the metadata grown offline, the
    // activation loads it; the kernel resizes it and the pool is rw, the
    // pending undo finished.
    pool.deactivate().unwrap();
    pool.grow(None, Some(SizeChange::By(Bytes(1 << 20))))
        .unwrap();
    pool.activate().unwrap();
    let st = pool.status().unwrap();
    assert_eq!(st.mode, Some(thinpool::PoolMode::Rw), "{st:?}");
    assert_eq!(st.metadata.total_bytes, Bytes(3 << 20));
    assert_eq!(pool.record().pending, None);
    pool.create_thin(Bytes(1 << 20), "after-repair").unwrap();

    // Autoextend grows the metadata alone (two thirds used; the data is
    // far from its threshold) by the step's share of it: a 64M step on
    // 256M of data adds a quarter, and at least 1M.
    let change = SettingsChange {
        autoextend: AutoextendChange {
            threshold: Some("50".parse().unwrap()),
            step: Some(Bytes(64 << 20)),
            max: Some(Bytes(1 << 30)),
        },
        ..SettingsChange::default()
    };
    pool.set(&change).unwrap();
    assert_eq!(
        pool.autoextend().unwrap(),
        Autoextended::Grew {
            data: (Bytes(256 << 20), Bytes(256 << 20)),
            metadata: (Bytes(3 << 20), Bytes(4 << 20)),
        }
    );
    assert_eq!(pool.status().unwrap().metadata.total_bytes, Bytes(4 << 20));
    // And `pool grow` of the metadata alone, online, reaches the kernel.
    pool.grow(None, Some(SizeChange::By(Bytes(2 << 20))))
        .unwrap();
    assert_eq!(pool.status().unwrap().metadata.total_bytes, Bytes(6 << 20));
    pool.create_thin(Bytes(1 << 20), "after-grow").unwrap();
    assert_eq!(pool.status().unwrap().mode, Some(thinpool::PoolMode::Rw));
    pool.deactivate().unwrap();
    pool.activate().unwrap();
    assert_eq!(pool.thins().len(), made + 2);
    pool.destroy(true).unwrap();
}
