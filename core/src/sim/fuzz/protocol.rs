//! The `protocol` target: the protocol handshakes as pure machines, with
//! no table around them.

/// The services `protocol` drives.
const KINDS: [&str; 5] = ["socks", "pop3", "telnet", "ftp", "smtp"];

/// The configuration of each kind, without and with auth (at `2 * kind +
/// auth`), parsed once: parsing TOML would be most of an input's cost.
fn configs() -> &'static [Option<crate::config::Config>] {
    static CONFIGS: std::sync::OnceLock<Vec<Option<crate::config::Config>>> =
        std::sync::OnceLock::new();
    CONFIGS.get_or_init(|| {
        let mut all = Vec::new();
        for kind in KINDS {
            for auth in [false, true] {
                let dest = if kind == "smtp" {
                    "destination = \"127.0.0.1:25\"\n"
                } else {
                    ""
                };
                let text = format!(
                    "[[user]]\nname = \"alice\"\npassword = \"plain:secret\"\n\
                     [[service]]\nname = \"s\"\nkind = \"{kind}\"\nport = 9000\nauth = {auth}\n{dest}"
                );
                all.push(crate::config::parse(&text, "fuzz.toml").ok());
            }
        }
        all
    })
}

/// The protocol handshakes (SOCKS, POP3, Telnet, FTP, SMTP) as pure
/// machines: the first byte picks the protocol and whether auth is on, the
/// second how the rest is chopped; the client's bytes go to `input`, then
/// (if the machine asked to connect) `connected`, and the same bytes as
/// the server's to `upstream`. Consumed counts never exceed what was given.
pub fn protocol(data: &[u8]) {
    use crate::proto::{for_service, Next};
    let (Some(&pick), Some(&chop)) = (data.first(), data.get(1)) else {
        return;
    };
    let kind_at = pick as usize % KINDS.len();
    let kind = KINDS[kind_at];
    let auth = pick & 0x80 != 0 && matches!(kind, "socks" | "telnet");
    let Some(config) = &configs()[2 * kind_at + usize::from(auth)] else {
        return;
    };
    let service = &config.services[0];
    let Some(mut hs) = for_service(service) else {
        return;
    };
    let mut users = crate::auth::Users::new(&config.users, 1, std::time::Duration::ZERO);
    let client: std::net::SocketAddr = ([127, 0, 0, 1], 40000).into();
    let mut detached = crate::proto::Detached::new();
    let mut ctx = detached.scope(service, &mut users);
    let input = &data[2..];
    let step = (chop as usize % 7) + 1;
    // The high bit: connects fail, and a machine that asks again (Telnet)
    // reads on from where it stopped.
    let connects_fail = chop & 0x80 != 0;
    let mut reply = Vec::new();
    let mut step_now = hs.start(&mut reply, &mut ctx);
    let (mut have, mut used) = (0, 0);
    // Bounded whatever a machine does: each try consumes a line at least.
    for _ in 0..256 {
        while step_now == Next::Wait && have < input.len() {
            have = (have + step).min(input.len());
            let (n, s) = hs.input(&input[used..have], &mut reply, &mut ctx);
            assert!(n <= have - used, "{kind}: consumed more than it was given");
            used += n;
            step_now = s;
            if let Next::Authenticate { user, password } = &step_now {
                // The session's part: the verdict, then on.
                let v = ctx
                    .users
                    .check_blocking(user, &password.0, std::time::Instant::now());
                step_now = hs.checked(v, &mut reply);
            }
        }
        if !(connects_fail && matches!(step_now, Next::Connect { .. })) {
            break;
        }
        hs.failed(crate::proto::Failure::Refused, &mut reply);
        if !hs.asks_again() {
            return;
        }
        // What the client sent behind the failed request is read next.
        step_now = Next::Wait;
        have = used;
    }
    if let Next::Connect { .. } = step_now {
        let mut to_server = Vec::new();
        hs.connected(client, &mut reply, &mut to_server);
        let (mut have, mut used) = (0, 0);
        while have < input.len() {
            have = (have + step).min(input.len());
            let (n, s) = hs.upstream(&input[used..have], &mut reply, &mut to_server);
            assert!(
                n <= have - used,
                "{kind}: consumed more of the server's bytes than given"
            );
            used += n;
            if s != Next::Wait {
                break;
            }
        }
    }
    hs.failed(crate::proto::Failure::Refused, &mut reply);
}
