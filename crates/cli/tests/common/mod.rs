//! Shared by the CLI test binaries: the binary run as a user would, free of the developer's
//! own `LORAFORGE_*` settings.

use std::path::Path;
use std::process::Command;

/// `loraforge` in `dir`, with every `LORAFORGE_*` variable of this process removed.
pub fn loraforge(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loraforge"));
    c.current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("LORAFORGE_") {
            c.env_remove(k);
        }
    }
    c
}
