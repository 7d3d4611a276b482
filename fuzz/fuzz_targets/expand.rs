//! Word splitting and `$VAR`/`${VAR:-x}` expansion, with variables whose values are
//! themselves taken from the input (so `${A:-$B}` chains and huge values are reached).
#![no_main]

use berth_build::frontend::dockerfile::expand::{expand, referenced_vars, split_words};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // First line: the word; the rest: NAME=value lines for the lookup.
    let (word, vars) = text.split_once('\n').unwrap_or((text, ""));
    let vars: Vec<(&str, &str)> = vars.lines().filter_map(|l| l.split_once('=')).collect();
    let lookup = |name: &str| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    for escape in ['\\', '`'] {
        let _ = expand(word, lookup, escape);
        let _ = referenced_vars(word, escape);
        if let Ok(words) = split_words(word, escape) {
            for w in words {
                assert!(w.offset <= word.len());
            }
        }
    }
});
