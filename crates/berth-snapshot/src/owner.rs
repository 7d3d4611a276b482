//! Which process owns a scratch entry (a snapshot being prepared, a container bundle, a
//! temporary directory), and whether that process still runs.
//!
//! A pid says nothing across pid namespaces: two berths in two containers sharing one
//! root see different pids, and each would take the other's live entries for leftovers.
//! So every process has a token (`<pid>x<random>`, never a bare number) and, in each
//! owners directory it uses, holds an exclusive `flock` on `<token>.lock` for its whole
//! life; scratch names start with `<token>-`. The kernel drops the lock when the process
//! dies, in whatever namespace, so a lock that can be taken marks a process that is gone.
//!
//! Names from before tokens (`<pid>-…`) are judged by the pid, as they were; names of
//! neither form are not berth's scratch entries and are left alone.
//!
//! A lock file appears only once it is locked (created as `.<token>.tmp`, locked, then
//! renamed), so a process judging owners never takes the lock of one that is starting;
//! `register` also removes the lock files of owners that are gone.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// This process's token.
pub fn token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut r = [0u8; 4];
        let _ = getrandom(&mut r);
        format!(
            "{}x{:08x}{:08x}",
            std::process::id(),
            nanos,
            u32::from_ne_bytes(r)
        )
    })
}

/// Some entropy without a dependency: /dev/urandom, if readable.
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    File::open("/dev/urandom")?.read_exact(buf)
}

/// Register this process in `dir` (create and lock `<token>.lock`, held until exit);
/// idempotent.
pub fn register(dir: &Path) -> std::io::Result<()> {
    static HELD: OnceLock<Mutex<HashMap<PathBuf, File>>> = OnceLock::new();
    let mut held = HELD
        .get_or_init(Default::default)
        .lock()
        .expect("owner locks");
    if held.contains_key(dir) {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", token()));
    let f = File::create(&tmp)?;
    f.lock()?;
    std::fs::rename(&tmp, dir.join(format!("{}.lock", token())))?;
    held.insert(dir.to_path_buf(), f);
    drop(held);
    sweep(dir)
}

/// Remove the lock files of owners that are gone, and the temporary ones of owners that
/// died before locking theirs (unlocked, and a minute old: a starting owner locks its
/// file a moment after creating it).
fn sweep(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(owner) = name.strip_suffix(".lock")
            && is_token(owner)
        {
            is_gone(dir, &format!("{owner}-"));
        } else if let Some(owner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp"))
            && is_token(owner)
            && owner != token()
        {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() >= 60));
            if old && File::open(e.path()).is_ok_and(|f| f.try_lock().is_ok()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// Whether `s` has a token's form: `<digits>x<hex>`.
fn is_token(s: &str) -> bool {
    s.split_once('x').is_some_and(|(pid, rest)| {
        !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && !rest.is_empty()
            && rest.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// Whether the process that named entry `name` (`<token>-…` or `<pid>-…`) is gone,
/// judged by its lock in `dir`. A dead owner's lock file is removed on the way.
pub fn is_gone(dir: &Path, name: &str) -> bool {
    let Some(owner) = name.split('-').next().filter(|o| !o.is_empty()) else {
        return false;
    };
    if let Ok(pid) = owner.parse::<u32>() {
        return !Path::new(&format!("/proc/{pid}")).exists();
    }
    if owner == token() || !is_token(owner) {
        return false;
    }
    let lock = dir.join(format!("{owner}.lock"));
    match File::open(&lock) {
        Ok(f) => match f.try_lock() {
            Ok(()) => {
                let _ = std::fs::remove_file(&lock);
                true
            }
            Err(_) => false,
        },
        // Owners lock before they name anything: no lock, no owner.
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_and_dead_owners() {
        let dir = tempfile::tempdir().unwrap();
        register(dir.path()).unwrap();
        register(dir.path()).unwrap();
        let me = format!("{}-s1", token());
        assert!(!token().contains('-') && token().parse::<u64>().is_err());
        assert!(!is_gone(dir.path(), &me));
        // Another process's lock, held by a file description of its own: alive.
        let other = dir.path().join("1x00000000aaaaaaaa.lock");
        let held = File::create(&other).unwrap();
        held.lock().unwrap();
        assert!(!is_gone(dir.path(), "1x00000000aaaaaaaa-s3"));
        drop(held);
        // Released (its process died): gone, and the lock file goes too.
        assert!(is_gone(dir.path(), "1x00000000aaaaaaaa-s3"));
        assert!(!other.exists());
        assert!(is_gone(dir.path(), "1x00000000aaaaaaaa-s4"));
        // Old pid names: by pid.
        assert!(!is_gone(dir.path(), &format!("{}-x", std::process::id())));
        assert!(is_gone(dir.path(), "999999999-x"));
        assert!(!is_gone(dir.path(), "-x"));
        // Not a scratch name of berth's: left alone.
        assert!(!is_gone(dir.path(), "berth-secret-1x2-s1"));
        assert!(!is_gone(dir.path(), "notes"));
        // A dead owner's lock file is swept when another process registers.
        let stale = dir.path().join("7x00000000bbbbbbbb.lock");
        File::create(&stale).unwrap();
        let starting = dir.path().join(".8x00000000cccccccc.tmp");
        File::create(&starting).unwrap();
        let died_starting = dir.path().join(".9x00000000dddddddd.tmp");
        File::create(&died_starting)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(120))
            .unwrap();
        sweep(dir.path()).unwrap();
        assert!(!stale.exists());
        assert!(starting.exists(), "a starting owner's file is not touched");
        assert!(!died_starting.exists());
        assert!(dir.path().join(format!("{}.lock", token())).exists());
    }
}
