//! Helpers shared by the CLI tests: run thinlayer, check its output.
#![allow(dead_code)]

pub mod env;
pub mod nfs;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn thinlayer(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_thinlayer"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("THINLAYER_ROOT")
        .output()
        .expect("running thinlayer")
}

/// The id of the top layer in `image inspect --json` output.
pub fn last_layer(image: &serde_json::Value) -> String {
    image["layers"]
        .as_array()
        .and_then(|l| l.last())
        .and_then(|l| l.as_str())
        .unwrap_or_else(|| panic!("no layers in {image}"))
        .to_string()
}

/// Each member of a tar stream on one line: path, type, mode, owner,
/// modification time (with `times`), size, link target, pax records and
/// the sha256 of its data, for comparing two changesets member by member.
pub fn tar_members(tar: &[u8], times: bool) -> Vec<String> {
    use sha2::{Digest, Sha256};
    let mut ar = tar::Archive::new(tar);
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let pax: Vec<String> = e
                .pax_extensions()
                .unwrap()
                .map(|p| {
                    p.map(|x| {
                        let x = x.unwrap();
                        format!("{}={:?}", x.key().unwrap(), x.value_bytes())
                    })
                    .collect()
                })
                .unwrap_or_default();
            let mut data = vec![];
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            let h = e.header();
            let mtime = match times {
                true => format!(" mtime={}", h.mtime().unwrap()),
                false => String::new(),
            };
            format!(
                "{} {:?} mode={:o} {}:{}{mtime} size={} link={:?} pax={pax:?} sha256={:x}",
                String::from_utf8_lossy(&e.path_bytes()),
                h.entry_type(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.size().unwrap(),
                h.link_name().unwrap(),
                Sha256::digest(&data)
            )
        })
        .collect()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs a command expected to fail: exit `code`, one error line
/// containing every `needle`.
pub fn fails(root: &Path, args: &[&str], code: i32, needles: &[&str]) -> String {
    let o = thinlayer(root, args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: '{n}' not in: {err}");
    }
    if code == 1 {
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
        assert!(err.starts_with("thinlayer: "), "{err}");
    }
    err
}

pub fn ok(root: &Path, args: &[&str]) -> String {
    let o = thinlayer(root, args);
    assert!(o.status.success(), "{args:?} failed: {}", stderr(&o));
    stdout(&o)
}

/// Builds OCI layer tars for tests, including malformed and hostile ones.
pub struct Tar {
    b: tar::Builder<Vec<u8>>,
}

impl Default for Tar {
    fn default() -> Self {
        Tar::new()
    }
}

fn header(kind: tar::EntryType, path: &str, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    // Written raw, so hostile paths (`..`, absolute) go in unchanged.
    let name = &mut h.as_old_mut().name;
    name.fill(0);
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

impl Tar {
    pub fn new() -> Tar {
        Tar {
            b: tar::Builder::new(Vec::new()),
        }
    }

    pub fn dir(mut self, path: &str) -> Tar {
        let h = header(tar::EntryType::Directory, path, 0o755, 0);
        self.b.append(&h, &[][..]).unwrap();
        self
    }

    pub fn file(mut self, path: &str, content: &[u8]) -> Tar {
        self.file_mode(path, content, 0o644);
        self
    }

    pub fn file_mode(&mut self, path: &str, content: &[u8], mode: u32) {
        let h = header(tar::EntryType::Regular, path, mode, content.len() as u64);
        self.b.append(&h, content).unwrap();
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Tar {
        let mut h = header(tar::EntryType::Symlink, path, 0o777, 0);
        let l = &mut h.as_old_mut().linkname;
        l[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        self.b.append(&h, &[][..]).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Tar {
        let mut h = header(tar::EntryType::Link, path, 0o644, 0);
        let l = &mut h.as_old_mut().linkname;
        l[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        self.b.append(&h, &[][..]).unwrap();
        self
    }

    pub fn whiteout(self, path: &str) -> Tar {
        let (dir, name) = path
            .rsplit_once('/')
            .map(|(d, n)| (format!("{d}/"), n))
            .unwrap_or((String::new(), path));
        self.file(&format!("{dir}.wh.{name}"), b"")
    }

    pub fn opaque(self, dir: &str) -> Tar {
        self.file(&format!("{dir}/.wh..wh..opq"), b"")
    }

    pub fn bytes(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }

    pub fn write(self, path: &Path) -> std::path::PathBuf {
        std::fs::write(path, self.bytes()).unwrap();
        path.to_path_buf()
    }
}

/// One entry of a tree, as a comparison sees it.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub content: Vec<u8>,
    pub rdev: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// The other paths of the tree that are hard links to this file.
    pub peers: Vec<String>,
}

/// Every entry under `root`, by relative path: type, mode, owner, mtime
/// (not for directories: creating children changes it), content or link
/// target, device number, xattrs and the paths it is hard-linked with.
pub fn tree(root: &Path) -> std::collections::BTreeMap<String, Node> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = std::collections::BTreeMap::new();
    type Inodes = std::collections::BTreeMap<(u64, u64), Vec<String>>;
    fn walk(
        root: &Path,
        dir: &Path,
        out: &mut std::collections::BTreeMap<String, Node>,
        inodes: &mut Inodes,
    ) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let t = m.file_type();
            let (kind, content) = if t.is_symlink() {
                (
                    "symlink",
                    std::fs::read_link(&p)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                        .into_bytes(),
                )
            } else if t.is_dir() {
                ("dir", vec![])
            } else if t.is_file() {
                ("file", std::fs::read(&p).unwrap())
            } else if t.is_char_device() {
                ("char", vec![])
            } else if t.is_block_device() {
                ("block", vec![])
            } else {
                ("fifo", vec![])
            };
            let mut xattrs: Vec<(String, Vec<u8>)> = xattr::list(&p)
                .map(|names| {
                    names
                        .filter_map(|n| {
                            let k = n.to_string_lossy().into_owned();
                            xattr::get(&p, &n).ok().flatten().map(|v| (k, v))
                        })
                        .collect()
                })
                .unwrap_or_default();
            xattrs.sort();
            out.insert(
                rel.clone(),
                Node {
                    kind,
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    mtime: if t.is_dir() { 0 } else { m.mtime() },
                    content,
                    rdev: m.rdev(),
                    xattrs,
                    peers: vec![],
                },
            );
            if t.is_file() && m.nlink() > 1 {
                inodes
                    .entry((m.dev(), m.ino()))
                    .or_default()
                    .push(rel.clone());
            }
            if t.is_dir() {
                walk(root, &p, out, inodes);
            }
        }
    }
    let mut inodes = Inodes::new();
    walk(root, root, &mut out, &mut inodes);
    for group in inodes.values() {
        for p in group {
            out.get_mut(p).unwrap().peers = group.iter().filter(|q| *q != p).cloned().collect();
        }
    }
    out
}

/// Asserts two trees are equal, naming the first difference.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (tree(a), tree(b));
    for (k, v) in &ta {
        match tb.get(k) {
            None => panic!("{k} is in {} but not in {}", a.display(), b.display()),
            Some(w) if w != v => panic!(
                "{k} differs:\n  {}: {v:?}\n  {}: {w:?}",
                a.display(),
                b.display()
            ),
            _ => {}
        }
    }
    for k in tb.keys() {
        assert!(
            ta.contains_key(k),
            "{k} is in {} but not in {}",
            b.display(),
            a.display()
        );
    }
}

// ------------------------------------------------------------ images

pub fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

pub fn umoci(args: &[&str]) {
    run(Command::new("umoci").args(args));
}

/// A three-layer image made with umoci: files of every kind, then a layer
/// that deletes and changes things (whiteouts), then one that replaces a
/// directory (opaque). Returns the OCI layout directory.
pub fn build_image(s: &thinpool::testing::Scratch) -> PathBuf {
    let layout = s.path().join("oci");
    let l = layout.to_str().unwrap().to_string();
    let img = format!("{l}:t");
    let bundle = s.path().join("bundle");
    let b = bundle.to_str().unwrap();
    umoci(&["init", "--layout", &l]);
    umoci(&["new", "--image", &img]);
    umoci(&["unpack", "--image", &img, b]);
    let rootfs = bundle.join("rootfs");
    let sh = |script: &str| {
        run(Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(&rootfs))
    };
    sh("mkdir -p etc usr/bin var/lib/app srv/data
        echo root:x:0:0 > etc/passwd
        printf 'tool v1' > usr/bin/tool && chmod 4755 usr/bin/tool
        ln usr/bin/tool usr/bin/tool-hard
        ln -s usr/bin bin
        mkfifo var/lib/app/fifo
        mknod dev-null c 1 3
        echo keep > srv/data/keep; echo gone > srv/data/gone
        chown 1000:1000 srv/data/keep
        setfattr -n trusted.origin -v base usr/bin/tool
        dd if=/dev/urandom of=var/lib/app/blob bs=64k count=16 2>/dev/null");
    umoci(&["repack", "--image", &img, b]);
    umoci(&["unpack", "--image", &img, &format!("{b}2")]);
    let rootfs = PathBuf::from(format!("{b}2/rootfs"));
    let sh = |script: &str| {
        run(Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(&rootfs))
    };
    sh("rm srv/data/gone etc/passwd
        printf 'tool v2' > usr/bin/tool
        chmod 0700 var/lib/app
        mkdir -p opt/new && echo new > opt/new/file");
    umoci(&["repack", "--image", &img, &format!("{b}2")]);
    umoci(&["unpack", "--image", &img, &format!("{b}3")]);
    let rootfs = PathBuf::from(format!("{b}3/rootfs"));
    let sh = |script: &str| {
        run(Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(&rootfs))
    };
    sh("rm -rf srv/data && mkdir srv/data && echo fresh > srv/data/fresh");
    umoci(&["repack", "--image", &img, &format!("{b}3")]);
    layout
}

pub fn reference_unpack(s: &thinpool::testing::Scratch, layout: &Path) -> PathBuf {
    umoci_unpack(s.path(), layout, "t")
}

/// A two-layer image made with umoci around the static busybox, enough to
/// run `/bin/sh -c` in a container: layer 1 has busybox and its applets,
/// `/etc/passwd`, `/data/seed` (directory owned 1000:1000, mode 0750, for
/// populate-from-image) and empty `/proc`, `/dev`, `/tmp`; layer 2 adds
/// `/srv/app/config` and a symlink `/var/run -> /run`. Tag `bb`; returns
/// the OCI layout directory.
pub fn busybox_image(s: &thinpool::testing::Scratch) -> PathBuf {
    let busybox = busybox();
    let layout = s.path().join("bb-oci");
    let l = layout.to_str().unwrap().to_string();
    let img = format!("{l}:bb");
    umoci(&["init", "--layout", &l]);
    umoci(&["new", "--image", &img]);
    for (n, script) in [
        (
            1,
            format!(
                "mkdir -p bin etc data proc dev tmp run root
                 cp {busybox} bin/busybox
                 for a in sh ls cat echo touch mkdir rm hostname id stat dd df sync chmod grep wc head; do ln -s busybox bin/$a; done
                 echo 'root:x:0:0:root:/root:/bin/sh' > etc/passwd
                 echo seed > data/seed
                 chown -R 1000:1000 data && chmod 0750 data"
            ),
        ),
        (
            2,
            "mkdir -p srv/app var && echo v1 > srv/app/config && ln -s /run var/run".to_string(),
        ),
    ] {
        let bundle = s.path().join(format!("bb-bundle{n}"));
        let b = bundle.to_str().unwrap();
        umoci(&["unpack", "--image", &img, b]);
        run(Command::new("sh")
            .arg("-ec")
            .arg(&script)
            .current_dir(bundle.join("rootfs")));
        umoci(&["repack", "--image", &img, b]);
    }
    layout
}

/// A `FROM scratch`-style image made with umoci: one layer with only the
/// static busybox at `/bin/busybox` and a `/sys` of mode 0700 owned by
/// 1000:1000 (to see that the init layer keeps what an image has). No
/// `/dev`, `/proc` or `/etc`. Tag `scratch`; returns the layout directory.
pub fn scratch_image(s: &thinpool::testing::Scratch) -> PathBuf {
    let busybox = busybox();
    let layout = s.path().join("scratch-oci");
    let l = layout.to_str().unwrap().to_string();
    let img = format!("{l}:scratch");
    umoci(&["init", "--layout", &l]);
    umoci(&["new", "--image", &img]);
    let bundle = s.path().join("scratch-bundle");
    let b = bundle.to_str().unwrap();
    umoci(&["unpack", "--image", &img, b]);
    run(Command::new("sh")
        .arg("-ec")
        .arg(format!(
            "mkdir bin sys && cp {busybox} bin/busybox && chown 1000:1000 sys && chmod 0700 sys"
        ))
        .current_dir(bundle.join("rootfs")));
    umoci(&["repack", "--image", &img, b]);
    layout
}

/// The corpus: one image built step by step with real tools, each step
/// tagged, covering the patterns real images carry. Steps 1-3 are made by
/// umoci from the changes a shell makes to an unpacked tree; step 4 is a
/// layer GNU tar wrote (an opaque directory, a hard link inside it, a
/// mostly-zero file), added verbatim with `umoci raw add-layer`.
///
/// 1. a base: trees, a file with user.* and trusted.* xattrs, a sparse
///    file, a hard-linked pair, a setuid file, a fifo, a device node;
/// 2. a directory becomes a symlink (umoci writes the symlink and
///    whiteouts for the old children), a file becomes a directory and a
///    directory a file, a whole tree is deleted, a new hard link to a file
///    of layer 1, an xattr changes;
/// 3. and back: the symlink becomes a directory again, the directory a
///    file, the file a directory; a directory's content replaced;
/// 4. the GNU tar layer (without `--sparse`: umoci cannot unpack GNU
///    sparse members, so they are tested against GNU tar in the plain
///    tier instead).
///
/// Returns the layout and the tags, in order.
pub fn corpus_image(base: &Path) -> (PathBuf, Vec<String>) {
    let layout = base.join("corpus-oci");
    let l = layout.to_str().unwrap().to_string();
    umoci(&["init", "--layout", &l]);
    umoci(&["new", "--image", &format!("{l}:work")]);
    let steps = [
        "mkdir -p usr/lib/pkg lib/sub opt/tree/a/b opt/tree/c data d2f h
         echo lib > lib/x; echo deep > lib/sub/y; echo pkg > usr/lib/pkg/p
         for i in 1 2 3 4 5; do echo $i > opt/tree/a/b/f$i; echo $i > opt/tree/c/g$i; done
         echo old1 > data/old1; echo old2 > data/old2
         echo file > f2d; echo inner > d2f/inner
         echo x > x; setfattr -n user.k -v 1 x; setfattr -n trusted.t -v base x
         dd if=/dev/zero of=sparse bs=1 count=0 seek=8M 2>/dev/null
         printf middle | dd of=sparse bs=1 seek=4M conv=notrunc 2>/dev/null
         echo orig > h/orig; ln h/orig h/link1
         printf suid > suid && chmod 4755 suid
         mkfifo fifo; mknod null c 1 3",
        "rm -rf lib && ln -s usr/lib lib
         rm f2d && mkdir f2d && echo now-a-dir > f2d/inner
         rm -rf d2f && echo now-a-file > d2f
         rm -rf opt/tree
         ln h/orig h/link2
         setfattr -n user.k -v 2 x",
        "rm lib && mkdir lib && echo back > lib/x
         rm -rf f2d && echo file-again > f2d
         rm d2f && mkdir d2f && echo dir-again > d2f/inner
         rm -rf data && mkdir data && echo fresh > data/fresh",
    ];
    let mut tags = vec![];
    for (n, script) in steps.iter().enumerate() {
        let bundle = base.join(format!("corpus-bundle{n}"));
        let b = bundle.to_str().unwrap();
        umoci(&["unpack", "--image", &format!("{l}:work"), b]);
        run(Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(bundle.join("rootfs")));
        umoci(&["repack", "--image", &format!("{l}:work"), b]);
        let tag = format!("step{}", n + 1);
        umoci(&["tag", "--image", &format!("{l}:work"), &tag]);
        tags.push(tag);
    }
    // Step 4: GNU tar's own layer.
    let src = base.join("corpus-gnu");
    std::fs::create_dir_all(src.join("data")).unwrap();
    run(Command::new("sh")
        .arg("-ec")
        .arg(
            "touch data/.wh..wh..opq; echo from-gnu-tar > data/gnu
             dd if=/dev/zero of=gsparse bs=1 count=0 seek=4M 2>/dev/null
             printf end | dd of=gsparse bs=1 seek=4000000 conv=notrunc 2>/dev/null
             echo same > gl1; ln gl1 gl2",
        )
        .current_dir(&src));
    let layer = base.join("corpus-gnu.tar");
    run(Command::new("tar")
        .args([
            "--format=gnu",
            "--owner=0",
            "--group=0",
            "--no-recursion",
            "-cf",
        ])
        .arg(&layer)
        .arg("-C")
        .arg(&src)
        .args([
            "data",
            "data/.wh..wh..opq",
            "data/gnu",
            "gsparse",
            "gl1",
            "gl2",
        ]));
    umoci(&[
        "raw",
        "add-layer",
        "--image",
        &format!("{l}:work"),
        layer.to_str().unwrap(),
    ]);
    umoci(&["tag", "--image", &format!("{l}:work"), "step4"]);
    tags.push("step4".into());
    (layout, tags)
}

/// umoci's own unpack of `layout:tag`, into `base`.
pub fn umoci_unpack(base: &Path, layout: &Path, tag: &str) -> PathBuf {
    let out = base.join(format!("reference-{tag}"));
    umoci(&[
        "raw",
        "unpack",
        "--image",
        &format!("{}:{tag}", layout.display()),
        out.to_str().unwrap(),
    ]);
    out
}

/// A directory where `user.*` xattrs can be set: the scratch directory
/// itself, or (where it cannot hold them, as the VM's tmpfs /tmp) an ext4
/// filesystem in a sparse file in it, mounted until this is dropped.
pub struct XattrDir {
    path: PathBuf,
    mounted: bool,
}

impl XattrDir {
    pub fn new(s: &thinpool::testing::Scratch) -> XattrDir {
        let probe = s.path().join("xattr-probe");
        std::fs::write(&probe, b"").unwrap();
        let ok = xattr::set(&probe, "user.probe", b"1").is_ok();
        std::fs::remove_file(&probe).unwrap();
        if ok {
            return XattrDir {
                path: s.path().to_path_buf(),
                mounted: false,
            };
        }
        let img = s.path().join("xattr-fs.img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(1 << 30).unwrap();
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
        let path = s.path().join("xattr-fs");
        std::fs::create_dir(&path).unwrap();
        run(Command::new("mount")
            .args(["-o", "loop,discard"])
            .arg(&img)
            .arg(&path));
        XattrDir {
            path,
            mounted: true,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for XattrDir {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.path).status();
        }
    }
}

/// The static busybox tools/setup.sh installs (busybox-static).
pub fn busybox() -> &'static str {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox is installed by tools/setup.sh (busybox-static)")
}
