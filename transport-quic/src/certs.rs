//! A cluster's certificates: a CA, node certificates and a client certificate, made with
//! rcgen. `repnode certs init` writes them ([`init_pki`]) and `repnode certs add-node` issues
//! more from the kept CA ([`add_node`]); a cluster may bring its own PKI instead.
//!
//! Every certificate's common name is the identity the transport reports for its holder.
//! Node certificates name the node, `localhost`, `127.0.0.1` and the addresses the node is
//! reached at ([`NodeSpec`]), so that a peer dialling any of them verifies it.
//!
//! The directory holds `ca.pem`, `NAME.pem` and `NAME.key` per node, and `client.pem` and
//! `client.key`; the CA's key is kept apart, in `ca/ca.key` (directory 0700, file 0600, as
//! every key). Nothing is overwritten without `force`.

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

    /// The CA's private key, PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The CA of `cert_pem` and its key `key_pem`, to issue more certificates: its
    /// certificate is rebuilt from its subject and key, so that what it signs verifies against
    /// the original `ca.pem`.
    ///
    /// # Errors
    /// [`QuicError::Certificate`] for unreadable PEM, a certificate that is not a CA, or a key
    /// that is not the certificate's.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<DevCa, QuicError> {
        let bad = |why: String| QuicError::Certificate(why);
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad(format!("CA certificate: {e}")))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| bad(format!("CA certificate: {e}")))?;
        if !parsed.is_ca() {
            return Err(bad("the certificate given as the CA is not a CA".into()));
        }
        // Rebuilt from its common name alone: a subject with more would not match what the
        // rebuilt CA writes as issuer, and the certificates would not verify.
        if parsed.subject().iter().count() != 1 {
            return Err(bad(
                "certs add-node issues only from a CA that certs init made (a subject of its \
                 common name alone); issue from your own PKI's tools instead"
                    .into(),
            ));
        }
        let name = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or_else(|| bad("the CA certificate has no common name".into()))?
            .to_string();
        let key = KeyPair::from_pem(key_pem).map_err(|e| bad(format!("CA key: {e}")))?;
        if key.public_key_der() != parsed.public_key().raw {
            return Err(bad("the CA key is not the CA certificate's".into()));
        }
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).map_err(rcgen_error)?;
        Ok(DevCa { key, cert })
    }

    /// Issues a node certificate for `node`: valid for its name, `localhost`, `127.0.0.1` and
    /// every address it lists (IP addresses as such, anything else as a DNS name).
    ///
    /// # Errors
    /// [`QuicError::Certificate`] if generation fails.
    pub fn issue_node(&self, node: &NodeSpec) -> Result<IssuedCert, QuicError> {
        self.issue_with(&node.name, |params| {
            for address in &node.addresses {
                let san = match address.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => match address.clone().try_into() {
                        Ok(name) => SanType::DnsName(name),
                        Err(_) => continue,
                    },
                };
                if !params.subject_alt_names.contains(&san) {
                    params.subject_alt_names.push(san);
                }
            }
        })
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

/// A node to certify: its identity, and the addresses (IP addresses or DNS names) its peers
/// dial it at, beyond `localhost` and `127.0.0.1`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSpec {
    /// The node's identity (its certificate's common name, the name quorum policies use).
    pub name: String,
    /// The addresses it is reached at.
    pub addresses: Vec<String>,
}

impl NodeSpec {
    /// Parses `NAME` or `NAME=ADDRESS`.
    ///
    /// # Errors
    /// [`QuicError::Certificate`] for a name [`check_identity`] refuses or an address that is
    /// neither an IP address nor a DNS name.
    pub fn parse(text: &str) -> Result<NodeSpec, QuicError> {
        let (name, address) = match text.split_once('=') {
            Some((name, address)) => (name, Some(address)),
            None => (text, None),
        };
        check_identity(name)?;
        let addresses = match address {
            Some(address) => {
                check_address(address)?;
                vec![address.to_string()]
            }
            None => Vec::new(),
        };
        Ok(NodeSpec {
            name: name.to_string(),
            addresses,
        })
    }

    /// Merges repeated names (`n1=10.0.0.1,n1=db1.example.org`) into one spec each, in order
    /// of first appearance.
    pub fn merge(specs: Vec<NodeSpec>) -> Vec<NodeSpec> {
        let mut merged: Vec<NodeSpec> = Vec::new();
        for spec in specs {
            match merged.iter_mut().find(|m| m.name == spec.name) {
                Some(existing) => existing.addresses.extend(spec.addresses),
                None => merged.push(spec),
            }
        }
        merged
    }
}

/// Refuses a node name that cannot be one: it becomes a file name in the certificate
/// directory (no `/`, no `..`), and must not take the place of the client's or the CA's files.
///
/// # Errors
/// [`QuicError::Certificate`] saying why.
pub fn check_identity(name: &str) -> Result<(), QuicError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !valid {
        return Err(QuicError::Certificate(format!(
            "node name {name:?}: use 1 to 63 letters, digits, '-', '_' or '.', beginning with \
             a letter or digit"
        )));
    }
    if matches!(name, "client" | "ca") {
        return Err(QuicError::Certificate(format!(
            "node name {name:?} is reserved: its files would replace the {name}'s"
        )));
    }
    Ok(())
}

/// Refuses an address that is neither an IP address nor a DNS name.
fn check_address(address: &str) -> Result<(), QuicError> {
    let dns = !address.is_empty()
        && address.len() <= 253
        && address.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if address.parse::<std::net::IpAddr>().is_ok() || dns {
        Ok(())
    } else {
        Err(QuicError::Certificate(format!(
            "address {address:?}: expected an IP address or a DNS name (no port)"
        )))
    }
}

/// Where the CA's key is kept, under the certificate directory.
pub const CA_KEY: &str = "ca/ca.key";

/// Writes `contents` to `path`, readable only by its owner when `secret` (a key), refusing to
/// replace an existing file unless `force`.
fn write_file(path: &Path, contents: &str, secret: bool, force: bool) -> Result<(), QuicError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if !force && path.exists() {
        return Err(QuicError::Certificate(format!(
            "{} exists: not replaced without --force",
            path.display()
        )));
    }
    let mut options = fs::OpenOptions::new();
    options
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 });
    let mut file = options.open(path)?;
    // A file that existed keeps its old mode through open(): set it.
    if secret {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// Writes a certificate and its key as `NAME.pem` and `NAME.key` (0600).
fn write_issued(dir: &Path, name: &str, issued: &IssuedCert, force: bool) -> Result<(), QuicError> {
    write_file(
        &dir.join(format!("{name}.pem")),
        &issued.cert_pem,
        false,
        force,
    )?;
    write_file(
        &dir.join(format!("{name}.key")),
        &issued.key_pem,
        true,
        force,
    )
}

/// Writes a new PKI into `dir`: `ca.pem`, its key in [`CA_KEY`], `NAME.pem` and `NAME.key`
/// for every node (valid for its addresses and `extra_names`), and `client.pem` /
/// `client.key`. Returns the files written.
///
/// # Errors
/// [`QuicError::Certificate`] when `dir` already holds a CA (or any of the files) and not
/// `force`, or when generation fails; [`QuicError::Io`].
pub fn init_pki(
    dir: &Path,
    nodes: &[NodeSpec],
    extra_names: &[String],
    force: bool,
) -> Result<Vec<String>, QuicError> {
    if !force && dir.join("ca.pem").exists() {
        return Err(QuicError::Certificate(format!(
            "{} already holds a CA (ca.pem): certificates it issued would not verify against \
             a new one. Issue more with `certs add-node`, or replace everything with --force",
            dir.display()
        )));
    }
    for extra in extra_names {
        check_address(extra)?;
    }
    // Every file checked before any is written: a refusal leaves the directory as it was.
    if !force {
        let names = nodes.iter().map(|n| n.name.as_str()).chain(["client"]);
        for file in names.flat_map(|name| [format!("{name}.pem"), format!("{name}.key")]) {
            if dir.join(&file).exists() {
                return Err(QuicError::Certificate(format!(
                    "{} exists: not replaced without --force",
                    dir.join(file).display()
                )));
            }
        }
        if dir.join(CA_KEY).exists() {
            return Err(QuicError::Certificate(format!(
                "{} exists: not replaced without --force",
                dir.join(CA_KEY).display()
            )));
        }
    }
    fs::create_dir_all(dir.join("ca"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.join("ca"), fs::Permissions::from_mode(0o700))?;
    }
    let ca = DevCa::generate("repnode cluster CA")?;
    write_file(&dir.join("ca.pem"), &ca.cert_pem(), false, force)?;
    write_file(&dir.join(CA_KEY), &ca.key_pem(), true, force)?;
    let mut written = vec!["ca.pem".to_string(), CA_KEY.to_string()];
    for node in nodes {
        let mut node = node.clone();
        node.addresses.extend(extra_names.iter().cloned());
        write_issued(dir, &node.name, &ca.issue_node(&node)?, force)?;
        written.extend([format!("{}.pem", node.name), format!("{}.key", node.name)]);
    }
    write_issued(dir, "client", &ca.issue_client("client")?, force)?;
    written.extend(["client.pem".to_string(), "client.key".to_string()]);
    Ok(written)
}

/// Issues a certificate for one more node from the CA kept in `dir` (`ca.pem` and
/// [`CA_KEY`]). Returns the files written.
///
/// # Errors
/// [`QuicError::Certificate`] when the CA or its key is missing or unusable, or the node's
/// files exist and not `force`; [`QuicError::Io`].
pub fn add_node(dir: &Path, node: &NodeSpec, force: bool) -> Result<Vec<String>, QuicError> {
    check_identity(&node.name)?;
    let ca = load_kept_ca(dir)?;
    write_issued(dir, &node.name, &ca.issue_node(node)?, force)?;
    Ok(vec![
        format!("{}.pem", node.name),
        format!("{}.key", node.name),
    ])
}

/// Issues a client certificate (organizational unit `client`) for identity `name` from the CA
/// kept in `dir`. Returns the files written.
///
/// # Errors
/// As [`add_node`].
pub fn add_client(dir: &Path, name: &str, force: bool) -> Result<Vec<String>, QuicError> {
    check_identity(name)?;
    let ca = load_kept_ca(dir)?;
    write_issued(dir, name, &ca.issue_client(name)?, force)?;
    Ok(vec![format!("{name}.pem"), format!("{name}.key")])
}

/// The CA `certs init` kept in `dir`.
fn load_kept_ca(dir: &Path) -> Result<DevCa, QuicError> {
    let read = |file: &str| {
        let path = dir.join(file);
        fs::read_to_string(&path).map_err(|e| {
            QuicError::Certificate(format!(
                "{}: {e} (issuing needs the CA that certs init kept)",
                path.display()
            ))
        })
    };
    DevCa::load(&read("ca.pem")?, &read(CA_KEY)?)
}

/// Writes a development PKI into `dir`, replacing what is there: `ca.pem` (its key in
/// [`CA_KEY`]), `<node>.pem` and `<node>.key` for every node, and `client.pem` /
/// `client.key`. Tests and the demo use it; `certs init` is [`init_pki`].
///
/// # Errors
/// [`QuicError::Certificate`] or [`QuicError::Io`].
pub fn write_dev_pki(dir: &Path, nodes: &[&str]) -> Result<(), QuicError> {
    let nodes: Vec<NodeSpec> = nodes
        .iter()
        .map(|name| NodeSpec {
            name: name.to_string(),
            addresses: Vec::new(),
        })
        .collect();
    init_pki(dir, &nodes, &[], true).map(|_| ())
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

    /// Loads an existing PKI's files: the cluster CA's certificate, this holder's certificate
    /// (chain) and its key, all PEM (etcdctl's `--cacert`, `--cert`, `--key`).
    ///
    /// # Errors
    /// [`QuicError::Certificate`] naming a file that cannot be read or parsed.
    pub fn load_files(ca: &Path, cert: &Path, key: &Path) -> Result<TlsIdentity, QuicError> {
        let read = |path: &Path| {
            fs::read_to_string(path)
                .map_err(|e| QuicError::Certificate(format!("{}: {e}", path.display())))
        };
        TlsIdentity::from_pem(&read(ca)?, &read(cert)?, &read(key)?)
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;

    use super::*;

    /// The subject alternative names of a PEM certificate, as text.
    fn sans(pem: &str) -> Vec<String> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        let names = cert
            .subject_alternative_name()
            .expect("extension")
            .expect("present");
        names
            .value
            .general_names
            .iter()
            .map(|name| match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => dns.to_string(),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string(),
                    _ => format!("{ip:?}"),
                },
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_node_certificate_names_every_address_given() {
        let specs = ["n1=10.0.0.1", "n1=db1.example.org", "n2"]
            .iter()
            .map(|text| NodeSpec::parse(text).expect("parses"))
            .collect();
        let specs = NodeSpec::merge(specs);
        assert_eq!(specs.len(), 2);
        let ca = DevCa::generate("test CA").expect("ca");
        let names = sans(&ca.issue_node(&specs[0]).expect("issued").cert_pem);
        for expected in [
            "n1",
            "localhost",
            "127.0.0.1",
            "10.0.0.1",
            "db1.example.org",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
    }

    #[test]
    fn names_that_would_escape_or_replace_files_are_refused() {
        for bad in [
            "../evil",
            "client",
            "ca",
            "",
            "a/b",
            "-x",
            "n1=10.0.0.1:7440",
            "n1=a b",
        ] {
            assert!(NodeSpec::parse(bad).is_err(), "{bad:?} refused");
        }
        assert!(NodeSpec::parse("db-2.east").is_ok());
    }

    #[test]
    fn a_kept_ca_issues_certificates_that_verify_against_the_original() {
        let dir = tempfile_dir();
        let n1 = NodeSpec::parse("n1").expect("spec");
        init_pki(&dir, &[n1], &[], false).expect("init");
        let refused = init_pki(&dir, &[], &[], false).expect_err("a CA exists");
        assert!(
            refused.to_string().contains("already holds a CA"),
            "{refused}"
        );
        let n3 = NodeSpec::parse("n3=10.0.0.3").expect("spec");
        add_node(&dir, &n3, false).expect("issued from the kept CA");
        assert!(
            add_node(&dir, &n3, false).is_err(),
            "not replaced without force"
        );
        // The new certificate chains to ca.pem: rustls's verifier accepts it.
        let identity = TlsIdentity::load(&dir, "n3").expect("identity");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(identity.ca[0].clone()).expect("root");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        let name = rustls::pki_types::ServerName::try_from("10.0.0.3").expect("name");
        verifier
            .verify_server_cert(
                &identity.chain[0],
                &[],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .expect("signed by the original CA, valid for its address");
        use std::os::unix::fs::PermissionsExt;
        for key in ["n1.key", "n3.key", "client.key", CA_KEY] {
            let mode = fs::metadata(dir.join(key))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let _ = fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "repnode-certs-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }
}
