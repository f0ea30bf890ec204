//! The command line: `--check`, configuration errors, `hash-password`.

use std::time::Duration;

use portico_tests::{both, connect, free_port, local, run_cli, Bin, CliOutput, TempDir};

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

fn check(bin: Bin, toml: &str) -> (TempDir, String, CliOutput) {
    let dir = TempDir::new();
    let path = dir.write("portico.toml", toml);
    let path = path.to_str().expect("utf-8 temp path").to_string();
    let out = run_cli(bin, &["--config", &path, "--check"], None, LIMIT);
    (dir, path, out)
}

/// Runs `--check` on a bad file: exit 2 and a `FILE:LINE:COLUMN: message`
/// line on stderr; returns (line, column, message).
fn check_bad(bin: Bin, what: &str, toml: &str) -> (usize, usize, String) {
    let (_dir, path, out) = check(bin, toml);
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

fn service(port: u16, extra: &str) -> String {
    format!(
        r#"[network]
internal = ["127.0.0.1"]

[[service]]
name = "map"
kind = "mapped"
listen = ["127.0.0.1:{port}"]
destination = "127.0.0.1:9"
{extra}"#
    )
}

fn check_good_config(bin: Bin) {
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let toml = format!(
        r#"[network]
internal = ["127.0.0.1"]

[limits]
idle_timeout = "5m"

[log]
access = "stderr"

[[service]]
name = "map"
kind = "mapped"
listen = ["127.0.0.1:{p1}", "127.0.0.1:{p2}"]
destination = "127.0.0.1:9"

[[service]]
name = "other"
kind = "mapped"
listen = ["127.0.0.1:{p3}"]
destination = "127.0.0.1:9"
"#
    );
    let (_dir, _path, out) = check(bin, &toml);
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
    let (l, c, msg) = check_bad(bin, "unknown key in a service", &toml);
    assert_eq!(
        (l, c),
        (9, 3),
        "{bin}: the error must point at `colour`: {msg}"
    );
    assert!(
        msg.contains("colour"),
        "{bin}: the message should name the key: {msg}"
    );

    // Line 5, column 1, in [limits].
    let toml = format!(
        r#"[network]
internal = ["127.0.0.1"]

[limits]
max_conections = 5

[[service]]
name = "map"
kind = "mapped"
listen = ["127.0.0.1:{port}"]
destination = "127.0.0.1:9"
"#
    );
    let (l, c, msg) = check_bad(bin, "unknown key in [limits]", &toml);
    assert_eq!(
        (l, c),
        (5, 1),
        "{bin}: the error must point at `max_conections`: {msg}"
    );
}

fn check_duplicate_service_name(bin: Bin) {
    let (a, b) = (free_port(), free_port());
    let toml = format!(
        r#"[network]
internal = ["127.0.0.1"]

[[service]]
name = "map"
kind = "mapped"
listen = ["127.0.0.1:{a}"]
destination = "127.0.0.1:9"

[[service]]
name = "map"
kind = "mapped"
listen = ["127.0.0.1:{b}"]
destination = "127.0.0.1:9"
"#
    );
    let (l, _, msg) = check_bad(bin, "duplicate service name", &toml);
    assert!(
        msg.contains("map"),
        "{bin}: the message should name the service: {msg}"
    );
    assert!(
        (10..=14).contains(&l),
        "{bin}: the error should point into the second service (lines 10-14), not line {l}: {msg}"
    );
}

fn check_mapped_without_destination(bin: Bin) {
    let port = free_port();
    let toml = format!(
        r#"[network]
internal = ["127.0.0.1"]

[[service]]
name = "map"
kind = "mapped"
listen = ["127.0.0.1:{port}"]
"#
    );
    let (l, _, msg) = check_bad(bin, "mapped without destination", &toml);
    assert!(
        msg.contains("destination"),
        "{bin}: the message should say destination: {msg}"
    );
    assert!(
        (4..=7).contains(&l),
        "{bin}: the error should point into the service (lines 4-7), not line {l}"
    );
}

fn check_port_out_of_range(bin: Bin) {
    let toml = r#"[network]
internal = ["127.0.0.1"]

[[service]]
name = "map"
kind = "mapped"
port = 70000
destination = "127.0.0.1:9"
"#;
    let (l, _, msg) = check_bad(bin, "port = 70000", toml);
    assert_eq!(l, 7, "{bin}: the error must point at `port = 70000`: {msg}");

    let toml = r#"[network]
internal = ["127.0.0.1"]

[[service]]
name = "map"
kind = "mapped"
listen = ["127.0.0.1:70000"]
destination = "127.0.0.1:9"
"#;
    let (l, _, msg) = check_bad(bin, "listen on port 70000", toml);
    assert_eq!(
        l, 7,
        "{bin}: the error must point at the listen line: {msg}"
    );
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
    let (dir, _path, out) = check(bin, &toml);
    drop(dir);
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
    let port = free_port();
    let toml = format!(
        r#"[network]
internal = ["127.0.0.1"]

[[service]]
name = "map"
kind = "mapped"
listen = ["127.0.0.2:{port}"]
destination = "127.0.0.1:9"
"#
    );
    let (l, _, msg) = check_bad(bin, "listen address not in network.internal", &toml);
    assert_eq!(
        l, 7,
        "{bin}: the error must point at the listen line: {msg}"
    );
}

fn check_toml_syntax_error(bin: Bin) {
    let toml = r#"[network]
internal = ["127.0.0.1"]

[[service]]
name = "map
kind = "mapped"
"#;
    let (l, _, msg) = check_bad(bin, "unterminated string", toml);
    assert_eq!(l, 5, "{bin}: the error must point at line 5: {msg}");
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
