//! `thinlayer snapshotter serve`: containerd's snapshots gRPC API on a unix
//! socket, as a containerd proxy plugin. A thin translation: each request
//! runs the synchronous library ([`thinlayer::snapshots`]) on a blocking
//! thread, holding the store's lock for that request only, so the CLI can
//! work on the same root between requests. A store that served a request
//! is kept for the next one ([`thinlayer::store::ParkedStore`]), and read
//! anew only if another process (or another request) took its lock since,
//! so a request does not reread every record and reopen the pool.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use containerd_snapshots::{api, Info, Kind, Snapshotter, Usage};
use thinlayer::driver::overlay::OverlayOptions;
use thinlayer::driver::{DriverKind, MountSpec};
use thinlayer::error::Error;
use thinlayer::layer::SnapshotKind;
use thinlayer::snapshots::{self, Filters};
use thinlayer::store::ParkedStore;
use thinlayer::{Root, Store};
use tonic::Status;

#[derive(Debug, Subcommand)]
pub enum SnapshotterCommand {
    /// Serve containerd's snapshots API on a unix socket (a containerd
    /// proxy plugin), with the global --root and --driver. Stops cleanly
    /// on SIGTERM and SIGINT.
    Serve {
        /// The unix socket to listen on.
        #[arg(
            long,
            value_name = "SOCKET",
            default_value = "/run/thinlayer/snapshotter.sock"
        )]
        address: PathBuf,
        /// Size of an active snapshot's filesystem when its labels name
        /// none (thin driver; at least the base size), e.g. 20G.
        #[arg(long, value_name = "SIZE")]
        default_size: Option<thinpool::Bytes>,
        /// Log every request as it starts and ends, with its duration
        /// (failures are always logged).
        #[arg(long)]
        debug: bool,
    },
}

/// What every request needs to open the store.
struct Service {
    root: Root,
    driver: DriverKind,
    overlay: OverlayOptions,
    default_size: Option<thinpool::Bytes>,
    debug: bool,
    /// The store that served the latest request, its lock let go, for the
    /// next (an earlier one can never resume: the later one held the lock
    /// after it).
    idle: std::sync::Mutex<Option<ParkedStore>>,
}

impl Service {
    fn open(&self) -> thinlayer::error::Result<Store> {
        self.root.open_store(self.driver, &self.overlay)
    }

    /// A store for one request: the one parked last, if it is still
    /// current ([`ParkedStore::resume`]), or a fresh one, whose repairs
    /// (what a killed request or command left) are logged.
    fn take(&self) -> thinlayer::error::Result<Store> {
        let parked = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(store) = parked.map(ParkedStore::resume).transpose()?.flatten() {
            return Ok(store);
        }
        let store = self.open()?;
        for r in store.repairs() {
            eprintln!("thinlayer: recovered: {r}");
        }
        Ok(store)
    }

    /// Keeps a store that served a request for the next one, unless a
    /// later one is kept already.
    fn give_back(&self, store: Store) {
        let parked = store.park();
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.as_ref().is_none_or(|kept| parked.is_later_than(kept)) {
            *idle = Some(parked);
        }
    }

    /// Runs `f` on an open store on a blocking thread; a failure is logged
    /// (one line: the request and the reason) and becomes the gRPC status
    /// containerd expects.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        what: String,
        f: impl FnOnce(&mut Store) -> thinlayer::error::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let me = self.clone();
        let t0 = std::time::Instant::now();
        if self.debug {
            eprintln!("thinlayer: {what}: started");
        }
        let r = tokio::task::spawn_blocking(move || {
            let mut store = me.take()?;
            let r = f(&mut store);
            // A failed request may have stopped half-way: the next one
            // opens the store anew.
            if r.is_ok() {
                me.give_back(store);
            }
            r
        })
        .await
        .map_err(|e| Status::internal(format!("{what}: the request's thread failed: {e}")))?;
        if self.debug && r.is_ok() {
            eprintln!("thinlayer: {what}: ok in {} ms", t0.elapsed().as_millis());
        }
        r.map_err(|e| {
            let status = status_of(&e, &what);
            eprintln!("thinlayer: {what}: {:?}: {e:#}", status.code());
            status
        })
    }
}

/// containerd's error classes, as its proxy reads them from gRPC codes.
fn status_of(e: &Error, what: &str) -> Status {
    let msg = format!("{what}: {e}");
    match e {
        Error::NotFound { .. } => Status::not_found(msg),
        Error::Exists { .. } => Status::already_exists(msg),
        Error::Invalid { .. } => Status::invalid_argument(msg),
        Error::Precondition(_) | Error::InUse { .. } | Error::NoPool { .. } => {
            Status::failed_precondition(msg)
        }
        Error::Pool(
            thinpool::Error::ReadOnly
            | thinpool::Error::OutOfDataSpace
            | thinpool::Error::BelowReserve { .. },
        ) => Status::resource_exhausted(format!(
            "{msg}: remove snapshots, or grow the pool with `thinlayer pool grow`"
        )),
        _ if no_space(e) => Status::resource_exhausted(msg),
        Error::Lock(_) => Status::unavailable(msg),
        _ => Status::internal(msg),
    }
}

/// Whether an ENOSPC is behind `e` (a full pool or filesystem).
fn no_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(x) = cur {
        if x.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::ENOSPC))
        {
            return true;
        }
        cur = x.source();
    }
    false
}

fn kind_of(k: SnapshotKind) -> Kind {
    match k {
        SnapshotKind::Active => Kind::Active,
        SnapshotKind::View => Kind::View,
        SnapshotKind::Committed => Kind::Committed,
    }
}

fn info_of(i: snapshots::Info) -> Info {
    let at = |ns: i64| UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64);
    Info {
        kind: kind_of(i.kind),
        name: i.name,
        parent: i.parent.unwrap_or_default(),
        labels: i.labels.into_iter().collect(),
        created_at: at(i.created_ns),
        updated_at: at(i.updated_ns),
    }
}

fn mounts_of(m: Vec<MountSpec>) -> Vec<api::types::Mount> {
    m.into_iter()
        .map(|m| api::types::Mount {
            r#type: m.fstype,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn labels_of(l: HashMap<String, String>) -> BTreeMap<String, String> {
    l.into_iter().collect()
}

struct Thinlayer(Arc<Service>);

#[tonic::async_trait]
impl Snapshotter for Thinlayer {
    type Error = Status;
    type InfoStream = futures::stream::BoxStream<'static, Result<Info, Status>>;

    async fn stat(&self, key: String) -> Result<Info, Status> {
        let what = format!("stat {key}");
        let i = self.0.run(what, move |s| snapshots::stat(s, &key)).await?;
        Ok(info_of(i))
    }

    async fn update(&self, info: Info, fieldpaths: Option<Vec<String>>) -> Result<Info, Status> {
        let what = format!("update {}", info.name);
        let i = self
            .0
            .run(what, move |s| {
                let paths = fieldpaths.unwrap_or_default();
                snapshots::update(s, &info.name, labels_of(info.labels), &paths)
            })
            .await?;
        Ok(info_of(i))
    }

    async fn usage(&self, key: String) -> Result<Usage, Status> {
        let what = format!("usage {key}");
        let u = self.0.run(what, move |s| snapshots::usage(s, &key)).await?;
        // A thin layer has no inode count of its own without mounting it:
        // bytes only, as containerd's devmapper snapshotter reports them.
        Ok(Usage {
            size: u.exclusive_bytes as i64,
            inodes: u.inodes.unwrap_or(0) as i64,
        })
    }

    async fn mounts(&self, key: String) -> Result<Vec<api::types::Mount>, Status> {
        let what = format!("mounts {key}");
        let m = self
            .0
            .run(what, move |s| snapshots::mounts(s, &key))
            .await?;
        Ok(mounts_of(m))
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<api::types::Mount>, Status> {
        self.create(SnapshotKind::Active, key, parent, labels).await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<api::types::Mount>, Status> {
        self.create(SnapshotKind::View, key, parent, labels).await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Status> {
        let what = format!("commit {key} as {name}");
        self.0
            .run(what, move |s| {
                snapshots::commit(s, &name, &key, Some(labels_of(labels))).map(|_| ())
            })
            .await
    }

    async fn remove(&self, key: String) -> Result<(), Status> {
        let what = format!("remove {key}");
        self.0.run(what, move |s| snapshots::remove(s, &key)).await
    }

    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> Result<Self::InfoStream, Status> {
        let what = format!("walk {filters:?}");
        let all = self
            .0
            .run(what, move |s| {
                let f = Filters::parse(&filters)?;
                Ok(snapshots::walk(s, &f))
            })
            .await?;
        // The trait fixes the stream's item type, tonic's Status included.
        #[allow(clippy::result_large_err)]
        let items: Vec<Result<Info, Status>> = all.into_iter().map(|i| Ok(info_of(i))).collect();
        Ok(Box::pin(futures::stream::iter(items)))
    }
}

impl Thinlayer {
    async fn create(
        &self,
        kind: SnapshotKind,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<api::types::Mount>, Status> {
        let what = format!("{} {key}", kind_verb(kind));
        let default_size = self.0.default_size;
        let m = self
            .0
            .run(what, move |s| {
                let parent = (!parent.is_empty()).then_some(parent);
                snapshots::create(
                    s,
                    kind,
                    &key,
                    parent.as_deref(),
                    labels_of(labels),
                    default_size,
                )
            })
            .await?;
        Ok(mounts_of(m))
    }
}

fn kind_verb(k: SnapshotKind) -> &'static str {
    match k {
        SnapshotKind::View => "view",
        _ => "prepare",
    }
}

/// Binds the socket, refusing one a live server holds; a stale one (no
/// listener) is replaced.
fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket: choose another --address",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another server is listening on {}: stop it first, or choose another --address",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let l = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("listening on {}", path.display()))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

pub fn run(
    root: Root,
    driver: DriverKind,
    overlay: OverlayOptions,
    cmd: SnapshotterCommand,
) -> Result<()> {
    let SnapshotterCommand::Serve {
        address,
        default_size,
        debug,
    } = cmd;
    let service = Service {
        root,
        driver,
        overlay,
        default_size,
        debug,
        idle: std::sync::Mutex::new(None),
    };
    // Open once before serving: recovery runs, and a root that cannot be
    // used (or a --default-size it cannot give) is an error at start, not
    // on the first request.
    let store = service.open()?;
    if let Some(s) = default_size {
        store.check_size(s)?;
    }
    for r in store.repairs() {
        eprintln!("thinlayer: recovered: {r}");
    }
    service.give_back(store);
    let listener = bind(&address)?;
    // A client that goes away must not kill the daemon with SIGPIPE (main
    // sets its default action for the CLI's listings).
    // SAFETY: SIG_IGN installs no handler; no other thread exists yet.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigIgn,
        )?;
    }
    // The thin pool is watched while the daemon serves: autoextend and
    // mode changes, woken by device-mapper events (as `pool monitor`).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = (driver == DriverKind::Thin).then(|| {
        let (stop, dir) = (Arc::clone(&stop), service.root.pool_dir());
        std::thread::spawn(move || {
            let watched = thinlayer::thinpool::monitor::watch(&dir, &stop, &mut |e| {
                eprintln!("thinlayer: snapshotter: pool monitor: {e}");
            });
            if let Err(e) = watched {
                eprintln!("thinlayer: snapshotter: the pool monitor stopped: {}", e);
            }
        })
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let socket = address.clone();
    let served = rt.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            eprintln!("thinlayer: snapshotter: stopping");
        };
        eprintln!(
            "thinlayer: snapshotter: serving containerd's snapshots API on {} ({} driver)",
            address.display(),
            driver
        );
        tonic::transport::Server::builder()
            .add_service(containerd_snapshots::server(Arc::new(Thinlayer(Arc::new(
                service,
            )))))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .context("serving")
    });
    let _ = std::fs::remove_file(&socket);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(w) = watcher {
        let _ = w.join();
    }
    served
}
