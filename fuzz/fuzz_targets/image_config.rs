//! The image config parser that `FROM` runs on a base image's config blob (written by
//! any tool: Docker, BuildKit, buildah, kaniko, hand-made).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = serde_json::from_slice::<berth_build::image::ImageConfig>(data) {
        // What lowering reads of a base must hold for any parsed config.
        let _ = config.config.env_get("PATH");
        let _ = serde_json::to_vec(&config).expect("a parsed config serialises");
    }
});
