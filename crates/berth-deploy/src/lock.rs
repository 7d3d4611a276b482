//! The deploy lock of each service on a host, kept in the agent's `lock.json` so that it
//! is the same for every agent process on the state directory and outlives the process
//! that took it for as long as that process lives.
//!
//! An entry names the client that holds it, since when, the version it deploys and the
//! agent process that runs the deploy ([`Instance`]: boot, pid and the process's start
//! time, so a reused pid is not mistaken for it). An entry is *live* while its deploy
//! runs: in this process, while the deploy's [`Held`] guard lives; in another process,
//! while that process runs. Anything else is *stale* (the agent was killed or restarted
//! mid-deploy, the machine rebooted): [`Locks::acquire`] and [`Locks::take_stale`] drop
//! it and hand it back, so that the caller can clean what the dead deploy left (its
//! containers that do not serve).
//!
//! Changes of the file hold an exclusive `flock` on `lock.json.lock` and replace the
//! file by rename.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::DeployError;

/// An agent process: the kernel's boot, its pid and its start (clock ticks after boot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// Its pid (in its pid namespace).
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat`.
    pub start: u64,
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The start time of process `pid`, if it runs.
fn start_of(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl Instance {
    /// This process.
    pub fn current() -> Instance {
        Instance {
            boot_id: boot_id(),
            pid: std::process::id(),
            start: start_of("self").unwrap_or(0),
        }
    }

    /// Whether this process still runs (same boot, same pid, same start).
    pub fn is_alive(&self) -> bool {
        self.boot_id == boot_id() && start_of(&self.pid.to_string()) == Some(self.start)
    }
}

/// Who holds a service's lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The deploying machine (its certificate's name, or the name an SSH caller gave).
    pub client: String,
    /// When it took the lock (seconds since the epoch).
    pub since_unix: u64,
    /// The version it deploys.
    pub version: String,
    /// The agent process that runs the deploy.
    pub agent: Instance,
}

/// The locks of one agent state directory.
#[derive(Debug)]
pub struct Locks {
    path: PathBuf,
    me: Instance,
    /// Services whose deploy runs in this process.
    held: Mutex<BTreeSet<String>>,
}

/// A lock taken by [`Locks::acquire`]; dropping it releases the lock.
#[derive(Debug)]
pub struct Held<'a> {
    locks: &'a Locks,
    service: String,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.locks.release(&self.service) {
            tracing::error!(service = %self.service, error = %e, "lock not released");
        }
    }
}

/// What [`Locks::acquire`] found.
#[derive(Debug)]
pub enum Acquired<'a> {
    /// The lock is ours; `stale` is the dead deploy whose entry it replaced.
    Taken {
        /// The guard.
        held: Held<'a>,
        /// A stale entry dropped on the way.
        stale: Option<Holder>,
    },
    /// A live deploy holds it.
    Busy(Holder),
}

impl Locks {
    /// The locks in `dir/lock.json`, for this process.
    pub fn new(dir: &Path) -> Locks {
        Locks {
            path: dir.join("lock.json"),
            me: Instance::current(),
            held: Mutex::default(),
        }
    }

    fn is_live(&self, h: &Holder) -> bool {
        if h.agent == self.me {
            return false;
        }
        h.agent.is_alive()
    }

    /// Runs `f` on the file's entries under the file lock, writing them back when `f`
    /// says they changed.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, Holder>) -> (T, bool),
    ) -> Result<T, DeployError> {
        let dir = self.path.parent().expect("a file in a directory");
        std::fs::create_dir_all(dir).map_err(DeployError::io("create", dir))?;
        let lock_path = self.path.with_extension("json.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(DeployError::io("open", &lock_path))?;
        file.lock().map_err(DeployError::io("lock", &lock_path))?;
        let mut entries: BTreeMap<String, Holder> = match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                DeployError::Internal(format!(
                    "{} is damaged: {e}; remove it when no deploy runs on this host",
                    self.path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(DeployError::io("read", &self.path)(e)),
        };
        let (out, changed) = f(&mut entries);
        if changed {
            let tmp = self.path.with_extension("json.tmp");
            std::fs::write(
                &tmp,
                serde_json::to_vec_pretty(&entries).expect("serialises"),
            )
            .map_err(DeployError::io("write", &tmp))?;
            std::fs::rename(&tmp, &self.path).map_err(DeployError::io("rename", &self.path))?;
        }
        Ok(out)
    }

    /// Takes `service`'s lock for `client` deploying `version`, unless a live deploy
    /// holds it; a stale entry is dropped and handed back.
    pub fn acquire(
        &self,
        service: &str,
        client: &str,
        version: &str,
    ) -> Result<Acquired<'_>, DeployError> {
        let mut held = self.held.lock().expect("held");
        if held.contains(service) {
            let h = self.with(|e| (e.get(service).cloned(), false))?;
            if let Some(h) = h {
                return Ok(Acquired::Busy(h));
            }
        }
        let holder = Holder {
            client: client.to_owned(),
            since_unix: crate::engine::unix_now(),
            version: version.to_owned(),
            agent: self.me.clone(),
        };
        let found = self.with(|e| match e.get(service) {
            Some(h) if self.is_live(h) => (Err(h.clone()), false),
            old => {
                let stale = old.cloned();
                e.insert(service.to_owned(), holder);
                (Ok(stale), true)
            }
        })?;
        match found {
            Err(h) => Ok(Acquired::Busy(h)),
            Ok(stale) => {
                held.insert(service.to_owned());
                Ok(Acquired::Taken {
                    held: Held {
                        locks: self,
                        service: service.to_owned(),
                    },
                    stale,
                })
            }
        }
    }

    fn release(&self, service: &str) -> Result<(), DeployError> {
        let mut held = self.held.lock().expect("held");
        held.remove(service);
        self.with(|e| match e.get(service) {
            Some(h) if h.agent == self.me => {
                e.remove(service);
                ((), true)
            }
            _ => ((), false),
        })
    }

    /// The live holders, by service.
    pub fn holders(&self) -> Result<BTreeMap<String, Holder>, DeployError> {
        let held = self.held.lock().expect("held");
        self.with(|e| {
            let live = e
                .iter()
                .filter(|(s, h)| {
                    if h.agent == self.me {
                        held.contains(*s)
                    } else {
                        h.agent.is_alive()
                    }
                })
                .map(|(s, h)| (s.clone(), h.clone()))
                .collect();
            (live, false)
        })
    }

    /// Drops the stale entries (at an agent's start) and returns them.
    pub fn take_stale(&self) -> Result<Vec<(String, Holder)>, DeployError> {
        let held = self.held.lock().expect("held");
        self.with(|e| {
            let stale: Vec<(String, Holder)> = e
                .iter()
                .filter(|(s, h)| {
                    if h.agent == self.me {
                        !held.contains(*s)
                    } else {
                        !h.agent.is_alive()
                    }
                })
                .map(|(s, h)| (s.clone(), h.clone()))
                .collect();
            for (s, _) in &stale {
                e.remove(s);
            }
            let changed = !stale.is_empty();
            (stale, changed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(a: Acquired<'_>) -> (Held<'_>, Option<Holder>) {
        match a {
            Acquired::Taken { held, stale } => (held, stale),
            Acquired::Busy(h) => panic!("busy: {h:?}"),
        }
    }

    #[test]
    fn a_second_deploy_is_refused_until_the_first_ends() {
        let dir = tempfile::tempdir().unwrap();
        let locks = Locks::new(dir.path());
        let (held, stale) = taken(locks.acquire("web", "alice", "v1").unwrap());
        assert!(stale.is_none());
        match locks.acquire("web", "bob", "v2").unwrap() {
            Acquired::Busy(h) => {
                assert_eq!((h.client.as_str(), h.version.as_str()), ("alice", "v1"))
            }
            Acquired::Taken { .. } => panic!("taken twice"),
        }
        // Another service is free.
        let (_other, _) = taken(locks.acquire("api", "bob", "v2").unwrap());
        assert_eq!(
            locks.holders().unwrap().keys().collect::<Vec<_>>(),
            ["api", "web"]
        );
        drop(held);
        let (_held, stale) = taken(locks.acquire("web", "bob", "v2").unwrap());
        assert!(stale.is_none());
    }

    #[test]
    fn a_lock_of_a_live_agent_process_holds_and_a_dead_ones_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        // A live process that is not this agent: a child of the test.
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        let other = Instance {
            boot_id: boot_id(),
            pid,
            start: start_of(&pid.to_string()).unwrap(),
        };
        assert!(other.is_alive());
        let entry = |agent: Instance| {
            BTreeMap::from([(
                "web".to_owned(),
                Holder {
                    client: "carol".into(),
                    since_unix: 1,
                    version: "v7".into(),
                    agent,
                },
            )])
        };
        std::fs::write(
            dir.path().join("lock.json"),
            serde_json::to_vec(&entry(other.clone())).unwrap(),
        )
        .unwrap();
        // A new agent on the same directory (a restart while the old one still
        // finishes its deploy) keeps the lock and says who holds it.
        let locks = Locks::new(dir.path());
        assert!(locks.take_stale().unwrap().is_empty());
        match locks.acquire("web", "bob", "v2").unwrap() {
            Acquired::Busy(h) => assert_eq!(h.client, "carol"),
            Acquired::Taken { .. } => panic!("took a live lock"),
        }
        assert!(locks.holders().unwrap().contains_key("web"));
        // Once that process is gone, the entry is stale: dropped at start, or by the
        // next deploy, which gets it back to clean up after it.
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!other.is_alive());
        assert!(locks.holders().unwrap().is_empty());
        let (held, stale) = taken(locks.acquire("web", "bob", "v2").unwrap());
        assert_eq!(stale.unwrap().client, "carol");
        drop(held);
        std::fs::write(
            dir.path().join("lock.json"),
            serde_json::to_vec(&entry(other)).unwrap(),
        )
        .unwrap();
        let stale = locks.take_stale().unwrap();
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].1.version, "v7");
        let left: BTreeMap<String, Holder> =
            serde_json::from_slice(&std::fs::read(dir.path().join("lock.json")).unwrap()).unwrap();
        assert!(left.is_empty());
        // A pid reused by another process is not the holder.
        let reused = Instance {
            boot_id: boot_id(),
            pid: std::process::id(),
            start: 1,
        };
        assert!(!reused.is_alive());
    }

    #[test]
    fn a_damaged_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lock.json"), "{").unwrap();
        let e = Locks::new(dir.path())
            .acquire("web", "a", "v1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lock.json is damaged"), "{e}");
    }
}
