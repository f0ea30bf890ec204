//! `tls = { cert, key, client_ca, client_cert_user }` on a service: the
//! files named, read through the runtime's [`Files`] and checked when the
//! configuration loads (so `--check` and a reload find a bad file), and
//! the rustls server configuration made from them.
//!
//! A certificate's expiry is checked against the wall clock the caller
//! gives ([`Files::now`]); without one (a configuration parsed from text
//! alone) it is not.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::include::Files;

/// A service's `tls` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Certificate authorities a client's certificate must chain to; with
    /// it, a client without a valid certificate is refused.
    pub client_ca: Option<PathBuf>,
    /// The client certificate's subject CN is the connection's user.
    pub client_cert_user: bool,
    /// What the files hold, ready to serve; `None` until they are read.
    pub server: Option<Server>,
}

/// The time rustls checks a client certificate's validity against: the
/// wall clock the table was last given (`Proxy::set_wall`), so that the
/// core reads no clock of its own. Unset (0), no client certificate is
/// valid.
#[derive(Debug, Default)]
pub struct Clock(AtomicI64);

impl Clock {
    pub fn set(&self, unix_secs: i64) {
        self.0.store(unix_secs, Ordering::Relaxed);
    }
}

impl rustls::time_provider::TimeProvider for Clock {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        let s = u64::try_from(self.0.load(Ordering::Relaxed)).ok()?;
        (s > 0).then(|| rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(s)))
    }
}

/// The rustls server configuration made from a service's files.
#[derive(Clone)]
pub struct Server {
    pub config: Arc<rustls::ServerConfig>,
    /// The time its handshakes use, set by the sessions that use it.
    pub clock: Arc<Clock>,
    /// The files' texts: two loads of the same files are equal.
    texts: Arc<Vec<String>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Server { .. }")
    }
}

impl PartialEq for Server {
    fn eq(&self, other: &Self) -> bool {
        self.texts == other.texts
    }
}

impl Eq for Server {}

/// The crypto provider: ring's primitives (no C toolchain for aws-lc; ring
/// has no post-quantum key exchange, hence rustls's deprecation note).
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads `path` through `files`; the message names the file.
fn read(files: &mut dyn Files, what: &str, path: &Path) -> Result<String, String> {
    files.read(path).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::InvalidData {
            "it is not text (give the PEM form)".to_string()
        } else {
            e.to_string()
        };
        format!("tls {what} {}: cannot read it: {why}", path.display())
    })
}

/// The certificates of a PEM text; the message names the file.
fn certs(text: &str, what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls {what} {}: not a PEM file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls {what} {}: holds no certificate (a PEM \"BEGIN CERTIFICATE\" block)",
            path.display()
        ));
    }
    Ok(certs)
}

/// Refuses a certificate that has expired at `now`, or cannot be read.
fn check_expiry(
    cert: &CertificateDer<'_>,
    now: Option<SystemTime>,
    what: &str,
    path: &Path,
) -> Result<(), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| {
        format!(
            "tls {what} {}: not a valid certificate: {e}",
            path.display()
        )
    })?;
    let Some(now) = now else { return Ok(()) };
    let now = match now.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => return Ok(()),
    };
    let until = parsed.validity().not_after;
    if until.timestamp() < now {
        return Err(format!(
            "tls {what} {}: the certificate expired on {until}; renew it",
            path.display()
        ));
    }
    Ok(())
}

/// Reads and checks a service's files, and makes its server configuration.
pub(super) fn load(
    tls: &Tls,
    files: &mut dyn Files,
    now: Option<SystemTime>,
) -> Result<Server, String> {
    let provider = provider();
    let cert_text = read(files, "cert", &tls.cert)?;
    let key_text = read(files, "key", &tls.key)?;
    let chain = certs(&cert_text, "cert", &tls.cert)?;
    for c in &chain {
        check_expiry(c, now, "cert", &tls.cert)?;
    }
    let key = PrivateKeyDer::from_pem_slice(key_text.as_bytes()).map_err(|e| {
        format!(
            "tls key {}: no private key in it ({e}); give a PEM \"PRIVATE KEY\" block",
            tls.key.display()
        )
    })?;
    let mut texts = vec![cert_text, key_text];
    let clock = Arc::new(Clock::default());
    let builder = rustls::ServerConfig::builder_with_details(provider.clone(), clock.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let text = read(files, "client_ca", ca)?;
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(&text, "client_ca", ca)? {
                check_expiry(&c, now, "client_ca", ca)?;
                roots.add(c).map_err(|e| {
                    format!(
                        "tls client_ca {}: not a usable CA certificate: {e}",
                        ca.display()
                    )
                })?;
            }
            texts.push(text);
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| format!("tls client_ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "tls key {} does not match the certificate in {}; give the key the certificate \
             was made for",
            tls.key.display(),
            tls.cert.display()
        ),
        e => format!(
            "tls key {} / cert {}: {e}",
            tls.key.display(),
            tls.cert.display()
        ),
    })?;
    Ok(Server {
        clock,
        config: Arc::new(config),
        texts: Arc::new(texts),
    })
}

/// The subject CN of a DER certificate, if it has one in UTF-8.
pub fn subject_cn(cert: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    fn err(service: &str) -> String {
        let text = format!("[network]\ninternal = [\"127.0.0.1\"]\n[[service]]\n{service}\n");
        match crate::config::parse(&text, "t.toml") {
            Ok(_) => panic!("accepted: {service}"),
            Err(e) => e.to_string(),
        }
    }

    /// What `tls` cannot be on, or be without, is refused saying so.
    #[test]
    fn tls_where_it_cannot_be() {
        let tls = "tls = { cert = \"/c.pem\", key = \"/k.pem\" }";
        let e = err(&format!(
            "name = \"m\"\nkind = \"mapped\"\nport = 1\ndestination = \"10.0.0.1:1\"\n{tls}"
        ));
        assert!(
            e.contains("tls applies to http, socks, auto and status"),
            "{e}"
        );
        let e = err(&format!(
            "name = \"w\"\nkind = \"http\"\nport = 1\nproxy_protocol = true\n\
             proxy_protocol_from = [\"10.0.0.1/32\"]\n{tls}"
        ));
        assert!(e.contains("proxy_protocol"), "{e}");
        let e = err("name = \"w\"\nkind = \"http\"\nport = 1\n\
             tls = { cert = \"/c.pem\", key = \"/k.pem\", client_cert_user = true }");
        assert!(e.contains("client_cert_user = true needs client_ca"), "{e}");
        // Text alone names files it cannot read.
        let e = err(&format!("name = \"w\"\nkind = \"http\"\nport = 1\n{tls}"));
        assert!(e.contains("read as text alone"), "{e}");
        let e = err("name = \"w\"\nkind = \"http\"\nport = 1\ntls = { cert = \"/c.pem\" }");
        assert!(e.contains("key"), "{e}");
    }
}
