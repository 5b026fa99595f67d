//! Development certificates: a cluster CA, node certificates and a client certificate, made
//! with rcgen. `repnode certs init` writes them; production clusters bring their own PKI.
//!
//! Every certificate's common name is the identity the transport reports for its holder.
//! Node certificates also name `localhost` and `127.0.0.1`, so a local cluster verifies.

use std::fs;
use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::QuicError;

/// The organizational unit that marks a client certificate.
pub const CLIENT_UNIT: &str = "client";

/// A certificate authority able to issue node and client certificates.
pub struct DevCa {
    key: KeyPair,
    cert: rcgen::Certificate,
}

/// A PEM certificate and its PEM private key.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
}

fn rcgen_error(error: rcgen::Error) -> QuicError {
    QuicError::Certificate(error.to_string())
}

impl DevCa {
    /// A new CA with a fresh key.
    ///
    /// # Errors
    /// [`QuicError::Certificate`] if generation fails.
    pub fn generate(name: &str) -> Result<DevCa, QuicError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let cert = params.self_signed(&key).map_err(rcgen_error)?;
        Ok(DevCa { key, cert })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// Issues a node certificate whose identity is `name`, valid for a node at `localhost`,
    /// `127.0.0.1` and `name`.
    ///
    /// # Errors
    /// [`QuicError::Certificate`] if generation fails.
    pub fn issue(&self, name: &str) -> Result<IssuedCert, QuicError> {
        self.issue_with(name, |_| {})
    }

    /// Issues a node certificate for `name` (as [`DevCa::issue`]) and returns it as the
    /// identity a [`crate::QuicTransport`] binds with.
    ///
    /// # Errors
    /// [`QuicError::Certificate`] if generation or parsing fails.
    pub fn identity(&self, name: &str) -> Result<TlsIdentity, QuicError> {
        let issued = self.issue(name)?;
        TlsIdentity::from_pem(&self.cert_pem(), &issued.cert_pem, &issued.key_pem)
    }

    /// Issues a client certificate (organizational unit `client`): it may use a server, but
    /// replicate only from databases that name it in their replicators.
    ///
    /// # Errors
    /// [`QuicError::Certificate`] if generation fails.
    pub fn issue_client(&self, name: &str) -> Result<IssuedCert, QuicError> {
        self.issue_with(name, |params| {
            params
                .distinguished_name
                .push(DnType::OrganizationalUnitName, CLIENT_UNIT);
        })
    }

    /// Issues a certificate after `adjust` edits its parameters (tests use it for expired
    /// certificates).
    ///
    /// # Errors
    /// [`QuicError::Certificate`] if generation fails.
    pub fn issue_with(
        &self,
        name: &str,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Result<IssuedCert, QuicError> {
        let mut params = CertificateParams::new(vec![name.to_string(), "localhost".to_string()])
            .map_err(rcgen_error)?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params.distinguished_name.push(DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        adjust(&mut params);
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(rcgen_error)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes a development PKI into `dir`: `ca.pem`, `<node>.pem` and `<node>.key` for every
/// node, and `client.pem` / `client.key`.
///
/// # Errors
/// [`QuicError::Certificate`] or [`QuicError::Io`].
pub fn write_dev_pki(dir: &Path, nodes: &[&str]) -> Result<(), QuicError> {
    fs::create_dir_all(dir)?;
    let ca = DevCa::generate("repnode development CA")?;
    fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    for name in nodes.iter().copied().chain(["client"]) {
        let issued = if name == "client" {
            ca.issue_client(name)?
        } else {
            ca.issue(name)?
        };
        fs::write(dir.join(format!("{name}.pem")), issued.cert_pem)?;
        fs::write(dir.join(format!("{name}.key")), issued.key_pem)?;
    }
    Ok(())
}

/// What a node or client presents and trusts: its certificate chain and key, and the
/// cluster's CA.
#[derive(Debug)]
pub struct TlsIdentity {
    /// The cluster CA certificates.
    pub ca: Vec<CertificateDer<'static>>,
    /// This holder's certificate chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// This holder's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> TlsIdentity {
        TlsIdentity {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    /// Parses PEM text.
    ///
    /// # Errors
    /// [`QuicError::Certificate`] for unreadable PEM.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<TlsIdentity, QuicError> {
        let certs = |pem: &str, what: &str| -> Result<Vec<CertificateDer<'static>>, QuicError> {
            let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| QuicError::Certificate(format!("{what}: {e}")))?;
            if certs.is_empty() {
                return Err(QuicError::Certificate(format!(
                    "{what}: no certificate found"
                )));
            }
            Ok(certs)
        };
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| QuicError::Certificate(format!("private key: {e}")))?;
        Ok(TlsIdentity {
            ca: certs(ca_pem, "CA")?,
            chain: certs(cert_pem, "certificate")?,
            key,
        })
    }

    /// Loads `ca.pem`, `<name>.pem` and `<name>.key` from `dir`.
    ///
    /// # Errors
    /// [`QuicError::Io`] naming a missing file, [`QuicError::Certificate`] for bad PEM.
    pub fn load(dir: &Path, name: &str) -> Result<TlsIdentity, QuicError> {
        let read = |file: String| {
            let path = dir.join(&file);
            fs::read_to_string(&path)
                .map_err(|e| QuicError::Certificate(format!("{}: {e}", path.display())))
        };
        TlsIdentity::from_pem(
            &read("ca.pem".into())?,
            &read(format!("{name}.pem"))?,
            &read(format!("{name}.key"))?,
        )
    }
}
