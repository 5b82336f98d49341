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

/// The acceptor for the secure client port, if one is configured.
pub fn client_acceptor(config: &ServerConfig) -> Result<Option<futures_rustls::TlsAcceptor>, TlsError> {
    let (Some(_), Some(cert), Some(key)) = (config.secure_client_addr.0, &config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let server = server_config(cert, key, config.tls_client_ca.as_deref())?;
    Ok(Some(futures_rustls::TlsAcceptor::from(Arc::new(server))))
}

/// The acceptor for the etcd port, with `--etcd-tls`: the same certificate, key and client
/// CA, and ALPN's `h2` (gRPC clients ask for it).
pub fn etcd_acceptor(config: &ServerConfig) -> Result<Option<futures_rustls::TlsAcceptor>, TlsError> {
    let (true, Some(cert), Some(key)) = (config.etcd_tls, &config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let mut server = server_config(cert, key, config.tls_client_ca.as_deref())?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(futures_rustls::TlsAcceptor::from(Arc::new(server))))
}

fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<rustls::ServerConfig, TlsError> {
    let chain = certificates(cert)?;
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::File { path: key.to_path_buf(), why: format!("no private key: {e}") })?;
    // ring, not aws-lc-rs (rustls's default): aws-lc-rs builds a large C library, minutes on
    // a 2-core CI machine. rustls 0.23.48 deprecates ring's provider for lacking
    // post-quantum key exchange; the classical suites it offers are what ZooKeeper's and
    // kazoo's TLS stacks speak.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let refused = |why: String| TlsError::Config { cert: cert.to_path_buf(), key: key.to_path_buf(), why };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| refused(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates(ca)? {
                roots.add(c).map_err(|e| TlsError::File { path: ca.to_path_buf(), why: e.to_string() })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::File { path: ca.to_path_buf(), why: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder.with_single_cert(chain, private).map_err(|e| refused(e.to_string()))
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
