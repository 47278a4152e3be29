//! Property tests: hostile changesets at scale (issue 14). Two sources of
//! input, one set of properties.
//!
//! * Generated archives ([`Case`]): random sequences of entries of every
//!   kind (directories, files with honest, short, long and absurd declared
//!   sizes, symlinks and hard links to names inside, outside and nowhere,
//!   whiteouts, opaque markers, aufs names, devices, fifos, unknown types),
//!   at paths with `..`, `.`, `//`, a leading `/`, names over NAME_MAX,
//!   non-UTF-8 and control bytes, named in the header, in GNU long-name
//!   records, in PAX records or in both (agreeing or not), with PAX
//!   xattrs, times, owners, sizes and garbage; written as raw 512-byte
//!   headers, checksums right or wrong, plain, gzip or zstd.
//! * Mutations ([`Mutation`]) of one real, valid layer that has every entry
//!   kind: truncations, bit flips anywhere or in a header (checksum fixed
//!   or not), header fields set to absurd values, bytes spliced, inserted
//!   or deleted, members duplicated or swapped; then maybe compressed, and
//!   the compressed stream maybe cut or flipped.
//!
//! Each case is applied, in Delete or Overlay mode, with `openat2` or the
//! component walk alone, into a root that already holds a lower tree with
//! symlinks out of it (to the sentinel, absolute and relative). Properties:
//!
//! * no panic (proptest catches one and reports the minimized input);
//! * an error is one of the `apply` kinds (never `Corrupt` or
//!   `Irreproducible`), and its message is one non-empty line;
//! * nothing outside the root changes: the sandbox around it (two levels
//!   up, with a sentinel tree beside the root) is the same after, walked
//!   without following symlinks, and `/tmp/<marker>`, which generated
//!   symlinks point to, never comes to exist;
//! * the root can still be walked;
//! * a success read every byte: its `bytes` and `diff_id` are the length
//!   and sha256 of the uncompressed input.
//!
//! Runs are deterministic (fixed seed, no persistence): see
//! [`crate::text::prop`]. Each test also checks that its cases reach past
//! the first header: some succeed, and the errors are of several kinds.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};

use proptest::prelude::*;
// Named: `super::*` brings this module, also `prop`.
use proptest::prelude::prop;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

use super::*;
use crate::text::prop::{check, one_line};

/// Cases of each test; with the others here and in `image`, thousands in
/// all, in well under a minute of a debug build on two slow cores.
const GENERATED_CASES: u32 = 3_000;
const MUTATED_CASES: u32 = 3_000;

// ---------------------------------------------------------------------------------------------
// The world a case is applied in

/// `/tmp/<marker>`: generated symlinks point there (and below); it must
/// never come to exist.
fn marker() -> PathBuf {
    std::env::temp_dir().join(format!("thinlayer-prop-marker-{}", std::process::id()))
}

/// A temp dir in `/dev/shm` (tmpfs) where there is one, else in the usual
/// place. Thousands of cases each make and remove a small tree; on this
/// project's VMs that takes about 20 ms on the root ext4 and 0.4 ms on
/// tmpfs, which decides whether the tests run in seconds or minutes.
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("thinlayer-prop-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap()
}

/// A temp dir `top/` with the layer root two levels down
/// (`top/up/box/root`), a sentinel tree beside it and files around it, so
/// that `..`, `../..` and `../../..` from the root all land in what is
/// watched. The root starts with a lower tree: a directory, a file, and
/// symlinks out of the root (absolute, to the sentinel, and relative).
struct World {
    dir: tempfile::TempDir,
    root: PathBuf,
    sentinel: PathBuf,
    before: BTreeMap<PathBuf, String>,
}

impl World {
    fn new() -> World {
        let dir = scratch();
        let boxed = dir.path().join("up/box");
        let root = boxed.join("root");
        let sentinel = boxed.join("sentinel");
        fs::create_dir_all(root.join("a")).unwrap();
        fs::create_dir_all(sentinel.join("sub")).unwrap();
        fs::write(sentinel.join("secret"), b"do not touch").unwrap();
        fs::write(sentinel.join("sub/inner"), b"nor this").unwrap();
        fs::write(boxed.join("outside"), b"outside").unwrap();
        fs::write(dir.path().join("up/above"), b"above").unwrap();
        fs::write(dir.path().join("top"), b"top").unwrap();
        fs::write(root.join("a/f"), b"lower file").unwrap();
        fs::write(root.join("b"), b"lower b").unwrap();
        symlink(&sentinel, root.join("lower")).unwrap();
        symlink("../sentinel", root.join("rel")).unwrap();
        let mut w = World {
            dir,
            root,
            sentinel,
            before: BTreeMap::new(),
        };
        w.before = w.outside();
        w
    }

    /// Everything in the temp dir except the root's content.
    fn outside(&self) -> BTreeMap<PathBuf, String> {
        let mut all = BTreeMap::new();
        snapshot(self.dir.path(), Path::new(""), Some(&self.root), &mut all).unwrap();
        all
    }

    /// The properties that hold whatever the archive was.
    fn check_untouched(&self) -> Result<(), TestCaseError> {
        let m = marker();
        if m.symlink_metadata().is_ok() {
            let _ = fs::remove_dir_all(&m).or_else(|_| fs::remove_file(&m));
            return Err(TestCaseError::fail(format!(
                "{} was created outside the root",
                m.display()
            )));
        }
        let now = self.outside();
        if now != self.before {
            let changed: Vec<String> = now
                .iter()
                .filter(|(p, n)| self.before.get(*p) != Some(n))
                .map(|(p, _)| p.display().to_string())
                .chain(
                    self.before
                        .keys()
                        .filter(|p| !now.contains_key(*p))
                        .map(|p| format!("{} (gone)", p.display())),
                )
                .collect();
            return Err(TestCaseError::fail(format!(
                "something outside the root changed: {changed:?}"
            )));
        }
        // The root can still be walked (as a user other than root too).
        open_up(&self.root);
        snapshot(&self.root, Path::new(""), None, &mut BTreeMap::new())
            .map_err(|e| TestCaseError::fail(format!("the root cannot be walked: {e}")))?;
        Ok(())
    }
}

/// Every node under `top/rel` but `skip` and below, by path relative to
/// `top`, described: type, mode, owner, link count, size, mtime, ctime,
/// content digest, link target, xattrs. Symlinks are not followed. Unlike [`tree`], it takes
/// what apply may leave (an xattr the kernel let be set and now refuses
/// to read back, such as an empty `security.capability`) as a description.
fn snapshot(
    top: &Path,
    rel: &Path,
    skip: Option<&Path>,
    out: &mut BTreeMap<PathBuf, String>,
) -> std::io::Result<()> {
    for e in fs::read_dir(top.join(rel))? {
        let e = e?;
        let r = rel.join(e.file_name());
        let p = top.join(&r);
        if Some(p.as_path()) == skip {
            continue;
        }
        let md = fs::symlink_metadata(&p)?;
        let ft = md.file_type();
        // A file may be unreadable (mode 000, without root): that is
        // described too.
        let content = if ft.is_file() {
            match fs::read(&p) {
                Ok(b) => format!("{:x}", Sha256::digest(b)),
                Err(e) => format!("unreadable: {e}"),
            }
        } else if ft.is_symlink() {
            format!("-> {:?}", fs::read_link(&p)?)
        } else {
            String::new()
        };
        let xattrs: Vec<String> = match xattr::list(&p) {
            Ok(names) => names
                .map(|n| match xattr::get(&p, &n) {
                    Ok(v) => format!("{n:?}={v:?}"),
                    Err(err) => format!("{n:?}: {err}"),
                })
                .collect(),
            Err(err) => vec![err.to_string()],
        };
        // The ctime catches what else could touch an inode from inside
        // the root: a hard link to it (nlink too), a chmod, an xattr.
        let d = format!(
            "{:?} {:o} {}:{} n{} {} m{} c{}.{} {} {content} {xattrs:?}",
            ft,
            md.mode(),
            md.uid(),
            md.gid(),
            md.nlink(),
            if ft.is_dir() { 0 } else { md.size() },
            md.mtime(),
            md.ctime(),
            md.ctime_nsec(),
            md.rdev(),
        );
        out.insert(r.clone(), d);
        if ft.is_dir() {
            snapshot(top, &r, skip, out)?;
        }
    }
    Ok(())
}

/// Gives every directory under `dir` (not through symlinks) its owner's
/// rwx bits, so that the tree can be walked and removed without root.
fn open_up(dir: &Path) {
    let Ok(md) = fs::symlink_metadata(dir) else {
        return;
    };
    if !md.is_dir() {
        return;
    }
    let mode = md.permissions().mode();
    if mode & 0o700 != 0o700 {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            open_up(&e.path());
        }
    }
}

/// Outcomes of one test's cases, by kind ("ok" for a success).
#[derive(Default)]
struct Tally(RefCell<BTreeMap<&'static str, u32>>);

impl Tally {
    fn add(&self, k: &'static str) {
        *self.0.borrow_mut().entry(k).or_default() += 1;
    }

    /// Prints the tally and checks the cases went past the first header:
    /// some succeeded, and the errors are of at least `kinds` kinds.
    #[track_caller]
    fn assert_varied(&self, name: &str, kinds: usize) {
        let t = self.0.borrow();
        eprintln!("{name}: outcomes {t:?}");
        assert!(t.get("ok").copied().unwrap_or(0) > 0, "no case succeeded");
        let errors = t.keys().filter(|k| **k != "ok").count();
        assert!(errors >= kinds, "errors of only {errors} kinds");
    }
}

// ---------------------------------------------------------------------------------------------
// Raw tar blocks

const BLOCK: usize = 512;

/// A header block with every numeric field valid, `name` and `link` as
/// raw bytes (cut at 100), the checksum set.
fn header(ty: u8, name: &[u8], link: &[u8], size: u64, gnu: bool) -> Header {
    let mut h = if gnu {
        Header::new_gnu()
    } else {
        Header::new_ustar()
    };
    let (uid, gid) = me();
    h.set_mode(0o644);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(T0);
    h.set_size(size);
    h.set_entry_type(EntryType::new(ty));
    let old = h.as_old_mut();
    let n = name.len().min(100);
    old.name[..n].copy_from_slice(&name[..n]);
    let n = link.len().min(100);
    old.linkname[..n].copy_from_slice(&link[..n]);
    h.set_cksum();
    h
}

/// Appends a member: its header, `data`, and zeros to the next block.
fn member(out: &mut Vec<u8>, h: &Header, data: &[u8]) {
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    pad(out);
}

fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(BLOCK), 0);
}

/// One PAX record, "LEN key=value\n", its length counting itself.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 2; // "=", "\n"
    let mut len = body + 1;
    while len != body + 1 + len.to_string().len() {
        len = body + 1 + len.to_string().len();
    }
    let mut r = format!("{len} ").into_bytes();
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// A GNU `L` (long name) or `K` (long link) member carrying `value`.
fn gnu_long(out: &mut Vec<u8>, ty: u8, value: &[u8]) {
    let mut data = value.to_vec();
    data.push(0);
    let h = header(ty, b"././@LongLink", b"", data.len() as u64, true);
    member(out, &h, &data);
}

/// A PAX `x` (or global `g`) member with these records.
fn pax_member(out: &mut Vec<u8>, ty: u8, records: &[u8]) {
    let h = header(ty, b"PaxHeaders/x", b"", records.len() as u64, false);
    member(out, &h, records);
}

fn compress(plain: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => plain.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(plain).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(plain, 1).unwrap(),
    }
}

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![
        8 => Just(Compression::None),
        1 => Just(Compression::Gzip),
        1 => Just(Compression::Zstd),
    ]
}

// ---------------------------------------------------------------------------------------------
// Generated archives

/// One path component.
#[derive(Debug, Clone, Copy)]
enum Comp {
    /// A name of the pool; some are in the lower tree (`a`, `b`, and the
    /// symlinks `lower` and `rel`).
    N(u8),
    Dot,
    DotDot,
    /// An empty component: `a//b`.
    Empty,
    /// `.wh.` + a pool name.
    Wh(u8),
    /// `.wh..wh..opq`
    Opaque,
    /// `.wh..wh.plnk` (aufs metadata)
    WhMeta,
    /// `.wh.` and `.wh..`
    WhBare,
    WhDotDot,
    /// `x` repeated: past NAME_MAX from 256.
    Long(u16),
    /// A name with bytes that are not UTF-8.
    NotUtf8,
    /// A name with a newline and a carriage return in it.
    Control,
}

const POOL: [&str; 6] = ["a", "b", "c", "d", "lower", "rel"];

/// A name of the pool: the symlinks out of the root less often, so that
/// archives get past them.
fn pool_name() -> impl Strategy<Value = Comp> {
    prop_oneof![6 => (0u8..4).prop_map(Comp::N), 1 => (4u8..6).prop_map(Comp::N)]
}

impl Comp {
    fn bytes(self) -> Vec<u8> {
        let pool = |i: u8| POOL[i as usize % POOL.len()].as_bytes().to_vec();
        match self {
            Comp::N(i) => pool(i),
            Comp::Dot => b".".to_vec(),
            Comp::DotDot => b"..".to_vec(),
            Comp::Empty => Vec::new(),
            Comp::Wh(i) => [b".wh.".to_vec(), pool(i)].concat(),
            Comp::Opaque => b".wh..wh..opq".to_vec(),
            Comp::WhMeta => b".wh..wh.plnk".to_vec(),
            Comp::WhBare => b".wh.".to_vec(),
            Comp::WhDotDot => b".wh...".to_vec(),
            Comp::Long(n) => vec![b'x'; n as usize],
            Comp::NotUtf8 => b"n\xff\xfe".to_vec(),
            Comp::Control => b"n\nl\r".to_vec(),
        }
    }
}

fn comp() -> impl Strategy<Value = Comp> {
    prop_oneof![
        30 => pool_name(),
        2 => Just(Comp::Dot),
        2 => Just(Comp::DotDot),
        1 => Just(Comp::Empty),
        3 => (0u8..6).prop_map(Comp::Wh),
        2 => Just(Comp::Opaque),
        1 => Just(Comp::WhMeta),
        1 => Just(Comp::WhBare),
        1 => Just(Comp::WhDotDot),
        1 => (90u16..300).prop_map(Comp::Long),
        1 => Just(Comp::NotUtf8),
        1 => Just(Comp::Control),
    ]
}

/// A path: components, maybe a leading and a trailing `/`.
#[derive(Debug, Clone)]
struct GPath {
    abs: bool,
    comps: Vec<Comp>,
    slash: bool,
}

impl GPath {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.abs {
            out.push(b'/');
        }
        let comps: Vec<Vec<u8>> = self.comps.iter().map(|c| c.bytes()).collect();
        out.extend(comps.join(&b'/'));
        if self.slash {
            out.push(b'/');
        }
        out
    }
}

fn gpath() -> impl Strategy<Value = GPath> {
    (
        prop::bool::weighted(0.1),
        prop::collection::vec(comp(), 0..4),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(abs, comps, slash)| GPath { abs, comps, slash })
}

/// A path of pool names (the lower tree's among them).
fn plain_path() -> impl Strategy<Value = GPath> {
    (
        prop::collection::vec(pool_name(), 1..4),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(comps, slash)| GPath {
            abs: false,
            comps,
            slash,
        })
}

/// A link target.
#[derive(Debug, Clone)]
enum GLink {
    /// A path like an entry's (often one the archive makes).
    Path(GPath),
    /// The sentinel directory or a file in it, absolute.
    Sentinel,
    SentinelFile,
    /// `../sentinel`, `../../up/box/sentinel/secret`.
    UpSentinel,
    UpUp,
    /// `/tmp/<marker>` and below.
    Marker,
    MarkerSub,
    /// `/`
    Root,
    Empty,
}

impl GLink {
    fn bytes(&self, w: &World) -> Vec<u8> {
        let p = |p: &Path| p.as_os_str().as_bytes().to_vec();
        match self {
            GLink::Path(g) => g.bytes(),
            GLink::Sentinel => p(&w.sentinel),
            GLink::SentinelFile => p(&w.sentinel.join("secret")),
            GLink::UpSentinel => b"../sentinel".to_vec(),
            GLink::UpUp => b"../../up/box/sentinel/secret".to_vec(),
            GLink::Marker => p(&marker()),
            GLink::MarkerSub => p(&marker().join("sub/file")),
            GLink::Root => b"/".to_vec(),
            GLink::Empty => Vec::new(),
        }
    }
}

fn glink() -> impl Strategy<Value = GLink> {
    prop_oneof![
        10 => gpath().prop_map(GLink::Path),
        2 => Just(GLink::Sentinel),
        1 => Just(GLink::SentinelFile),
        1 => Just(GLink::UpSentinel),
        1 => Just(GLink::UpUp),
        2 => Just(GLink::Marker),
        2 => Just(GLink::MarkerSub),
        1 => Just(GLink::Root),
        1 => Just(GLink::Empty),
    ]
}

/// A file's declared size against the bytes that follow its header.
#[derive(Debug, Clone, Copy)]
enum Declared {
    Exact,
    /// More than there is: the reader runs into the next headers.
    More(u16),
    /// Less: the rest of the data is read as headers.
    Less(u16),
    /// An absurd size (a few around the 64 GiB limit, octal's largest,
    /// base-256 ones).
    Absurd(u64),
}

fn declared() -> impl Strategy<Value = Declared> {
    prop_oneof![
        12 => Just(Declared::Exact),
        1 => (1u16..2048).prop_map(Declared::More),
        1 => (1u16..2048).prop_map(Declared::Less),
        1 => prop::sample::select(vec![
            (64u64 << 30) + 1,
            64 << 30,
            (1 << 33) - 1,
            1 << 33,
            u64::MAX,
            u64::MAX / 2,
            1 << 62,
        ])
        .prop_map(Declared::Absurd),
    ]
}

/// What an entry is.
#[derive(Debug, Clone)]
enum GKind {
    Dir,
    File {
        len: u16,
        /// 0: zeros (holes), else this byte.
        fill: u8,
        declared: Declared,
    },
    Symlink(GLink),
    Hardlink(GLink),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
    /// Any other type byte (GNU sparse `S`, volume label `V`, `x`, `L`,
    /// `g` without their records, letters, NUL...).
    Other(u8),
}

/// The kinds of an ordinary layer, to names of the pool.
fn plain_kind() -> impl Strategy<Value = GKind> {
    let link = || plain_path().prop_map(GLink::Path);
    prop_oneof![
        4 => Just(GKind::Dir),
        6 => (0u16..5000, prop_oneof![Just(0u8), 1u8..]).prop_map(|(len, fill)| GKind::File {
            len,
            fill,
            declared: Declared::Exact
        }),
        2 => link().prop_map(GKind::Symlink),
        2 => link().prop_map(GKind::Hardlink),
        1 => Just(GKind::Fifo),
    ]
}

fn gkind() -> impl Strategy<Value = GKind> {
    prop_oneof![
        6 => Just(GKind::Dir),
        8 => (0u16..5000, prop_oneof![Just(0u8), any::<u8>()], declared())
            .prop_map(|(len, fill, declared)| GKind::File { len, fill, declared }),
        3 => glink().prop_map(GKind::Symlink),
        3 => glink().prop_map(GKind::Hardlink),
        1 => (0u32..8, 0u32..8).prop_map(|(a, b)| GKind::Char(a, b)),
        1 => (0u32..8, 0u32..8).prop_map(|(a, b)| GKind::Block(a, b)),
        1 => Just(GKind::Fifo),
        1 => any::<u8>().prop_map(GKind::Other),
    ]
}

/// How the entry's path (and link) is written.
#[derive(Debug, Clone, Copy)]
enum NameEnc {
    /// In the header (cut at 100 bytes).
    Header,
    /// In a GNU `L` / `K` record.
    GnuLong,
    /// In a PAX record.
    Pax,
    /// Both, agreeing.
    Both,
    /// Both, disagreeing (the PAX one has `x/` in front).
    Disagree,
}

fn name_enc() -> impl Strategy<Value = NameEnc> {
    prop_oneof![
        10 => Just(NameEnc::Header),
        2 => Just(NameEnc::GnuLong),
        2 => Just(NameEnc::Pax),
        1 => Just(NameEnc::Both),
        1 => Just(NameEnc::Disagree),
    ]
}

/// Extra PAX records.
#[derive(Debug, Clone)]
enum GPax {
    /// `SCHILY.xattr.<name>=<value>`, names from a list that has the
    /// overlay namespaces and ones a filesystem refuses.
    Xattr(u8, Vec<u8>),
    Mtime(&'static str),
    Uid(&'static str),
    Size(&'static str),
    /// `GNU.sparse.size=1`
    Sparse,
    /// Bytes that are not PAX records.
    Garbage(Vec<u8>),
}

const XATTRS: [&str; 7] = [
    "user.k",
    "trusted.overlay.opaque",
    "user.overlay.redirect",
    "security.capability",
    "trusted.t",
    "bogus.ns",
    "",
];

const NUMBERS: [&str; 8] = [
    "0",
    "1",
    "-1",
    "1.5",
    "18446744073709551616",
    "4294967295",
    "99999999999999999999999",
    "",
];

fn gpax() -> impl Strategy<Value = GPax> {
    prop_oneof![
        4 => (0u8..7, prop::collection::vec(any::<u8>(), 0..24))
            .prop_map(|(n, v)| GPax::Xattr(n, v)),
        1 => prop::sample::select(&NUMBERS[..]).prop_map(GPax::Mtime),
        1 => prop::sample::select(&NUMBERS[..]).prop_map(GPax::Uid),
        1 => prop::sample::select(&NUMBERS[..]).prop_map(GPax::Size),
        1 => Just(GPax::Sparse),
        1 => prop::collection::vec(any::<u8>(), 1..40).prop_map(GPax::Garbage),
    ]
}

/// The owner an entry names.
#[derive(Debug, Clone, Copy)]
enum Owner {
    /// The user running the test (so an apply without root can succeed).
    Me,
    Id(u32),
    /// Too large for 32 bits (base-256 in the header).
    Huge,
}

fn owner() -> impl Strategy<Value = Owner> {
    prop_oneof![
        12 => Just(Owner::Me),
        1 => prop::sample::select(vec![0u32, 1, 65534, u32::MAX - 1, u32::MAX]).prop_map(Owner::Id),
        1 => Just(Owner::Huge),
    ]
}

#[derive(Debug, Clone)]
struct GEntry {
    path: GPath,
    kind: GKind,
    enc: NameEnc,
    pax: Vec<GPax>,
    mode: u32,
    owner: Owner,
    gnu: bool,
    /// The checksum is off by one.
    bad_cksum: bool,
}

/// Mostly entries an ordinary layer has (so that archives get past their
/// first entries, often to the end), some from the whole hostile range.
fn gentry() -> impl Strategy<Value = GEntry> {
    prop_oneof![6 => plain_entry(), 1 => hostile_entry()]
}

fn plain_entry() -> impl Strategy<Value = GEntry> {
    (
        plain_path(),
        plain_kind(),
        prop_oneof![
            10 => Just(NameEnc::Header),
            2 => Just(NameEnc::GnuLong),
            2 => Just(NameEnc::Pax),
            1 => Just(NameEnc::Both),
        ],
        prop_oneof![4 => Just(vec![]), 1 => Just(vec![GPax::Xattr(0, b"v".to_vec())])],
        prop_oneof![Just(0o755u32), Just(0o644), Just(0o4755), Just(0o1777)],
        Just(Owner::Me),
        any::<bool>(),
        Just(false),
    )
        .prop_map(
            |(path, kind, enc, pax, mode, owner, gnu, bad_cksum)| GEntry {
                path,
                kind,
                enc,
                pax,
                mode,
                owner,
                gnu,
                bad_cksum,
            },
        )
}

fn hostile_entry() -> impl Strategy<Value = GEntry> {
    (
        gpath(),
        gkind(),
        name_enc(),
        prop::collection::vec(gpax(), 0..3),
        prop_oneof![4 => Just(0o755u32), 4 => Just(0o644), 1 => any::<u32>()],
        owner(),
        any::<bool>(),
        prop::bool::weighted(0.05),
    )
        .prop_map(
            |(path, kind, enc, pax, mode, owner, gnu, bad_cksum)| GEntry {
                path,
                kind,
                enc,
                pax,
                mode,
                owner,
                gnu,
                bad_cksum,
            },
        )
}

/// How the archive ends.
#[derive(Debug, Clone)]
enum End {
    TwoZeroBlocks,
    OneZeroBlock,
    /// Right after the last member (as umoci 0.4 writes).
    Nothing,
    /// Zero blocks, then more zeros (a record's padding).
    Padded,
    /// Zero blocks, then bytes that are not all zero.
    Trailing(Vec<u8>),
    /// In the middle of the last block.
    Cut(u16),
}

fn end() -> impl Strategy<Value = End> {
    prop_oneof![
        16 => Just(End::TwoZeroBlocks),
        1 => Just(End::OneZeroBlock),
        1 => Just(End::Nothing),
        1 => Just(End::Padded),
        1 => prop::collection::vec(any::<u8>(), 1..16).prop_map(End::Trailing),
        1 => (1u16..512).prop_map(End::Cut),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    entries: Vec<GEntry>,
    /// A PAX global header first (ignored by apply).
    global: bool,
    end: End,
    compression: Compression,
    overlay: bool,
    fallback: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(gentry(), 1..9),
        prop::bool::weighted(0.05),
        end(),
        compression(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(entries, global, end, compression, overlay, fallback)| Case {
                entries,
                global,
                end,
                compression,
                overlay,
                fallback,
            },
        )
}

impl GEntry {
    fn write(&self, out: &mut Vec<u8>, w: &World) {
        let path = self.path.bytes();
        let (ty, link, size, data): (u8, Vec<u8>, u64, Vec<u8>) = match &self.kind {
            GKind::Dir => (b'5', vec![], 0, vec![]),
            GKind::File {
                len,
                fill,
                declared,
            } => {
                let len = *len as usize;
                let data: Vec<u8> = (0..len)
                    .map(|i| {
                        if *fill == 0 {
                            0
                        } else {
                            fill.wrapping_add(i as u8)
                        }
                    })
                    .collect();
                let size = match declared {
                    Declared::Exact => len as u64,
                    Declared::More(n) => len as u64 + *n as u64,
                    Declared::Less(n) => (len as u64).saturating_sub(*n as u64),
                    Declared::Absurd(n) => *n,
                };
                (b'0', vec![], size, data)
            }
            GKind::Symlink(l) => (b'2', l.bytes(w), 0, vec![]),
            GKind::Hardlink(l) => (b'1', l.bytes(w), 0, vec![]),
            GKind::Char(..) => (b'3', vec![], 0, vec![]),
            GKind::Block(..) => (b'4', vec![], 0, vec![]),
            GKind::Fifo => (b'6', vec![], 0, vec![]),
            GKind::Other(t) => (*t, vec![], 0, vec![]),
        };

        let mut records = Vec::new();
        let long = |out: &mut Vec<u8>, ty: u8, v: &[u8]| gnu_long(out, ty, v);
        match self.enc {
            NameEnc::Header => {}
            NameEnc::GnuLong => {
                long(out, b'L', &path);
                if !link.is_empty() {
                    long(out, b'K', &link);
                }
            }
            NameEnc::Pax | NameEnc::Both | NameEnc::Disagree => {
                let p = if matches!(self.enc, NameEnc::Disagree) {
                    [b"x/".as_slice(), &path].concat()
                } else {
                    path.clone()
                };
                records.extend(pax_record(b"path", &p));
                if !link.is_empty() {
                    records.extend(pax_record(b"linkpath", &link));
                }
                if !matches!(self.enc, NameEnc::Pax) {
                    long(out, b'L', &path);
                }
            }
        }
        for p in &self.pax {
            match p {
                GPax::Xattr(n, v) => {
                    let key = format!("SCHILY.xattr.{}", XATTRS[*n as usize % XATTRS.len()]);
                    records.extend(pax_record(key.as_bytes(), v));
                }
                GPax::Mtime(v) => records.extend(pax_record(b"mtime", v.as_bytes())),
                GPax::Uid(v) => records.extend(pax_record(b"uid", v.as_bytes())),
                GPax::Size(v) => records.extend(pax_record(b"size", v.as_bytes())),
                GPax::Sparse => records.extend(pax_record(b"GNU.sparse.size", b"1")),
                GPax::Garbage(g) => records.extend(g),
            }
        }
        if !records.is_empty() {
            pax_member(out, b'x', &records);
        }

        let mut h = header(ty, &path, &link, size, self.gnu);
        h.set_mode(self.mode);
        match self.owner {
            Owner::Me => {}
            Owner::Id(id) => {
                h.set_uid(id as u64);
                h.set_gid(id as u64);
            }
            Owner::Huge => {
                h.set_uid(1 << 40);
                h.set_gid(1 << 40);
            }
        }
        if let GKind::Char(ma, mi) | GKind::Block(ma, mi) = self.kind {
            h.set_device_major(ma).unwrap();
            h.set_device_minor(mi).unwrap();
        }
        h.set_cksum();
        if self.bad_cksum {
            let c = h.cksum().unwrap();
            let cs = &mut h.as_old_mut().cksum;
            let s = format!("{:06o}\0 ", c + 1);
            cs.copy_from_slice(s.as_bytes());
        }
        member(out, &h, &data);
    }
}

impl Case {
    /// The uncompressed tar.
    fn plain(&self, w: &World) -> Vec<u8> {
        let mut out = Vec::new();
        if self.global {
            pax_member(&mut out, b'g', &pax_record(b"comment", b"global"));
        }
        for e in &self.entries {
            e.write(&mut out, w);
        }
        match &self.end {
            End::TwoZeroBlocks => out.resize(out.len() + 2 * BLOCK, 0),
            End::OneZeroBlock => out.resize(out.len() + BLOCK, 0),
            End::Nothing => {}
            End::Padded => out.resize(out.len() + 20 * BLOCK, 0),
            End::Trailing(t) => {
                out.resize(out.len() + 2 * BLOCK, 0);
                out.extend(t);
            }
            End::Cut(n) => {
                let n = (*n as usize).min(out.len());
                out.truncate(out.len() - n);
            }
        }
        out
    }
}

/// Generated archives: never a panic, a write outside the root, or an
/// unclear error.
#[test]
fn plain_changeset_never_panics_or_escapes_on_generated_archives() {
    let tally = Tally::default();
    check(
        "plain_changeset_never_panics_or_escapes_on_generated_archives",
        GENERATED_CASES,
        case(),
        |c| {
            let w = World::new();
            let plain = c.plain(&w);
            let input = compress(&plain, c.compression);
            apply_in(&w, &input, Some(&plain), c.overlay, c.fallback, &tally)
        },
    );
    tally.assert_varied("generated", 5);
}

/// Applies `input` (compressed or not; `plain` is the uncompressed tar,
/// when known: a mutated compressed stream may still decode, to other
/// bytes) to the root of `w` (whose paths the archive may name) and checks
/// every property.
fn apply_in(
    w: &World,
    input: &[u8],
    plain: Option<&[u8]>,
    overlay: bool,
    fallback: bool,
    tally: &Tally,
) -> Result<(), TestCaseError> {
    let mode = if overlay {
        WhiteoutMode::Overlay
    } else {
        WhiteoutMode::Delete
    };
    let go = || apply(input, &w.root, &opts(mode));
    let r = if fallback {
        crate::fsys::walk::with_fallback_only(go)
    } else {
        go()
    };
    w.check_untouched()?;
    outcome(r, plain, tally)
}

fn outcome(
    r: Result<ApplyStats, ChangesetError>,
    plain: Option<&[u8]>,
    tally: &Tally,
) -> Result<(), TestCaseError> {
    match r {
        Ok(st) => {
            tally.add("ok");
            if let Some(plain) = plain {
                prop_assert_eq!(st.bytes, plain.len() as u64, "bytes of a success");
                prop_assert_eq!(st.diff_id, sha256_hex(plain), "diff_id of a success");
            }
        }
        Err(e) => {
            tally.add(kind(&e));
            one_line(&e.to_string())?;
            prop_assert!(
                !matches!(
                    e,
                    ChangesetError::Corrupt { .. } | ChangesetError::Irreproducible { .. }
                ),
                "apply gave a record error: {}",
                e
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mutations of a real layer

/// A valid layer with every entry kind apply takes: directories, files
/// (one with zero blocks, one with xattrs), a symlink and a hard link, a
/// GNU long name and long link target, a PAX path, a whiteout of the lower
/// `b`, an opaque marker over the lower `a`, a fifo.
fn real_layer() -> Vec<u8> {
    let long_dir = "l".repeat(120);
    let mut ar = Ar::new();
    ar.dir("etc", 0o755)
        .file("etc/hosts", b"127.0.0.1 localhost\n", 0o644)
        .file(
            "etc/zeros",
            &[vec![0u8; 8192], b"tail".to_vec()].concat(),
            0o600,
        )
        .xattrs(&[("user.k", b"v\nwith a newline")])
        .file("etc/attrs", b"x", 0o644)
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .symlink("lib", "usr/lib")
        .hardlink("etc/hosts.link", "etc/hosts")
        .dir(&long_dir, 0o700)
        .file(&format!("{long_dir}/f"), b"in a long dir", 0o644)
        .symlink("longlink", &format!("{long_dir}/f"))
        .pax(&[("path", b"usr/lib/pax-named")])
        .file("usr/lib/short", b"pax", 0o644)
        .marker(".wh.b")
        .marker("a/.wh..wh..opq")
        .file("a/new", b"after the opaque marker", 0o644)
        .fifo("fifo", 0o600);
    ar.finish()
}

/// Where each member of `tar` (extension members included) starts, as
/// far as its headers can be read.
fn member_offsets(tar: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + BLOCK <= tar.len() {
        let block = &tar[off..off + BLOCK];
        if block.iter().all(|b| *b == 0) {
            break;
        }
        let Ok(size) = Header::from_byte_slice(block).entry_size() else {
            break;
        };
        out.push(off);
        let Some(next) = usize::try_from(size)
            .ok()
            .and_then(|s| s.checked_next_multiple_of(BLOCK))
            .and_then(|s| (off + BLOCK).checked_add(s))
        else {
            break;
        };
        off = next;
    }
    out
}

/// A header field to set.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Field {
    Name,
    Mode,
    Uid,
    Size,
    Mtime,
    Cksum,
    Type,
    Link,
    Magic,
    DevMajor,
}

impl Field {
    /// Offset and length in the header block.
    fn span(self) -> (usize, usize) {
        match self {
            Field::Name => (0, 100),
            Field::Mode => (100, 8),
            Field::Uid => (108, 8),
            Field::Size => (124, 12),
            Field::Mtime => (136, 12),
            Field::Cksum => (148, 8),
            Field::Type => (156, 1),
            Field::Link => (157, 100),
            Field::Magic => (257, 8),
            Field::DevMajor => (329, 8),
        }
    }
}

/// Values for header fields: absurd numbers, octal and base-256, text
/// where numbers go, hostile names.
const FIELD_VALUES: [&[u8]; 18] = [
    b"77777777777\0",
    b"\x80\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    b"00000001000\0",
    b"0000000\0",
    b"-1\0",
    b"garbage!",
    b"        ",
    b"../../up/box/sentinel/pwned\0",
    b"/etc/passwd\0",
    b"a/../../x\0",
    b"lower/pwned\0",
    b".wh..wh..opq\0",
    b"\0",
    b"ustar\x0000",
    b"ustar  \0",
    b"n\nl\r\0",
    b"\xff\xfe\0",
];

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(Index),
    FlipBit(Index, u8),
    /// A bit of a member's header; the checksum made right again or not.
    HeaderBit {
        member: Index,
        byte: u16,
        bit: u8,
        fix: bool,
    },
    /// A field of a member's header set to one of [`FIELD_VALUES`], or
    /// (`Type`) to any byte.
    HeaderField {
        member: Index,
        field: Field,
        value: Index,
        byte: u8,
        fix: bool,
    },
    Overwrite(Index, Vec<u8>),
    Insert(Index, Vec<u8>),
    Delete(Index, u16),
    /// A member (header and data) copied to before another.
    Duplicate(Index, Index),
    Swap(Index, Index),
    /// A member's header replaced by a zero block (an early end).
    ZeroHeader(Index),
}

fn field() -> impl Strategy<Value = Field> {
    prop::sample::select(vec![
        Field::Name,
        Field::Mode,
        Field::Uid,
        Field::Size,
        Field::Mtime,
        Field::Cksum,
        Field::Type,
        Field::Link,
        Field::Magic,
        Field::DevMajor,
    ])
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let bytes = || prop::collection::vec(any::<u8>(), 1..64);
    prop_oneof![
        3 => any::<Index>().prop_map(Mutation::Truncate),
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        5 => (any::<Index>(), 0u16..512, 0u8..8, any::<bool>())
            .prop_map(|(member, byte, bit, fix)| Mutation::HeaderBit { member, byte, bit, fix }),
        6 => (any::<Index>(), field(), any::<Index>(), any::<u8>(), prop::bool::weighted(0.8))
            .prop_map(|(member, field, value, byte, fix)| Mutation::HeaderField {
                member, field, value, byte, fix
            }),
        1 => (any::<Index>(), bytes()).prop_map(|(i, b)| Mutation::Overwrite(i, b)),
        1 => (any::<Index>(), bytes()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1u16..1024).prop_map(|(i, n)| Mutation::Delete(i, n)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Duplicate(a, b)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        1 => any::<Index>().prop_map(Mutation::ZeroHeader),
    ]
}

/// Sets a header's checksum from its other bytes.
fn fix_cksum(block: &mut [u8]) {
    let mut h = Header::from_byte_slice(block).clone();
    h.set_cksum();
    block.copy_from_slice(h.as_bytes());
}

impl Mutation {
    fn apply(&self, tar: &mut Vec<u8>) {
        let members = member_offsets(tar);
        // (start, end) of member `i`: its header up to the next member.
        let span = |i: &Index| -> Option<(usize, usize)> {
            if members.is_empty() {
                return None;
            }
            let k = i.index(members.len());
            let end = members.get(k + 1).copied().unwrap_or(tar.len());
            Some((members[k], end))
        };
        let at = |i: &Index, len: usize| i.index(len + 1);
        match self {
            Mutation::Truncate(i) => tar.truncate(at(i, tar.len())),
            Mutation::FlipBit(i, b) => {
                if !tar.is_empty() {
                    let k = i.index(tar.len());
                    tar[k] ^= 1 << b;
                }
            }
            Mutation::HeaderBit {
                member,
                byte,
                bit,
                fix,
            } => {
                if let Some((s, _)) = span(member) {
                    tar[s + *byte as usize] ^= 1 << bit;
                    if *fix {
                        fix_cksum(&mut tar[s..s + BLOCK]);
                    }
                }
            }
            Mutation::HeaderField {
                member,
                field,
                value,
                byte,
                fix,
            } => {
                if let Some((s, _)) = span(member) {
                    let (off, len) = field.span();
                    let dst = &mut tar[s + off..s + off + len];
                    if *field == Field::Type {
                        dst[0] = *byte;
                    } else {
                        let v = FIELD_VALUES[value.index(FIELD_VALUES.len())];
                        dst.fill(0);
                        let n = v.len().min(len);
                        dst[..n].copy_from_slice(&v[..n]);
                    }
                    if *fix && *field != Field::Cksum {
                        fix_cksum(&mut tar[s..s + BLOCK]);
                    }
                }
            }
            Mutation::Overwrite(i, b) => {
                let k = at(i, tar.len());
                let end = (k + b.len()).min(tar.len());
                tar[k..end].copy_from_slice(&b[..end - k]);
            }
            Mutation::Insert(i, b) => {
                let k = at(i, tar.len());
                tar.splice(k..k, b.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let k = at(i, tar.len());
                let end = (k + *n as usize).min(tar.len());
                tar.drain(k..end);
            }
            Mutation::Duplicate(a, b) => {
                if let (Some((s, e)), Some((to, _))) = (span(a), span(b)) {
                    let copy = tar[s..e].to_vec();
                    tar.splice(to..to, copy);
                }
            }
            Mutation::Swap(a, b) => {
                if let (Some(x), Some(y)) = (span(a), span(b)) {
                    let (x, y) = if x.0 <= y.0 { (x, y) } else { (y, x) };
                    if x.1 <= y.0 {
                        let mut out = tar[..x.0].to_vec();
                        out.extend_from_slice(&tar[y.0..y.1]);
                        out.extend_from_slice(&tar[x.1..y.0]);
                        out.extend_from_slice(&tar[x.0..x.1]);
                        out.extend_from_slice(&tar[y.1..]);
                        *tar = out;
                    }
                }
            }
            Mutation::ZeroHeader(i) => {
                if let Some((s, _)) = span(i) {
                    tar[s..s + BLOCK].fill(0);
                }
            }
        }
    }
}

/// A mutated layer: tar-level mutations, a compression, and maybe a cut
/// or a flipped bit in the compressed stream.
#[derive(Debug, Clone)]
struct Mutated {
    mutations: Vec<Mutation>,
    compression: Compression,
    compressed_cut: Option<Index>,
    compressed_flip: Option<(Index, u8)>,
    overlay: bool,
    fallback: bool,
}

fn mutated() -> impl Strategy<Value = Mutated> {
    (
        prop::collection::vec(mutation(), 0..4),
        compression(),
        prop::option::weighted(0.3, any::<Index>()),
        prop::option::weighted(0.3, (any::<Index>(), 0u8..8)),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(mutations, compression, compressed_cut, compressed_flip, overlay, fallback)| {
                Mutated {
                    mutations,
                    compression,
                    compressed_cut,
                    compressed_flip,
                    overlay,
                    fallback,
                }
            },
        )
}

/// Mutations of a real layer: never a panic, a write outside the root, or
/// an unclear error.
#[test]
fn plain_changeset_never_panics_or_escapes_on_mutated_layers() {
    let base = real_layer();
    // The unmutated layer applies cleanly in both modes (as root or not:
    // no devices, owners the user's own; overlay mode makes its whiteout
    // devices and opaque xattr only as root).
    let w = World::new();
    apply(base.as_slice(), &w.root, &opts(WhiteoutMode::Delete)).unwrap();
    w.check_untouched().unwrap();
    let tally = Tally::default();
    check(
        "plain_changeset_never_panics_or_escapes_on_mutated_layers",
        MUTATED_CASES,
        mutated(),
        |m| {
            let mut plain = base.clone();
            for mu in &m.mutations {
                mu.apply(&mut plain);
            }
            let mut input = compress(&plain, m.compression);
            let mut known = Some(plain.as_slice());
            if m.compression != Compression::None {
                if m.compressed_flip.is_some() || m.compressed_cut.is_some() {
                    known = None;
                }
                if let Some((i, b)) = &m.compressed_flip {
                    let k = i.index(input.len());
                    input[k] ^= 1 << b;
                }
                if let Some(i) = &m.compressed_cut {
                    input.truncate(i.index(input.len() + 1));
                }
            }
            let w = World::new();
            apply_in(&w, &input, known, m.overlay, m.fallback, &tally)
        },
    );
    tally.assert_varied("mutated", 4);
}
