//! Steps with a dockerd of their own: the graph side of Earthly's `WITH DOCKER --load
//! img=+target --pull img … RUN … END`, for any frontend.
//!
//! [`docker_run`] makes one exec vertex that runs privileged, with the images to load
//! as extra inputs: `--load` targets are solved in parallel with everything else as
//! ordinary inputs, and `--pull` images come from berth's store or registry client
//! (resolved like `FROM`, so their manifest digest is in the key), never from a
//! registry the step's dockerd would reach itself. At run time the solver starts the
//! image's own `dockerd` beside the command (see the solver's `docker` module).
//!
//! A privileged step needs the `security.insecure` entitlement: the caller checks it
//! was granted (as the Dockerfile frontend does for `RUN --security=insecure`), so the
//! refusal names the build file's line.
//!
//! ```
//! use berth_build::docker::{DockerImage, docker_run};
//! use berth_build::image::ImageConfig;
//! use berth_build::ir::{ExecOp, State};
//!
//! let base = State::scratch(); // an image with dockerd and the docker CLI
//! let app = State::scratch(); // a target built in the same build
//! let exec = ExecOp {
//!     args: vec!["/bin/sh".into(), "-c".into(), "docker run --rm app:test".into()],
//!     cwd: "/".into(),
//!     ..ExecOp::default()
//! };
//! let images = vec![DockerImage::built("app:test", app, ImageConfig::default())];
//! let step = docker_run(&base, exec, vec![], images, "WITH DOCKER").unwrap();
//! assert_eq!(step.vertex().inputs.len(), 2);
//! ```

use crate::error::{BuildError, Result};
use crate::image::{ImageConfig, ResolvedImage};
use crate::ir::{DockerCompose, DockerLoad, DockerSpec, ExecOp, ImageSource, NetworkMode, State};

/// An image loaded into a docker step's dockerd before its command runs.
#[derive(Debug, Clone)]
pub struct DockerImage {
    /// The name it gets there (`app:test`; `:latest` when no tag is given).
    pub tag: String,
    /// Its file system.
    pub state: State,
    /// Its config (env, entrypoint, cmd…); `rootfs` is filled in from the layers.
    pub config: ImageConfig,
}

impl DockerImage {
    /// A target of this build (`--load tag=+target`): its final state and image config.
    pub fn built(tag: impl Into<String>, state: State, config: ImageConfig) -> DockerImage {
        DockerImage {
            tag: tag.into(),
            state,
            config,
        }
    }

    /// An image resolved as `FROM` resolves one (`--pull reference`; the store first,
    /// then the registry through berth's client), named by the reference as written.
    pub fn pulled(image: &ResolvedImage) -> DockerImage {
        DockerImage {
            tag: image.reference.clone(),
            state: State::image(ImageSource {
                reference: image.reference.clone(),
                manifest: image.manifest.clone(),
            }),
            config: image.config.clone(),
        }
    }
}

/// Run `exec` on `state` beside a dockerd of the step's own that has `images` loaded:
/// the step's exit code is the command's, its changes to the file system are the
/// result, as for a RUN (dockerd's data is not: it lives on a scratch directory of the
/// host). `extra` are the inputs `exec`'s mounts refer to (index 1…); the images come
/// after them. The step is privileged; its network is the default or `none` (the
/// host's network is refused: dockerd would rewrite the host's bridge and firewall).
/// The wrapper and the command run as `exec.user`, and dockerd needs root: leave the
/// user empty (root) for a docker step. The base image must have `dockerd`, the
/// `docker` CLI and `iptables` (Debian's docker.io); without a CLI the step fails
/// with code 125 and says so.
pub fn docker_run(
    state: &State,
    exec: ExecOp,
    extra: Vec<State>,
    images: Vec<DockerImage>,
    name: impl Into<String>,
) -> Result<State> {
    docker_compose_run(state, exec, extra, images, None, name)
}

/// [`docker_run`] with the services of `compose` brought up after the images are
/// loaded (`docker compose up -d`, or `docker-compose`, whichever the image has; the
/// step fails with code 125 when it has neither) and taken down after the command.
/// Service names are checked here: letters, digits, `.`, `_` and `-`.
pub fn docker_compose_run(
    state: &State,
    mut exec: ExecOp,
    mut extra: Vec<State>,
    images: Vec<DockerImage>,
    compose: Option<DockerCompose>,
    name: impl Into<String>,
) -> Result<State> {
    if let Some(c) = &compose {
        if c.files.is_empty() {
            return Err(BuildError::Invalid(
                "docker compose services need at least one compose file".into(),
            ));
        }
        if let Some(bad) = c.services.iter().find(|s| !valid_service(s)) {
            return Err(BuildError::Invalid(format!(
                "compose service name {bad:?}: use letters, digits, '.', '_' and '-'"
            )));
        }
    }
    if exec.network == NetworkMode::Host {
        return Err(BuildError::Invalid(
            "a step with its own dockerd cannot use the host's network (--network=host): \
             that dockerd would rewrite the host's bridge and firewall"
                .into(),
        ));
    }
    let mut loads = Vec::with_capacity(images.len());
    for image in images {
        let written = berth_oci::WrittenReference::parse(&image.tag)
            .map_err(|e| BuildError::Invalid(format!("image name to load into dockerd: {e}")))?;
        if written.digest.is_some() {
            return Err(BuildError::Invalid(format!(
                "image name {:?} to load into dockerd: give a tag, not a digest",
                image.tag
            )));
        }
        extra.push(image.state);
        loads.push(DockerLoad {
            tag: image.tag,
            input: extra.len(),
            config: serde_json::to_string(&image.config).expect("configs serialise"),
        });
    }
    exec.privileged = true;
    exec.docker = Some(DockerSpec { loads, compose });
    Ok(state.run(exec, extra, name))
}

/// A compose service name: what Compose itself accepts, and safe as a word of the
/// step's wrapper script.
fn valid_service(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> ExecOp {
        ExecOp {
            args: vec!["docker".into(), "run".into(), "app".into()],
            cwd: "/".into(),
            ..ExecOp::default()
        }
    }

    #[test]
    fn images_become_inputs_after_the_mounts_own() {
        let base = State::scratch();
        let mounted = base.run(exec(), vec![], "mounted");
        let app = base.run(exec(), vec![], "app");
        let step = docker_run(
            &base,
            exec(),
            vec![mounted.clone()],
            vec![DockerImage::built(
                "app:test",
                app.clone(),
                ImageConfig::default(),
            )],
            "WITH DOCKER",
        )
        .unwrap();
        let v = step.vertex();
        assert_eq!(v.inputs.len(), 3);
        assert_eq!(v.inputs[2].digest(), app.digest());
        let crate::ir::Op::Exec(op) = &v.op else {
            panic!("not an exec")
        };
        assert!(op.privileged);
        let spec = op.docker.as_ref().unwrap();
        assert_eq!(spec.loads[0].input, 2);
        assert_eq!(spec.loads[0].tag, "app:test");

        // Another config is another step.
        let mut config = ImageConfig::default();
        config.config.cmd = Some(vec!["serve".into()]);
        let other = docker_run(
            &base,
            exec(),
            vec![mounted],
            vec![DockerImage::built("app:test", app, config)],
            "WITH DOCKER",
        )
        .unwrap();
        assert_ne!(other.digest(), step.digest());
    }

    #[test]
    fn host_network_and_digest_names_are_refused() {
        let base = State::scratch();
        let host = ExecOp {
            network: NetworkMode::Host,
            ..exec()
        };
        let err = docker_run(&base, host, vec![], vec![], "x").unwrap_err();
        assert!(err.to_string().contains("host's network"), "{err}");
        let by_digest = DockerImage::built(
            format!("app@sha256:{}", "0".repeat(64)),
            base.clone(),
            ImageConfig::default(),
        );
        let err = docker_run(&base, exec(), vec![], vec![by_digest], "x").unwrap_err();
        assert!(err.to_string().contains("give a tag"), "{err}");
    }
}
