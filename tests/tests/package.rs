//! Running as a service: `--version`, the manual pages and completions the
//! binaries generate from their command line, and the Debian package
//! (packaging/build-deb.sh): its contents, its systemd unit, and installing
//! and purging it the way the README says.
//!
//! Tools, all Debian packages that .ci/run installs: groff and man (man-db),
//! zsh, fish, go-md2man, systemd (systemd-analyze), dpkg; and cargo-deb
//! (`cargo install cargo-deb`). The package is built once per test process
//! (a release build in this target directory); installing it needs root.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use portico_tests::{both, require, run_cli, run_tool, Bin, TempDir, ToolOutput};

both!(
    version_names_the_binary,
    completions_parse,
    manual_page_renders
);

const LIMIT: Duration = Duration::from_secs(60);
/// The package's release build of both binaries, when nothing is built yet.
const BUILD_LIMIT: Duration = Duration::from_secs(30 * 60);

/// The workspace's version (the tests crate shares it).
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds tests/")
        .to_path_buf()
}

/// The embedded default configuration: the file the core includes.
fn default_config() -> String {
    let p = workspace().join("core/src/config/default.toml");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn run(who: &str, mut cmd: Command, limit: Duration) -> ToolOutput {
    cmd.env("LC_ALL", "C.UTF-8");
    run_tool(who, cmd, None, limit)
}

fn ok(who: &str, cmd: Command) -> ToolOutput {
    let out = run(who, cmd, LIMIT);
    assert!(out.status.success(), "{who}: {}", out.text());
    out
}

/// `--version` prints the binary's own name and the workspace version.
fn version_names_the_binary(bin: Bin) {
    let out = run_cli(bin, &["--version"], None, LIMIT);
    assert_eq!(out.code(), Some(0), "{bin} --version: {out:?}");
    assert_eq!(out.stdout, format!("{} {VERSION}\n", bin.name()));
    let out = run_cli(bin, &["--help"], None, LIMIT);
    assert!(
        out.stdout.contains(&format!("Usage: {} ", bin.name())),
        "{bin} --help must name the binary:\n{}",
        out.stdout
    );
}

/// Checks a completion script with its shell's syntax check.
fn check_completion(who: &str, shell: &str, script: &Path) {
    let (tool, package, flag) = match shell {
        "bash" => ("bash", "bash", "-n"),
        "zsh" => ("zsh", "zsh", "-n"),
        _ => ("fish", "fish", "--no-execute"),
    };
    let mut cmd = Command::new(require(tool, package));
    cmd.arg(flag).arg(script);
    let out = run(who, cmd, LIMIT);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{who}: `{tool} {flag}` on {} must pass quietly: {}",
        script.display(),
        out.text()
    );
}

/// `completions SHELL` prints a script its shell parses, for the binary's name.
fn completions_parse(bin: Bin) {
    let dir = TempDir::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = run_cli(bin, &["completions", shell], None, LIMIT);
        assert_eq!(out.code(), Some(0), "{bin} completions {shell}: {out:?}");
        let option = if shell == "fish" {
            "-l config"
        } else {
            "--config"
        };
        assert!(
            out.stdout.contains(bin.name()) && out.stdout.contains(option),
            "{bin} completions {shell} must complete the binary's options:\n{}",
            out.stdout
        );
        let script = dir.write(&format!("{shell}-completion"), &out.stdout);
        check_completion(&format!("{bin} completions {shell}"), shell, &script);
    }
    let out = run_cli(bin, &["completions", "tcsh"], None, LIMIT);
    assert_eq!(
        out.code(),
        Some(2),
        "{bin}: an unknown shell is a usage error"
    );
}

/// Renders a manual page (plain or gzipped) with man, warnings on; returns
/// the text. Any warning fails.
fn render_man(who: &str, page: &Path) -> String {
    require("groff", "groff-base");
    let mut cmd = Command::new(require("man", "man-db"));
    cmd.args(["--warnings", "-l"])
        .arg(page)
        .env("MANWIDTH", "80");
    let out = run(who, cmd, LIMIT);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{who}: {} must render without warnings: {}",
        page.display(),
        out.text()
    );
    out.stdout_text()
}

/// The hidden `man` prints portico(8), whose options are the command line's.
fn manual_page_renders(bin: Bin) {
    let out = run_cli(bin, &["man"], None, LIMIT);
    assert_eq!(out.code(), Some(0), "{bin} man: {out:?}");
    let dir = TempDir::new();
    let page = dir.write(&format!("{}.8", bin.name()), &out.stdout);
    let text = render_man(&format!("{bin} man"), &page);
    for want in [
        "--config",
        "--check",
        "--reload-recheck",
        "hash-password",
        "completions",
        "SIGHUP",
        "EXIT STATUS",
        "portico.toml(5)",
    ] {
        assert!(
            text.contains(want),
            "{bin}: portico(8) must mention {want}:\n{text}"
        );
    }
    assert!(
        text.starts_with(&bin.name().to_uppercase()),
        "{bin}: the page is titled with the binary's name:\n{text}"
    );
}

/// The package, built once: its path, or why it could not be built.
fn package() -> &'static Path {
    static DEB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = DEB.get_or_init(|| {
        std::panic::catch_unwind(build_package).unwrap_or_else(|p| {
            Err(p
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "building the package panicked".to_string()))
        })
    });
    match built {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn build_package() -> Result<PathBuf, String> {
    // target/<profile>/deps/<test> → target: the build reuses it.
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or("the test executable is not in target/<profile>/deps")?;
    let mut cmd = Command::new(workspace().join("packaging/build-deb.sh"));
    cmd.env("CARGO_TARGET_DIR", target);
    let out = run("packaging/build-deb.sh", cmd, BUILD_LIMIT);
    if !out.status.success() {
        return Err(format!("packaging/build-deb.sh failed: {}", out.text()));
    }
    let text = out.stdout_text();
    let deb = PathBuf::from(text.lines().last().unwrap_or_default().trim());
    if !deb.is_file() || deb.extension() != Some(std::ffi::OsStr::new("deb")) {
        return Err(format!(
            "packaging/build-deb.sh must print the package's path last: {}",
            out.text()
        ));
    }
    Ok(deb)
}

/// The package's files, unpacked into a fresh directory.
fn unpacked() -> TempDir {
    let dir = TempDir::new();
    let mut cmd = Command::new(require("dpkg-deb", "dpkg"));
    cmd.arg("-x").arg(package()).arg(dir.path());
    ok("dpkg-deb -x", cmd);
    dir
}

/// Where the package puts the unit (/lib or /usr/lib, as cargo-deb does).
fn unit_in(root: &Path) -> PathBuf {
    [
        "usr/lib/systemd/system/portico.service",
        "lib/systemd/system/portico.service",
    ]
    .iter()
    .map(|p| root.join(p))
    .find(|p| p.is_file())
    .unwrap_or_else(|| panic!("the package has no portico.service in {}", root.display()))
}

const MAN_PAGES: [&str; 3] = [
    "usr/share/man/man8/portico.8.gz",
    "usr/share/man/man8/portico-threaded.8.gz",
    "usr/share/man/man5/portico.toml.5.gz",
];

/// (shell, path) of every completion script the package installs.
fn completion_files() -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    for b in ["portico", "portico-threaded"] {
        v.push(("bash", format!("usr/share/bash-completion/completions/{b}")));
        v.push(("zsh", format!("usr/share/zsh/vendor-completions/_{b}")));
        v.push((
            "fish",
            format!("usr/share/fish/vendor_completions.d/{b}.fish"),
        ));
    }
    v
}

#[test]
fn package_contents() {
    let deb = package();
    let mut cmd = Command::new(require("dpkg-deb", "dpkg"));
    cmd.arg("-c").arg(deb);
    let listing = ok("dpkg-deb -c", cmd).stdout_text();
    // `-rwxr-xr-x root/root 123 2024-01-01 00:00 ./usr/bin/portico`
    let files: BTreeSet<String> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches("./").to_string())
        .collect();
    let mut want: Vec<String> = [
        "usr/bin/portico",
        "usr/bin/portico-threaded",
        "etc/portico/portico.toml",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    want.extend(MAN_PAGES.iter().map(|s| s.to_string()));
    want.extend(completion_files().into_iter().map(|(_, p)| p));
    for w in &want {
        assert!(files.contains(w), "the package must hold {w}:\n{listing}");
    }
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("systemd/system/portico.service")),
        "the package must hold the unit:\n{listing}"
    );

    let mut cmd = Command::new(require("dpkg-deb", "dpkg"));
    cmd.arg("-I").arg(deb).arg("conffiles");
    let conffiles = ok("dpkg-deb -I conffiles", cmd).stdout_text();
    assert!(
        conffiles
            .lines()
            .any(|l| l.trim() == "/etc/portico/portico.toml"),
        "/etc/portico/portico.toml must be a conffile:\n{conffiles}"
    );
    let mut cmd = Command::new(require("dpkg-deb", "dpkg"));
    cmd.arg("-f")
        .arg(deb)
        .args(["Package", "Version", "Depends", "Suggests"]);
    let fields = ok("dpkg-deb -f", cmd).stdout_text();
    assert!(fields.contains("Package: portico\n"), "{fields}");
    assert!(fields.contains(&format!("Version: {VERSION}")), "{fields}");
    assert!(
        fields.contains("adduser"),
        "the postinst needs adduser: {fields}"
    );
    assert!(
        fields.contains("Suggests: squid, redis-server | valkey-server"),
        "the auth helpers and a Redis are suggested: {fields}"
    );

    let root = unpacked();
    let conf = std::fs::read_to_string(root.path().join("etc/portico/portico.toml"))
        .expect("read the packaged configuration");
    assert_eq!(
        conf,
        default_config(),
        "/etc/portico/portico.toml must equal the embedded default"
    );
    // The packaged binaries run it as they run the embedded default.
    let bin = root.path().join("usr/bin/portico");
    let mut cmd = Command::new(&bin);
    cmd.arg("--check");
    let embedded = ok("portico --check", cmd).stdout_text();
    let mut cmd = Command::new(&bin);
    cmd.arg("--config")
        .arg(root.path().join("etc/portico/portico.toml"))
        .arg("--check");
    assert_eq!(
        ok("portico --config FILE --check", cmd).stdout_text(),
        embedded
    );
}

#[test]
fn package_unit_verifies() {
    let root = unpacked();
    let unit = unit_in(root.path());
    let text = std::fs::read_to_string(&unit).expect("read the unit");
    for want in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "User=portico",
        "Group=portico",
        "Restart=on-failure",
        "ExecStart=/usr/bin/portico --config /etc/portico/portico.toml",
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim() == want || l.starts_with(want)),
            "portico.service must say {want}:\n{text}"
        );
    }
    // systemd-analyze verify needs no running systemd, only a root that
    // holds what the unit names: the package's files, the targets and
    // slices it is ordered against (copied from this system), /bin/kill;
    // and man finds the unit's Documentation= pages in the package.
    let units = root.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).expect("mkdir usr/lib/systemd/system");
    let system = Path::new("/usr/lib/systemd/system");
    let entries = std::fs::read_dir(system)
        .unwrap_or_else(|e| panic!("{}: {e} (the `systemd` package)", system.display()));
    for e in entries.flatten() {
        let name = e.file_name();
        let n = name.to_string_lossy();
        if (n.ends_with(".target") || n.ends_with(".slice")) && !units.join(&name).exists() {
            let _ = std::fs::copy(e.path(), units.join(&name));
        }
    }
    std::fs::create_dir_all(root.path().join("bin")).expect("mkdir bin");
    std::fs::copy(require("kill", "procps"), root.path().join("bin/kill")).expect("copy kill");
    let inside = Path::new("/").join(unit.strip_prefix(root.path()).expect("unit under root"));
    let mut cmd = Command::new(require("systemd-analyze", "systemd"));
    cmd.arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg(&inside)
        .env("MANPATH", root.path().join("usr/share/man"));
    let out = run("systemd-analyze verify", cmd, LIMIT);
    assert!(
        out.status.success() && out.stderr.trim().is_empty(),
        "systemd-analyze verify must pass quietly: {}",
        out.text()
    );
}

#[test]
fn package_man_pages_and_completions() {
    let root = unpacked();
    for page in MAN_PAGES {
        let text = render_man("man -l", &root.path().join(page));
        assert!(text.len() > 1000, "{page} is too short:\n{text}");
    }
    let toml5 = render_man("man -l", &root.path().join(MAN_PAGES[2]));
    for want in [
        "NAME",
        "portico.toml - the configuration file",
        "[[service]]",
        "include",
    ] {
        assert!(
            toml5.contains(want),
            "portico.toml(5) must hold {want:?}:\n{toml5}"
        );
    }
    assert!(
        !toml5.contains("⟨#"),
        "anchor links must be plain text:\n{toml5}"
    );
    for (shell, path) in completion_files() {
        check_completion("the packaged completions", shell, &root.path().join(path));
    }
}

/// The README's steps: install the .deb with apt-get, find the user, the
/// binaries and the conffile in place; then purge.
#[test]
fn package_installs_and_purges() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "installing the package needs root (CI runs the tests as root)"
    );
    let deb = package();
    let apt = require("apt-get", "apt");
    let mut cmd = Command::new(&apt);
    cmd.args(["install", "-y", "-q", "-o", "DPkg::Lock::Timeout=120"])
        .arg(deb)
        .env("DEBIAN_FRONTEND", "noninteractive");
    let installed = run("apt-get install", cmd, Duration::from_secs(600));
    // Purge whatever happens next.
    struct Purge(PathBuf);
    impl Drop for Purge {
        fn drop(&mut self) {
            let _ = Command::new(&self.0)
                .args([
                    "purge",
                    "-y",
                    "-q",
                    "-o",
                    "DPkg::Lock::Timeout=120",
                    "portico",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .output();
        }
    }
    let purge = Purge(apt.clone());
    assert!(
        installed.status.success(),
        "apt-get install: {}",
        installed.text()
    );

    let mut cmd = Command::new("getent");
    cmd.args(["passwd", "portico"]);
    let user = ok("getent passwd portico", cmd).stdout_text();
    assert!(user.starts_with("portico:"), "{user}");
    for b in ["portico", "portico-threaded"] {
        let mut cmd = Command::new(format!("/usr/bin/{b}"));
        cmd.arg("--version");
        assert_eq!(ok(b, cmd).stdout_text(), format!("{b} {VERSION}\n"));
    }
    let conf = std::fs::read_to_string("/etc/portico/portico.toml").expect("the conffile");
    assert_eq!(conf, default_config());
    let mut cmd = Command::new("/usr/bin/portico");
    cmd.args(["--config", "/etc/portico/portico.toml", "--check"]);
    ok("portico --check of the conffile", cmd);

    drop(purge);
    let mut cmd = Command::new(require("dpkg-query", "dpkg"));
    cmd.args(["-W", "-f", "${db:Status-Status}", "portico"]);
    let status = run("dpkg-query", cmd, LIMIT).stdout_text();
    assert!(
        status.is_empty() || status == "not-installed",
        "purge must remove the package: {status:?}"
    );
    for gone in ["/usr/bin/portico", "/etc/portico/portico.toml"] {
        assert!(!Path::new(gone).exists(), "purge must remove {gone}");
    }
}
