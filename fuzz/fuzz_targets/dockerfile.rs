//! The Dockerfile frontend on arbitrary text: parsing (text → AST → typed stages), then
//! lowering into the build graph with every base image resolved to an empty one (ARG
//! and ENV expansion, stage references, mounts, heredocs). Each must return an error or
//! a result, never panic, loop or blow up memory.
#![no_main]

use berth_build::image::{ImageConfig, ResolvedImage};
use berth_build::{Dockerfile, LowerOptions, lower};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let df = match Dockerfile::parse("Dockerfile", text) {
        Ok(df) => df,
        Err(e) => {
            // Rendering the error (line, caret, hint) must hold for any position.
            let _ = e.to_string();
            return;
        }
    };
    let mut resolve = |reference: &str| {
        Ok(ResolvedImage {
            reference: reference.to_string(),
            manifest: berth_oci::Digest::sha256(reference.as_bytes()),
            config: ImageConfig::default(),
        })
    };
    if let Err(e) = lower(&df, &LowerOptions::default(), &mut resolve) {
        let _ = e.to_string();
    }
});
