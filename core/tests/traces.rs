//! Recorded traces as regression tests: every `tests/traces/NAME.trace`
//! (written by a live run with `--record`) must replay to exactly the
//! actions the live run took, `NAME.trace.actions`.

use std::path::Path;

#[test]
fn committed_traces_replay_to_their_actions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/traces");
    let mut n = 0;
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("trace") {
            continue;
        }
        n += 1;
        let trace = std::fs::read(&path).expect("trace");
        let mut want = path.clone().into_os_string();
        want.push(".actions");
        let want = std::fs::read_to_string(&want).expect("the live run's actions");
        let got = portico_core::trace::replay_lines(&trace)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let want: Vec<&str> = want.lines().collect();
        assert_eq!(
            got.len(),
            want.len(),
            "{}: number of actions",
            path.display()
        );
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{}: action line {}", path.display(), i + 1);
        }
    }
    assert!(n > 0, "no trace in {}", dir.display());
}
