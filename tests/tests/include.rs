//! `include = ["conf.d/*.toml"]`: services from included files listen (in
//! name order), an error in an included file names that file with line and
//! column, and SIGHUP reads the included files again.

use std::net::SocketAddr;
use std::time::Duration;

use portico_tests::{
    both, config_head, connect, echo_check, free_port, local, mapped_service, poll_until, run_cli,
    Behaviour, Bin, Portico, StartOptions, TempDir, TestServer,
};

both!(
    included_services_listen_in_name_order,
    check_names_the_included_file,
    sighup_reads_included_files_again,
);

const LIMIT: Duration = Duration::from_secs(20);

/// A main file that includes `conf.d/*.toml`, with one service of its own.
fn main_file(port: u16, destination: SocketAddr) -> String {
    format!(
        "include = [\"conf.d/*.toml\"]\n{}{}",
        config_head("", ""),
        mapped_service("main", port, destination, "")
    )
}

/// One mapped service, the whole of an included file.
fn snippet(name: &str, port: u16, destination: SocketAddr) -> String {
    mapped_service(name, port, destination, "")
}

fn echoes(bin: Bin, port: u16, what: &str) {
    let mut c = connect(local(port)).unwrap_or_else(|e| panic!("{bin}: {what}: connect: {e}"));
    echo_check(&mut c, what.as_bytes()).unwrap_or_else(|e| panic!("{bin}: {what}: echo: {e}"));
}

/// Services from the included files listen beside the main file's, the
/// included ones first, in the order of their file names.
fn included_services_listen_in_name_order(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (p0, p1, p2) = (free_port(), free_port(), free_port());
    let b = snippet("b", p2, server.addr());
    let a = snippet("a", p1, server.addr());
    let p = Portico::start_with(
        bin,
        &main_file(p0, server.addr()),
        StartOptions {
            listeners: Some(3),
            files: &[
                ("conf.d/20-b.toml", &b),
                ("conf.d/10-a.toml", &a),
                ("conf.d/README", "not a configuration file"),
            ],
            ..StartOptions::default()
        },
    );
    for (port, what) in [(p0, "main"), (p1, "a"), (p2, "b")] {
        echoes(bin, port, what);
    }
    let order: Vec<String> = p
        .stdout_lines()
        .iter()
        .filter_map(|l| l.strip_prefix("listening: "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(
        order,
        ["a", "b", "main"],
        "{bin}: included files come first, in name order"
    );
}

/// `--check` on a file whose included file is wrong: exit 2, and the
/// message names the included file, line and column.
fn check_names_the_included_file(bin: Bin) {
    let dir = TempDir::new();
    let server: SocketAddr = "127.0.0.1:9".parse().expect("address");
    let main = dir.write("portico.toml", &main_file(free_port(), server));
    std::fs::create_dir_all(dir.path().join("conf.d")).expect("mkdir conf.d");
    // Line 5, column 8: the port.
    dir.write(
        "conf.d/10-bad.toml",
        "# a service\n[[service]]\nname = \"bad\"\nkind = \"mapped\"\nport = 70000\n\
         destination = \"127.0.0.1:9\"\n",
    );
    let main = main.to_str().expect("utf-8 path");
    let out = run_cli(bin, &["--config", main, "--check"], None, LIMIT);
    assert_eq!(out.code(), Some(2), "{bin}: --check must exit 2\n{out:?}");
    let included = dir.path().join("conf.d/10-bad.toml");
    let want = format!("{}:5:8: ", included.display());
    assert!(
        out.stderr.lines().any(|l| l.starts_with(&want)),
        "{bin}: stderr must have a line starting {want:?}\n{}",
        out.stderr
    );

    // Two files setting one key: the message names both places.
    dir.write("conf.d/10-bad.toml", "[limits]\nidle_timeout = \"1m\"\n");
    dir.write("conf.d/20-also.toml", "\n[limits]\nidle_timeout = \"2m\"\n");
    let out = run_cli(bin, &["--config", main, "--check"], None, LIMIT);
    assert_eq!(out.code(), Some(2), "{bin}: --check must exit 2\n{out:?}");
    let also = dir.path().join("conf.d/20-also.toml");
    let first = format!("{}:2:1", included.display());
    let want = format!(
        "{}:3:1: limits.idle_timeout is set twice: here and at {first}",
        also.display()
    );
    assert!(
        out.stderr.contains(&want),
        "{bin}: stderr must contain {want:?}\n{}",
        out.stderr
    );
}

/// SIGHUP reads the included files again: a service added in one listens,
/// one removed closes; a bad included file is reported by name and the old
/// configuration stays.
fn sighup_reads_included_files_again(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (p0, p1, p2) = (free_port(), free_port(), free_port());
    let a = snippet("a", p1, server.addr());
    let mut p = Portico::start_with(
        bin,
        &main_file(p0, server.addr()),
        StartOptions {
            listeners: Some(2),
            files: &[("conf.d/a.toml", &a)],
            ..StartOptions::default()
        },
    );
    echoes(bin, p1, "a before");
    let dir = p
        .config_path()
        .parent()
        .expect("the configuration's directory")
        .to_path_buf();
    let a_path = dir.join("conf.d/a.toml");
    std::fs::write(&a_path, snippet("a", p2, server.addr())).expect("rewrite conf.d/a.toml");
    p.signal(libc::SIGHUP);
    let moved = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let mut c = connect(local(p2)).ok()?;
        echo_check(&mut c, b"a after").ok()
    });
    assert!(
        moved.is_some(),
        "{bin}: after SIGHUP the changed included file's port {p2} must serve\nstderr:\n{}",
        p.stderr_text()
    );
    let closed = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        connect(local(p1)).is_err().then_some(())
    });
    assert!(closed.is_some(), "{bin}: the old port {p1} must close");

    std::fs::write(&a_path, "[[service]]\nname = 5\n").expect("write a bad included file");
    p.signal(libc::SIGHUP);
    let want = format!("{}:2:8:", a_path.display());
    let reported = p.wait_for_stderr(|l| l.contains(&want), Duration::from_secs(10));
    assert!(
        reported.is_some(),
        "{bin}: a bad included file on SIGHUP must be reported as {want} ...\nstderr:\n{}",
        p.stderr_text()
    );
    assert!(
        p.is_running(),
        "{bin}: a bad included file must not stop the proxy"
    );
    echoes(bin, p2, "a kept");
    echoes(bin, p0, "main kept");
}
