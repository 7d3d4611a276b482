//! Pools of satellites: named lists of enrolled satellites a build may go to
//! (`berth build --satellite pool:NAME`), kept beside the enrolments in
//! `<config>/satellites/pools.json`.
//!
//! Before a build the client asks every member at once, with a short timeout, how much
//! of the build its cache holds and how busy it is ([`probe_members`], the `Probe`
//! call: cache keys computed over the context's digests, nothing uploaded). The members
//! are then tried in [`rank`]'s order: most steps cached first, then fewest builds
//! running, then the lowest load per CPU; members that did not answer come last. A
//! member that fails before its build starts (down, draining, refusing this client) is
//! skipped for the next; once a build has started on a member, its result is the
//! build's. Images leave the members through their registries as with one satellite.
//!
//! Several builds at once (the targets an Earthfile's `BUILD`-only target stands for)
//! are placed by [`assign`]: each by its own probes, the ones placed before it counted
//! as running on their members. An Earthfile build's probe counts the steps of its
//! target's last build on the member (`ProbeResponse.from_history`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::{Described, Enrollments, probe};
use crate::context::write_atomic;
use crate::error::SatError;
use crate::proto;

/// The prefix that makes a `--satellite` value name a pool.
pub const POOL_PREFIX: &str = "pool:";

/// One pool: its name and its members' names (enrolled satellites).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// The pool's name.
    pub name: String,
    /// Names of enrolled satellites, in the order they were added.
    pub members: Vec<String>,
}

/// The pools of this client.
#[derive(Debug, Clone)]
pub struct Pools {
    file: PathBuf,
}

#[derive(Default, Serialize, Deserialize)]
struct PoolsFile {
    pools: BTreeMap<String, Vec<String>>,
}

impl Pools {
    /// Kept in `dir/pools.json` (`dir` is the enrolments' directory).
    pub fn new(dir: PathBuf) -> Pools {
        Pools {
            file: dir.join("pools.json"),
        }
    }

    fn read(&self) -> Result<PoolsFile, SatError> {
        match std::fs::read(&self.file) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                SatError::BadRequest(format!(
                    "{}: {e}; fix the file or remove it (its pools are then forgotten)",
                    self.file.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PoolsFile::default()),
            Err(e) => Err(SatError::io("read", &self.file)(e)),
        }
    }

    fn write(&self, f: &PoolsFile) -> Result<(), SatError> {
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir).map_err(SatError::io("create", dir))?;
        }
        write_atomic(
            &self.file,
            &serde_json::to_vec_pretty(f).expect("pools serialise"),
        )
    }

    /// Adds `members` (enrolled satellites) to pool `name`, making the pool if it is new.
    /// Returns the pool as it is now.
    pub fn add(
        &self,
        name: &str,
        members: &[String],
        enrolled: &Enrollments,
    ) -> Result<Pool, SatError> {
        if !berth_pki::PeerStore::valid_name(name) {
            return Err(SatError::BadRequest(format!(
                "pool name {name:?}: use 1 to 64 letters, digits, `.`, `-` or `_`"
            )));
        }
        if members.is_empty() {
            return Err(SatError::BadRequest(format!(
                "pool {name}: name at least one enrolled satellite to add (see `berth satellite ls`)"
            )));
        }
        for m in members {
            enrolled.get(m).map_err(|_| {
                SatError::BadRequest(format!(
                    "pool {name}: no satellite named {m} is enrolled; enroll it first with \
                     `berth satellite add {m} --token T` (see `berth satellite ls`)"
                ))
            })?;
        }
        let mut f = self.read()?;
        let list = f.pools.entry(name.to_owned()).or_default();
        for m in members {
            if !list.contains(m) {
                list.push(m.clone());
            }
        }
        let pool = Pool {
            name: name.to_owned(),
            members: list.clone(),
        };
        self.write(&f)?;
        Ok(pool)
    }

    /// Pool `name`.
    pub fn get(&self, name: &str) -> Result<Pool, SatError> {
        let f = self.read()?;
        let members = f.pools.get(name).cloned().ok_or_else(|| {
            SatError::BadRequest(format!(
                "no satellite pool named {name}: make it with `berth satellite pool add {name} \
                 SATELLITE…` (see `berth satellite pool ls`)"
            ))
        })?;
        if members.is_empty() {
            return Err(SatError::BadRequest(format!(
                "satellite pool {name} has no members: add some with `berth satellite pool add \
                 {name} SATELLITE…`"
            )));
        }
        Ok(Pool {
            name: name.to_owned(),
            members,
        })
    }

    /// Every pool, by name.
    pub fn list(&self) -> Result<Vec<Pool>, SatError> {
        Ok(self
            .read()?
            .pools
            .into_iter()
            .map(|(name, members)| Pool { name, members })
            .collect())
    }

    /// Forgets pool `name` (its members stay enrolled); builds no longer go to it by
    /// default if `berth satellite use pool:NAME` chose it.
    pub fn remove(&self, name: &str) -> Result<(), SatError> {
        let mut f = self.read()?;
        if f.pools.remove(name).is_none() {
            return Err(SatError::BadRequest(format!(
                "no satellite pool named {name} (see `berth satellite pool ls`)"
            )));
        }
        self.write(&f)?;
        if let Some(dir) = self.file.parent() {
            let default = dir.join("default");
            let chosen = std::fs::read_to_string(&default).unwrap_or_default();
            if chosen.trim() == format!("{POOL_PREFIX}{name}") {
                std::fs::remove_file(&default).map_err(SatError::io("remove", &default))?;
            }
        }
        Ok(())
    }
}

/// A member of a pool as a build sees it: its probe's answer, or why it gave none.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The member's name (an enrolled satellite).
    pub name: String,
    /// What it answered.
    pub probe: Result<proto::ProbeResponse, String>,
}

impl Candidate {
    /// A line for people: what the member holds and how busy it is, or why it did not
    /// answer.
    pub fn summary(&self) -> String {
        match &self.probe {
            Ok(p) if p.uncounted.is_empty() && p.from_history && p.steps == 0 => format!(
                "never built this target, {} builds running, load {:.2} on {} cpus",
                p.running_builds, p.load1, p.cpus
            ),
            Ok(p) if p.uncounted.is_empty() && p.from_history => format!(
                "{}/{} steps of its last build of this target cached, {} builds running, \
                 load {:.2} on {} cpus",
                p.cached, p.steps, p.running_builds, p.load1, p.cpus
            ),
            Ok(p) if p.uncounted.is_empty() => format!(
                "{}/{} steps cached, {} builds running, load {:.2} on {} cpus",
                p.cached, p.steps, p.running_builds, p.load1, p.cpus
            ),
            Ok(p) => format!(
                "cache not counted ({}), {} builds running, load {:.2} on {} cpus",
                p.uncounted, p.running_builds, p.load1, p.cpus
            ),
            Err(e) => format!("no answer: {e}"),
        }
    }
}

/// Probes `members` at once, each within `timeout` (connection included).
pub async fn probe_members(
    enrolled: &Enrollments,
    members: &[String],
    described: &Described,
    request: &proto::BuildRequest,
    timeout: Duration,
) -> Vec<Candidate> {
    let each = members.iter().map(|name| async move {
        let call = async {
            let mut conn = enrolled.connect(name).await?;
            probe(&mut conn, described, request).await
        };
        let probe = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer in {}s", timeout.as_secs_f32())),
        };
        Candidate {
            name: name.clone(),
            probe,
        }
    });
    futures_util::future::join_all(each).await
}

/// The order to try the members in: those that answered first, most steps cached
/// first, then fewest builds running, then the lowest load per CPU (in steps of a
/// quarter, so that members on equal footing tie); members whose cache could not be
/// counted after those that could; members that did not answer last, in the pool's
/// order. Ties are broken at random: clients that start builds at the same moment see
/// the same answers, and would otherwise all pick the same member.
pub fn rank(candidates: Vec<Candidate>) -> Vec<Candidate> {
    rank_with(candidates, &HashMap::new())
}

/// Where each of several builds that run at once goes: `units` holds each build's
/// probe answers, and the result each one's order to try the members in. The builds
/// are placed one after another, each by [`rank`] with the builds placed before it
/// counted as running on their members, so builds whose cache is nowhere spread over
/// the members while a build still goes where its cache is (cached steps come first).
pub fn assign(units: Vec<Vec<Candidate>>) -> Vec<Vec<Candidate>> {
    let mut placed: HashMap<String, u32> = HashMap::new();
    units
        .into_iter()
        .map(|candidates| {
            let ranked = rank_with(candidates, &placed);
            if let Some(first) = ranked.first().filter(|c| c.probe.is_ok()) {
                *placed.entry(first.name.clone()).or_default() += 1;
            }
            ranked
        })
        .collect()
}

/// [`rank`], with `placed` builds counted as running on the members they name.
fn rank_with(candidates: Vec<Candidate>, placed: &HashMap<String, u32>) -> Vec<Candidate> {
    use std::hash::BuildHasher;
    // Random keys per call: a random order among equals, with no RNG crate.
    let random = std::collections::hash_map::RandomState::new();
    let mut keyed: Vec<_> = candidates
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let key = match &c.probe {
                Ok(p) => (
                    u8::from(!p.uncounted.is_empty()),
                    std::cmp::Reverse(p.cached),
                    p.running_builds + placed.get(&c.name).copied().unwrap_or(0),
                    (p.load1.max(0.0) / f64::from(p.cpus.max(1)) * 4.0) as u64,
                    random.hash_one(&c.name),
                ),
                Err(_) => (2, std::cmp::Reverse(0), u32::MAX, u64::MAX, i as u64),
            };
            (key, c)
        })
        .collect();
    keyed.sort_by_key(|k| k.0);
    keyed.into_iter().map(|(_, c)| c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(name: &str, cached: u32, running: u32, load: f64) -> Candidate {
        Candidate {
            name: name.into(),
            probe: Ok(proto::ProbeResponse {
                name: name.into(),
                steps: 5,
                cached,
                running_builds: running,
                load1: load,
                cpus: 2,
                ..Default::default()
            }),
        }
    }

    fn names(c: &[Candidate]) -> Vec<&str> {
        c.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn cache_wins_over_load_and_load_breaks_ties() {
        let ranked = rank(vec![
            answered("idle", 0, 0, 0.1),
            Candidate {
                name: "down".into(),
                probe: Err("cannot reach".into()),
            },
            answered("warm-busy", 4, 3, 3.0),
            answered("cold-busy", 0, 1, 0.1),
            answered("warm", 4, 0, 1.9),
        ]);
        assert_eq!(
            names(&ranked),
            ["warm", "warm-busy", "idle", "cold-busy", "down"]
        );
        // Lower load per CPU first when builds running are equal.
        let ranked = rank(vec![
            answered("hot", 0, 0, 1.5),
            answered("cool", 0, 0, 0.5),
        ]);
        assert_eq!(names(&ranked), ["cool", "hot"]);
    }

    #[test]
    fn equal_members_are_ordered_at_random_and_silent_ones_keep_the_pools_order() {
        let mut firsts = std::collections::BTreeSet::new();
        // Each call draws new keys: in 64 draws both equals come first, but for a
        // chance of 2^-63.
        for _ in 0..64 {
            let down = |n: &str| Candidate {
                name: n.into(),
                probe: Err("x".into()),
            };
            let ranked = rank(vec![
                answered("a", 0, 0, 0.5),
                down("down1"),
                answered("b", 0, 0, 0.6),
                down("down2"),
            ]);
            assert_eq!(names(&ranked[2..]), ["down1", "down2"]);
            firsts.insert(ranked[0].name.clone());
        }
        assert_eq!(firsts.len(), 2, "{firsts:?}");
    }

    #[test]
    fn builds_at_once_spread_over_members_but_follow_their_cache() {
        let down = |n: &str| Candidate {
            name: n.into(),
            probe: Err("x".into()),
        };
        for _ in 0..16 {
            // Nothing cached anywhere: one build each, whichever goes first.
            let fresh = || vec![answered("a", 0, 0, 0.1), answered("b", 0, 0, 0.1)];
            let got = assign(vec![fresh(), fresh()]);
            let mut firsts = vec![got[0][0].name.clone(), got[1][0].name.clone()];
            firsts.sort();
            assert_eq!(firsts, ["a", "b"]);
            // A third build goes to either, and each member still comes second once.
            let got = assign(vec![fresh(), fresh(), fresh()]);
            assert_ne!(got[0][0].name, got[1][0].name);
        }
        // Each build's cache wins over the other placed there: both go to `a` when
        // both are cached there, and each to its own when each has one.
        let got = assign(vec![
            vec![answered("a", 3, 0, 0.1), answered("b", 0, 0, 0.1)],
            vec![answered("a", 2, 0, 0.1), answered("b", 0, 0, 0.1)],
        ]);
        assert_eq!((names(&got[0])[0], names(&got[1])[0]), ("a", "a"));
        let got = assign(vec![
            vec![answered("a", 0, 0, 0.1), answered("b", 3, 0, 0.1)],
            vec![answered("a", 3, 0, 0.1), answered("b", 0, 0, 0.1)],
        ]);
        assert_eq!((names(&got[0])[0], names(&got[1])[0]), ("b", "a"));
        // A member that did not answer takes none while another answers.
        let got = assign(vec![
            vec![down("a"), answered("b", 0, 0, 0.1)],
            vec![down("a"), answered("b", 0, 0, 0.1)],
        ]);
        assert_eq!(names(&got[0]), ["b", "a"]);
        assert_eq!(names(&got[1]), ["b", "a"]);
    }

    #[test]
    fn history_answers_say_what_they_count() {
        let mut c = answered("a", 0, 0, 0.5);
        if let Ok(p) = &mut c.probe {
            p.from_history = true;
            p.steps = 0;
        }
        assert!(
            c.summary().starts_with("never built this target"),
            "{}",
            c.summary()
        );
        if let Ok(p) = &mut c.probe {
            (p.steps, p.cached) = (4, 3);
        }
        assert!(
            c.summary()
                .starts_with("3/4 steps of its last build of this target cached"),
            "{}",
            c.summary()
        );
    }

    #[test]
    fn uncounted_members_come_after_counted_ones() {
        let mut unknown = answered("unknown", 0, 0, 0.0);
        if let Ok(p) = &mut unknown.probe {
            p.uncounted = "base image not stored".into();
        }
        let ranked = rank(vec![unknown, answered("counted", 0, 2, 2.0)]);
        assert_eq!(names(&ranked), ["counted", "unknown"]);
    }

    #[test]
    fn pools_are_kept_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let pools = Pools::new(dir.path().to_path_buf());
        let enrolled = Enrollments::new(dir.path().to_path_buf());
        let e = pools.add("p", &["nope".into()], &enrolled).unwrap_err();
        assert!(e.to_string().contains("no satellite named nope"), "{e}");
        let e = pools.add("p", &[], &enrolled).unwrap_err();
        assert!(e.to_string().contains("at least one"), "{e}");
        let e = pools.add("../x", &["a".into()], &enrolled).unwrap_err();
        assert!(e.to_string().contains("pool name"), "{e}");
        let e = pools.get("p").unwrap_err();
        assert!(e.to_string().contains("no satellite pool named p"), "{e}");
        assert!(pools.remove("p").is_err());
        assert!(pools.list().unwrap().is_empty());
    }
}
