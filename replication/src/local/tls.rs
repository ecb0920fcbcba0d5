//! TLS between agents and the replication server: the server makes itself a certificate
//! on first start (kept in the staging folder); an agent trusts exactly that certificate,
//! by its SHA-256 fingerprint (the pin it is installed with), and no certificate
//! authority.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::proto::hex;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's certificate and key, made once and kept in `dir`.
pub struct ServerIdentity {
    pub cert: CertificateDer<'static>,
    key: Vec<u8>,
}

impl ServerIdentity {
    pub fn load_or_create(dir: &Path) -> io::Result<ServerIdentity> {
        let cert_path = dir.join("replication-server.crt.der");
        let key_path = dir.join("replication-server.key.der");
        if cert_path.exists() && key_path.exists() {
            return Ok(ServerIdentity {
                cert: CertificateDer::from(std::fs::read(&cert_path)?),
                key: std::fs::read(&key_path)?,
            });
        }
        std::fs::create_dir_all(dir)?;
        let made = rcgen::generate_simple_self_signed(vec!["wavelift-replication".to_owned()])
            .map_err(|err| {
                io::Error::other(format!("cannot make the server certificate: {err}"))
            })?;
        let key = made.signing_key.serialize_der();
        let cert = made.cert.der().to_vec();
        write_private(&key_path, &key)?;
        super::volume::write_durably(&cert_path, &cert)?;
        Ok(ServerIdentity {
            cert: CertificateDer::from(cert),
            key,
        })
    }

    /// What agents pin: `sha256:` and the certificate's fingerprint.
    pub fn pin(&self) -> String {
        pin_of(&self.cert)
    }

    pub fn server_config(&self) -> io::Result<Arc<rustls::ServerConfig>> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_no_client_auth()
                    .with_single_cert(vec![self.cert.clone()], key)
            })
            .map(Arc::new)
            .map_err(|err| io::Error::other(format!("TLS setup: {err}")))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

pub fn pin_of(cert: &CertificateDer<'_>) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex(&sha2::Sha256::digest(cert.as_ref())))
}

/// A client configuration that accepts only the certificate with this pin.
pub fn client_config(pin: &str) -> io::Result<Arc<rustls::ClientConfig>> {
    let verifier = Arc::new(Pinned {
        pin: pin.to_ascii_lowercase(),
        provider: provider(),
    });
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map(|b| {
            Arc::new(
                b.dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth(),
            )
        })
        .map_err(|err| io::Error::other(format!("TLS setup: {err}")))
}

pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("wavelift-replication").unwrap_or(ServerName::IpAddress(
        std::net::IpAddr::from([127, 0, 0, 1]).into(),
    ))
}

#[derive(Debug)]
struct Pinned {
    pin: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = pin_of(end_entity);
        if seen == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the replication server's certificate is {seen}, not the pinned {}: another server answers at that address, or the server's staging folder was replaced (install the agent again to pin the new certificate)",
                self.pin
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
