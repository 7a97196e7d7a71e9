//! TLS on both sides of the gateway, all through rustls.
//!
//! - The listener (`server.tls_listen`): certificates chosen by SNI (`server.tls_certs`, with
//!   `server.tls_cert`/`tls_key` as the default), reloaded from disk without a restart, TLS
//!   1.2 and 1.3 only (Pingora's rustls acceptor offers nothing older), ALPN `h2` then
//!   `http/1.1`.
//! - Upstreams (`https` providers): HTTP/2 when the provider offers it, certificates verified
//!   against the system roots, or against a provider's own `ca_bundle`.
//!
//! The certificates live behind an [`ArcSwap`] read by a [`ResolvesServerCert`] that Pingora's
//! acceptor calls once per handshake, so a reload swaps one pointer: handshakes after it get the
//! new certificate, connections already established are untouched.

use crate::config::{ConfigHandle, Provider};
use crate::metrics;
use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::ALPN;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::WrappedX509;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Concurrent requests one HTTP/2 connection to a provider may carry (Pingora's default is 1,
/// which would open a connection per concurrent request and waste the multiplexing).
const UPSTREAM_H2_STREAMS: usize = 100;

/// One certificate as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    /// Where it is configured, for messages: `server.tls_cert` or `server.tls_certs[2]`.
    pub origin: String,
    /// The key paths of its two files (`server.tls_cert`, `server.tls_certs[2].key`, ...).
    pub cert_origin: String,
    pub key_origin: String,
    /// SNI names it serves (lowercase; `*.example.com` for one label). Empty: the default.
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate that cannot be used, located by its config key path.
#[derive(Debug, Clone, PartialEq)]
pub struct CertError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for CertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

fn crypto() -> Arc<CryptoProvider> {
    // The provider Pingora's rustls backend installs; installing twice is a no-op.
    let _ = CryptoProvider::install_default(rustls::crypto::ring::default_provider());
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Read and check one certificate chain and its key: PEM, a key that matches the leaf, and
/// every configured name covered by the leaf.
pub fn load_cert(spec: &CertSpec) -> Result<Arc<CertifiedKey>, CertError> {
    let err = |path: &str, message: String| CertError { path: path.to_string(), message };
    let cert_path = spec.cert.display();
    let key_path = spec.key.display();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&spec.cert)
        .map_err(|e| err(&spec.cert_origin, format!("cannot read '{cert_path}': {}", pem_error(e))))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(&spec.cert_origin, format!("'{cert_path}' is not a PEM certificate file: {}", pem_error(e))))?;
    if chain.is_empty() {
        return Err(err(&spec.cert_origin, format!("no PEM certificate in '{cert_path}'")));
    }
    let key = PrivateKeyDer::from_pem_file(&spec.key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            err(&spec.key_origin, format!("no PEM private key in '{key_path}'"))
        }
        e => err(&spec.key_origin, format!("cannot read the key '{key_path}': {}", pem_error(e))),
    })?;
    let leaf = ParsedCertificate::try_from(&chain[0])
        .map_err(|e| err(&spec.cert_origin, format!("the first certificate in '{cert_path}' cannot be parsed: {e}")))?;
    for (i, name) in spec.names.iter().enumerate() {
        // A wildcard name is checked with a sample label: the certificate must cover it too.
        let probe = match name.strip_prefix("*.") {
            Some(rest) => format!("tollgate-sni-probe.{rest}"),
            None => name.clone(),
        };
        let covered = ServerName::try_from(probe.as_str())
            .ok()
            .is_some_and(|sn| rustls::client::verify_server_name(&leaf, &sn).is_ok());
        if !covered {
            return Err(err(
                &format!("{}.names[{i}]", spec.origin),
                format!("'{name}' is not covered by the certificate in '{cert_path}'"),
            ));
        }
    }
    let certified = CertifiedKey::from_der(chain, key, &crypto()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            err(&spec.key_origin, format!("'{key_path}' does not match the certificate in '{cert_path}'"))
        }
        e => err(&spec.key_origin, format!("unusable private key '{key_path}': {e}")),
    })?;
    Ok(Arc::new(certified))
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("{other:?}"),
    }
}

/// Whether `name` can be configured as an SNI name: a lowercase DNS name, optionally `*.` and
/// at least two more labels.
pub fn check_sni_name(name: &str) -> Result<(), String> {
    let bare = name.strip_prefix("*.").unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err(format!("'{name}' is not a host name"));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("'{name}' must be lowercase"));
    }
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("'{name}' is an IP address; clients send no SNI for those (the default certificate answers)"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !bare.split('.').all(label_ok) || (name.starts_with("*.") && !bare.contains('.')) {
        return Err(format!("'{name}' is not a host name (or `*.` and a domain of two labels or more)"));
    }
    Ok(())
}

/// The certificates one listener serves, by SNI name.
pub struct CertSet {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl CertSet {
    /// Load every certificate; the first spec without names (else the first spec) is the
    /// default. All errors are returned, not just the first.
    pub fn load(specs: &[CertSpec]) -> Result<CertSet, Vec<CertError>> {
        let mut errors = Vec::new();
        let mut default = None;
        let mut first = None;
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for spec in specs {
            let ck = match load_cert(spec) {
                Ok(ck) => ck,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            first.get_or_insert_with(|| ck.clone());
            if spec.names.is_empty() {
                default.get_or_insert_with(|| ck.clone());
            }
            for name in &spec.names {
                match name.strip_prefix("*.") {
                    Some(rest) => wildcard.entry(rest.to_string()).or_insert_with(|| ck.clone()),
                    None => exact.entry(name.clone()).or_insert_with(|| ck.clone()),
                };
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        match default.or(first) {
            Some(default) => Ok(CertSet { default, exact, wildcard }),
            None => Err(vec![CertError {
                path: "server.tls_cert".into(),
                message: "no certificate configured for server.tls_listen".into(),
            }]),
        }
    }

    /// The certificate for an SNI name: exact match, then `*.parent`, then the default.
    pub fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = sni else { return &self.default };
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(ck) = self.exact.get(name) {
            return ck;
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(ck) = self.wildcard.get(parent) {
                return ck;
            }
        }
        &self.default
    }

    pub fn len(&self) -> usize {
        1 + self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The listener's certificate resolver: one atomic pointer to the current [`CertSet`].
pub struct CertResolver {
    set: ArcSwap<CertSet>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver").finish_non_exhaustive()
    }
}

impl CertResolver {
    pub fn new(set: CertSet) -> Self {
        CertResolver { set: ArcSwap::from_pointee(set) }
    }

    pub fn store(&self, set: CertSet) {
        self.set.store(Arc::new(set));
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.set.load().pick(hello.server_name()).clone())
    }
}

/// A listening endpoint of the gateway (TLS when `tls` is given).
///
/// Reads are unbuffered at the socket: Pingora's default 64 KiB read buffer is allocated (and
/// zeroed) for every accepted connection, idle or not, and the gateway never needs it: request
/// headers are read into `proxy::front`'s own small buffer, and bodies into buffers sized by
/// the read. Without it an idle keep-alive connection costs a few KiB instead of ~60 KiB.
/// Writes are unbuffered here too (Pingora's one-segment write buffer is also allocated per
/// connection and kept): HTTP/1 writes are gathered until flushed by `proxy::front::Prefixed`,
/// which holds a buffer only while a response is being written, and HTTP/2 frames by the h2
/// codec's own buffer.
pub fn listener(addr: &str, tls: Option<TlsSettings>) -> pingora::listeners::ListenerConfig {
    use pingora::listeners::{L4BufferSettings, ListenerConfig};
    let config = ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings::unbuffered());
    match tls {
        Some(settings) => config.tls(settings),
        None => config,
    }
}

/// Add every `tls_listen` address to `service` with the SNI resolver, ALPN h2 + http/1.1.
/// Returns the resolver, for the reload task (None when there is no TLS listener).
pub fn add_listeners<A>(
    service: &mut pingora::services::listening::Service<A>,
    listen: &[String],
    specs: &[CertSpec],
) -> Result<Option<Arc<CertResolver>>, String> {
    if listen.is_empty() {
        return Ok(None);
    }
    let set = CertSet::load(specs)
        .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))?;
    log::info!("TLS: {} certificate name(s) loaded", set.len());
    let resolver = Arc::new(CertResolver::new(set));
    for addr in listen {
        // Paths are ignored when a resolver is set (TLS 1.2 and 1.3 are Pingora's defaults).
        let mut settings = TlsSettings::intermediate("", "").map_err(|e| format!("TLS listener {addr}: {e}"))?;
        settings.set_cert_resolver(resolver.clone());
        settings.enable_h2();
        service.add_listener(listener(addr, Some(settings)));
        log::info!("tollgate listening on https://{addr} (h2, http/1.1)");
    }
    Ok(Some(resolver))
}

/// Load the certificates again and swap them in; a bad file keeps the ones being served.
pub fn reload_now(resolver: &CertResolver, specs: &[CertSpec], why: &str) -> bool {
    match CertSet::load(specs) {
        Ok(set) => {
            metrics::TLS_CERT_RELOADS.with_label_values(&["success"]).inc();
            log::info!("TLS certificates reloaded ({why}): {} name(s)", set.len());
            resolver.store(set);
            true
        }
        Err(errors) => {
            metrics::TLS_CERT_RELOADS.with_label_values(&["failure"]).inc();
            for e in &errors {
                log::error!("TLS certificate reload ({why}) refused, keeping the served certificates: {e}");
            }
            false
        }
    }
}

/// What identifies a file's version: modification time, size and inode (a rename over it, as
/// `mv`, `cp --remove-destination` and Kubernetes secret swaps do, changes the inode).
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

fn stamps(specs: &[CertSpec]) -> Vec<Stamp> {
    specs.iter().flat_map(|s| [stamp(&s.cert), stamp(&s.key)]).collect()
}

/// Runs until the process ends: reload the certificates when one of their files changes, when
/// a config reload changes the list, or on SIGHUP.
pub async fn watch(handle: Arc<ConfigHandle>, resolver: Arc<CertResolver>, poll: Duration) {
    let mut specs = handle.pin().server.tls_certs.clone();
    let mut last = stamps(&specs);
    let mut triggers = crate::config::reload::Triggers::new(poll);
    loop {
        let forced = triggers.next().await;
        if forced {
            // Let the config reload (on the same signal) land first, so a new list is seen.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let now_specs = handle.pin().server.tls_certs.clone();
        let now = stamps(&now_specs);
        if forced || now_specs != specs || now != last {
            let why = if forced {
                "SIGHUP"
            } else if now_specs != specs {
                "config changed"
            } else {
                "file changed"
            };
            // Recorded even when refused: the next change to a file is tried again, an
            // unchanged bad file is not retried (and logged) every tick.
            specs = now_specs;
            last = now;
            reload_now(&resolver, &specs, why);
        }
    }
}

/// Read a PEM CA bundle into Pingora's per-peer CA list.
pub fn load_ca_bundle(path: &str) -> Result<Arc<[WrappedX509]>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read '{path}': {}", pem_error(e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("'{path}' is not a PEM certificate file: {}", pem_error(e)))?;
    if certs.is_empty() {
        return Err(format!("no PEM certificate in '{path}'"));
    }
    let mut roots = rustls::RootCertStore::empty();
    let mut wrapped = Vec::with_capacity(certs.len());
    for (i, der) in certs.into_iter().enumerate() {
        roots
            .add(der.clone())
            .map_err(|e| format!("certificate #{} in '{path}' cannot be a trust anchor: {e}", i + 1))?;
        let parsed = WrappedX509::try_new(der.to_vec(), |raw| {
            x509_parser::parse_x509_certificate(raw).map(|(_, cert)| cert)
        })
        .map_err(|e| format!("certificate #{} in '{path}' cannot be parsed: {e}", i + 1))?;
        wrapped.push(parsed);
    }
    Ok(wrapped.into())
}

/// The TLS side of a provider's peer: ALPN (h2 offered unless `http2 = false`) and its CA
/// bundle. Verification of the certificate and host name stays on (Pingora's default).
pub fn upstream_peer_options(peer: &mut HttpPeer, provider: &Provider) {
    if provider.http2 {
        peer.options.alpn = ALPN::H2H1;
        peer.options.max_h2_streams = UPSTREAM_H2_STREAMS;
    }
    if let Some(ca) = &provider.ca_bundle {
        peer.options.ca = Some(ca.certs.clone());
        // Pooled connections are keyed without the CA: keep those verified against this
        // bundle apart from other providers' at the same address.
        peer.group_key = ca.group_key;
    }
}

/// A provider's `ca_bundle`, loaded.
#[derive(Debug, Clone)]
pub struct CaBundle {
    pub path: String,
    pub certs: Arc<[WrappedX509]>,
    /// Distinguishes this bundle's pooled connections (a hash of its certificates).
    pub group_key: u64,
}

impl CaBundle {
    pub fn load(path: &str) -> Result<CaBundle, String> {
        use std::hash::{Hash, Hasher};
        let certs = load_ca_bundle(path)?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for c in certs.iter() {
            c.borrow_raw_cert().hash(&mut h);
        }
        Ok(CaBundle { path: path.to_string(), certs, group_key: h.finish() | 1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_names_are_checked() {
        assert!(check_sni_name("api.example.com").is_ok());
        assert!(check_sni_name("*.example.com").is_ok());
        assert!(check_sni_name("localhost").is_ok());
        assert!(check_sni_name("*.com").is_err());
        assert!(check_sni_name("API.example.com").is_err());
        assert!(check_sni_name("127.0.0.1").is_err());
        assert!(check_sni_name("a..b").is_err());
        assert!(check_sni_name("").is_err());
        assert!(check_sni_name("*.*.example.com").is_err());
    }

    #[test]
    fn missing_files_are_errors_with_their_key_path() {
        let spec = CertSpec {
            origin: "server.tls_certs[0]".into(),
            cert_origin: "server.tls_certs[0].cert".into(),
            key_origin: "server.tls_certs[0].key".into(),
            names: vec!["a.example.com".into()],
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        };
        let e = load_cert(&spec).err().unwrap();
        assert_eq!(e.path, "server.tls_certs[0].cert");
        assert!(e.message.contains("cannot read"), "{e}");
        assert!(load_ca_bundle("/nonexistent/ca.pem").is_err());
    }
}
