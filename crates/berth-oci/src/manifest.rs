use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Digest;
use crate::media_type;

/// An OCI content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    pub size: u64,
    /// Artifact type, for artifact manifests listed by the referrers API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Platform, in indexes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

/// What a registry needs to know of a manifest or index: its type and its references.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// `schemaVersion`; must be 2.
    pub schema_version: u32,
    /// `mediaType` as written in the document, if any.
    #[serde(default)]
    pub media_type: Option<String>,
    /// `artifactType`, if any.
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// Image manifests: the config blob.
    #[serde(default)]
    pub config: Option<Descriptor>,
    /// Image manifests: the layers.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Indexes: the manifests.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to (OCI 1.1 referrers).
    #[serde(default)]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Why bytes are not an acceptable manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// `schemaVersion` other than 2.
    #[error("manifest schemaVersion is {0}, only 2 is supported")]
    SchemaVersion(u32),
    /// Media type unknown, or the document and Content-Type disagree.
    #[error("{0}")]
    MediaType(String),
    /// An image manifest without config.
    #[error("image manifest has no config descriptor")]
    NoConfig,
}

impl Manifest {
    /// Parse `bytes` pushed with the HTTP `Content-Type` `content_type`, and settle its
    /// media type: the document's `mediaType` wins, the header must agree with it when
    /// both are given, and a document without one is typed by its header or its shape.
    pub fn parse(
        bytes: &[u8],
        content_type: Option<&str>,
    ) -> Result<(Manifest, String), ManifestError> {
        let m: Manifest = serde_json::from_slice(bytes)?;
        if m.schema_version != 2 {
            return Err(ManifestError::SchemaVersion(m.schema_version));
        }
        let header = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim())
            .filter(|c| {
                !c.is_empty() && *c != "application/json" && *c != "application/octet-stream"
            });
        let media_type = match (&m.media_type, header) {
            (Some(doc), Some(h)) if doc != h => {
                return Err(ManifestError::MediaType(format!(
                    "Content-Type {h:?} disagrees with the manifest's mediaType {doc:?}"
                )));
            }
            (Some(doc), _) => doc.clone(),
            (None, Some(h)) => h.to_string(),
            (None, None) if !m.manifests.is_empty() => media_type::OCI_INDEX.to_string(),
            (None, None) => media_type::OCI_MANIFEST.to_string(),
        };
        if !media_type::MANIFEST_TYPES.contains(&media_type.as_str()) {
            return Err(ManifestError::MediaType(format!(
                "manifest media type {media_type:?} is not supported (one of {})",
                media_type::MANIFEST_TYPES.join(", ")
            )));
        }
        if !media_type::is_index(&media_type) && m.config.is_none() {
            return Err(ManifestError::NoConfig);
        }
        Ok((m, media_type))
    }

    /// The blobs this manifest references (config and layers).
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(self.layers.iter())
    }

    /// The artifact type the referrers API reports: `artifactType`, else the config's media
    /// type (OCI distribution spec 1.1, "Listing Referrers").
    pub fn referrer_artifact_type(&self) -> Option<String> {
        self.artifact_type
            .clone()
            .or_else(|| self.config.as_ref().map(|c| c.media_type.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}"#;

    #[test]
    fn parses_and_types_manifests() {
        let doc = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{CFG},"layers":[]}}"#,
            media_type::OCI_MANIFEST
        );
        let (m, t) = Manifest::parse(doc.as_bytes(), Some(media_type::OCI_MANIFEST)).unwrap();
        assert_eq!(t, media_type::OCI_MANIFEST);
        assert_eq!(m.blobs().count(), 1);
        let err = Manifest::parse(doc.as_bytes(), Some(media_type::DOCKER_MANIFEST)).unwrap_err();
        assert!(err.to_string().contains("disagrees"), "{err}");
        let bare = format!(r#"{{"schemaVersion":2,"config":{CFG},"layers":[]}}"#);
        let (_, t) = Manifest::parse(bare.as_bytes(), None).unwrap();
        assert_eq!(t, media_type::OCI_MANIFEST);
    }

    #[test]
    fn refuses_bad_manifests() {
        assert!(matches!(
            Manifest::parse(b"{", None),
            Err(ManifestError::Json(_))
        ));
        assert!(matches!(
            Manifest::parse(br#"{"schemaVersion":1}"#, None),
            Err(ManifestError::SchemaVersion(1))
        ));
        assert!(matches!(
            Manifest::parse(br#"{"schemaVersion":2,"layers":[]}"#, None),
            Err(ManifestError::NoConfig)
        ));
        let odd = format!(r#"{{"schemaVersion":2,"mediaType":"text/plain","config":{CFG}}}"#);
        assert!(matches!(
            Manifest::parse(odd.as_bytes(), None),
            Err(ManifestError::MediaType(_))
        ));
        let bad_digest =
            r#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:zz","size":1}}"#;
        assert!(matches!(
            Manifest::parse(bad_digest.as_bytes(), None),
            Err(ManifestError::Json(_))
        ));
    }
}
