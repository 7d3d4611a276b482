//! Layers in and out: OCI tar → unpacked directory (overlayfs whiteouts), a real
//! overlay mount changed by hand, and its upperdir → OCI tar again.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use berth_oci::Digest;
use berth_snapshot::{Compression, DiffOptions, Snapshotter, apply_layer, diff, diff_into};

/// A file-system tree described as data (after containerd's fstest.Apply).
enum Node<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a str, u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Whiteout(&'a str),
    Opaque(&'a str),
    Xattr(&'a str, &'a str, &'a [u8]),
}

fn make(root: &Path, nodes: &[Node]) {
    for n in nodes {
        match *n {
            Node::Dir(p, mode) => {
                fs::create_dir_all(root.join(p)).unwrap();
                fs::set_permissions(root.join(p), fs::Permissions::from_mode(mode)).unwrap();
            }
            Node::File(p, content, mode) => {
                fs::write(root.join(p), content).unwrap();
                fs::set_permissions(root.join(p), fs::Permissions::from_mode(mode)).unwrap();
            }
            Node::Symlink(p, target) => symlink(target, root.join(p)).unwrap(),
            Node::Hardlink(p, target) => fs::hard_link(root.join(target), root.join(p)).unwrap(),
            Node::Whiteout(p) => rustix::fs::mknodat(
                rustix::fs::CWD,
                root.join(p),
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                0,
            )
            .unwrap(),
            Node::Opaque(p) => rustix::fs::setxattr(
                root.join(p),
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .unwrap(),
            Node::Xattr(p, k, v) => {
                rustix::fs::lsetxattr(root.join(p), k, v, rustix::fs::XattrFlags::empty()).unwrap()
            }
        }
    }
}

/// Entries of a gzip layer as `(path, kind, link target or size, xattr names)`.
fn entries(layer: &[u8]) -> Vec<(String, char, String, Vec<String>)> {
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(layer));
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().display().to_string();
        let kind = match e.header().entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Regular => 'f',
            tar::EntryType::Symlink => 's',
            tar::EntryType::Link => 'h',
            tar::EntryType::Char => 'c',
            _ => '?',
        };
        let extra = match kind {
            's' | 'h' => e.link_name().unwrap().unwrap().display().to_string(),
            _ => e.size().to_string(),
        };
        let mut x = Vec::new();
        if let Ok(Some(pax)) = e.pax_extensions() {
            for p in pax {
                let p = p.unwrap();
                x.push(p.key().unwrap().to_string());
            }
        }
        let mut sink = Vec::new();
        e.read_to_end(&mut sink).unwrap();
        out.push((path, kind, extra, x));
    }
    out
}

/// `setcap cap_net_raw+ep`'s value of `security.capability` (vfs_cap_data v2).
const CAP_NET_RAW: &[u8] = &[
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

#[test]
fn diff_encodes_whiteouts_opaque_dirs_links_and_xattrs() {
    let dir = tempfile::tempdir().unwrap();
    let upper = dir.path();
    make(
        upper,
        &[
            Node::Dir("etc", 0o755),
            Node::File("etc/app.conf", "port=80\n", 0o600),
            Node::Whiteout("etc/old.conf"),
            Node::Dir("var", 0o755),
            Node::Dir("var/cache", 0o700),
            Node::Opaque("var/cache"),
            Node::File("var/cache/new", "n", 0o644),
            Node::Dir("bin", 0o755),
            Node::File("bin/tool", "#!/bin/sh\n", 0o4755),
            Node::Hardlink("bin/tool-link", "bin/tool"),
            Node::Symlink("bin/alias", "tool"),
            Node::Xattr("bin/tool", "user.berth", b"v"),
            Node::Xattr("bin/tool", "security.capability", CAP_NET_RAW),
        ],
    );
    let mut out = Vec::new();
    let info = diff(
        upper,
        &mut out,
        &DiffOptions {
            source_date_epoch: Some(0),
            gzip_level: None,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(info.digest, Digest::sha256(&out));
    assert_eq!(info.size, out.len() as u64);
    let got = entries(&out);
    let names: Vec<_> = got.iter().map(|e| (e.0.as_str(), e.1)).collect();
    assert_eq!(
        names,
        [
            ("bin", 'd'),
            ("bin/alias", 's'),
            ("bin/tool", 'f'),
            ("bin/tool-link", 'h'),
            ("etc", 'd'),
            ("etc/app.conf", 'f'),
            ("etc/.wh.old.conf", 'f'),
            ("var", 'd'),
            ("var/cache", 'd'),
            ("var/cache/.wh..wh..opq", 'f'),
            ("var/cache/new", 'f'),
        ]
    );
    let tool = got.iter().find(|e| e.0 == "bin/tool").unwrap();
    // Only the capability travels, as containerd writes layers.
    assert_eq!(tool.3, ["SCHILY.xattr.security.capability"]);
    assert_eq!(
        got.iter().find(|e| e.0 == "bin/tool-link").unwrap().2,
        "bin/tool"
    );
    // The same tree gives the same bytes.
    let mut again = Vec::new();
    let info2 = diff(
        upper,
        &mut again,
        &DiffOptions {
            source_date_epoch: Some(0),
            gzip_level: None,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(info, info2);
}

/// The digests a diff reports are those of the bytes it wrote: the digest and size of
/// the layer as written, the diff_id and uncompressed size of the tar inside, for every
/// compression and whether the diff hashes the compressed stream itself ([`diff`]) or
/// leaves it to its sink ([`diff_into`], as a build does with the store's writer).
#[test]
fn diff_digests_match_the_bytes_written() {
    let dir = tempfile::tempdir().unwrap();
    let big: String = (0..40_000).map(|i| format!("line {i}\n")).collect();
    make(
        dir.path(),
        &[
            Node::Dir("d", 0o755),
            Node::File("d/small", "s", 0o644),
            Node::File("d/empty", "", 0o644),
            Node::File("d/big", &big, 0o600),
            Node::Whiteout("d/gone"),
            Node::Hardlink("d/big-link", "d/big"),
        ],
    );
    for compression in [
        Compression::Gzip,
        Compression::Zstd,
        Compression::Uncompressed,
    ] {
        let opts = DiffOptions {
            source_date_epoch: Some(0),
            compression,
            ..Default::default()
        };
        let mut bytes = Vec::new();
        let info = diff(dir.path(), &mut bytes, &opts).unwrap();
        let mut sunk = Vec::new();
        let info2 = diff_into(dir.path(), &mut sunk, &opts, |v| Digest::sha256(v)).unwrap();
        assert_eq!(info, info2, "{compression}");
        assert_eq!(bytes, sunk, "{compression}");
        assert_eq!(info.digest, Digest::sha256(&bytes), "{compression}");
        assert_eq!(info.size, bytes.len() as u64, "{compression}");
        assert_eq!(info.media_type, compression.media_type());
        let mut tar = Vec::new();
        compression
            .reader(bytes.as_slice())
            .unwrap()
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(info.diff_id, Digest::sha256(&tar), "{compression}");
        assert_eq!(info.uncompressed_size, tar.len() as u64, "{compression}");
        // The big file (read in chunks) arrives whole.
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut found = None;
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap() == Path::new("d/big") {
                let mut content = String::new();
                e.read_to_string(&mut content).unwrap();
                found = Some(content);
            }
        }
        assert!(
            found.as_deref() == Some(big.as_str()),
            "{compression}: d/big"
        );
    }
}

#[test]
fn apply_turns_oci_whiteouts_into_overlay_ones() {
    let src = tempfile::tempdir().unwrap();
    make(
        src.path(),
        &[
            Node::Dir("d", 0o755),
            Node::Whiteout("d/gone"),
            Node::Dir("o", 0o755),
            Node::Opaque("o"),
            Node::File("o/kept", "k", 0o640),
            Node::File("f", "data", 0o755),
            Node::Hardlink("f2", "f"),
            Node::Symlink("s", "f"),
        ],
    );
    let mut layer = Vec::new();
    let info = diff(src.path(), &mut layer, &DiffOptions::default()).unwrap();
    let dst = tempfile::tempdir().unwrap();
    apply_layer(dst.path(), flate2::read::GzDecoder::new(layer.as_slice())).unwrap();
    let wh = fs::symlink_metadata(dst.path().join("d/gone")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    let mut buf = [0u8; 2];
    assert_eq!(
        rustix::fs::getxattr(dst.path().join("o"), "trusted.overlay.opaque", &mut buf).unwrap(),
        1
    );
    assert_eq!(fs::read(dst.path().join("o/kept")).unwrap(), b"k");
    assert_eq!(
        fs::metadata(dst.path().join("o/kept")).unwrap().mode() & 0o777,
        0o640
    );
    assert_eq!(
        fs::metadata(dst.path().join("f")).unwrap().ino(),
        fs::metadata(dst.path().join("f2")).unwrap().ino()
    );
    assert_eq!(fs::read_link(dst.path().join("s")).unwrap(), Path::new("f"));
    assert!(!info.empty);
}

#[test]
fn apply_refuses_entries_that_escape() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    // Bypass the builder's own path checks to make a hostile archive.
    h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    let data = b.into_inner().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let inner = dst.path().join("layer");
    fs::create_dir(&inner).unwrap();
    let err = apply_layer(&inner, data.as_slice()).unwrap_err();
    assert!(err.to_string().contains("escapes"), "{err}");
    assert!(!dst.path().join("escape").exists());
}

fn overlay_works() -> bool {
    let ok = rustix::process::geteuid().is_root()
        && fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("overlay"));
    ok || berth_testutil::skip("needs root and overlayfs")
}

#[test]
fn overlay_round_trip_through_a_real_mount() {
    if !overlay_works() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let snaps = Snapshotter::open(dir.path().join("snapshots")).unwrap();
    // Base layer: /etc/{a,b}, /data/{x,y}.
    let base_src = dir.path().join("base");
    fs::create_dir(&base_src).unwrap();
    make(
        &base_src,
        &[
            Node::Dir("etc", 0o755),
            Node::File("etc/a", "a", 0o644),
            Node::File("etc/b", "b", 0o644),
            Node::Dir("data", 0o755),
            Node::File("data/x", "x", 0o644),
            Node::File("data/y", "y", 0o644),
        ],
    );
    let mut base_layer = Vec::new();
    let base = diff(&base_src, &mut base_layer, &DiffOptions::default()).unwrap();
    let base_chain = snaps
        .apply(
            None,
            &base.diff_id,
            flate2::read::GzDecoder::new(base_layer.as_slice()),
        )
        .unwrap();

    // Change it through a real overlay mount: delete a file, replace a directory.
    let active = snaps
        .prepare(&format!("{}-t", std::process::id()), Some(&base_chain))
        .unwrap();
    let target = dir.path().join("mnt");
    fs::create_dir(&target).unwrap();
    let opts = active.mounts()[0].options().clone().unwrap().join(",");
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&target)
        .status()
        .unwrap();
    assert!(st.success());
    fs::remove_file(target.join("etc/a")).unwrap();
    fs::write(target.join("etc/c"), "c").unwrap();
    fs::remove_dir_all(target.join("data")).unwrap();
    fs::create_dir(target.join("data")).unwrap();
    fs::write(target.join("data/z"), "z").unwrap();
    assert!(
        Command::new("umount")
            .arg(&target)
            .status()
            .unwrap()
            .success()
    );

    let mut layer = Vec::new();
    let info = diff(&active.upper, &mut layer, &DiffOptions::default()).unwrap();
    let names: Vec<_> = entries(&layer).into_iter().map(|e| e.0).collect();
    assert!(names.contains(&"etc/.wh.a".to_string()), "{names:?}");
    assert!(names.contains(&"etc/c".to_string()), "{names:?}");
    assert!(
        names.contains(&"data/.wh..wh..opq".to_string()),
        "{names:?}"
    );
    let chain = snaps.commit(active, &info.diff_id).unwrap();
    assert_eq!(snaps.lowers(&chain).unwrap().len(), 2);

    // Unpack the diff as a layer elsewhere, stack both, and look through a mount.
    let snaps2 = Snapshotter::open(dir.path().join("snapshots2")).unwrap();
    let c1 = snaps2
        .apply(
            None,
            &base.diff_id,
            flate2::read::GzDecoder::new(base_layer.as_slice()),
        )
        .unwrap();
    let c2 = snaps2
        .apply(
            Some(&c1),
            &info.diff_id,
            flate2::read::GzDecoder::new(layer.as_slice()),
        )
        .unwrap();
    assert_eq!(c2, chain, "chain IDs agree");
    let view = snaps2
        .prepare(&format!("{}-v", std::process::id()), Some(&c2))
        .unwrap();
    let opts = view.mounts()[0].options().clone().unwrap().join(",");
    assert!(
        Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&target)
            .status()
            .unwrap()
            .success()
    );
    let mut seen: Vec<String> = Vec::new();
    for d in ["etc", "data"] {
        for e in fs::read_dir(target.join(d)).unwrap() {
            seen.push(format!("{d}/{}", e.unwrap().file_name().to_string_lossy()));
        }
    }
    assert!(
        Command::new("umount")
            .arg(&target)
            .status()
            .unwrap()
            .success()
    );
    seen.sort();
    assert_eq!(seen, ["data/z", "etc/b", "etc/c"]);
}

#[test]
fn whiteouts_through_symlinks_cannot_reach_outside_the_layer() {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("keep"), "precious").unwrap();
    // A symlink to the victim, then a whiteout "through" it.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_link(&mut h, "x", &victim).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_data(&mut h, "x/.wh.keep", &b""[..]).unwrap();
    let data = b.into_inner().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let err = apply_layer(dst.path(), data.as_slice()).unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err:?}");
    assert_eq!(fs::read_to_string(victim.join("keep")).unwrap(), "precious");
    // A bare ".wh." would name the parent itself.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    h.set_mode(0o644);
    b.append_data(&mut h, "d/.wh.", &b""[..]).unwrap();
    let data = b.into_inner().unwrap();
    let dst = tempfile::tempdir().unwrap();
    assert!(apply_layer(dst.path(), data.as_slice()).is_err());
}

/// Layers staged out of order (as a build unpacks an image's layers at once) become
/// chains only bottom up; a staged layer dropped, or one whose unpack failed, leaves
/// nothing behind.
#[test]
fn staged_layers_install_bottom_up_and_leave_nothing_when_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let snaps = Snapshotter::open(dir.path().join("snapshots")).unwrap();
    let layer = |name: &str| {
        let src = dir.path().join(format!("src-{name}"));
        fs::create_dir(&src).unwrap();
        make(&src, &[Node::File(name, name, 0o644)]);
        let mut bytes = Vec::new();
        let info = diff(
            &src,
            &mut bytes,
            &DiffOptions {
                compression: Compression::Uncompressed,
                ..Default::default()
            },
        )
        .unwrap();
        (info.diff_id, bytes)
    };
    let tmp_entries = || {
        fs::read_dir(dir.path().join("snapshots/tmp"))
            .unwrap()
            .count()
    };
    let (d1, l1) = layer("one");
    let (d2, l2) = layer("two");
    // The upper layer is staged first.
    let s2 = snaps.stage(&d2, l2.as_slice()).unwrap();
    let s1 = snaps.stage(&d1, l1.as_slice()).unwrap();
    assert_eq!(tmp_entries(), 2);
    let c1 = berth_snapshot::chain_id(None, &d1);
    let c2 = berth_snapshot::chain_id(Some(&c1), &d2);
    // Its parent is not installed yet: refused, and its staging directory goes.
    let err = snaps.install_staged(s2, Some(&c1)).unwrap_err();
    assert!(matches!(err, berth_snapshot::Error::NotFound(_)), "{err}");
    assert!(!snaps.exists(&c2));
    assert_eq!(tmp_entries(), 1);
    assert_eq!(snaps.install_staged(s1, None).unwrap(), c1);
    let s2 = snaps.stage(&d2, l2.as_slice()).unwrap();
    assert_eq!(snaps.install_staged(s2, Some(&c1)).unwrap(), c2);
    assert_eq!(snaps.lowers(&c2).unwrap().len(), 2);
    assert!(snaps.lowers(&c2).unwrap()[0].join("two").is_file());
    // Dropped before install, and failed half-way through the tar: nothing remains.
    drop(snaps.stage(&d1, l1.as_slice()).unwrap());
    let err = snaps.stage(&d2, &l2[..700]).unwrap_err();
    assert!(err.to_string().contains("layer"), "{err}");
    assert_eq!(tmp_entries(), 0);
}
