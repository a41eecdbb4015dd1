//! The PKI: a certificate chain that mirrors the tree.
//!
//! The top unit holds the root CA. Every node holds a CA of its own, issued by its parent's
//! CA with a DNS name constraint for its own subtree, so a township's CA cannot issue for
//! another township's village (webpki enforces the constraint). A node's TLS certificate
//! names its unit in a DNS SAN (`v07.t03.k02.c01.<deployment>`) and is issued by its
//! parent's CA (the root's by the root CA). A valid chain is not authorisation: the network
//! layer also checks that the peer is its registered parent or child and that the peer's
//! certificate was issued by the peer's parent ([`expected_issuer`]).
//!
//! In this first cut the parent generates the child's keys and hands over the folder
//! (`grassroots pki issue`); a CSR flow that keeps the child's key on the child comes later.

use std::path::Path;
use std::sync::Arc;

use grassroots_schema::UnitId;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, NameConstraints,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::sync::wire::ALPN;

/// A PKI failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// Generating or signing a certificate failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Reading or writing the identity folder failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A PEM file does not hold what it should.
    #[error("{0}: bad PEM content")]
    BadPem(String),
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("tls verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The child is not a child of this unit.
    #[error("{child} is not a child of {parent}")]
    NotAChild {
        /// The would-be child.
        child: UnitId,
        /// This unit.
        parent: UnitId,
    },
    /// The peer's certificate does not name a unit of this deployment.
    #[error("peer certificate: {0}")]
    PeerCert(String),
}

/// Validity window of every certificate issued here.
fn validity(params: &mut CertificateParams) {
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2046, 1, 1);
}

/// The subject common name of `unit`'s CA; also how a peer's issuer is recognised.
pub fn ca_common_name(unit: &UnitId, deployment: &str) -> String {
    format!("grassroots CA {}", unit.dns_name(deployment))
}

/// The CA whose certificate must have issued `peer`'s TLS certificate: its parent's, or the
/// root's own for the root.
pub fn expected_issuer(peer: &UnitId, deployment: &str) -> String {
    ca_common_name(&peer.parent().unwrap_or_else(|| peer.clone()), deployment)
}

fn ca_params(unit: &UnitId, deployment: &str) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    validity(&mut p);
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, ca_common_name(unit, deployment));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::DnsName(unit.dns_name(deployment))],
        excluded_subtrees: vec![],
    });
    Ok(p)
}

fn leaf_params(unit: &UnitId, deployment: &str) -> Result<CertificateParams, PkiError> {
    let dns = unit.dns_name(deployment);
    let mut p = CertificateParams::new(vec![dns.clone()])?;
    validity(&mut p);
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, dns);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(p)
}

/// Everything a node needs to prove who it is and to issue for its children.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The node's unit.
    pub unit: UnitId,
    /// The deployment's DNS suffix (`demo.grassroots`).
    pub deployment: String,
    root: CertificateDer<'static>,
    /// TLS chain: the leaf, then the intermediate CAs above it (not the root).
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
    /// This node's CA and the CAs above it, not the root (empty at the root).
    issuer_chain: Vec<CertificateDer<'static>>,
    ca_key_pem: String,
}

impl Identity {
    /// A new deployment: root CA for `unit` (a city) and the root node's own certificate.
    pub fn create_root(unit: &UnitId, deployment: &str) -> Result<Identity, PkiError> {
        let ca_key = KeyPair::generate()?;
        let params = ca_params(unit, deployment)?;
        let root = params.self_signed(&ca_key)?;
        let issuer = Issuer::new(params, &ca_key);
        let leaf_key = KeyPair::generate()?;
        let leaf = leaf_params(unit, deployment)?.signed_by(&leaf_key, &issuer)?;
        Ok(Identity {
            unit: unit.clone(),
            deployment: deployment.to_owned(),
            root: root.der().clone(),
            chain: vec![leaf.der().clone()],
            key: leaf_key.serialize_der(),
            issuer_chain: vec![],
            ca_key_pem: ca_key.serialize_pem(),
        })
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(&self.ca_key_pem)?;
        Ok(Issuer::new(ca_params(&self.unit, &self.deployment)?, key))
    }

    /// Issue the identity of a child unit: its CA (constrained to its subtree) and its TLS
    /// certificate, both signed by this node's CA.
    pub fn issue_child(&self, child: &UnitId) -> Result<Identity, PkiError> {
        if child.parent().as_ref() != Some(&self.unit) {
            return Err(PkiError::NotAChild {
                child: child.clone(),
                parent: self.unit.clone(),
            });
        }
        self.issue(child)
    }

    /// Issue for any unit, skipping the adjacency check: only for tests that prove the
    /// peers' checks (a CA issuing outside its subtree, a grandparent skipping a level).
    #[cfg(feature = "testing")]
    pub fn testing_issue_any(&self, unit: &UnitId) -> Result<Identity, PkiError> {
        self.issue(unit)
    }

    fn issue(&self, unit: &UnitId) -> Result<Identity, PkiError> {
        let issuer = self.issuer()?;
        let ca_key = KeyPair::generate()?;
        let ca = ca_params(unit, &self.deployment)?.signed_by(&ca_key, &issuer)?;
        let leaf_key = KeyPair::generate()?;
        let leaf = leaf_params(unit, &self.deployment)?.signed_by(&leaf_key, &issuer)?;
        // The TLS chain: the leaf, then this node's CA and those above it (not the root).
        let chain = std::iter::once(leaf.der().clone())
            .chain(self.issuer_chain.iter().cloned())
            .collect();
        let issuer_chain = std::iter::once(ca.der().clone())
            .chain(self.issuer_chain.iter().cloned())
            .collect();
        Ok(Identity {
            unit: unit.clone(),
            deployment: self.deployment.clone(),
            root: self.root.clone(),
            chain,
            key: leaf_key.serialize_der(),
            issuer_chain,
            ca_key_pem: ca_key.serialize_pem(),
        })
    }

    /// Sign a certificate for `unit` with this node's TLS (leaf) key, as if the leaf were a
    /// CA: only for tests proving that such a chain is refused.
    #[cfg(feature = "testing")]
    pub fn testing_issue_with_leaf_key(&self, unit: &UnitId) -> Result<Identity, PkiError> {
        let leaf_key = KeyPair::from_der_and_sign_algo(
            &PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone())),
            &rcgen::PKCS_ECDSA_P256_SHA256,
        )?;
        let issuer = Issuer::new(leaf_params(&self.unit, &self.deployment)?, leaf_key);
        let key = KeyPair::generate()?;
        let cert = leaf_params(unit, &self.deployment)?.signed_by(&key, &issuer)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(Identity {
            unit: unit.clone(),
            chain,
            key: key.serialize_der(),
            ..self.clone()
        })
    }

    /// Write the identity folder (PEM files; keys readable by the owner only).
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| PkiError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let certs = |v: &[CertificateDer<'static>]| {
            pem::encode_many(
                &v.iter()
                    .map(|c| pem::Pem::new("CERTIFICATE", c.to_vec()))
                    .collect::<Vec<_>>(),
            )
        };
        let files: [(&str, String); 6] = [
            ("unit.txt", format!("{} {}\n", self.unit, self.deployment)),
            ("root.pem", certs(std::slice::from_ref(&self.root))),
            ("node-chain.pem", certs(&self.chain)),
            ("ca-chain.pem", certs(&self.issuer_chain)),
            (
                "node.key",
                pem::encode(&pem::Pem::new("PRIVATE KEY", self.key.clone())),
            ),
            ("ca.key", self.ca_key_pem.clone()),
        ];
        for (name, content) in files {
            let path = dir.join(name);
            std::fs::write(&path, content).map_err(io(&path))?;
            #[cfg(unix)]
            if name.ends_with(".key") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io(&path))?;
            }
        }
        Ok(())
    }

    /// Read an identity folder written by [`Identity::save`].
    pub fn load(dir: &Path) -> Result<Identity, PkiError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| PkiError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        let certs = |name: &str| -> Result<Vec<CertificateDer<'static>>, PkiError> {
            let text = read(name)?;
            let pems = pem::parse_many(text).map_err(|_| PkiError::BadPem(name.to_owned()))?;
            Ok(pems
                .into_iter()
                .map(|p| CertificateDer::from(p.contents().to_vec()))
                .collect())
        };
        let unit_txt = read("unit.txt")?;
        let (unit, deployment) = unit_txt
            .trim()
            .split_once(' ')
            .ok_or_else(|| PkiError::BadPem("unit.txt".into()))?;
        let unit: UnitId = unit
            .parse()
            .map_err(|_| PkiError::BadPem("unit.txt".into()))?;
        let root = certs("root.pem")?
            .into_iter()
            .next()
            .ok_or_else(|| PkiError::BadPem("root.pem".into()))?;
        let chain = certs("node-chain.pem")?;
        if chain.is_empty() {
            return Err(PkiError::BadPem("node-chain.pem".into()));
        }
        let key = pem::parse(read("node.key")?)
            .map_err(|_| PkiError::BadPem("node.key".into()))?
            .contents()
            .to_vec();
        Ok(Identity {
            unit,
            deployment: deployment.to_owned(),
            root,
            chain,
            key,
            issuer_chain: certs("ca-chain.pem")?,
            ca_key_pem: read("ca.key")?,
        })
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(&self) -> Result<rustls::RootCertStore, PkiError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.root.clone())?;
        Ok(roots)
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }

    /// What the handshake presents: the leaf and the CA that issued it, not the CAs above.
    /// The verifiers build the chain from what is presented plus the CAs they hold: a child
    /// holds every CA above it, a parent every CA above its own. Fewer certificates make
    /// fewer datagrams per TLS flight, each of which a lossy village link may lose
    /// (docs/benchmarks.md). The issuing CA is still sent because a parent whose identity
    /// was issued again (`grassroots pki issue`) has a new CA and no longer holds the one
    /// that signed its children's leaves; the leaf alone would strand them.
    fn presented(&self) -> Vec<CertificateDer<'static>> {
        self.chain.iter().take(2).cloned().collect()
    }

    /// TLS 1.3 server config that requires a client certificate chaining to the root.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, PkiError> {
        let provider = Self::provider();
        // No CA hints in the certificate request: every peer has one certificate to offer.
        let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider.clone(),
        )
        .clear_root_hint_subjects()
        .build()?;
        let verifier = Arc::new(KnownIntermediates {
            inner,
            known: self.issuer_chain.clone(),
        });
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.presented(), self.private_key())?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }

    /// TLS 1.3 client config presenting this node's certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, PkiError> {
        let provider = Self::provider();
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider.clone(),
        )
        .build()?;
        let verifier = Arc::new(KnownIntermediates {
            inner,
            known: self.issuer_chain.clone(),
        });
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.presented(), self.private_key())?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }
}

/// A webpki verifier that builds the peer's chain from what the peer presented plus the CAs
/// this node already holds (its own CA and those above it). Every check stays webpki's: the
/// chain must still reach the root, and name constraints still bind each CA; only where the
/// intermediates come from changes.
#[derive(Debug)]
struct KnownIntermediates<V: ?Sized> {
    inner: Arc<V>,
    known: Vec<CertificateDer<'static>>,
}

impl<V: ?Sized> KnownIntermediates<V> {
    fn with_known<'a>(&'a self, presented: &[CertificateDer<'a>]) -> Vec<CertificateDer<'a>> {
        presented
            .iter()
            .cloned()
            .chain(self.known.iter().cloned())
            .collect()
    }
}

/// Handshake signatures are checked by the wrapped verifier, unchanged (the client and server
/// verifier traits declare the same three methods).
macro_rules! signatures_by_inner {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

impl rustls::server::danger::ClientCertVerifier
    for KnownIntermediates<dyn rustls::server::danger::ClientCertVerifier>
{
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, &self.with_known(intermediates), now)
    }

    signatures_by_inner!();
}

impl rustls::client::danger::ServerCertVerifier
    for KnownIntermediates<rustls::client::WebPkiServerVerifier>
{
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            &self.with_known(intermediates),
            server_name,
            ocsp_response,
            now,
        )
    }

    signatures_by_inner!();
}

/// The SHA-256 fingerprint (lower-case hex) of a certificate: what revocations list.
pub fn fingerprint(cert: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, cert).as_ref())
}

impl Identity {
    /// Fingerprint of this node's own TLS certificate.
    pub fn fingerprint(&self) -> String {
        self.chain
            .first()
            .map(|c| fingerprint(c))
            .unwrap_or_default()
    }
}

/// The unit a verified peer certificate names, and the common name of its issuer.
pub fn peer_unit(
    certs: &[CertificateDer<'_>],
    deployment: &str,
) -> Result<(UnitId, String), PkiError> {
    let leaf = certs
        .first()
        .ok_or_else(|| PkiError::PeerCert("no certificate".into()))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| PkiError::PeerCert(e.to_string()))?;
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| PkiError::PeerCert("issuer has no common name".into()))?
        .to_owned();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::PeerCert(e.to_string()))?
        .ok_or_else(|| PkiError::PeerCert("no subject alternative name".into()))?;
    let mut units = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => {
            UnitId::from_dns_name(d, deployment).ok()
        }
        _ => None,
    });
    let unit = units
        .next()
        .ok_or_else(|| PkiError::PeerCert("no DNS name of this deployment".into()))?;
    if units.next().is_some() {
        return Err(PkiError::PeerCert("more than one unit named".into()));
    }
    Ok((unit, issuer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UnitId {
        s.parse().unwrap()
    }

    #[test]
    fn chain_mirrors_the_tree_and_round_trips_through_files() {
        let root = Identity::create_root(&u("c01"), "test.grassroots").unwrap();
        let county = root.issue_child(&u("c01/k01")).unwrap();
        let town = county.issue_child(&u("c01/k01/t01")).unwrap();
        assert_eq!(root.chain.len(), 1);
        assert_eq!(county.chain.len(), 1, "leaf signed by the root CA directly");
        assert_eq!(town.chain.len(), 2, "leaf + county CA");
        assert!(
            county.issue_child(&u("c01/k02/t01")).is_err(),
            "not a child"
        );
        let dir = tempfile::tempdir().unwrap();
        town.save(dir.path()).unwrap();
        let back = Identity::load(dir.path()).unwrap();
        assert_eq!(back.unit, town.unit);
        assert_eq!(back.chain, town.chain);
        let (unit, issuer) = peer_unit(&back.chain, "test.grassroots").unwrap();
        assert_eq!(unit, u("c01/k01/t01"));
        assert_eq!(issuer, expected_issuer(&unit, "test.grassroots"));
        // Configs build (the ring provider is passed explicitly).
        back.server_config().unwrap();
        back.client_config().unwrap();
    }

    /// A TLS handshake in memory: `Ok` with the certificates each side saw of the other.
    fn handshake(client: &Identity, server: &Identity) -> Result<(usize, usize), rustls::Error> {
        let name =
            rustls::pki_types::ServerName::try_from(server.unit.dns_name(&server.deployment))
                .unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client.client_config().unwrap()), name)?;
        let mut s = rustls::ServerConnection::new(Arc::new(server.server_config().unwrap()))?;
        while c.is_handshaking() || s.is_handshaking() {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            buf.clear();
            s.write_tls(&mut buf).unwrap();
            if buf.is_empty() && !c.wants_write() {
                break;
            }
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
        }
        Ok((
            c.peer_certificates().map_or(0, <[_]>::len),
            s.peer_certificates().map_or(0, <[_]>::len),
        ))
    }

    #[test]
    fn a_leaf_presented_alone_is_verified_with_the_cas_held_and_chains_are_still_checked() {
        let root = Identity::create_root(&u("c01"), "test.grassroots").unwrap();
        let county = root.issue_child(&u("c01/k01")).unwrap();
        let town = county.issue_child(&u("c01/k01/t01")).unwrap();
        let village = town.issue_child(&u("c01/k01/t01/v01")).unwrap();
        assert_eq!(village.chain.len(), 3);
        // Nodes present their leaf and its issuer: the village 2 of its 3 certificates.
        assert_eq!(handshake(&village, &town).unwrap(), (2, 2));
        // A township whose identity was issued again (a new CA) still takes its villages:
        // their leaves chain through the old township CA they present.
        let town_again = county.issue_child(&u("c01/k01/t01")).unwrap();
        assert_eq!(handshake(&village, &town_again).unwrap(), (2, 2));
        // An identity whose chain is its leaf alone presents only that.
        let leaf = |i: &Identity| Identity {
            chain: i.chain.iter().take(1).cloned().collect(),
            ..i.clone()
        };
        // Which the leaf alone would not: the new CA did not sign it.
        assert!(handshake(&leaf(&village), &town_again).is_err());
        let (county, town, village) = (leaf(&county), leaf(&town), leaf(&village));
        // Parent and child each see one certificate: the chain is built from what the
        // verifying side already holds.
        assert_eq!(handshake(&village, &town).unwrap(), (1, 1));
        assert_eq!(handshake(&town, &county).unwrap(), (1, 1));
        assert_eq!(handshake(&county, &root).unwrap(), (1, 1));
        // The county does not hold the township's CA: a village presenting its leaf alone
        // does not chain there, so nothing is accepted on a missing link of the chain.
        let err = handshake(&village, &county).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            ),
            "{err:?}"
        );
        // Another deployment's township, though named alike, is refused both ways.
        let foreign = Identity::create_root(&u("c01"), "test.grassroots")
            .unwrap()
            .issue_child(&u("c01/k01"))
            .unwrap()
            .issue_child(&u("c01/k01/t01"))
            .unwrap();
        assert!(handshake(&foreign, &county).is_err());
        assert!(handshake(&village, &foreign).is_err());
    }
}
