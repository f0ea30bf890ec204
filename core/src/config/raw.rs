//! The configuration file exactly as written: serde structs that keep the
//! byte span of every value, so that validation can point at it. Unknown keys
//! are refused here (`deny_unknown_fields`); values that have several
//! spellings (durations, sizes, rule ports) stay [`toml::Value`]s and are
//! parsed in `validate`.

use serde::Deserialize;
use toml::{Spanned, Value};

pub type S<T> = Spanned<T>;
pub type List<T> = Spanned<Vec<Spanned<T>>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub network: Option<RawNetwork>,
    pub limits: Option<RawLimits>,
    pub log: Option<RawLog>,
    pub runtime: Option<RawRuntime>,
    pub process: Option<RawProcess>,
    pub state: Option<RawState>,
    pub auth: Option<RawAuth>,
    pub pac: Option<S<RawPac>>,
    #[serde(default)]
    pub user: Vec<S<RawUser>>,
    #[serde(default)]
    pub service: Vec<S<RawService>>,
    #[serde(default)]
    pub rule: Vec<S<RawRule>>,
    #[serde(default)]
    pub quota: Vec<S<RawQuota>>,
    #[serde(default)]
    pub parent: Vec<S<RawParent>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawParent {
    pub name: S<String>,
    pub kind: S<String>,
    pub addresses: List<String>,
    pub pick: Option<S<String>>,
    pub user: Option<S<String>>,
    pub password: Option<S<String>>,
    pub down_after: Option<S<i64>>,
    pub retry_after: Option<S<Value>>,
    pub send_proxy_protocol: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub helper: Option<List<String>>,
    pub helpers: Option<S<i64>>,
    pub helper_concurrency: Option<S<i64>>,
    pub helper_timeout: Option<S<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPac {
    pub proxy: S<String>,
    pub direct: Option<List<String>>,
    pub fallback_direct: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub dir: Option<S<String>>,
    pub redis: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    pub name: S<String>,
    pub users: Option<List<String>>,
    pub clients: Option<List<String>>,
    pub bytes: S<Value>,
    pub per: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub internal: Option<List<String>>,
    pub external: Option<List<String>>,
    pub outgoing: Option<S<String>>,
    pub outgoing6: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<S<i64>>,
    pub max_per_client: Option<S<i64>>,
    pub max_per_user: Option<S<i64>>,
    pub connect_timeout: Option<S<Value>>,
    pub connect_attempt_delay: Option<S<Value>>,
    pub handshake_timeout: Option<S<Value>>,
    pub idle_timeout: Option<S<Value>>,
    pub shutdown_grace: Option<S<Value>>,
    pub udp_idle_timeout: Option<S<Value>>,
    pub buffer: Option<S<Value>>,
    pub auth_cache: Option<S<Value>>,
    pub auth_failures: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub access: Option<S<String>>,
    pub format: Option<S<String>>,
    pub diagnostics: Option<S<String>>,
    pub syslog_socket: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub workers: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProcess {
    pub user: Option<S<String>>,
    pub group: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub name: S<String>,
    pub password: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: S<String>,
    pub kind: S<String>,
    pub side: Option<S<String>>,
    pub port: Option<S<i64>>,
    pub listen: Option<List<String>>,
    pub auth: Option<S<bool>>,
    pub connect_ports: Option<List<i64>>,
    pub destination: Option<S<String>>,
    pub protocol: Option<S<String>>,
    pub open_proxy: Option<S<bool>>,
    pub separator: Option<S<String>>,
    pub proxy_protocol: Option<S<bool>>,
    pub proxy_protocol_from: Option<List<String>>,
    pub send_proxy_protocol: Option<S<String>>,
    pub commands: Option<List<String>>,
    pub udp_announce: Option<S<String>>,
    pub outgoing: Option<S<String>>,
    pub via: Option<S<String>>,
    pub tls: Option<S<RawTls>>,
    pub tproxy: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: S<String>,
    pub key: S<String>,
    pub client_ca: Option<S<String>>,
    pub client_cert_user: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub action: S<String>,
    pub services: Option<List<String>>,
    pub clients: Option<List<String>>,
    pub users: Option<List<String>>,
    pub destinations: Option<List<String>>,
    pub ports: Option<List<Value>>,
    pub days: Option<List<String>>,
    pub hours: Option<S<String>>,
    pub rate: Option<S<Value>>,
    pub outgoing: Option<S<String>>,
    pub via: Option<S<String>>,
}
