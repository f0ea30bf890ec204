//! Quota counts shared through a real Redis (`[state] redis`), end to end
//! through both binaries: two Portico processes (the same binary) in front
//! of one `redis-server` the test starts on a free loopback port, one
//! quota counted across both; Redis hung and then gone only pauses the
//! sharing (one line when it goes, one when it is back, and what was
//! counted meanwhile is added), and the data path never waits on it.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use portico_tests::json::{parse_json, Json};
use portico_tests::reply::exchange;
use portico_tests::{
    both, config_head, echo_check, free_port, local, poll_until, require, service, socks5_as_alice,
    start_on_free_ports, Behaviour, Bin, Portico, StartOptions, TempDir, TestServer, ALICE,
    PROMPTLY,
};

both!(
    two_gateways_count_one_quota,
    redis_going_away_only_pauses_sharing
);

const EVERY: Duration = Duration::from_millis(100);
/// How long a count may take to cross from one instance to the other: a
/// few sharing rounds (one a second) and room for a busy machine.
const SHARED: Duration = Duration::from_secs(20);

/// A `redis-server` on 127.0.0.1:`port`, without persistence, killed when
/// dropped.
struct Redis {
    port: u16,
    child: Child,
    _dir: TempDir,
}

impl Redis {
    fn start(port: u16) -> Redis {
        let server = require("redis-server", "redis-server");
        let dir = TempDir::new();
        let child = Command::new(server)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--dir", &dir.path().display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start redis-server: {e}"));
        let r = Redis {
            port,
            child,
            _dir: dir,
        };
        poll_until(PROMPTLY, EVERY, || r.ping().then_some(()))
            .unwrap_or_else(|| panic!("redis-server on port {port} does not answer PING"));
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let c =
            redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(c)
    }

    fn ping(&self) -> bool {
        self.connection()
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    /// Every key Portico keeps, with its value and seconds to live.
    fn counts(&self) -> Vec<(String, u64, i64)> {
        let mut c = self
            .connection()
            .unwrap_or_else(|e| panic!("connect to redis: {e}"));
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("portico:quota:*")
            .query(&mut c)
            .unwrap_or_else(|e| panic!("KEYS: {e}"));
        keys.into_iter()
            .map(|k| {
                let v: u64 = redis::cmd("GET")
                    .arg(&k)
                    .query(&mut c)
                    .unwrap_or_else(|e| panic!("GET {k}: {e}"));
                let ttl: i64 = redis::cmd("TTL")
                    .arg(&k)
                    .query(&mut c)
                    .unwrap_or_else(|e| panic!("TTL {k}: {e}"));
                (k, v, ttl)
            })
            .collect()
    }

    /// The shared count of alice in the quota `daily`.
    fn alice(&self) -> u64 {
        self.counts()
            .iter()
            .find(|(k, _, _)| k.starts_with("portico:quota:daily:") && k.ends_with(":alice"))
            .map_or(0, |c| c.1)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway: SOCKS (alice must log in) and status, alice's daily quota
/// of `quota`, counts shared through `redis`.
fn gateway(bin: Bin, redis: &str, quota: &str) -> (Portico, SocketAddr, SocketAddr) {
    let (p, ports) = start_on_free_ports(bin, 2, StartOptions::default(), |ports| {
        format!(
            "{}{ALICE}\n[state]\nredis = \"{redis}\"\n\n[[quota]]\nname = \"daily\"\n\
             users = [\"alice\"]\nbytes = \"{quota}\"\nper = \"day\"\n{}{}",
            config_head("", ""),
            service("socks", "socks", ports[0], "auth = true"),
            service("status", "status", ports[1], ""),
        )
    });
    (p, local(ports[0]), local(ports[1]))
}

/// Moves `n` bytes each way through a tunnel as alice (2n counted).
fn move_bytes(bin: Bin, socks: SocketAddr, echo: SocketAddr, n: usize) {
    let (code, mut s) = socks5_as_alice(bin, socks, echo);
    assert_eq!(code, 0, "{bin}: alice's tunnel through {socks} is granted");
    echo_check(&mut s, &vec![b'q'; n]).unwrap_or_else(|e| panic!("{bin}: the tunnel: {e}"));
}

/// What `/quotas` at `status` says alice used in `daily` (0: no row).
fn used(bin: Bin, status: SocketAddr) -> u64 {
    let r = exchange(
        status,
        "GET /quotas HTTP/1.1\r\nHost: status\r\nConnection: close\r\n\r\n",
    )
    .unwrap_or_else(|e| panic!("{bin}: GET /quotas: {e}"));
    let Ok(Json::Arr(rows)) = parse_json(&r.body) else {
        panic!("{bin}: /quotas is not a JSON array: {}", r.body);
    };
    rows.iter()
        .find(|r| r.str_of("quota") == Some("daily") && r.str_of("subject") == Some("alice"))
        .and_then(|r| r.u64_of("used_bytes"))
        .unwrap_or(0)
}

/// Waits (bounded) until `/quotas` at `status` says `want`.
fn expect_used(bin: Bin, status: SocketAddr, want: u64, what: &str) {
    let mut last = 0;
    poll_until(SHARED, EVERY, || {
        last = used(bin, status);
        (last == want).then_some(())
    })
    .unwrap_or_else(|| panic!("{bin}: {what}: /quotas says {last}, not {want}"));
}

/// Alice's 8 KiB a day counted across two gateways: 6000 bytes through
/// the first show on the second's `/quotas`; 3000 more through the
/// second put her over, and the first then refuses her (SOCKS5 0x02).
/// Redis holds one key for the count, with the total and an expiry.
fn two_gateways_count_one_quota(bin: Bin) {
    let redis = Redis::start(free_port());
    let echo = TestServer::start(Behaviour::Echo);
    let (a, a_socks, a_status) = gateway(bin, &redis.url(), "8KiB");
    let (b, b_socks, b_status) = gateway(bin, &redis.url(), "8KiB");
    for p in [&a, &b] {
        p.expect_log_line(
            &format!("the quota counts are shared through {}", redis.url()),
            SHARED,
        );
    }

    move_bytes(bin, a_socks, echo.addr(), 3000);
    expect_used(
        bin,
        b_status,
        6000,
        "the second gateway learns the first's count",
    );
    move_bytes(bin, b_socks, echo.addr(), 1500);
    expect_used(
        bin,
        a_status,
        9000,
        "the first gateway learns the second's count",
    );
    let (code, _) = socks5_as_alice(bin, a_socks, echo.addr());
    assert_eq!(
        code, 2,
        "{bin}: over the shared quota, the first gateway says 0x02"
    );
    a.expect_access_lines("socks", 1, PROMPTLY, |l| {
        l.err.as_deref() == Some("quota") && l.user == "alice"
    });

    let counts = redis.counts();
    assert_eq!(counts.len(), 1, "{bin}: one key for one count: {counts:?}");
    let (key, total, ttl) = &counts[0];
    assert!(
        key.starts_with("portico:quota:daily:") && key.ends_with(":alice"),
        "{bin}: key {key}"
    );
    assert_eq!(*total, 9000, "{bin}: the shared total");
    // Expires after the period (at most a day and an hour from now).
    assert!(
        *ttl > 0 && *ttl <= 25 * 3600,
        "{bin}: {key} lives {ttl} s more"
    );
}

/// Redis stopped (SIGSTOP: it takes connections and never answers):
/// requests are served all the same and counted locally, and one line
/// says the sharing stopped. Redis then killed and a new, empty one
/// started on the same port: one line says it is back, and what was
/// counted meanwhile reaches it and the other gateway.
fn redis_going_away_only_pauses_sharing(bin: Bin) {
    let port = free_port();
    let redis = Redis::start(port);
    let echo = TestServer::start(Behaviour::Echo);
    let (a, a_socks, a_status) = gateway(bin, &redis.url(), "1MiB");
    let (b, _b_socks, b_status) = gateway(bin, &redis.url(), "1MiB");
    for p in [&a, &b] {
        p.expect_log_line("the quota counts are shared through", SHARED);
    }

    redis.signal(libc::SIGSTOP);
    a.expect_log_line("the quota counts are not shared", SHARED);
    move_bytes(bin, a_socks, echo.addr(), 2000);
    move_bytes(bin, a_socks, echo.addr(), 500);
    expect_used(bin, a_status, 5000, "counted locally while Redis hangs");
    assert_eq!(used(bin, b_status), 0, "{bin}: nothing could be shared");

    drop(redis);
    let redis = Redis::start(port);
    a.expect_log_line("are shared through", SHARED);
    poll_until(SHARED, EVERY, || (redis.alice() == 5000).then_some(()))
        .unwrap_or_else(|| panic!("{bin}: Redis has {:?}", redis.counts()));
    expect_used(bin, b_status, 5000, "the other gateway learns it");
    let gone = a
        .stderr_lines()
        .iter()
        .filter(|l| l.contains("the quota counts are not shared"))
        .count();
    let back = a
        .stderr_lines()
        .iter()
        .filter(|l| l.contains("are shared through") && l.contains("again"))
        .count();
    assert_eq!(
        (gone, back),
        (1, 1),
        "{bin}: one line each way:\n{}",
        a.stderr_text()
    );
}
