//! Layer unpacking on arbitrary tar streams: it must refuse or unpack, never panic, and
//! never create anything outside the directory it unpacks into.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The layer goes three levels down; each level above must hold only the next one
    // afterwards, so an entry that climbs out with `..` or through a link is caught.
    let top = tempfile::tempdir().expect("temporary directory");
    let levels = ["a", "b", "layer"];
    let dir = levels
        .iter()
        .fold(top.path().to_path_buf(), |d, l| d.join(l));
    std::fs::create_dir_all(&dir).expect("layer directory");
    let _ = berth_snapshot::apply_layer(&dir, data);
    let mut at = top.path().to_path_buf();
    for level in levels {
        let names: Vec<_> = std::fs::read_dir(&at)
            .expect("read a level above the layer")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [level], "unpacking wrote beside {}", at.display());
        at.push(level);
    }
});
