//! The config path from text (`config::from_toml_with_env`: TOML -> file shapes -> validated
//! snapshot): no panic on any text, and every error names where it is.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// A fixed environment, so a run is reproducible: some variables unset, some set to a key, and
/// some to a valid 32-byte BYOK master key (hex).
fn env(name: &str) -> Option<String> {
    match name.len() % 3 {
        0 => None,
        1 => Some("sk-fuzz".to_owned()),
        _ => Some("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff".to_owned()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match tollgate::config::from_toml_with_env(text, &env) {
        Ok(config) => {
            for model in config.available_models() {
                let _ = config.route(&model.slug);
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in &errors {
                let _ = e.to_string();
            }
        }
    }
});
