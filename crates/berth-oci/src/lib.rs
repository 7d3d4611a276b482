//! berth-oci owns the vocabulary every other berth crate speaks: content digests (and
//! the hashers that make them), OCI and Docker media types, descriptors, the parts of
//! manifests and indexes a registry must understand, repository names, and the one
//! image-reference parser (`host/repo:tag@digest`; no other crate parses references).
//!
//! Manifests are parsed leniently into [`Manifest`]: a registry must store the bytes a
//! client pushed unchanged (their digest is the manifest's identity), so parsing is only
//! for finding what a manifest references, never for re-serialising it.

mod digest;
mod manifest;
pub mod media_type;
mod name;
mod reference;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use manifest::{Descriptor, Manifest, ManifestError};
pub use name::{NameError, validate_repository, validate_tag};
pub use reference::{
    DOCKER_HUB, LAYOUT_SCHEME, LayoutReference, Reference, ReferenceError, WrittenReference,
    is_loopback_host,
};

/// The one mount type snapshotter and executor share: a plain value that
/// berth-snapshot emits (an overlay of layer directories, say) and berth-exec consumes.
pub use oci_spec::runtime::Mount;

/// oci-spec, re-exported so crates agree on its version.
pub use oci_spec;
