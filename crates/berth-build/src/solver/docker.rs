//! Steps with a dockerd of their own ([`ExecOp::docker`], Earthly's `WITH DOCKER`).
//!
//! The step runs privileged. Before it starts, the solver makes a fresh directory on
//! the host (`tmp/<owner>-docker…`, removed after the step) and binds it at
//! `/var/lib/docker`: dockerd's data root there is a real file system, so its overlay2
//! driver works (overlayfs cannot stack on the step's own overlay root, which leaves
//! only vfs or fuse-overlayfs to a data root inside the image). Into it go
//! `.berth/load/<n>.tar`, one docker-archive per image to load (the layout Docker 20.10
//! loads: `manifest.json`, `<config>.json`, `<n>/layer.tar`), and `.berth/dind.sh`, the
//! wrapper the step's command runs under: it starts the image's own `dockerd`
//! (exec root and pid file under `.berth`, socket at `/var/run/docker.sock` so tools
//! find it where they look), waits for it to answer, `docker load`s the archives, runs
//! the command, stops dockerd and exits with the command's code (125 if dockerd or a
//! load failed, with dockerd's log). With compose files (`.berth/compose/NNN.yml` and
//! the list of services to start, `.berth/compose/services`) it brings the services up
//! after the loads with `docker compose` or else `docker-compose` (project `berth`,
//! project directory the step's working directory) and down after the command.
//!
//! dockerd's bridge and iptables rules live in the step's own network namespace (which
//! a privileged step does not give back to the pool); with the host's network it would
//! rewrite the host's, so that is refused. What dockerd leaves in the root file system
//! (its trust key in `/etc/docker`, `/run/docker`, the mount point) is removed from the
//! step's changes when the image did not have it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_oci::Mount;
use berth_snapshot::{Active, Compression};

use super::{Output, Solved, Solver, io_err, unique};
use crate::error::{BuildError, Result};
use crate::image::ImageConfig;
use crate::ir::{DockerSpec, ExecOp, NetworkMode};

/// Where the step sees dockerd's data root.
pub(crate) const DATA_ROOT: &str = "/var/lib/docker";

/// The wrapper: `sh dind.sh CMD…`.
const WRAPPER: &str = r#"#!/bin/sh
# berth: run the step's command beside a dockerd of its own (WITH DOCKER).
B=/var/lib/docker/.berth
mkdir -p "$B/exec"
rm -f /var/run/docker.sock "$B/dockerd.pid"
dockerd --data-root /var/lib/docker --exec-root "$B/exec" --pidfile "$B/dockerd.pid" \
  -H unix:///var/run/docker.sock >"$B/dockerd.log" 2>&1 &
dpid=$!
fail() {
  echo "berth: $1; the last lines of dockerd's log:" >&2
  tail -n 20 "$B/dockerd.log" >&2
  kill "$dpid" 2>/dev/null
  exit 125
}
command -v docker >/dev/null 2>&1 || fail "the image has no docker CLI (install docker.io or docker-ce-cli)"
n=0
until docker version >/dev/null 2>&1; do
  kill -0 "$dpid" 2>/dev/null || fail "dockerd exited before it answered"
  n=$((n + 1))
  [ "$n" -le 1200 ] || fail "dockerd did not answer within 120 s"
  sleep 0.1
done
for t in "$B"/load/*.tar; do
  [ -e "$t" ] || continue
  docker load -q -i "$t" >/dev/null || fail "docker load of $t failed"
done
C="$B/compose"
if [ -d "$C" ]; then
  if docker compose version >/dev/null 2>&1; then
    dc="docker compose"
  elif command -v docker-compose >/dev/null 2>&1; then
    dc=docker-compose
  else
    echo "berth: WITH DOCKER --compose: the image has neither 'docker compose' nor 'docker-compose' (install docker-compose or docker-compose-plugin)" >&2
    kill "$dpid" 2>/dev/null
    exit 125
  fi
  files=
  for f in "$C"/*.yml; do files="$files -f $f"; done
  services=$(cat "$C/services")
  compose() { $dc -p berth --project-directory "$PWD" $files "$@"; }
  if ! compose up -d $services >"$B/compose.log" 2>&1; then
    cat "$B/compose.log" >&2
    echo "berth: WITH DOCKER --compose: $dc up failed" >&2
    kill "$dpid" 2>/dev/null
    exit 125
  fi
fi
"$@"
code=$?
[ -n "${dc:-}" ] && compose down -t 1 >"$B/compose.log" 2>&1
kill -TERM "$dpid" 2>/dev/null
wait "$dpid" 2>/dev/null
exit $code
"#;

/// What dockerd and its containerd leave in the root file system, beyond the mount
/// point: removed from the step's changes when the image did not have it. Runtime state
/// (`…/run/…`) goes whole; folders only when empty (the command may have put its own
/// files there).
const TRACES: [&str; 9] = [
    "/etc/docker/key.json",
    "/etc/docker",
    "/run/docker",
    "/var/run/docker",
    "/run/containerd",
    "/var/run/containerd",
    "/opt/containerd/bin",
    "/opt/containerd/lib",
    "/opt/containerd",
];

impl Solver {
    /// Prepare a docker step: its scratch directory (in `dirs`, removed by the caller),
    /// the mount of it, and the command under the wrapper.
    pub(super) fn docker_prepare(
        &self,
        op: &ExecOp,
        spec: &DockerSpec,
        inputs: &[Arc<Solved>],
        dirs: &mut Vec<PathBuf>,
    ) -> Result<(Mount, Vec<String>)> {
        if op.network == NetworkMode::Host {
            return Err(BuildError::Invalid(
                "a step with its own dockerd cannot use the host's network: that dockerd would \
                 rewrite the host's bridge and firewall; use the default network"
                    .into(),
            ));
        }
        let dir = self.root.join("tmp").join(unique("docker"));
        dirs.push(dir.clone());
        let data = dir.join("data");
        let load = data.join(".berth/load");
        fs::create_dir_all(&load).map_err(|e| io_err("create directory", &load, e))?;
        let script = data.join(".berth/dind.sh");
        fs::write(&script, WRAPPER).map_err(|e| io_err("write", &script, e))?;
        for (n, l) in spec.loads.iter().enumerate() {
            let Some(Output::Layers(layers)) = inputs.get(l.input).map(|s| &s.output) else {
                return Err(BuildError::Invalid(format!(
                    "image {} to load into the step's dockerd is not a file system (input {})",
                    l.tag, l.input
                )));
            };
            let config: ImageConfig = serde_json::from_str(&l.config).map_err(|e| {
                BuildError::Invalid(format!("image config of {} to load: {e}", l.tag))
            })?;
            let path = load.join(format!("{n}.tar"));
            self.write_docker_archive(&path, &l.tag, layers, config)?;
        }
        if let Some(c) = &spec.compose {
            // `NNN.yml`, so the wrapper's glob gives them in order.
            let dir = data.join(".berth/compose");
            fs::create_dir_all(&dir).map_err(|e| io_err("create directory", &dir, e))?;
            for (n, (_, text)) in c.files.iter().enumerate() {
                let path = dir.join(format!("{n:03}.yml"));
                fs::write(&path, text).map_err(|e| io_err("write", &path, e))?;
            }
            let path = dir.join("services");
            let mut list = c.services.join("\n");
            list.push('\n');
            fs::write(&path, list).map_err(|e| io_err("write", &path, e))?;
        }
        let mut m = Mount::default();
        m.set_destination(PathBuf::from(DATA_ROOT));
        m.set_typ(Some("bind".into()));
        m.set_source(Some(data));
        m.set_options(Some(vec!["rbind".into(), "rw".into()]));
        let mut args = vec!["/bin/sh".to_string(), format!("{DATA_ROOT}/.berth/dind.sh")];
        args.extend(op.args.iter().cloned());
        Ok((m, args))
    }

    /// `layers` with `config` as a docker-archive at `path`, tagged `tag`. Layers go as
    /// stored (dockerd inflates gzip itself); zstd ones, which Docker 20.10 cannot read,
    /// are converted to gzip first (once: the store keeps the variant).
    fn write_docker_archive(
        &self,
        path: &Path,
        tag: &str,
        layers: &[super::Layer],
        mut config: ImageConfig,
    ) -> Result<()> {
        let layers = if layers
            .iter()
            .any(|l| Compression::of_media_type(&l.blob.media_type) == Some(Compression::Zstd))
        {
            let zstd: Vec<super::Layer> = layers.to_vec();
            let mut out = Vec::new();
            for l in zstd {
                if Compression::of_media_type(&l.blob.media_type) == Some(Compression::Zstd) {
                    out.extend(crate::export::convert_layers(
                        &self.store,
                        std::slice::from_ref(&l),
                        Compression::Gzip,
                        0,
                    )?);
                } else {
                    out.push(l);
                }
            }
            out
        } else {
            layers.to_vec()
        };
        config.rootfs.diff_ids = layers.iter().map(|l| l.diff_id.clone()).collect();
        let config_bytes = serde_json::to_vec(&config).expect("config serialises");
        let config_name = format!("{}.json", berth_oci::Digest::sha256(&config_bytes).hex());
        let repo_tag = docker_tag(tag)?;
        let file = fs::File::create(path).map_err(|e| io_err("create", path, e))?;
        let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
        let werr = |e: std::io::Error| io_err("write", path, e);
        let header = |size: u64| {
            let mut h = tar::Header::new_ustar();
            h.set_size(size);
            h.set_mode(0o644);
            h.set_mtime(0);
            h
        };
        tar.append_data(
            &mut header(config_bytes.len() as u64),
            &config_name,
            &config_bytes[..],
        )
        .map_err(werr)?;
        let mut names = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let (blob, size) = self.store.open_blob(&l.blob.digest)?.ok_or_else(|| {
                BuildError::Image(format!("layer {} is missing from the store", l.blob.digest))
            })?;
            let name = format!("{i}/layer.tar");
            tar.append_data(&mut header(size), &name, blob)
                .map_err(werr)?;
            names.push(name);
        }
        let manifest = serde_json::json!([{
            "Config": config_name,
            "RepoTags": [repo_tag],
            "Layers": names,
        }]);
        let manifest = serde_json::to_vec(&manifest).expect("json");
        tar.append_data(
            &mut header(manifest.len() as u64),
            "manifest.json",
            &manifest[..],
        )
        .map_err(werr)?;
        tar.into_inner().and_then(|mut w| w.flush()).map_err(werr)?;
        Ok(())
    }

    /// Remove what dockerd left in the step's changes and the image did not have.
    pub(super) fn docker_clean(&self, active: &Active) {
        for t in TRACES.iter().chain([&DATA_ROOT]) {
            if super::exec::exists_in(&active.lowers, t) {
                continue;
            }
            let Some(p) = in_upper(&active.upper, t) else {
                continue;
            };
            let Ok(m) = fs::symlink_metadata(&p) else {
                continue;
            };
            if t.ends_with(".json") && m.is_file() {
                let _ = fs::remove_file(&p);
            } else if m.is_dir() && t.contains("run/") {
                // dockerd's runtime state, never the command's.
                let _ = fs::remove_dir_all(&p);
            } else if m.is_dir() {
                // Only if empty: the command may have put its own files there.
                let _ = fs::remove_dir(&p);
            }
        }
        // Parents made only for these (an image without /var/lib or /opt).
        for d in ["/var/lib", "/var", "/opt"] {
            if !super::exec::exists_in(&active.lowers, d)
                && let Some(p) = in_upper(&active.upper, d)
            {
                let _ = fs::remove_dir(p);
            }
        }
    }
}

/// `path` in the upper directory `upper`, if every folder on the way there is a real
/// folder: the step may have made one a link (to `/run` of the host, say), and what is
/// removed must never be found through it.
fn in_upper(upper: &Path, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path.trim_start_matches('/'));
    let mut p = upper.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            p.push(c);
            if !fs::symlink_metadata(&p).ok()?.is_dir() {
                return None;
            }
        }
    }
    Some(upper.join(rel))
}

/// `tag` as `docker load` wants it in `RepoTags`: a name with a tag.
fn docker_tag(tag: &str) -> Result<String> {
    let r = berth_oci::WrittenReference::parse(tag).map_err(|e| {
        BuildError::Invalid(format!("image name {tag:?} to load into dockerd: {e}"))
    })?;
    if r.digest.is_some() {
        return Err(BuildError::Invalid(format!(
            "image name {tag:?} to load into dockerd: give a tag, not a digest"
        )));
    }
    Ok(format!("{}:{}", r.name(), r.tag_or_latest()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_are_never_looked_up_through_links() {
        let d = tempfile::tempdir().unwrap();
        let upper = d.path().join("upper");
        let outside = d.path().join("outside");
        fs::create_dir_all(upper.join("etc/docker")).unwrap();
        fs::create_dir_all(outside.join("docker")).unwrap();
        std::os::unix::fs::symlink(&outside, upper.join("run")).unwrap();
        assert_eq!(
            in_upper(&upper, "/etc/docker/key.json"),
            Some(upper.join("etc/docker/key.json"))
        );
        assert_eq!(in_upper(&upper, "/run/docker"), None);
        assert_eq!(
            in_upper(&upper, "/var/lib/docker"),
            None,
            "no /var in the upper"
        );
    }

    #[test]
    fn tags_are_docker_names() {
        assert_eq!(docker_tag("app").unwrap(), "app:latest");
        assert!(
            docker_tag(
                "app@sha256:0000000000000000000000000000000000000000000000000000000000000000"
            )
            .is_err()
        );
        assert_eq!(
            docker_tag("127.0.0.1:5000/team/app:v1").unwrap(),
            "127.0.0.1:5000/team/app:v1"
        );
        assert!(docker_tag("Bad Name").is_err());
    }
}
