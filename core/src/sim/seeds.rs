//! Running a simulation over many seeds, and replaying one.
//!
//! - `PORTICO_SIM_SEED=N` (or `N,M,…`) runs those seeds only, with a long
//!   trace kept and the core's debug log on;
//! - `PORTICO_SIM_SEEDS=N` runs seeds `0..N` instead of the test's default;
//! - `PORTICO_SIM_ALL=1` runs every seed and lists those that fail;
//! - `PORTICO_SIM_TRACE=1` prints the trace of a replayed seed even when it
//!   passes.
//!
//! A failing seed is printed with the command that replays it.

use std::panic::{self, AssertUnwindSafe};

/// A seed is being replayed (`PORTICO_SIM_SEED` is set).
pub fn replaying() -> bool {
    std::env::var_os("PORTICO_SIM_SEED").is_some()
}

/// The trace is wanted even without a failure (`PORTICO_SIM_TRACE`).
pub fn tracing() -> bool {
    std::env::var_os("PORTICO_SIM_TRACE").is_some()
}

/// Runs `f` for `n` seeds (see the module docs for the knobs). `test` is
/// the test binary and `name` the test, for the replay command.
pub fn seeds(test: &str, name: &str, n: u64, f: impl Fn(u64)) {
    let run = |seed: u64| {
        if let Err(e) = panic::catch_unwind(AssertUnwindSafe(|| f(seed))) {
            eprintln!(
                "\n*** simulation `{name}` failed with seed {seed}\n\
                 *** replay it: PORTICO_SIM_SEED={seed} cargo test -p portico-core \
                 --test {test} {name}\n"
            );
            panic::resume_unwind(e);
        }
    };
    if let Ok(s) = std::env::var("PORTICO_SIM_SEED") {
        for x in s.split(',') {
            run(x
                .trim()
                .parse()
                .expect("PORTICO_SIM_SEED: seeds are numbers"));
        }
        return;
    }
    let n = std::env::var("PORTICO_SIM_SEEDS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(n);
    if std::env::var_os("PORTICO_SIM_ALL").is_none() {
        (0..n).for_each(run);
        return;
    }
    let failed: Vec<u64> = (0..n)
        .filter(|&seed| panic::catch_unwind(AssertUnwindSafe(|| f(seed))).is_err())
        .collect();
    assert!(
        failed.is_empty(),
        "simulation {name}: seeds {failed:?} of 0..{n} failed"
    );
}
