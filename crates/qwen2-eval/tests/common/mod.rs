//! Shared test helpers of qwen2-eval.

use std::path::PathBuf;

use qwen2_eval::data;

/// The pulled benchmark data under `$QWEN2_HOME/data` (default `~/.cache/qwen2/data`); panics
/// (the tests fail, not skip) when it is absent.
pub fn data_root() -> PathBuf {
    let home = std::env::var_os("QWEN2_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/qwen2")
        });
    let root = home.join("data");
    assert!(
        data::is_pulled(&root),
        "the evaluation data is missing in {}: run `qwen2 data pull` (scripts/test.sh does)",
        root.display()
    );
    root
}
