//! Shared by the operations tests (`ops_*.rs`): finding the external checkers they run.
//!
//! A checker that is not installed makes its test pass vacuously on a developer machine, but fail
//! in CI, where `tests/run.sh` installs it and sets the `SHOPTET_PROXY_REQUIRE_*` variable: a
//! check that silently stops running is worse than none.

use std::path::PathBuf;

/// The path of `tool` on `$PATH`; `None` (with a note) when it is missing and not required.
/// Panics when it is missing and `require_env` is `1`.
pub fn tool(tool: &str, require_env: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var(require_env).as_deref() != Ok("1"),
            "{tool} is not installed but {require_env}=1 requires it"
        );
        eprintln!("note: {tool} is not installed; this check did not run (set {require_env}=1 to make that an error)");
    }
    found
}
