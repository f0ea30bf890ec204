//! The command line: `--check`, configuration errors, `hash-password`.

use std::time::Duration;

use portico_tests::{
    both, connect, free_port, local, run_cli, run_on_config, Bin, CliOutput, TempDir,
};

const LIMIT: Duration = Duration::from_secs(20);

both!(
    check_good_config,
    check_unknown_key,
    check_duplicate_service_name,
    check_mapped_without_destination,
    check_port_out_of_range,
    check_open_proxy_refused,
    check_listen_not_internal,
    check_toml_syntax_error,
    check_missing_file,
    hash_password_prints_phc,
);

/// `--check` on `toml`: the file's path and the output.
fn check(bin: Bin, toml: &str) -> (String, CliOutput) {
    run_on_config(bin, toml, &["--check"], LIMIT)
}

/// Runs `--check` on a bad file: exit 2 and a `FILE:LINE:COLUMN: message`
/// line on stderr; returns (line, column, message).
fn check_bad(bin: Bin, what: &str, toml: &str) -> (usize, usize, String) {
    let (path, out) = check(bin, toml);
    assert_eq!(
        out.code(),
        Some(2),
        "{bin}: {what}: --check must exit 2\n{out:?}\nconfig:\n{toml}"
    );
    let prefix = format!("{path}:");
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| {
            panic!(
                "{bin}: {what}: no stderr line of the form {path}:LINE:COLUMN: message\nstderr:\n{}",
                out.stderr
            )
        });
    let rest = &line[prefix.len()..];
    let mut parts = rest.splitn(3, ':');
    let num = |s: Option<&str>| s.and_then(|s| s.parse::<usize>().ok());
    let (l, c) = match (num(parts.next()), num(parts.next())) {
        (Some(l), Some(c)) => (l, c),
        _ => panic!("{bin}: {what}: {line:?} is not FILE:LINE:COLUMN: message"),
    };
    let msg = parts.next().unwrap_or_default();
    assert!(
        msg.starts_with(' ') && msg.trim().len() > 3,
        "{bin}: {what}: {line:?} should end with ': message'"
    );
    assert!(
        l >= 1 && c >= 1,
        "{bin}: {what}: line and column count from 1: {line:?}"
    );
    (l, c, msg.trim().to_string())
}

/// `[network]` with 127.0.0.1 internal, and a blank line: lines 1 to 3.
const NETWORK: &str = "[network]\ninternal = [\"127.0.0.1\"]\n\n";

/// A mapped `[[service]]` of five lines (`[[service]]`, `name`, `kind`,
/// `listen_line`, then `destination` if any).
fn mapped(name: &str, listen_line: &str, destination: Option<&str>) -> String {
    let dest = destination.map_or(String::new(), |d| format!("destination = \"{d}\"\n"));
    format!("[[service]]\nname = \"{name}\"\nkind = \"mapped\"\n{listen_line}\n{dest}")
}

/// `listen = ["127.0.0.1:PORT"]`.
fn listen(port: u16) -> String {
    format!("listen = [\"127.0.0.1:{port}\"]")
}

/// [`NETWORK`] and the service `map` on `port` forwarding to port 9 (its
/// `listen` on line 7), then `extra` from line 9.
fn service(port: u16, extra: &str) -> String {
    format!(
        "{NETWORK}{}{extra}",
        mapped("map", &listen(port), Some("127.0.0.1:9"))
    )
}

/// Runs `--check` on the bad file `toml` ([`check_bad`]); the error must
/// point at a line of `lines` (`place` says what is there) and, with
/// `mentions`, the message name it. Returns (line, column, message).
fn check_bad_at(
    bin: Bin,
    what: &str,
    toml: &str,
    lines: std::ops::RangeInclusive<usize>,
    place: &str,
    mentions: Option<&str>,
) -> (usize, usize, String) {
    let (l, c, msg) = check_bad(bin, what, toml);
    if let Some(word) = mentions {
        assert!(
            msg.contains(word),
            "{bin}: {what}: the message should name {word:?}: {msg}"
        );
    }
    assert!(
        lines.contains(&l),
        "{bin}: {what}: the error must point at {place} (line {lines:?}), not line {l}: {msg}"
    );
    (l, c, msg)
}

fn check_good_config(bin: Bin) {
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let toml = format!(
        "{NETWORK}[limits]\nidle_timeout = \"5m\"\n\n[log]\naccess = \"stderr\"\n\n{}\n{}",
        mapped(
            "map",
            &format!("listen = [\"127.0.0.1:{p1}\", \"127.0.0.1:{p2}\"]"),
            Some("127.0.0.1:9")
        ),
        mapped("other", &listen(p3), Some("127.0.0.1:9"))
    );
    let (_path, out) = check(bin, &toml);
    assert_eq!(
        out.code(),
        Some(0),
        "{bin}: --check of a good file: {out:?}"
    );
    let want = format!(
        "listening: map (mapped) on 127.0.0.1:{p1}\n\
         listening: map (mapped) on 127.0.0.1:{p2}\n\
         listening: other (mapped) on 127.0.0.1:{p3}\n\
         configuration ok\n"
    );
    assert_eq!(out.stdout, want, "{bin}: --check stdout");
    for p in [p1, p2, p3] {
        assert!(
            connect(local(p)).is_err(),
            "{bin}: --check must not leave port {p} open"
        );
    }
}

fn check_unknown_key(bin: Bin) {
    let port = free_port();
    // Line 9, column 3, inside a service.
    let toml = service(port, "  colour = \"red\"\n");
    let (_, c, msg) = check_bad_at(
        bin,
        "unknown key in a service",
        &toml,
        9..=9,
        "`colour`",
        Some("colour"),
    );
    assert_eq!(c, 3, "{bin}: the error must point at `colour`: {msg}");

    // Line 5, column 1, in [limits].
    let toml = format!(
        "{NETWORK}[limits]\nmax_conections = 5\n\n{}",
        mapped("map", &listen(port), Some("127.0.0.1:9"))
    );
    let (_, c, msg) = check_bad_at(
        bin,
        "unknown key in [limits]",
        &toml,
        5..=5,
        "`max_conections`",
        None,
    );
    assert_eq!(
        c, 1,
        "{bin}: the error must point at `max_conections`: {msg}"
    );
}

fn check_duplicate_service_name(bin: Bin) {
    let (a, b) = (free_port(), free_port());
    let toml = format!(
        "{NETWORK}{}\n{}",
        mapped("map", &listen(a), Some("127.0.0.1:9")),
        mapped("map", &listen(b), Some("127.0.0.1:9"))
    );
    check_bad_at(
        bin,
        "duplicate service name",
        &toml,
        10..=14,
        "the second service",
        Some("map"),
    );
}

fn check_mapped_without_destination(bin: Bin) {
    let toml = format!("{NETWORK}{}", mapped("map", &listen(free_port()), None));
    check_bad_at(
        bin,
        "mapped without destination",
        &toml,
        4..=7,
        "the service",
        Some("destination"),
    );
}

fn check_port_out_of_range(bin: Bin) {
    for (what, line) in [
        ("port = 70000", "port = 70000"),
        ("listen on port 70000", "listen = [\"127.0.0.1:70000\"]"),
    ] {
        let toml = format!("{NETWORK}{}", mapped("map", line, Some("127.0.0.1:9")));
        check_bad_at(bin, what, &toml, 7..=7, &format!("`{line}`"), None);
    }
}

fn check_open_proxy_refused(bin: Bin) {
    let port = free_port();
    let toml = format!(
        r#"[network]
internal = ["127.0.0.1"]
external = ["127.0.0.2"]

[[service]]
name = "web"
kind = "http"
side = "external"
listen = ["127.0.0.2:{port}"]
"#
    );
    let (_path, out) = check(bin, &toml);
    assert_eq!(
        out.code(),
        Some(2),
        "{bin}: an http service on the external side is an open proxy: exit 2\n{out:?}"
    );
    assert!(
        out.stderr.contains("open_proxy"),
        "{bin}: the message should mention open_proxy:\n{}",
        out.stderr
    );
}

fn check_listen_not_internal(bin: Bin) {
    let listen = format!("listen = [\"127.0.0.2:{}\"]", free_port());
    let toml = format!("{NETWORK}{}", mapped("map", &listen, Some("127.0.0.1:9")));
    check_bad_at(
        bin,
        "listen address not in network.internal",
        &toml,
        7..=7,
        "the listen line",
        None,
    );
}

fn check_toml_syntax_error(bin: Bin) {
    let toml = r#"[network]
internal = ["127.0.0.1"]

[[service]]
name = "map
kind = "mapped"
"#;
    check_bad_at(bin, "unterminated string", toml, 5..=5, "line 5", None);
}

fn check_missing_file(bin: Bin) {
    let dir = TempDir::new();
    let path = dir.path().join("does-not-exist.toml");
    let path = path.to_str().expect("utf-8 temp path");
    let out = run_cli(bin, &["--config", path, "--check"], None, LIMIT);
    assert_eq!(
        out.code(),
        Some(2),
        "{bin}: a missing configuration file: exit 2\n{out:?}"
    );
    assert!(
        out.stderr.contains(path),
        "{bin}: the message should name the file:\n{}",
        out.stderr
    );
    let out = run_cli(bin, &["--config", path], None, LIMIT);
    assert_eq!(
        out.code(),
        Some(2),
        "{bin}: starting on a missing file: exit 2\n{out:?}"
    );
}

fn hash_password_prints_phc(bin: Bin) {
    let out = run_cli(
        bin,
        &["hash-password"],
        Some(b"secret\n"),
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), Some(0), "{bin}: hash-password: {out:?}");
    let first = out.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("$argon2id$v=19$"),
        "{bin}: hash-password should print a PHC string, got {:?}",
        out.stdout
    );
}
