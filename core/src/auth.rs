//! Password hashes: the PHC strings `portico hash-password` prints and
//! `[[user]] password` holds.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashError {
    #[error("the password is empty; type it on standard input, e.g. `echo -n secret | portico hash-password`")]
    Empty,
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// Hashes `password` with argon2id and the given random `salt`.
pub fn hash_password(password: &str, salt: &[u8; 16]) -> Result<String, HashError> {
    if password.is_empty() {
        return Err(HashError::Empty);
    }
    let salt = SaltString::encode_b64(salt).map_err(|e| HashError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Hash(e.to_string()))
}

/// Checks `password` against a PHC string. A malformed hash never matches.
pub fn verify_password(phc: &str, password: &[u8]) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default().verify_password(password, &h).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = hash_password("s3cret", &[7; 16]).unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(verify_password(&h, b"s3cret"));
        assert!(!verify_password(&h, b"s3creT"));
        assert!(!verify_password("$argon2id$garbage", b"s3cret"));
        assert_eq!(hash_password("", &[0; 16]), Err(HashError::Empty));
    }
}

/// Bytes that must not show in a log, a trace or a panic message (a
/// password on its way to be checked).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// How a login went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// A configured user, the wrong password.
    Wrong,
    /// No such user (or a name no user can have).
    UnknownUser,
    /// Not checked: the client's address failed too many logins lately;
    /// it may try again in this many seconds.
    Throttled(u64),
    /// The `[auth] helper` failed to answer (`BH`, no answer in time, or
    /// it died).
    HelperFailed,
}

impl Verdict {
    /// The `reason` label of `portico_auth_failures_total` (none for a
    /// login that succeeded).
    pub fn failure(self) -> Option<&'static str> {
        match self {
            Verdict::Ok => None,
            Verdict::Wrong => Some("wrong"),
            Verdict::UnknownUser => Some("unknown-user"),
            Verdict::Throttled(_) => Some("throttled"),
            Verdict::HelperFailed => Some("helper"),
        }
    }
}

/// How long failed logins of one client address count.
pub const THROTTLE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// The most client addresses whose failures are remembered; past it,
/// those whose minute is over go first.
const THROTTLE_MAX: usize = 65_536;

/// Failed logins per client address (`[limits] auth_failures`): once an
/// address has failed `limit` logins within [`THROTTLE_WINDOW`] of the
/// first of them, its further logins are refused unchecked until that
/// window is over.
#[derive(Debug, Default)]
pub struct Throttle {
    failures: std::collections::HashMap<std::net::IpAddr, (std::time::Instant, u32)>,
}

impl Throttle {
    /// If `ip` is throttled now: how many seconds until it may try again
    /// (rounded up, at least 1).
    pub fn check(
        &mut self,
        ip: std::net::IpAddr,
        limit: u32,
        now: std::time::Instant,
    ) -> Option<u64> {
        let &(first, n) = self.failures.get(&ip)?;
        let end = first + THROTTLE_WINDOW;
        if now >= end {
            self.failures.remove(&ip);
            return None;
        }
        let left = end - now;
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        (n >= limit).then_some(secs.max(1))
    }

    /// `ip` failed a login now.
    pub fn failed(&mut self, ip: std::net::IpAddr, now: std::time::Instant) {
        if self.failures.len() >= THROTTLE_MAX && !self.failures.contains_key(&ip) {
            self.failures
                .retain(|_, (first, _)| now < *first + THROTTLE_WINDOW);
        }
        let e = self.failures.entry(ip).or_insert((now, 0));
        if now >= e.0 + THROTTLE_WINDOW {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
    }
}

/// What a login is checked with besides the users: the client's address,
/// its failures and where failures are counted.
pub struct Logins<'a> {
    pub client: std::net::IpAddr,
    /// Holds the failures of every worker's clients.
    pub ledger: &'a crate::ledger::Ledger,
    /// `[limits] auth_failures`.
    pub limit: u32,
    /// The service's failed logins by reason.
    pub failures: &'a mut std::collections::BTreeMap<&'static str, u64>,
}

impl Logins<'_> {
    /// The verdict before any check: `Throttled` when the client's
    /// address failed too often lately (counted as a failure).
    pub fn gate(&mut self, now: std::time::Instant) -> Option<Verdict> {
        let secs = self
            .ledger
            .lock()
            .throttle
            .check(self.client, self.limit, now)?;
        let v = Verdict::Throttled(secs);
        self.count(v);
        Some(v)
    }

    /// A checked login's verdict: a failure is counted, and counts toward
    /// the client's throttling.
    pub fn settle(&mut self, v: Verdict, now: std::time::Instant) {
        if v.failure().is_some() {
            self.ledger.lock().throttle.failed(self.client, now);
        }
        self.count(v);
    }

    fn count(&mut self, v: Verdict) {
        if let Some(reason) = v.failure() {
            *self.failures.entry(reason).or_insert(0) += 1;
        }
    }
}

/// What [`Users::check`] found out.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Decided at once: an unknown user, a plain password, a cached
    /// verdict.
    Known(Verdict),
    /// A hash to verify: the runtime does it off the event loop
    /// ([`crate::Action::CheckPassword`]) and the verdict comes back
    /// through [`Users::settle`].
    Ask(Box<Pending>),
}

/// What checks a password handed to the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checker {
    /// A `[[user]]`'s PHC hash (argon2, [`crate::Action::CheckPassword`]).
    Hash(String),
    /// The `[auth] helper`, for a name `[[user]]` does not hold
    /// ([`crate::Action::AskHelper`]).
    Helper(std::sync::Arc<crate::config::HelperConfig>),
}

/// What the runtime found out about a password it was asked to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    /// The hash does not match, or the helper said `ERR`.
    Wrong,
    /// The helper said `BH`, did not answer in time, or died.
    Failed,
}

/// A password check handed to the runtime, kept by the session until its
/// verdict comes back.
#[derive(Debug, PartialEq, Eq)]
pub struct Pending {
    pub name: String,
    pub password: Secret,
    pub checker: Checker,
    key: Key,
    /// The [`Users`] it was asked of: a verdict against a configuration
    /// since reloaded is not trusted.
    generation: u64,
}

/// A verdict cache key: a salted hash of user and password.
type Key = [u8; 32];

/// The most verdicts cached; past it, expired ones go, then all.
const CACHE_MAX: usize = 4096;

/// The configured users, and the verdicts of password hashes already
/// checked (for `[limits] auth_cache`), so that a client that reconnects
/// does not pay argon2 again. The cache never holds a password: its keys
/// are a hash of user and password salted per process.
#[derive(Debug, Default)]
pub struct Users {
    users: std::collections::HashMap<String, crate::config::Password>,
    salt: [u8; 16],
    ttl: std::time::Duration,
    cache: std::collections::HashMap<Key, (std::time::Instant, bool)>,
    generation: u64,
    /// `[auth] helper`: asked about names `users` does not hold.
    helper: Option<std::sync::Arc<crate::config::HelperConfig>>,
}

fn same(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret; the bytes are compared without an early exit.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Users {
    /// The users of a configuration; `seed` (the runtime's, random per
    /// process) makes the cache's salt; verdicts are kept for `ttl`.
    pub fn new(list: &[crate::config::User], seed: u64, ttl: std::time::Duration) -> Self {
        use blake2::Digest;
        let mut h = blake2::Blake2b512::new();
        h.update(b"portico auth cache salt");
        h.update(seed.to_le_bytes());
        let mut salt = [0; 16];
        salt.copy_from_slice(&h.finalize()[..16]);
        Users {
            users: list
                .iter()
                .map(|u| (u.name.clone(), u.password.clone()))
                .collect(),
            salt,
            ttl,
            cache: Default::default(),
            generation: 0,
            helper: None,
        }
    }

    /// The same users, and `helper` for every other name.
    pub fn with_helper(
        mut self,
        helper: Option<std::sync::Arc<crate::config::HelperConfig>>,
    ) -> Self {
        self.helper = helper;
        self
    }

    /// The users of a reloaded configuration: same salt, an empty cache,
    /// and verdicts asked of the old users no longer trusted.
    pub fn reloaded(&self, list: &[crate::config::User], ttl: std::time::Duration) -> Self {
        Users {
            users: list
                .iter()
                .map(|u| (u.name.clone(), u.password.clone()))
                .collect(),
            salt: self.salt,
            ttl,
            cache: Default::default(),
            generation: self.generation + 1,
            helper: None,
        }
    }

    /// No login can succeed: no user and no helper.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.helper.is_none()
    }

    fn key(&self, name: &str, password: &[u8]) -> Key {
        use blake2::Digest;
        let mut h = blake2::Blake2b512::new();
        h.update(self.salt);
        // The name's length first, so that no (name, password) pair reads
        // as another.
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(password);
        let mut k = [0; 32];
        k.copy_from_slice(&h.finalize()[..32]);
        k
    }

    /// Whether `name` and `password` are a configured user's, if that can
    /// be told without argon2. A name that is not valid UTF-8 or holds a
    /// NUL is no user's.
    pub fn check(&mut self, name: &[u8], password: &[u8], now: std::time::Instant) -> Check {
        let Some(name) = std::str::from_utf8(name)
            .ok()
            .filter(|n| !n.is_empty() && !n.contains('\0'))
        else {
            return Check::Known(Verdict::UnknownUser);
        };
        let checker = match (self.users.get(name), &self.helper) {
            (Some(p), _) => match p {
                crate::config::Password::Plain(s) => {
                    return Check::Known(if same(s.as_bytes(), password) {
                        Verdict::Ok
                    } else {
                        Verdict::Wrong
                    })
                }
                crate::config::Password::Phc(h) => Checker::Hash(h.clone()),
            },
            // The helper is told every name [[user]] does not hold.
            (None, Some(h)) => Checker::Helper(h.clone()),
            (None, None) => return Check::Known(Verdict::UnknownUser),
        };
        let key = self.key(name, password);
        if let Some(&(until, ok)) = self.cache.get(&key) {
            if until > now {
                return Check::Known(if ok { Verdict::Ok } else { Verdict::Wrong });
            }
            self.cache.remove(&key);
        }
        Check::Ask(Box::new(Pending {
            name: name.to_string(),
            password: Secret(password.to_vec()),
            checker,
            key,
            generation: self.generation,
        }))
    }

    /// The runtime's verdict `ok` on `pending`: cached and told, or, when
    /// the users were reloaded meanwhile, the password checked again
    /// against the users now configured.
    pub fn settle(&mut self, pending: &Pending, ok: bool, now: std::time::Instant) -> Check {
        let answer = if ok { Answer::Ok } else { Answer::Wrong };
        self.settle_answer(pending, answer, now)
    }

    /// [`Users::settle`] with the runtime's [`Answer`]; a helper's
    /// failure is not cached (the next login asks again).
    pub fn settle_answer(
        &mut self,
        pending: &Pending,
        answer: Answer,
        now: std::time::Instant,
    ) -> Check {
        if pending.generation != self.generation {
            return self.check(pending.name.as_bytes(), &pending.password.0, now);
        }
        let ok = match answer {
            Answer::Ok => true,
            Answer::Wrong => false,
            Answer::Failed => return Check::Known(Verdict::HelperFailed),
        };
        if !self.ttl.is_zero() {
            if self.cache.len() >= CACHE_MAX {
                self.cache.retain(|_, (until, _)| *until > now);
                if self.cache.len() >= CACHE_MAX {
                    self.cache.clear();
                }
            }
            self.cache.insert(pending.key, (now + self.ttl, ok));
        }
        Check::Known(if ok { Verdict::Ok } else { Verdict::Wrong })
    }

    /// [`Users::check`] to the end, running argon2 here when needed: for
    /// the machines' own tests and the protocol fuzz target, which stand
    /// in for a session and its runtime.
    pub fn check_blocking(
        &mut self,
        name: &[u8],
        password: &[u8],
        now: std::time::Instant,
    ) -> Verdict {
        // Nothing is reloaded in between, so one round settles it.
        match self.check(name, password, now) {
            Check::Known(v) => v,
            Check::Ask(p) => {
                // A helper cannot be waited for here.
                let Checker::Hash(phc) = &p.checker else {
                    return Verdict::HelperFailed;
                };
                let ok = verify_password(phc, &p.password.0);
                match self.settle(&p, ok, now) {
                    Check::Known(v) => v,
                    Check::Ask(_) => Verdict::Wrong,
                }
            }
        }
    }
}

#[cfg(test)]
mod user_tests {
    use super::*;
    use crate::config::{Password, User};
    use std::time::{Duration, Instant};

    fn users(ttl: Duration) -> Users {
        let h = hash_password("pw", &[1; 16]).unwrap();
        Users::new(
            &[
                User {
                    name: "alice".into(),
                    password: Password::Plain("secret".into()),
                },
                User {
                    name: "bob".into(),
                    password: Password::Phc(h),
                },
            ],
            7,
            ttl,
        )
    }

    /// Runs a check as a runtime would: argon2 for what is asked.
    fn verdict(u: &mut Users, name: &[u8], pw: &[u8], now: Instant) -> (Verdict, bool) {
        match u.check(name, pw, now) {
            Check::Known(v) => (v, false),
            Check::Ask(p) => {
                let Checker::Hash(phc) = &p.checker else {
                    panic!("no helper configured");
                };
                let ok = verify_password(phc, &p.password.0);
                match u.settle(&p, ok, now) {
                    Check::Known(v) => (v, true),
                    Check::Ask(_) => panic!("asked again without a reload"),
                }
            }
        }
    }

    #[test]
    fn users_check_and_cache() {
        let t0 = Instant::now();
        let mut u = users(Duration::from_secs(300));
        assert_eq!(
            verdict(&mut u, b"alice", b"secret", t0),
            (Verdict::Ok, false)
        );
        assert_eq!(
            verdict(&mut u, b"alice", b"secreT", t0),
            (Verdict::Wrong, false)
        );
        assert_eq!(
            verdict(&mut u, b"alice\0", b"secret", t0),
            (Verdict::UnknownUser, false)
        );
        assert_eq!(
            verdict(&mut u, b"carol", b"secret", t0),
            (Verdict::UnknownUser, false)
        );
        // A hash is checked once, then its verdict comes from the cache,
        // right or wrong, until it expires.
        assert_eq!(verdict(&mut u, b"bob", b"pw", t0), (Verdict::Ok, true));
        assert_eq!(verdict(&mut u, b"bob", b"pw", t0), (Verdict::Ok, false));
        assert_eq!(verdict(&mut u, b"bob", b"pw2", t0), (Verdict::Wrong, true));
        assert_eq!(verdict(&mut u, b"bob", b"pw2", t0), (Verdict::Wrong, false));
        let later = t0 + Duration::from_secs(300);
        assert_eq!(verdict(&mut u, b"bob", b"pw", later), (Verdict::Ok, true));
        assert_eq!(u.check_blocking(b"bob", b"pw", later), Verdict::Ok);
        assert_eq!(u.check_blocking(b"bob", b"nope", later), Verdict::Wrong);
    }

    #[test]
    fn no_cache_with_zero_ttl() {
        let t0 = Instant::now();
        let mut u = users(Duration::ZERO);
        assert_eq!(verdict(&mut u, b"bob", b"pw", t0), (Verdict::Ok, true));
        assert_eq!(verdict(&mut u, b"bob", b"pw", t0), (Verdict::Ok, true));
    }

    #[test]
    fn the_cache_holds_no_password() {
        let t0 = Instant::now();
        let mut u = users(Duration::from_secs(300));
        verdict(&mut u, b"bob", b"a-long-password-to-find", t0);
        let shown = format!("{u:?}");
        assert!(!shown.contains("a-long-password-to-find"), "{shown}");
        assert_eq!(u.cache.len(), 1);
        // Same user and password under another process's salt: another key.
        let other = Users::new(&[], 8, Duration::from_secs(1));
        assert_ne!(u.key("bob", b"x"), other.key("bob", b"x"));
        // Name and password do not run into each other.
        assert_ne!(u.key("bo", b"bx"), u.key("bob", b"x"));
    }

    #[test]
    fn a_verdict_from_before_a_reload_is_checked_again() {
        let t0 = Instant::now();
        let mut u = users(Duration::from_secs(300));
        let Check::Ask(p) = u.check(b"bob", b"pw", t0) else {
            panic!("a hash is asked for");
        };
        // Reloaded with bob's password now plain and different.
        let new = u.reloaded(
            &[User {
                name: "bob".into(),
                password: Password::Plain("new".into()),
            }],
            Duration::from_secs(300),
        );
        let mut u = new;
        assert_eq!(u.settle(&p, true, t0), Check::Known(Verdict::Wrong));
        assert!(u.cache.is_empty());
        // And the old cache went with the reload.
        let mut v = users(Duration::from_secs(300));
        verdict(&mut v, b"bob", b"pw", t0);
        let mut v = v.reloaded(
            &users(Duration::ZERO).users_list(),
            Duration::from_secs(300),
        );
        assert_eq!(verdict(&mut v, b"bob", b"pw", t0), (Verdict::Ok, true));
    }

    /// A whole login as a session settles it, argon2 run here.
    fn login(l: &mut Logins, users: &mut Users, name: &[u8], pw: &[u8], at: Instant) -> Verdict {
        if let Some(v) = l.gate(at) {
            return v;
        }
        let v = users.check_blocking(name, pw, at);
        l.settle(v, at);
        v
    }

    #[test]
    fn failures_throttle_an_address_for_a_minute_from_the_first() {
        let t0 = Instant::now();
        let a: std::net::IpAddr = [192, 168, 1, 9].into();
        let b: std::net::IpAddr = [192, 168, 1, 10].into();
        let mut failures = Default::default();
        let ledger = crate::ledger::Ledger::default();
        let mut l = Logins {
            client: a,
            ledger: &ledger,
            limit: 3,
            failures: &mut failures,
        };
        let mut users = users(Duration::from_secs(300));
        for i in 0..3 {
            let at = t0 + Duration::from_secs(10 * i);
            assert_eq!(
                login(&mut l, &mut users, b"alice", b"no", at),
                Verdict::Wrong
            );
        }
        // Refused unchecked, even with the right password, until a minute
        // after the first failure.
        let at = t0 + Duration::from_secs(30);
        assert_eq!(
            login(&mut l, &mut users, b"alice", b"secret", at),
            Verdict::Throttled(30)
        );
        let at = t0 + Duration::from_millis(59_500);
        assert_eq!(
            login(&mut l, &mut users, b"alice", b"secret", at),
            Verdict::Throttled(1)
        );
        let at = t0 + Duration::from_secs(60);
        assert_eq!(
            login(&mut l, &mut users, b"alice", b"secret", at),
            Verdict::Ok
        );
        // Another address is not concerned.
        l.client = b;
        assert_eq!(l.gate(t0 + Duration::from_secs(30)), None);
        assert_eq!(failures.get("wrong"), Some(&3));
        assert_eq!(failures.get("throttled"), Some(&2));
    }

    #[test]
    fn names_not_in_users_go_to_the_helper_and_its_verdicts_are_cached() {
        let t0 = Instant::now();
        let h = std::sync::Arc::new(crate::config::HelperConfig {
            argv: vec!["/bin/h".into()],
            processes: 2,
            concurrency: 0,
            timeout: Duration::from_secs(5),
        });
        let mut u = users(Duration::from_secs(300)).with_helper(Some(h.clone()));
        // [[user]] first: alice is never the helper's.
        assert_eq!(
            u.check(b"alice", b"wrong", t0),
            Check::Known(Verdict::Wrong)
        );
        let Check::Ask(p) = u.check(b"bob", b"pw", t0) else {
            panic!("a hash is checked");
        };
        assert!(matches!(p.checker, Checker::Hash(_)));
        // Anyone else: the helper.
        let Check::Ask(p) = u.check(b"carol", b"pw", t0) else {
            panic!("the helper is asked");
        };
        assert_eq!(p.checker, Checker::Helper(h.clone()));
        assert_eq!(p.name, "carol");
        // Names no one can have are not sent.
        assert_eq!(u.check(b"", b"pw", t0), Check::Known(Verdict::UnknownUser));
        assert_eq!(
            u.check(b"ca\0rol", b"pw", t0),
            Check::Known(Verdict::UnknownUser)
        );
        // A failure is not cached: the next login asks again.
        assert_eq!(
            u.settle_answer(&p, Answer::Failed, t0),
            Check::Known(Verdict::HelperFailed)
        );
        assert!(matches!(u.check(b"carol", b"pw", t0), Check::Ask(_)));
        // OK and ERR are.
        assert_eq!(
            u.settle_answer(&p, Answer::Ok, t0),
            Check::Known(Verdict::Ok)
        );
        assert_eq!(u.check(b"carol", b"pw", t0), Check::Known(Verdict::Ok));
        let Check::Ask(q) = u.check(b"carol", b"other", t0) else {
            panic!("another password is asked");
        };
        assert_eq!(
            u.settle_answer(&q, Answer::Wrong, t0),
            Check::Known(Verdict::Wrong)
        );
        assert_eq!(
            u.check(b"carol", b"other", t0),
            Check::Known(Verdict::Wrong)
        );
        assert_eq!(Verdict::HelperFailed.failure(), Some("helper"));
        // No helper: an unknown user, decided at once.
        let mut plain = users(Duration::from_secs(300));
        assert_eq!(
            plain.check(b"carol", b"pw", t0),
            Check::Known(Verdict::UnknownUser)
        );
        assert!(!u.is_empty());
        assert!(Users::new(&[], 1, Duration::ZERO)
            .with_helper(Some(h))
            .is_empty()
            .eq(&false));
    }

    impl Users {
        fn users_list(&self) -> Vec<User> {
            self.users
                .iter()
                .map(|(n, p)| User {
                    name: n.clone(),
                    password: p.clone(),
                })
                .collect()
        }
    }
}

/// The Squid basic-auth helper protocol (`[auth] helper`): what is
/// written to a helper and what its answers mean. The runtime only moves
/// the lines.
pub mod helper {
    use super::Answer;

    /// RFC 3986 percent-encoding: every byte but the unreserved ones, so
    /// that a space, a newline or `%` in a name or password cannot break
    /// the line.
    pub fn escape(bytes: &[u8], out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        for &b in bytes {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(b);
            } else {
                out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            }
        }
    }

    /// The request line for `user` and `password`, with `channel` first
    /// when the helper takes several requests at once.
    pub fn request(channel: Option<u32>, user: &str, password: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(user.len() + password.len() + 16);
        if let Some(c) = channel {
            out.extend_from_slice(format!("{c} ").as_bytes());
        }
        escape(user.as_bytes(), &mut out);
        out.push(b' ');
        escape(password, &mut out);
        out.push(b'\n');
        out
    }

    /// One answer line (without its newline): its channel id when
    /// `concurrent`, and the answer. `OK` and `ERR` may be followed by
    /// text; `BH` and anything else are a failure. `None` when the line
    /// has no valid channel id (it answers no request).
    pub fn answer(line: &[u8], concurrent: bool) -> Option<(Option<u32>, Answer)> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut words = line
            .split(|&b| b == b' ' || b == b'\t')
            .filter(|w| !w.is_empty());
        let channel = if concurrent {
            let id = words.next()?;
            Some(std::str::from_utf8(id).ok()?.parse::<u32>().ok()?)
        } else {
            None
        };
        let answer = match words.next() {
            Some(b"OK") => Answer::Ok,
            Some(b"ERR") => Answer::Wrong,
            _ => Answer::Failed,
        };
        Some((channel, answer))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn requests_are_escaped_so_that_one_login_is_one_line() {
            assert_eq!(request(None, "alice", b"s3cret"), b"alice s3cret\n");
            assert_eq!(
                request(Some(7), "a b", b"p%w d\n\xff~"),
                b"7 a%20b p%25w%20d%0A%FF~\n"
            );
            assert_eq!(request(None, "j.doe_x-1", b""), b"j.doe_x-1 \n");
        }

        #[test]
        fn answers() {
            assert_eq!(answer(b"OK", false), Some((None, Answer::Ok)));
            assert_eq!(answer(b"OK user=alice\r", false), Some((None, Answer::Ok)));
            assert_eq!(answer(b"ERR", false), Some((None, Answer::Wrong)));
            assert_eq!(
                answer(b"ERR message=\"Wrong password\"", false),
                Some((None, Answer::Wrong))
            );
            assert_eq!(
                answer(b"BH message=broken", false),
                Some((None, Answer::Failed))
            );
            assert_eq!(answer(b"", false), Some((None, Answer::Failed)));
            assert_eq!(answer(b"OKAY", false), Some((None, Answer::Failed)));
            assert_eq!(answer(b"3 OK", true), Some((Some(3), Answer::Ok)));
            assert_eq!(answer(b"12 ERR no", true), Some((Some(12), Answer::Wrong)));
            assert_eq!(answer(b"0 BH", true), Some((Some(0), Answer::Failed)));
            assert_eq!(answer(b"OK", true), None);
            assert_eq!(answer(b"-1 OK", true), None);
        }
    }
}
