//! The lenient manifest parser a registry runs on every pushed manifest, with and
//! without a Content-Type, and the walk over what it references.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for content_type in [
        None,
        Some("application/vnd.oci.image.manifest.v1+json"),
        Some("application/vnd.oci.image.index.v1+json"),
        Some("application/vnd.docker.distribution.manifest.v2+json"),
    ] {
        if let Ok((m, media_type)) = berth_oci::Manifest::parse(data, content_type) {
            assert!(!media_type.is_empty());
            for d in m.blobs() {
                let _ = d.digest.to_string();
            }
            let _ = m.referrer_artifact_type();
        }
    }
});
