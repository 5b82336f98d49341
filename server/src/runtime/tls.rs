//! TLS for client ports (rustls, which is sans-IO: the handshake and records run on the
//! shard that accepted the connection, over its glommio socket, with no thread hop).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ServerConfig;

/// Why TLS could not be set up: each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or held nothing usable.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// rustls refused the certificate, key or CA set.
    #[error("TLS settings ({cert}, {key}): {why}")]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        why: String,
    },
}

/// How long a TLS handshake may take, on every port (ZooKeeper's
/// `ssl.handshakeDetectionTimeoutMillis` is 5 s).
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `handshake`, or a `TimedOut` error once [`HANDSHAKE_TIMEOUT`] has passed: a client (or
/// peer) that connects and never completes its handshake holds nothing for longer.
pub async fn within_handshake_time<T>(
    handshake: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    let timeout = async {
        glommio::timer::sleep(HANDSHAKE_TIMEOUT).await;
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no TLS handshake within 5 s"))
    };
    futures_lite::future::or(handshake, timeout).await
}

/// TLS between the servers of an ensemble (`--peer-tls`, ZooKeeper's quorum TLS): each end
/// presents this server's certificate and requires the other's, verified against
/// `--tls-peer-ca`; a dialer also checks that the certificate names the address it dialed.
#[derive(Clone)]
pub struct PeerTls {
    /// For connections peers make to this server.
    pub acceptor: futures_rustls::TlsAcceptor,
    /// For connections this server makes.
    pub connector: futures_rustls::TlsConnector,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

/// What TLS the settings ask for: the secure client port's, the etcd port's (`--etcd-tls`)
/// and the peer port's (`--peer-tls`).
#[derive(Default)]
#[allow(missing_debug_implementations)] // futures-rustls's acceptors have none
pub struct Acceptors {
    /// The secure client port.
    pub zk: Option<futures_rustls::TlsAcceptor>,
    /// The etcd port.
    pub etcd: Option<futures_rustls::TlsAcceptor>,
    /// The peer port and the links to peers.
    pub peer: Option<PeerTls>,
}

/// The TLS the settings ask for. Every port presents the same certificate, reloaded from its
/// files when they change (see [`ReloadingCert`]).
pub fn acceptors(config: &ServerConfig) -> Result<Acceptors, TlsError> {
    let zk = config.secure_client_addr.0.is_some();
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else { return Ok(Acceptors::default()) };
    if !zk && !config.etcd_tls && !config.peer_tls {
        return Ok(Acceptors::default());
    }
    // ring, not aws-lc-rs (rustls's default): aws-lc-rs builds a large C library, minutes on
    // a 2-core CI machine. rustls 0.23.48 deprecates ring's provider for lacking
    // post-quantum key exchange; the classical suites it offers are what ZooKeeper's and
    // kazoo's TLS stacks speak.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = ReloadingCert::new(cert, key, provider.clone())?;
    let mut watched: Vec<std::sync::Weak<dyn Reloads>> = vec![Arc::downgrade(&certified) as _];
    // One verifier per CA file, shared by the ports that use it.
    let client_ca = config.tls_client_ca.as_deref().map(|ca| ReloadingCa::new(ca, provider.clone())).transpose()?;
    let peer_ca = match (config.peer_tls, &config.tls_peer_ca) {
        (true, Some(ca)) => Some(ReloadingCa::new(ca, provider.clone())?),
        _ => None,
    };
    watched.extend(client_ca.iter().chain(&peer_ca).map(|ca| Arc::downgrade(ca) as _));
    let make = |alpn: &[&[u8]]| -> Result<futures_rustls::TlsAcceptor, TlsError> {
        let mut server = server_config(&certified, client_ca.as_ref(), provider.clone())?;
        server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(futures_rustls::TlsAcceptor::from(Arc::new(server)))
    };
    let zk = zk.then(|| make(&[])).transpose()?;
    // gRPC clients ask for ALPN's h2.
    let etcd = config.etcd_tls.then(|| make(&[b"h2"])).transpose()?;
    let peer = peer_ca.as_ref().map(|ca| peer_tls(&certified, ca, provider.clone())).transpose()?;
    watch(watched);
    Ok(Acceptors { zk, etcd, peer })
}

fn peer_tls(
    certified: &Arc<ReloadingCert>,
    ca: &Arc<ReloadingCa>,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<PeerTls, TlsError> {
    let server = server_config(certified, Some(ca), provider.clone())?;
    let refused = |why: String| TlsError::Config { cert: certified.cert.clone(), key: certified.key.clone(), why };
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| refused(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(ca.clone())
        .with_client_cert_resolver(certified.clone());
    Ok(PeerTls {
        acceptor: futures_rustls::TlsAcceptor::from(Arc::new(server)),
        connector: futures_rustls::TlsConnector::from(Arc::new(client)),
    })
}

fn server_config(
    certified: &Arc<ReloadingCert>,
    client_ca: Option<&Arc<ReloadingCa>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<rustls::ServerConfig, TlsError> {
    let refused = |why: String| TlsError::Config { cert: certified.cert.clone(), key: certified.key.clone(), why };
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| refused(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(ca.clone()),
    };
    Ok(builder.with_cert_resolver(certified.clone()))
}

/// Something loaded from files that [`watch`] reloads when they change.
trait Reloads: Send + Sync {
    /// Loads the files again if they changed since the last load: `Ok(true)` when what was
    /// loaded is now in use.
    fn reload_if_changed(&self) -> Result<bool, TlsError>;
    /// What it is, for the log.
    fn describe(&self) -> String;
}

/// Looks for changes every [`RELOAD_CHECK`] on a thread of its own, until the last acceptor
/// using them is gone.
fn watch(watched: Vec<std::sync::Weak<dyn Reloads>>) {
    let spawned = std::thread::Builder::new().name("baton-tls-reload".into()).spawn(move || loop {
        std::thread::sleep(RELOAD_CHECK);
        let alive: Vec<Arc<dyn Reloads>> = watched.iter().filter_map(std::sync::Weak::upgrade).collect();
        if alive.is_empty() {
            return;
        }
        for reloading in alive {
            match reloading.reload_if_changed() {
                Ok(true) => tracing::info!(what = %reloading.describe(), "TLS file reloaded"),
                Ok(false) => {}
                Err(e) => tracing::error!(%e, "TLS file not reloaded; what was loaded before stays in use"),
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(%e, "TLS certificates will not be reloaded: no thread to watch them");
    }
}

/// A CA file (`--tls-client-ca`, `--tls-peer-ca`) as the verifier of the certificates peers
/// and clients present: rebuilt when the file changes (as ZooKeeper reloads its truststore),
/// so a CA can be added or replaced without a restart. Serves both directions: a server
/// verifying a client's certificate, and a peer link's dialer verifying the server's (whose
/// certificate must name the address dialed).
pub struct ReloadingCa {
    path: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The file's modification time when last loaded.
    loaded: std::sync::Mutex<Option<std::time::SystemTime>>,
    current: std::sync::RwLock<CaVerifiers>,
}

/// The verifiers built from one version of a CA file.
#[derive(Clone)]
struct CaVerifiers {
    client: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    server: Arc<rustls::client::WebPkiServerVerifier>,
    /// The CAs' names, hinted to clients. `root_hint_subjects` lends them for as long as the
    /// verifier lives, which a reloaded file's names cannot be borrowed from behind a lock
    /// for: each version's are leaked instead, a few hundred bytes per change of the file.
    hints: &'static [rustls::DistinguishedName],
}

impl std::fmt::Debug for ReloadingCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReloadingCa({})", self.path.display())
    }
}

impl ReloadingCa {
    fn new(path: &Path, provider: Arc<rustls::crypto::CryptoProvider>) -> Result<Arc<Self>, TlsError> {
        let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let current = Self::load(path, &provider)?;
        Ok(Arc::new(ReloadingCa {
            path: path.to_path_buf(),
            provider,
            loaded: std::sync::Mutex::new(stamp),
            current: std::sync::RwLock::new(current),
        }))
    }

    fn load(path: &Path, provider: &Arc<rustls::crypto::CryptoProvider>) -> Result<CaVerifiers, TlsError> {
        let file = |why: String| TlsError::File { path: path.to_path_buf(), why };
        let mut roots = rustls::RootCertStore::empty();
        for c in certificates(path)? {
            roots.add(c).map_err(|e| file(e.to_string()))?;
        }
        let roots = Arc::new(roots);
        let client = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| file(e.to_string()))?;
        let server = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| file(e.to_string()))?;
        let hints = Box::leak(roots.subjects().into_boxed_slice());
        Ok(CaVerifiers { client, server, hints })
    }

    fn now(&self) -> CaVerifiers {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Reloads for ReloadingCa {
    fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if now.is_none() || now == *loaded {
            return Ok(false);
        }
        // Noted before loading: a broken file is reported once, not every second.
        *loaded = now;
        let verifiers = Self::load(&self.path, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = verifiers;
        Ok(true)
    }

    fn describe(&self) -> String {
        format!("CA certificates {}", self.path.display())
    }
}

impl rustls::server::danger::ClientCertVerifier for ReloadingCa {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.now().hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.now().client.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.now().client.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.now().client.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.now().client.supported_verify_schemes()
    }
}

impl rustls::client::danger::ServerCertVerifier for ReloadingCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.now().server.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.now().server.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.now().server.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.now().server.supported_verify_schemes()
    }
}

/// How often the certificate's files are looked at for a change.
const RELOAD_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// The server's certificate and key, as rustls asks for them on each handshake: reloaded
/// when their files change (as ZooKeeper's `FileChangeWatcher` reloads its keystore), so a
/// rotated certificate needs no restart. A reload that fails (a half-written file, a key that
/// does not match, an expired certificate) is logged and the certificate in use kept.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
    /// The files' modification times when last loaded.
    loaded: std::sync::Mutex<Option<(std::time::SystemTime, std::time::SystemTime)>>,
}

impl ReloadingCert {
    fn new(cert: &Path, key: &Path, provider: Arc<rustls::crypto::CryptoProvider>) -> Result<Arc<Self>, TlsError> {
        let stamps = stamps(cert, key);
        let certified = load(cert, key, &provider)?;
        Ok(Arc::new(ReloadingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current: std::sync::RwLock::new(Arc::new(certified)),
            loaded: std::sync::Mutex::new(stamps),
        }))
    }

    /// Loads the files again if either changed since the last load: `Ok(true)` when a new
    /// certificate is in use.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.cert, &self.key);
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if now.is_none() || now == *loaded {
            return Ok(false);
        }
        // Noted before loading: a broken file is reported once, not every second.
        *loaded = now;
        let certified = load(&self.cert, &self.key, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(certified);
        Ok(true)
    }
}

impl Reloads for ReloadingCert {
    fn reload_if_changed(&self) -> Result<bool, TlsError> {
        ReloadingCert::reload_if_changed(self)
    }

    fn describe(&self) -> String {
        format!("certificate {} and key {}", self.cert.display(), self.key.display())
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

impl rustls::client::ResolvesClientCert for ReloadingCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The modification times of the certificate and key files (`None` if either cannot be read).
fn stamps(cert: &Path, key: &Path) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((modified(cert)?, modified(key)?))
}

/// The certificate chain and key from their files: the key must match the certificate, and
/// the certificate must be valid now.
fn load(
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<rustls::sign::CertifiedKey, TlsError> {
    let chain = certificates(cert)?;
    let file = |why: String| TlsError::File { path: cert.to_path_buf(), why };
    if let Some(leaf) = chain.first() {
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| file(e.to_string()))?;
        let validity = parsed.validity();
        if !validity.is_valid() {
            return Err(file(format!(
                "the certificate is valid from {} to {}, not now",
                validity.not_before, validity.not_after
            )));
        }
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::File { path: key.to_path_buf(), why: format!("no private key: {e}") })?;
    rustls::sign::CertifiedKey::from_der(chain, private, provider).map_err(|e| TlsError::Config {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        why: e.to_string(),
    })
}

/// Every certificate in a PEM file (at least one).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = |why: String| TlsError::File { path: path.to_path_buf(), why };
    let all = CertificateDer::pem_file_iter(path)
        .map_err(|e| file(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file(e.to_string()))?;
    if all.is_empty() {
        return Err(file("no certificate in it".into()));
    }
    Ok(all)
}

/// A certificate's subject as Java's `X500Principal.getName()` writes it (RFC 2253: the
/// relative names last to first, joined by commas, known attribute types by keyword, others
/// as a dotted OID with the value's DER in hex): ZooKeeper's `x509` scheme uses it as the
/// client's id. `None` if the certificate does not parse.
pub fn subject_rfc2253(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut parts = Vec::new();
    for rdn in cert.subject().iter().collect::<Vec<_>>().into_iter().rev() {
        let attributes: Vec<String> = rdn
            .iter()
            .map(|attr| {
                let oid = attr.attr_type().to_id_string();
                match (keyword(&oid), attr.as_str()) {
                    (Some(k), Ok(value)) => format!("{k}={}", escape(value)),
                    _ => {
                        let hex: String = attr.attr_value().data.iter().map(|b| format!("{b:02x}")).collect();
                        let tag = attr.attr_value().header.tag().0 as u8;
                        let len = attr.attr_value().data.len();
                        // The value's whole DER: tag, a short length, the content.
                        let short = u8::try_from(len).ok().filter(|&l| l < 128);
                        match short {
                            Some(l) => format!("{oid}=#{tag:02x}{l:02x}{hex}"),
                            None => format!("{oid}=#{hex}"),
                        }
                    }
                }
            })
            .collect();
        parts.push(attributes.join("+"));
    }
    Some(parts.join(","))
}

/// RFC 2253's keywords (those Java's RFC 2253 form prints by name).
fn keyword(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        _ => return None,
    })
}

/// RFC 2253's escaping: `,+"\<>;` with a backslash, and a leading `#` or space or a trailing
/// space.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made with `openssl req -x509 -subj "/C=NL/O=Baton, tests/CN=alice"` (the subject's
    /// names in that order in the DER).
    const ALICE: &str = "-----BEGIN CERTIFICATE-----\nMIIBvzCCAWWgAwIBAgIUQ1hkiBNo2wgnMsyxlVXbgMGYfacwCgYIKoZIzj0EAwIw\nNDELMAkGA1UEBhMCTkwxFTATBgNVBAoMDEJhdG9uLCB0ZXN0czEOMAwGA1UEAwwF\nYWxpY2UwIBcNMjYxMjA3MTkxNzA5WhgPMjEyNjExMTMxOTE3MDlaMDQxCzAJBgNV\nBAYTAk5MMRUwEwYDVQQKDAxCYXRvbiwgdGVzdHMxDjAMBgNVBAMMBWFsaWNlMFkw\nEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9ylHJLB8Ba3Xil/6GMLOtgHwEq9+i8aZ\nvtd2hzT6A+F3I8Qn/aURcGHm4fMazUymYZmBMP5Ct4Uku6z5gBh3QaNTMFEwHQYD\nVR0OBBYEFNZi30Ek6UWkIM4xIhpmqDaAFFumMB8GA1UdIwQYMBaAFNZi30Ek6UWk\nIM4xIhpmqDaAFFumMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIh\nAN2wSdzC8qBZsr8VxdTRWnbdLjTGbN1fDUHVdt6mohfYAiBZBRTHzsezbp+ykLt+\nNEnRP4vpCkXSaavB8lLcjdXiZA==\n-----END CERTIFICATE-----\n";

    #[test]
    fn subjects_read_as_java_writes_them_last_name_first() {
        let der = CertificateDer::from_pem_slice(ALICE.as_bytes()).expect("a certificate");
        // What Java's getName() and `openssl x509 -noout -subject -nameopt RFC2253` print.
        assert_eq!(subject_rfc2253(&der).as_deref(), Some("CN=alice,O=Baton\\, tests,C=NL"));
        assert_eq!(subject_rfc2253(b"not a certificate"), None);
    }
}

#[cfg(test)]
mod reload_tests {
    use super::*;

    /// A self-signed certificate for `cn`, valid until `until` (year), and its key, as PEM.
    fn made(cn: &str, until: i32) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[allow(deprecated)]
    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn in_use(c: &ReloadingCert) -> Vec<u8> {
        c.current.read().expect("lock").cert[0].to_vec()
    }

    #[test]
    fn a_changed_certificate_is_reloaded_and_a_bad_one_refused_keeping_the_one_in_use() {
        let dir = std::env::temp_dir().join(format!("baton-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let (a_cert, a_key) = made("a", 2200);
        let (b_cert, b_key) = made("b", 2200);
        let (old_cert, old_key) = made("old", 2001);
        std::fs::write(&cert, &a_cert).expect("write");
        std::fs::write(&key, &b_key).expect("write");
        let refused = ReloadingCert::new(&cert, &key, provider()).expect_err("a key of another certificate");
        assert!(refused.to_string().contains("cert.pem"), "{refused}");
        std::fs::write(&cert, &old_cert).expect("write");
        std::fs::write(&key, &old_key).expect("write");
        let refused = ReloadingCert::new(&cert, &key, provider()).expect_err("expired");
        assert!(refused.to_string().contains("not now"), "{refused}");
        std::fs::write(&cert, &a_cert).expect("write");
        std::fs::write(&key, &a_key).expect("write");
        let reloading = ReloadingCert::new(&cert, &key, provider()).expect("a");
        let first = in_use(&reloading);
        assert!(!reloading.reload_if_changed().expect("unchanged"), "nothing changed");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&cert, &b_cert).expect("write");
        std::fs::write(&key, &b_key).expect("write");
        assert!(reloading.reload_if_changed().expect("b loads"), "b is in use");
        let second = in_use(&reloading);
        assert_ne!(first, second);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&cert, "not a certificate").expect("write");
        assert!(reloading.reload_if_changed().is_err(), "a broken file is reported");
        assert!(!reloading.reload_if_changed().expect("once"), "and only once");
        assert_eq!(in_use(&reloading), second, "the certificate in use stays");
        let _ = std::fs::remove_dir_all(&dir);
    }
    /// A CA, and a client certificate it issued (DER).
    fn ca_and_client(cn: &str) -> (String, CertificateDer<'static>) {
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("{cn} CA"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let ca = params.self_signed(&ca_key).expect("ca");
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().expect("key");
        let client = params.signed_by(&key, &ca, &ca_key).expect("client");
        (ca.pem(), client.der().clone())
    }

    #[test]
    fn a_changed_ca_file_verifies_its_new_cas_clients_and_a_broken_one_keeps_the_old() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::server::danger::ClientCertVerifier;
        let dir = std::env::temp_dir().join(format!("baton-tls-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("ca.pem");
        let (first_ca, first_client) = ca_and_client("first");
        let (second_ca, second_client) = ca_and_client("second");
        std::fs::write(&path, &first_ca).expect("write");
        let ca = ReloadingCa::new(&path, provider()).expect("a CA file");
        let now = rustls::pki_types::UnixTime::now();
        let accepts = |cert: &CertificateDer<'_>| ca.verify_client_cert(cert, &[], now).is_ok();
        assert!(accepts(&first_client) && !accepts(&second_client));
        let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        assert!(ca.verify_server_cert(&first_client, &[], &name, &[], now).is_ok(), "the dialer's check too");
        assert_eq!(ClientCertVerifier::root_hint_subjects(&*ca).len(), 1);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, format!("{first_ca}{second_ca}")).expect("write");
        assert!(ca.reload_if_changed().expect("both load"));
        assert!(accepts(&first_client) && accepts(&second_client), "a CA added");
        assert_eq!(ClientCertVerifier::root_hint_subjects(&*ca).len(), 2);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, &second_ca).expect("write");
        assert!(ca.reload_if_changed().expect("the second loads"));
        assert!(!accepts(&first_client) && accepts(&second_client), "a CA removed");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, "not a certificate").expect("write");
        assert!(ca.reload_if_changed().is_err(), "a broken file is reported");
        assert!(!ca.reload_if_changed().expect("once"), "and only once");
        assert!(accepts(&second_client), "the CAs in use stay");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
