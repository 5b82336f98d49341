//! The `baton` command line, built inside the tests package so that process tests can find it
//! (`CARGO_BIN_EXE_*` names only a package's own binaries). Same code as the real binary, with
//! failpoints compiled in (`baton_engine::faults`): set at start from `FAILPOINTS`, and changed
//! while it runs through the file named by `BATON_FAILPOINTS_FILE` (`name=actions` per line).

use std::path::PathBuf;
use std::time::Duration;

#[global_allocator]
static GLOBAL: baton_engine::alloc::Mimalloc = baton_engine::alloc::Mimalloc;

fn main() -> anyhow::Result<()> {
    let _failpoints = fail::FailScenario::setup();
    if let Some(path) = std::env::var_os("BATON_FAILPOINTS_FILE") {
        let path = PathBuf::from(path);
        std::thread::Builder::new().name("failpoints".into()).spawn(move || watch(&path))?;
    }
    baton_server::cli::main()
}

/// Applies the file's failpoints whenever its contents change (a missing file is none).
fn watch(path: &std::path::Path) {
    let mut applied: Vec<String> = Vec::new();
    let mut seen: Option<String> = None;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if seen.as_deref() != Some(text.as_str()) {
            for name in applied.drain(..) {
                fail::remove(&name);
            }
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let Some((name, actions)) = line.split_once('=') else {
                    eprintln!("failpoints: ignoring {line:?} (expected name=actions)");
                    continue;
                };
                match fail::cfg(name.trim(), actions.trim()) {
                    Ok(()) => applied.push(name.trim().to_string()),
                    Err(e) => eprintln!("failpoints: {line:?}: {e}"),
                }
            }
            eprintln!("failpoints now: {:?}", text.trim());
            seen = Some(text);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
