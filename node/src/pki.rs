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
//! A child's identity comes one of two ways. The parent can generate the child's keys and
//! hand over the whole folder (`grassroots pki issue`: one step, but the private keys travel).
//! Or the child keeps its keys ([`PendingIdentity`]): it sends its parent a request (two
//! self-signed PKCS#10 requests, one per key), the parent signs certificates whose every
//! field it sets itself, taking only the public keys from the request
//! ([`Identity::sign_request`]), and the child checks what comes back against its own keys
//! and the root before it uses it ([`PendingIdentity::accept`]). Only public data travels.

use std::path::Path;
use std::sync::Arc;

use grassroots_schema::UnitId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, PublicKeyData,
};
use rustls::pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};

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
    /// A child's certificate request cannot be signed.
    #[error("certificate request: {0}")]
    Request(String),
    /// What the parent sent back does not fit the keys and request it answers.
    #[error("issued certificates: {0}")]
    Issued(String),
    /// The folder holds keys whose certificates have not been accepted yet.
    #[error(
        "{0}: the identity was requested but not yet accepted (`grassroots pki accept` with \
         the parent's answer)"
    )]
    Pending(String),
    /// The folder already holds keys; writing would lose them.
    #[error(
        "{0} already holds an identity or a pending request; use another folder (a re-issued \
         identity goes into a new folder, then replaces the old one)"
    )]
    Exists(String),
    /// The folder holds keys but neither a certificate nor a request: what a `pki init` or
    /// `pki issue` cut short leaves.
    #[error(
        "{0} holds keys but no root.pem and no request.pem: a `pki init` or `pki issue` was cut \
         short there; remove the folder and run the command again"
    )]
    Incomplete(String),
}

/// PEM label of a PKCS#10 request.
const REQUEST_LABEL: &str = "CERTIFICATE REQUEST";
/// PEM label of a certificate.
const CERT_LABEL: &str = "CERTIFICATE";

/// Validity window of every certificate issued here.
fn validity(params: &mut CertificateParams) {
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2046, 1, 1);
}

/// The subject common name of `unit`'s CA; also how a peer's issuer is recognised.
pub fn ca_common_name(unit: &UnitId, deployment: &str) -> String {
    format!("grassroots CA {}", unit.dns_name(deployment))
}

/// The unit whose CA issues `peer`'s certificates, and whose profile lists their
/// revocations: its parent, or itself at the root.
pub fn issuer_of(peer: &UnitId) -> UnitId {
    peer.parent().unwrap_or_else(|| peer.clone())
}

/// The CA whose certificate must have issued `peer`'s TLS certificate: its parent's, or the
/// root's own for the root.
pub fn expected_issuer(peer: &UnitId, deployment: &str) -> String {
    ca_common_name(&issuer_of(peer), deployment)
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

/// A request names its key's future subject and nothing else: the parent sets every other
/// field itself, so nothing a request asks for reaches a certificate.
fn request_params(common_name: String) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, common_name);
    p
}

/// The common name in a certificate's subject.
fn subject_name(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

/// The contents of every PEM block in `text` (`what`, for the error), each labelled `label`.
fn pem_blocks(text: &str, label: &str, what: &str) -> Result<Vec<Vec<u8>>, String> {
    let blocks = pem::parse_many(text).map_err(|e| format!("{what} is not PEM: {e}"))?;
    if blocks.is_empty() {
        return Err(format!("{what} holds no PEM block"));
    }
    blocks
        .into_iter()
        .map(|b| {
            if b.tag() == label {
                Ok(b.into_contents())
            } else {
                Err(format!(
                    "{what} holds a {} where a {label} belongs",
                    b.tag()
                ))
            }
        })
        .collect()
}

/// Everything a node needs to prove who it is and to issue for its children.
#[derive(Clone)]
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

/// The keys are left out: a `{:?}` (an error report, a log line) must not print them.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("unit", &self.unit)
            .field("deployment", &self.deployment)
            .field("certificate", &self.fingerprint())
            .field("root", &self.root_fingerprint())
            .finish_non_exhaustive()
    }
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
        let ca_key = KeyPair::generate()?;
        let leaf_key = KeyPair::generate()?;
        let issued = self.certify(unit, &leaf_key, &ca_key)?;
        Ok(issued.identity(
            unit.clone(),
            self.deployment.clone(),
            leaf_key.serialize_der(),
            ca_key.serialize_pem(),
        ))
    }

    /// Certificates for `unit`'s two public keys, every field set here.
    fn certify(
        &self,
        unit: &UnitId,
        leaf_key: &impl PublicKeyData,
        ca_key: &impl PublicKeyData,
    ) -> Result<Issued, PkiError> {
        let issuer = self.issuer()?;
        let ca = ca_params(unit, &self.deployment)?.signed_by(ca_key, &issuer)?;
        let leaf = leaf_params(unit, &self.deployment)?.signed_by(leaf_key, &issuer)?;
        Ok(Issued {
            leaf: leaf.der().clone(),
            ca: ca.der().clone(),
            above: self.issuer_chain.clone(),
            root: self.root.clone(),
        })
    }

    /// Sign a child's request ([`PendingIdentity::create`]): check that both of its
    /// requests are signed by the keys they carry and name `child` of this deployment, then
    /// certify those keys. Returns the answer to hand back (PEM: the child's TLS
    /// certificate, its CA, the CAs above it and the root, in that order).
    pub fn sign_request(&self, child: &UnitId, request: &str) -> Result<String, PkiError> {
        if child.parent().as_ref() != Some(&self.unit) {
            return Err(PkiError::NotAChild {
                child: child.clone(),
                parent: self.unit.clone(),
            });
        }
        let blocks =
            pem_blocks(request, REQUEST_LABEL, "the request").map_err(PkiError::Request)?;
        let [leaf, ca] = <[Vec<u8>; 2]>::try_from(blocks).map_err(|b| {
            PkiError::Request(format!(
                "{} requests where two belong (the node's, then its CA's)",
                b.len()
            ))
        })?;
        let leaf = Self::requested_key(&leaf, child.dns_name(&self.deployment), "node")?;
        let ca = Self::requested_key(&ca, ca_common_name(child, &self.deployment), "CA")?;
        if leaf.der_bytes() == ca.der_bytes() {
            // One key for both would let the TLS key sign certificates.
            return Err(PkiError::Request(
                "the node and CA requests carry the same key".into(),
            ));
        }
        Ok(self.certify(child, &leaf, &ca)?.to_pem())
    }

    /// The fingerprints of the node certificate and the CA certificate an answer of
    /// [`Identity::sign_request`] carries: what the signing unit revokes if the child's
    /// machine is lost or stolen.
    pub fn answer_fingerprints(answer: &str) -> Result<(String, String), PkiError> {
        let issued = Issued::from_pem(answer)?;
        Ok((key_fingerprint(&issued.leaf), key_fingerprint(&issued.ca)))
    }

    /// The public key of one request, once its signature (proof that the requester holds
    /// the private key) and its name are checked.
    fn requested_key(der: &[u8], want: String, which: &str) -> Result<rcgen::PublicKey, PkiError> {
        let request =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der))
                .map_err(|e| PkiError::Request(format!("the {which} request: {e}")))?;
        let named = request
            .params
            .distinguished_name
            .get(&DnType::CommonName)
            .and_then(|v| match v {
                rcgen::DnValue::Utf8String(s) => Some(s.clone()),
                rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_owned()),
                _ => None,
            });
        if named.as_deref() != Some(want.as_str()) {
            return Err(PkiError::Request(format!(
                "the {which} request names {}, not {want} (another unit, or another \
                 deployment name)",
                named.as_deref().unwrap_or("nothing")
            )));
        }
        Ok(request.public_key)
    }

    /// Issue with this node's CA a CA named as `named_as`'s, and with it a certificate for
    /// `unit`: only for tests proving that the issuing key, not the name, is checked.
    #[cfg(any(test, feature = "testing"))]
    pub fn testing_issue_under_forged_ca(
        &self,
        named_as: &UnitId,
        unit: &UnitId,
    ) -> Result<Identity, PkiError> {
        let sub_key = KeyPair::generate()?;
        let sub = ca_params(named_as, &self.deployment)?.signed_by(&sub_key, &self.issuer()?)?;
        let sub_issuer = Issuer::new(ca_params(named_as, &self.deployment)?, sub_key);
        let key = KeyPair::generate()?;
        let leaf = leaf_params(unit, &self.deployment)?.signed_by(&key, &sub_issuer)?;
        let mut chain = vec![leaf.der().clone(), sub.der().clone()];
        chain.extend(self.issuer_chain.iter().cloned());
        Ok(Identity {
            unit: unit.clone(),
            chain,
            key: key.serialize_der(),
            ..self.clone()
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

    /// Write the identity folder (PEM files; keys readable by the owner only). A request
    /// this identity answers is removed: it has served.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        let certs = |v: &[CertificateDer<'static>]| {
            pem::encode_many(
                &v.iter()
                    .map(|c| pem::Pem::new(CERT_LABEL, c.to_vec()))
                    .collect::<Vec<_>>(),
            )
        };
        // `root.pem` last: it marks a folder complete ([`PendingIdentity::load`]), so a
        // crash before it leaves a request that can still be accepted.
        write_files(
            dir,
            &[
                ("unit.txt", format!("{} {}\n", self.unit, self.deployment)),
                ("node-chain.pem", certs(&self.chain)),
                ("ca-chain.pem", certs(&self.issuer_chain)),
                (
                    "node.key",
                    pem::encode(&pem::Pem::new("PRIVATE KEY", self.key.clone())),
                ),
                ("ca.key", self.ca_key_pem.clone()),
                ("root.pem", certs(std::slice::from_ref(&self.root))),
            ],
        )?;
        let request = dir.join(REQUEST_FILE);
        match std::fs::remove_file(&request) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(PkiError::Io {
                path: request.display().to_string(),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Read an identity folder written by [`Identity::save`].
    pub fn load(dir: &Path) -> Result<Identity, PkiError> {
        if !dir.join("root.pem").exists() && dir.join(REQUEST_FILE).exists() {
            return Err(PkiError::Pending(dir.display().to_string()));
        }
        refuse_incomplete(dir)?;
        let certs = |name: &str| -> Result<Vec<CertificateDer<'static>>, PkiError> {
            let pems =
                pem::parse_many(read(dir, name)?).map_err(|_| PkiError::BadPem(name.to_owned()))?;
            Ok(pems
                .into_iter()
                .map(|p| CertificateDer::from(p.into_contents()))
                .collect())
        };
        let (unit, deployment) = read_unit(dir)?;
        let root = certs("root.pem")?
            .into_iter()
            .next()
            .ok_or_else(|| PkiError::BadPem("root.pem".into()))?;
        let chain = certs("node-chain.pem")?;
        if chain.is_empty() {
            return Err(PkiError::BadPem("node-chain.pem".into()));
        }
        Ok(Identity {
            unit,
            deployment,
            root,
            chain,
            key: read_key(dir)?,
            issuer_chain: certs("ca-chain.pem")?,
            ca_key_pem: read(dir, "ca.key")?,
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

    /// The CA certificate named `common_name` among those this node holds: the root, the
    /// CAs above its own certificate, its own CA and those above it.
    fn known_ca(&self, common_name: &str) -> Option<&CertificateDer<'static>> {
        std::iter::once(&self.root)
            .chain(self.chain.iter().skip(1))
            .chain(&self.issuer_chain)
            .find(|c| subject_common_name(c).as_deref() == Some(common_name))
    }

    /// Check that the certificate `peer` presented (`certs`, leaf first; the handshake has
    /// verified it up to the root) was signed by the key of the CA that must have issued it,
    /// its parent's: either directly by that CA as this node holds it, or by the CA the peer
    /// presented under that name, itself signed by the CA above it as this node holds it (a
    /// parent issued again has a new CA; its children's leaves chain through the old one).
    /// A chain to the root is not enough: every unit's CA may issue CAs, under any subject
    /// name, so a unit could otherwise issue itself a new certificate (out of its revocation)
    /// or one for a unit below its children, through a CA named as the expected issuer.
    /// Returns the CAs the certificate was checked through, each with the unit it is the CA
    /// of: the one held here under the issuer's name, or the CA the peer presented and the
    /// one above it held here. Any of them may be an old CA of a unit issued again since,
    /// whose key was stolen with the unit's machine: only its revocation, in the profile of
    /// the unit that issued it, stops the certificates made with it since, so the caller
    /// checks each.
    pub fn check_issued(
        &self,
        peer: &UnitId,
        certs: &[CertificateDer<'_>],
    ) -> Result<Vec<Revocable>, PkiError> {
        let leaf = certs
            .first()
            .ok_or_else(|| PkiError::PeerCert("no certificate".into()))?;
        let issuer_unit = issuer_of(peer);
        let issuer = expected_issuer(peer, &self.deployment);
        let signed_by = |anchor: &CertificateDer<'_>, between: &[CertificateDer<'_>]| {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(anchor.clone().into_owned())?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Self::provider(),
            )
            .build()?;
            verifier
                .verify_client_cert(leaf, between, rustls::pki_types::UnixTime::now())
                .map(|_| ())
                .map_err(|e| PkiError::PeerCert(e.to_string()))
        };
        let direct = match self.known_ca(&issuer) {
            Some(ca) => signed_by(ca, &[]).map(|()| vec![Revocable::of(issuer_unit.clone(), ca)]),
            None => Err(PkiError::PeerCert(format!("{issuer:?} is not held here"))),
        };
        if direct.is_ok() {
            return direct;
        }
        let above = expected_issuer(&issuer_unit, &self.deployment);
        let through = match (certs.get(1), self.known_ca(&above), issuer_unit.parent()) {
            (Some(presented), Some(ca), Some(above_unit)) => {
                signed_by(ca, std::slice::from_ref(presented)).map(|()| {
                    vec![
                        Revocable::of(issuer_unit.clone(), presented),
                        Revocable::of(above_unit, ca),
                    ]
                })
            }
            _ => direct,
        };
        through.map_err(|e| {
            PkiError::PeerCert(format!(
                "the certificate of {peer} was not issued by the key of {issuer:?}: {e}"
            ))
        })
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

/// Certificates a parent issued for one child.
struct Issued {
    leaf: CertificateDer<'static>,
    ca: CertificateDer<'static>,
    /// The issuing parent's CA and those above it, not the root.
    above: Vec<CertificateDer<'static>>,
    root: CertificateDer<'static>,
}

impl Issued {
    fn identity(
        self,
        unit: UnitId,
        deployment: String,
        key: Vec<u8>,
        ca_key_pem: String,
    ) -> Identity {
        // The TLS chain: the leaf, then the parent's CA and those above it (not the root).
        let chain = std::iter::once(self.leaf)
            .chain(self.above.iter().cloned())
            .collect();
        let issuer_chain = std::iter::once(self.ca).chain(self.above).collect();
        Identity {
            unit,
            deployment,
            root: self.root,
            chain,
            key,
            issuer_chain,
            ca_key_pem,
        }
    }

    fn to_pem(&self) -> String {
        let all = [&self.leaf, &self.ca]
            .into_iter()
            .chain(&self.above)
            .chain([&self.root]);
        pem::encode_many(
            &all.map(|c| pem::Pem::new(CERT_LABEL, c.to_vec()))
                .collect::<Vec<_>>(),
        )
    }

    fn from_pem(text: &str) -> Result<Issued, PkiError> {
        let mut certs: Vec<CertificateDer<'static>> = pem_blocks(text, CERT_LABEL, "the answer")
            .map_err(PkiError::Issued)?
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        if certs.len() < 3 {
            return Err(PkiError::Issued(format!(
                "{} certificates where at least three belong (node, CA, root)",
                certs.len()
            )));
        }
        let root = certs
            .pop()
            .ok_or_else(|| PkiError::Issued("no root".into()))?;
        let mut certs = certs.into_iter();
        let (Some(leaf), Some(ca)) = (certs.next(), certs.next()) else {
            return Err(PkiError::Issued("no node or CA certificate".into()));
        };
        Ok(Issued {
            leaf,
            ca,
            above: certs.collect(),
            root,
        })
    }
}

/// A unit's own keys, waiting for the certificates its parent signs for them
/// (`grassroots pki request`, then `grassroots pki accept`). The private keys never leave
/// the folder they were made in.
#[derive(Debug)]
pub struct PendingIdentity {
    /// The unit the keys are for.
    pub unit: UnitId,
    /// The deployment's DNS suffix.
    pub deployment: String,
    key: KeyPair,
    ca_key: KeyPair,
}

/// Name of the request file in a pending identity folder.
pub const REQUEST_FILE: &str = "request.pem";

impl PendingIdentity {
    /// New keys for `unit` (not the root: its identity comes from [`Identity::create_root`]).
    pub fn create(unit: &UnitId, deployment: &str) -> Result<PendingIdentity, PkiError> {
        if unit.parent().is_none() {
            return Err(PkiError::Request(format!(
                "{unit} is the root unit; its identity comes from `grassroots pki init`"
            )));
        }
        Ok(PendingIdentity {
            unit: unit.clone(),
            deployment: deployment.to_owned(),
            key: KeyPair::generate()?,
            ca_key: KeyPair::generate()?,
        })
    }

    /// What the parent signs: a PKCS#10 request per key (the node's, then its CA's), each
    /// signed by its own key.
    pub fn request(&self) -> Result<String, PkiError> {
        let leaf =
            request_params(self.unit.dns_name(&self.deployment)).serialize_request(&self.key)?;
        let ca = request_params(ca_common_name(&self.unit, &self.deployment))
            .serialize_request(&self.ca_key)?;
        Ok(pem::encode_many(&[
            pem::Pem::new(REQUEST_LABEL, leaf.der().to_vec()),
            pem::Pem::new(REQUEST_LABEL, ca.der().to_vec()),
        ]))
    }

    /// Write the keys and the request into a new identity folder. A folder that already
    /// holds keys is left alone: overwriting them would strand the identity they belong to.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        refuse_held_keys(dir)?;
        write_files(
            dir,
            &[
                ("unit.txt", format!("{} {}\n", self.unit, self.deployment)),
                (
                    "node.key",
                    pem::encode(&pem::Pem::new("PRIVATE KEY", self.key.serialize_der())),
                ),
                ("ca.key", self.ca_key.serialize_pem()),
                (REQUEST_FILE, self.request()?),
            ],
        )
    }

    /// Read a folder written by [`PendingIdentity::save`] whose request is not yet accepted.
    pub fn load(dir: &Path) -> Result<PendingIdentity, PkiError> {
        if dir.join("root.pem").exists() {
            return Err(PkiError::Exists(dir.display().to_string()));
        }
        let (unit, deployment) = read_unit(dir)?;
        let key = read_key(dir)?;
        let key =
            KeyPair::try_from(key.as_slice()).map_err(|_| PkiError::BadPem("node.key".into()))?;
        let ca_key = KeyPair::from_pem(&read(dir, "ca.key")?)?;
        Ok(PendingIdentity {
            unit,
            deployment,
            key,
            ca_key,
        })
    }

    /// Take the parent's answer ([`Identity::sign_request`]) after checking that its root
    /// is the one whose fingerprint the operator was given over another channel (`root`:
    /// the answer travels over any channel, and whoever can replace it could otherwise
    /// bring a root of their own), that it certifies this folder's two keys for this unit,
    /// that the node's certificate chains to that root, and that one issuer signed both
    /// certificates.
    pub fn accept(&self, answer: &str, root: &str) -> Result<Identity, PkiError> {
        let issued = Issued::from_pem(answer)?;
        let got = fingerprint(&issued.root);
        if !got.eq_ignore_ascii_case(root.trim()) {
            return Err(PkiError::Issued(format!(
                "its root is {got}, not the root {} the parent's operator gave; refused",
                root.trim()
            )));
        }
        fn parse<'a>(
            der: &'a CertificateDer<'static>,
            which: &str,
        ) -> Result<x509_parser::certificate::X509Certificate<'a>, PkiError> {
            x509_parser::parse_x509_certificate(der)
                .map(|(_, c)| c)
                .map_err(|e| PkiError::Issued(format!("the {which} certificate: {e}")))
        }
        let (leaf, ca) = (parse(&issued.leaf, "node")?, parse(&issued.ca, "CA")?);
        if leaf.public_key().raw != self.key.subject_public_key_info().as_slice() {
            return Err(PkiError::Issued(
                "the node certificate is not for this folder's key (an answer to another \
                 request?)"
                    .into(),
            ));
        }
        if ca.public_key().raw != self.ca_key.subject_public_key_info().as_slice() {
            return Err(PkiError::Issued(
                "the CA certificate is not for this folder's CA key".into(),
            ));
        }
        let (unit, issuer) = peer_unit(std::slice::from_ref(&issued.leaf), &self.deployment)?;
        if unit != self.unit || issuer != expected_issuer(&unit, &self.deployment) {
            return Err(PkiError::Issued(format!(
                "the node certificate names {unit} issued by {issuer}, not {} issued by its \
                 parent",
                self.unit
            )));
        }
        if subject_name(&ca).as_deref() != Some(ca_common_name(&unit, &self.deployment).as_str())
            || !ca.is_ca()
        {
            return Err(PkiError::Issued(format!(
                "the CA certificate is not {unit}'s CA"
            )));
        }
        // The node certificate, with the CAs above it, must reach the root (webpki: chain,
        // validity, name constraints, key usage).
        let mut roots = rustls::RootCertStore::empty();
        roots.add(issued.root.clone())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Identity::provider(),
        )
        .build()
        .map_err(|e| PkiError::Issued(e.to_string()))?;
        let name = rustls::pki_types::ServerName::try_from(unit.dns_name(&self.deployment))
            .map_err(|e| PkiError::Issued(e.to_string()))?;
        rustls::client::danger::ServerCertVerifier::verify_server_cert(
            verifier.as_ref(),
            &issued.leaf,
            &issued.above,
            &name,
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .map_err(|e| PkiError::Issued(format!("the node certificate does not chain: {e}")))?;
        // The parent's CA signed both certificates.
        let issuer_der = issued.above.first().unwrap_or(&issued.root);
        let issuer_cert = parse(issuer_der, "issuing CA")?;
        for (cert, which) in [(&leaf, "node"), (&ca, "CA")] {
            cert.verify_signature(Some(issuer_cert.public_key()))
                .map_err(|e| {
                    PkiError::Issued(format!("the {which} certificate's signature: {e}"))
                })?;
        }
        let (key, ca_key_pem) = (self.key.serialize_der(), self.ca_key.serialize_pem());
        Ok(issued.identity(self.unit.clone(), self.deployment.clone(), key, ca_key_pem))
    }
}

/// Refuse an identity folder that already holds keys (a live identity, or a request waiting
/// for its answer): keys made where they are used exist nowhere else, so new keys are made
/// only into a folder without any.
pub fn refuse_held_keys(dir: &Path) -> Result<(), PkiError> {
    refuse_incomplete(dir)?;
    if ["node.key", "ca.key"].iter().any(|k| dir.join(k).exists()) {
        return Err(PkiError::Exists(dir.display().to_string()));
    }
    Ok(())
}

/// Refuse a folder holding keys with neither a certificate nor a request beside them
/// ([`PkiError::Incomplete`]): the files are written one by one, `root.pem` or the request
/// last.
fn refuse_incomplete(dir: &Path) -> Result<(), PkiError> {
    let keys = ["node.key", "ca.key"].iter().any(|k| dir.join(k).exists());
    let marked = ["root.pem", REQUEST_FILE]
        .iter()
        .any(|f| dir.join(f).exists());
    if keys && !marked {
        return Err(PkiError::Incomplete(dir.display().to_string()));
    }
    Ok(())
}

fn read(dir: &Path, name: &str) -> Result<String, PkiError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(|source| PkiError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn read_unit(dir: &Path) -> Result<(UnitId, String), PkiError> {
    let unit_txt = read(dir, "unit.txt")?;
    let (unit, deployment) = unit_txt
        .trim()
        .split_once(' ')
        .ok_or_else(|| PkiError::BadPem("unit.txt".into()))?;
    let unit: UnitId = unit
        .parse()
        .map_err(|_| PkiError::BadPem("unit.txt".into()))?;
    Ok((unit, deployment.to_owned()))
}

fn read_key(dir: &Path) -> Result<Vec<u8>, PkiError> {
    Ok(pem::parse(read(dir, "node.key")?)
        .map_err(|_| PkiError::BadPem("node.key".into()))?
        .into_contents())
}

/// Write files into `dir` (made if missing), each whole or not at all: written to a
/// temporary file (keys readable by the owner only from their creation), flushed, then
/// renamed over the old one, and the folder flushed after each. A crash never leaves a key file empty,
/// and a key may exist nowhere else.
fn write_files(dir: &Path, files: &[(&str, String)]) -> Result<(), PkiError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| PkiError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    // Written by root (an operator's `sudo`) into a node's data folder, the folder and its
    // files go to the data folder's owner, the node's user, as a store made so does: a
    // `node.key` root keeps stops the node at its next start.
    let owner = crate::files::owner_ids(crate::files::folder_of(dir));
    let give = |path: &Path| crate::files::give_if_root(path, owner).map_err(io(path));
    give(dir)?;
    for (name, content) in files {
        // Each durable (its rename too) before the next file: the last one may mark the
        // folder complete (`root.pem`).
        let path = dir.join(name);
        crate::files::replace(&path, content.as_bytes(), name.ends_with(".key"), true)
            .map_err(io(&path))?;
        give(&path)?;
    }
    Ok(())
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

/// The SHA-256 (lower-case hex) of a certificate's bytes: the root's pin, and what
/// revocations listed before key fingerprints ([`key_fingerprint`]).
pub fn fingerprint(cert: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, cert).as_ref())
}

/// The SHA-256 (lower-case hex) of a certificate's public key (its DER SubjectPublicKeyInfo):
/// what revocations list. Not of the certificate's bytes: an ECDSA signature (r, s) is as
/// valid as (r, n - s), so whoever holds a revoked certificate can make another, equally
/// valid, of other bytes; the key it certifies it cannot change. A certificate that does
/// not parse (none that passed a handshake) is named by its bytes.
pub fn key_fingerprint(cert: &[u8]) -> String {
    match x509_parser::parse_x509_certificate(cert) {
        Ok((_, c)) => fingerprint(c.tbs_certificate.subject_pki.raw),
        Err(_) => fingerprint(cert),
    }
}

/// A certificate a peer's link rests on (its own, or a CA it was checked through), as the
/// profile of the unit that issued it may revoke it: by its key's fingerprint, or by the
/// whole certificate's, as revocations made by earlier builds listed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocable {
    /// The unit the certificate is of (its issuer's profile lists its revocation).
    pub unit: UnitId,
    /// [`key_fingerprint`].
    pub key: String,
    /// [`fingerprint`].
    pub whole: String,
}

impl Revocable {
    /// `cert`, of `unit`.
    pub fn of(unit: UnitId, cert: &[u8]) -> Self {
        Revocable {
            unit,
            key: key_fingerprint(cert),
            whole: fingerprint(cert),
        }
    }

    /// Whether `listed` (a revocation's fingerprint) names this certificate.
    pub fn named_by(&self, listed: &str) -> bool {
        listed == self.key || listed == self.whole
    }
}

impl Identity {
    /// Fingerprint of this node's own TLS certificate's key ([`key_fingerprint`]): what
    /// its parent revokes.
    pub fn fingerprint(&self) -> String {
        self.chain
            .first()
            .map(|c| key_fingerprint(c))
            .unwrap_or_default()
    }

    /// Fingerprint of this node's CA certificate's key (none at the root, whose CA is the
    /// root): what the issuing unit revokes, beside the node's certificate, when the
    /// machine holding the CA's key is lost or stolen.
    pub fn ca_fingerprint(&self) -> Option<String> {
        self.issuer_chain.first().map(|c| key_fingerprint(c))
    }

    /// Fingerprint of the deployment's root certificate: what two operators compare to
    /// know they trust the same root.
    pub fn root_fingerprint(&self) -> String {
        fingerprint(&self.root)
    }
}

/// The subject common name of a certificate, if it parses and has one.
fn subject_common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
    common_name(cert.subject())
}

/// The first common name of a certificate's subject or issuer.
fn common_name(name: &x509_parser::x509::X509Name<'_>) -> Option<String> {
    Some(name.iter_common_name().next()?.as_str().ok()?.to_owned())
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
    let issuer = common_name(cert.issuer())
        .ok_or_else(|| PkiError::PeerCert("issuer has no common name".into()))?;
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

    /// A DER element at the start of `d`: its tag, its content, and its whole length.
    fn tlv(d: &[u8]) -> (u8, &[u8], usize) {
        let (len, head) = match d[1] {
            n if n < 0x80 => (usize::from(n), 2),
            0x81 => (usize::from(d[2]), 3),
            0x82 => (usize::from(d[2]) << 8 | usize::from(d[3]), 4),
            n => panic!("length form {n:#x}"),
        };
        (d[0], &d[head..head + len], head + len)
    }

    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    /// `cert` with its ECDSA P-256 signature (r, s) written as (r, n - s): as valid, and
    /// other bytes.
    fn flipped(cert: &[u8]) -> Vec<u8> {
        const N: [u8; 32] = [
            0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2,
            0xfc, 0x63, 0x25, 0x51,
        ];
        let (_, body, _) = tlv(cert);
        let (_, _, tbs) = tlv(body);
        let (_, _, alg) = tlv(&body[tbs..]);
        let (_, bits, _) = tlv(&body[tbs + alg..]);
        let (_, sig, _) = tlv(&bits[1..]);
        let (_, _, r) = tlv(sig);
        let (_, s_bytes, _) = tlv(&sig[r..]);
        let mut s_val = [0u8; 32];
        let s_bytes = &s_bytes[s_bytes.len().saturating_sub(32)..];
        s_val[32 - s_bytes.len()..].copy_from_slice(s_bytes);
        let mut other = [0u8; 32];
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let d = i16::from(N[i]) - i16::from(s_val[i]) - borrow;
            (other[i], borrow) = if d < 0 {
                ((d + 256) as u8, 1)
            } else {
                (d as u8, 0)
            };
        }
        let mut int: Vec<u8> = other.iter().copied().skip_while(|b| *b == 0).collect();
        if int.first().is_some_and(|b| *b >= 0x80) {
            int.insert(0, 0);
        }
        let mut new_sig = sig[..r].to_vec();
        new_sig.extend(der(0x02, &int));
        let mut new_bits = vec![0u8];
        new_bits.extend(der(0x30, &new_sig));
        let mut new_body = body[..tbs + alg].to_vec();
        new_body.extend(der(0x03, &new_bits));
        der(0x30, &new_body)
    }

    /// Whoever holds a certificate can write its ECDSA signature's s as n - s: a certificate
    /// as valid, of other bytes, so a revocation listing the certificate's bytes' hash would
    /// not name it. Its key is the same: revocations list the key's fingerprint.
    #[test]
    fn a_certificate_with_its_signature_rewritten_is_named_by_its_key() {
        let root = Identity::create_root(&u("c01"), "test.grassroots").unwrap();
        let county = root.issue_child(&u("c01/k01")).unwrap();
        let town = county.issue_child(&u("c01/k01/t01")).unwrap();
        let village = town.issue_child(&u("c01/k01/t01/v01")).unwrap();
        let mut presented = village.presented();
        let leaf = presented[0].to_vec();
        let other = flipped(&leaf);
        assert_ne!(other, leaf);
        presented[0] = CertificateDer::from(other.clone());
        town.check_issued(&village.unit, &presented)
            .expect("the rewritten certificate is as valid");
        assert_ne!(fingerprint(&leaf), fingerprint(&other));
        assert_eq!(key_fingerprint(&leaf), key_fingerprint(&other));
        let named = Revocable::of(village.unit.clone(), &other);
        assert!(named.named_by(&village.fingerprint()), "revoked by its key");
        // A revocation an earlier build made (the bytes' hash) names only the bytes it saw.
        assert!(!named.named_by(&fingerprint(&leaf)));
        assert!(Revocable::of(village.unit.clone(), &leaf).named_by(&fingerprint(&leaf)));
        // A CA (the township's, which the village presents) rewritten so, as well.
        let ca = presented[1].to_vec();
        assert_ne!(flipped(&ca), ca);
        assert_eq!(
            key_fingerprint(&flipped(&ca)),
            town.ca_fingerprint().unwrap()
        );
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

    /// The bytes each side sends in an in-memory handshake (client, server), with the
    /// certificate compression of both configs left on or taken off.
    fn handshake_bytes(client: &Identity, server: &Identity, compress: bool) -> (usize, usize) {
        let name =
            rustls::pki_types::ServerName::try_from(server.unit.dns_name(&server.deployment))
                .unwrap();
        let (mut cc, mut sc) = (
            client.client_config().unwrap(),
            server.server_config().unwrap(),
        );
        if !compress {
            cc.cert_compressors.clear();
            cc.cert_decompressors.clear();
            sc.cert_compressors.clear();
            sc.cert_decompressors.clear();
        }
        let mut c = rustls::ClientConnection::new(Arc::new(cc), name).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(sc)).unwrap();
        let (mut up, mut down) = (0, 0);
        while c.is_handshaking() || s.is_handshaking() {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            up += buf.len();
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            buf.clear();
            s.write_tls(&mut buf).unwrap();
            down += buf.len();
            if buf.is_empty() && !c.wants_write() {
                break;
            }
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets().unwrap();
        }
        assert_eq!(c.peer_certificates().map(<[_]>::len), Some(2));
        assert_eq!(s.peer_certificates().map(<[_]>::len), Some(2));
        (up, down)
    }

    /// Both ends compress the certificates they present (RFC 8879, zlib): each handshake
    /// flight of a lossy village line is fewer bytes, and so fewer datagrams to lose.
    #[test]
    fn certificates_travel_compressed() {
        let root = Identity::create_root(&u("c01"), "test.grassroots").unwrap();
        let town = root
            .issue_child(&u("c01/k01"))
            .unwrap()
            .issue_child(&u("c01/k01/t01"))
            .unwrap();
        let village = town.issue_child(&u("c01/k01/t01/v01")).unwrap();
        let (up, down) = handshake_bytes(&village, &town, true);
        let (up_plain, down_plain) = handshake_bytes(&village, &town, false);
        // Each side's flight, about 1,400 bytes uncompressed, is at least 200 smaller.
        assert!(
            up + 200 < up_plain,
            "client {up} bytes, {up_plain} uncompressed"
        );
        assert!(
            down + 200 < down_plain,
            "server {down} bytes, {down_plain} uncompressed"
        );
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

    /// The issuer of a peer's certificate is checked by its key, not its name: a unit's CA
    /// may issue a CA under any name, and such a chain still reaches the root.
    #[test]
    fn a_peer_certificate_must_be_signed_by_its_issuers_key() {
        let root = Identity::create_root(&u("c01"), "test.grassroots").unwrap();
        let county = root.issue_child(&u("c01/k01")).unwrap();
        let town = county.issue_child(&u("c01/k01/t01")).unwrap();
        let village = town.issue_child(&u("c01/k01/t01/v01")).unwrap();
        let v03 = u("c01/k01/t01/v03");
        // Every adjacent pair, both ways, with what each presents.
        for (a, b) in [(&root, &county), (&county, &town), (&town, &village)] {
            a.check_issued(&b.unit, &b.presented()).unwrap();
            b.check_issued(&a.unit, &a.presented()).unwrap();
        }
        // A township issued again takes its villages (through the old CA they present);
        // a leaf presented alone is checked against the CA held.
        let town_again = county.issue_child(&u("c01/k01/t01")).unwrap();
        let named = |certs: Vec<Revocable>| -> Vec<(UnitId, String)> {
            certs.into_iter().map(|c| (c.unit, c.key)).collect()
        };
        let through = named(
            town_again
                .check_issued(&village.unit, &village.presented())
                .unwrap(),
        );
        // Checked through the old CA the village presented, and the county's above it: the
        // caller looks each up in the revocations of the unit that issued it.
        let old_ca = town.ca_fingerprint().unwrap();
        assert_eq!(
            through,
            vec![
                (town.unit.clone(), old_ca.clone()),
                (county.unit.clone(), county.ca_fingerprint().unwrap()),
            ]
        );
        // Checked directly, a certificate names the CA held here that it was checked
        // against: a node below a unit issued again still holds that unit's old CA, and a
        // revocation of it stops certificates its stolen key makes there too.
        assert_eq!(
            named(
                town.check_issued(&village.unit, &village.presented())
                    .unwrap()
            ),
            vec![(town.unit.clone(), old_ca)],
            "a leaf of the CA held here names it"
        );
        town.check_issued(&village.unit, &village.chain[..1])
            .unwrap();
        // The township's handshake verifier takes this chain whole (it reaches the root,
        // and the forged CA bears the township CA's name); the key check does not.
        let forged = village
            .testing_issue_under_forged_ca(&town.unit, &village.unit)
            .unwrap();
        use rustls::server::danger::ClientCertVerifier as _;
        let verifier = KnownIntermediates {
            inner: rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(town.roots().unwrap()),
                Identity::provider(),
            )
            .build()
            .unwrap(),
            known: town.issuer_chain.clone(),
        };
        let now = rustls::pki_types::UnixTime::now();
        verifier
            .verify_client_cert(&forged.chain[0], &forged.chain[1..], now)
            .unwrap();
        let err = town.check_issued(&forged.unit, &forged.chain).unwrap_err();
        assert!(err.to_string().contains("not issued by the key"), "{err}");
        // Nor one for a unit below the forger.
        let below = village.testing_issue_under_forged_ca(&town.unit, &v03);
        assert!(below.is_ok_and(|f| town.check_issued(&f.unit, &f.chain).is_err()));
        // A county can issue its township's identity again, so a CA it names as the
        // township's is a township CA: it is trusted for its subtree, as designed.
        let by_county = county
            .testing_issue_under_forged_ca(&town.unit, &v03)
            .unwrap();
        town.check_issued(&v03, &by_county.presented()).unwrap();
    }

    /// Re-encode a PEM text with one byte of its `index`th block's DER flipped.
    fn flip(text: &str, index: usize, at: impl Fn(usize) -> usize) -> String {
        let mut blocks = pem::parse_many(text).unwrap();
        let b = &blocks[index];
        let mut der = b.contents().to_vec();
        let i = at(der.len());
        der[i] ^= 0x55;
        blocks[index] = pem::Pem::new(b.tag(), der);
        pem::encode_many(&blocks)
    }

    #[test]
    fn a_child_keeps_its_keys_and_the_parent_signs_its_request() {
        let root = Identity::create_root(&u("c01"), "test.grassroots").unwrap();
        let county = root.issue_child(&u("c01/k01")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let t01 = u("c01/k01/t01");
        PendingIdentity::create(&t01, "test.grassroots")
            .unwrap()
            .save(&pki)
            .unwrap();
        // Keys held, certificates not yet: the node cannot start on it, and a second
        // request would not overwrite the keys.
        let err = Identity::load(&pki).unwrap_err();
        assert!(matches!(err, PkiError::Pending(_)), "{err}");
        let again = PendingIdentity::create(&t01, "test.grassroots").unwrap();
        assert!(matches!(again.save(&pki), Err(PkiError::Exists(_))));
        // Cut short before its request was written: told so, at the start and at a retry.
        let cut = dir.path().join("cut");
        PendingIdentity::create(&t01, "test.grassroots")
            .unwrap()
            .save(&cut)
            .unwrap();
        std::fs::remove_file(cut.join(REQUEST_FILE)).unwrap();
        let err = Identity::load(&cut).unwrap_err();
        assert!(matches!(err, PkiError::Incomplete(_)), "{err}");
        let err = refuse_held_keys(&cut).unwrap_err();
        assert!(matches!(err, PkiError::Incomplete(_)), "{err}");

        let request = std::fs::read_to_string(pki.join(REQUEST_FILE)).unwrap();
        assert!(!request.contains("PRIVATE"));
        let answer = county.sign_request(&t01, &request).unwrap();
        assert!(!answer.contains("PRIVATE"));
        let pending = PendingIdentity::load(&pki).unwrap();
        let town = pending.accept(&answer, &root.root_fingerprint()).unwrap();
        assert_eq!(town.key, pending.key.serialize_der(), "its own key");
        assert_eq!(town.ca_key_pem, pending.ca_key.serialize_pem());
        town.save(&pki).unwrap();
        assert!(!pki.join(REQUEST_FILE).exists());
        // Accepted once: the folder is no longer a pending one.
        assert!(matches!(
            PendingIdentity::load(&pki),
            Err(PkiError::Exists(_))
        ));
        #[cfg(unix)]
        for key in ["node.key", "ca.key"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(pki.join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let town = Identity::load(&pki).unwrap();
        // Its keys stay out of debug output.
        let shown = format!("{town:?}");
        assert!(!shown.contains("PRIVATE") && !shown.contains(&town.ca_key_pem[30..60]));
        // The chains of a parent-made identity, and the same handshakes.
        let made = county.issue_child(&t01).unwrap();
        assert_eq!(town.chain.len(), made.chain.len());
        assert_eq!(town.issuer_chain.len(), made.issuer_chain.len());
        assert_eq!(handshake(&town, &county).unwrap(), (1, 2));
        // Its CA issues for its own subtree like any other.
        let village = town.issue_child(&u("c01/k01/t01/v01")).unwrap();
        assert_eq!(handshake(&village, &town).unwrap(), (2, 2));
    }

    #[test]
    fn requests_and_answers_that_do_not_fit_are_refused() {
        let root = Identity::create_root(&u("c01"), "test.grassroots").unwrap();
        let county = root.issue_child(&u("c01/k01")).unwrap();
        let town = county.issue_child(&u("c01/k01/t01")).unwrap();
        let (v01, v02) = (u("c01/k01/t01/v01"), u("c01/k01/t01/v02"));
        let pending = |unit: &UnitId, deployment: &str| {
            let p = PendingIdentity::create(unit, deployment).unwrap();
            let r = p.request().unwrap();
            (p, r)
        };
        let request_err = |e: PkiError| matches!(e, PkiError::Request(_));
        assert!(PendingIdentity::create(&u("c01"), "test.grassroots").is_err());

        let (mine, request) = pending(&v01, "test.grassroots");
        // Only the parent signs, and only for the unit the request names.
        assert!(matches!(
            county.sign_request(&v01, &request),
            Err(PkiError::NotAChild { .. })
        ));
        assert!(request_err(town.sign_request(&v02, &request).unwrap_err()));
        let (_, foreign) = pending(&v01, "other.grassroots");
        assert!(request_err(town.sign_request(&v01, &foreign).unwrap_err()));
        // A request whose signature does not match its key (no proof of possession).
        for block in 0..2 {
            let bad = flip(&request, block, |n| n - 1);
            assert!(
                request_err(town.sign_request(&v01, &bad).unwrap_err()),
                "{block}"
            );
        }
        // One request, three, a certificate in its place, or no PEM at all.
        let blocks = pem::parse_many(&request).unwrap();
        assert!(request_err(
            town.sign_request(&v01, &pem::encode(&blocks[0]))
                .unwrap_err()
        ));
        let three = pem::encode_many(&[blocks[0].clone(), blocks[1].clone(), blocks[1].clone()]);
        assert!(request_err(town.sign_request(&v01, &three).unwrap_err()));
        let cert = pem::encode(&pem::Pem::new(CERT_LABEL, town.chain[0].to_vec()));
        assert!(request_err(town.sign_request(&v01, &cert).unwrap_err()));
        assert!(request_err(town.sign_request(&v01, "hello").unwrap_err()));
        // One key for both: the node's key would sign certificates.
        let key = KeyPair::generate().unwrap();
        let same = pem::encode_many(&[
            pem::Pem::new(
                REQUEST_LABEL,
                request_params(v01.dns_name("test.grassroots"))
                    .serialize_request(&key)
                    .unwrap()
                    .der()
                    .to_vec(),
            ),
            pem::Pem::new(
                REQUEST_LABEL,
                request_params(ca_common_name(&v01, "test.grassroots"))
                    .serialize_request(&key)
                    .unwrap()
                    .der()
                    .to_vec(),
            ),
        ]);
        assert!(request_err(town.sign_request(&v01, &same).unwrap_err()));

        let issued_err = |e: PkiError| matches!(e, PkiError::Issued(_));
        let pin = root.root_fingerprint();
        let answer = town.sign_request(&v01, &request).unwrap();
        let blocks = |text: &str| pem::parse_many(text).unwrap();
        let refused = |answer: &[pem::Pem], pin: &str| {
            issued_err(mine.accept(&pem::encode_many(answer), pin).unwrap_err())
        };
        let (_, theirs) = pending(&v01, "test.grassroots");
        let answer_for_theirs = town.sign_request(&v01, &theirs).unwrap();
        // An answer to another request: not this folder's keys.
        assert!(refused(&blocks(&answer_for_theirs), &pin));
        // The genuine answer with the CA certificate swapped in from the other one.
        let mut swapped = blocks(&answer);
        swapped[1] = blocks(&answer_for_theirs)[1].clone();
        assert!(refused(&swapped, &pin));
        // A CA certificate for this folder's CA key, but signed by another township's CA,
        // or named for a node, or not a CA.
        let t02 = county.issue_child(&u("c01/k01/t02")).unwrap();
        let mut wrong_issuer = blocks(&answer);
        let by_t02 = t02.certify(&v01, &mine.key, &mine.ca_key).unwrap();
        wrong_issuer[1] = pem::Pem::new(CERT_LABEL, by_t02.ca.to_vec());
        assert!(refused(&wrong_issuer, &pin));
        let issuer = town.issuer().unwrap();
        for params in [
            leaf_params(&v01, "test.grassroots").unwrap(),
            request_params(ca_common_name(&v01, "test.grassroots")),
        ] {
            let mut bad_ca = blocks(&answer);
            let cert = params.signed_by(&mine.ca_key, &issuer).unwrap();
            bad_ca[1] = pem::Pem::new(CERT_LABEL, cert.der().to_vec());
            assert!(refused(&bad_ca, &pin));
        }
        // An answer under a root of someone else's making: every certificate in it is
        // right for this folder's keys and names, so only the pinned root tells.
        let fake_root = Identity::create_root(&u("c01"), "test.grassroots").unwrap();
        let fake_town = fake_root
            .issue_child(&u("c01/k01"))
            .unwrap()
            .issue_child(&u("c01/k01/t01"))
            .unwrap();
        let forged = blocks(&fake_town.sign_request(&v01, &request).unwrap());
        assert!(refused(&forged, &pin));
        assert!(
            mine.accept(&pem::encode_many(&forged), &fake_root.root_fingerprint())
                .is_ok(),
            "the same answer with its own root pinned: the pin is what refused it"
        );
        // The genuine chain under another root: refused by the pin, and by the chain when
        // that root is pinned.
        let mut rerooted = blocks(&answer);
        let last = rerooted.len() - 1;
        rerooted[last] = pem::Pem::new(CERT_LABEL, fake_root.root.to_vec());
        assert!(refused(&rerooted, &pin));
        assert!(refused(&rerooted, &fake_root.root_fingerprint()));
        // The parent's CA left out: the node certificate does not chain.
        let mut short = blocks(&answer);
        short.remove(2);
        assert!(refused(&short, &pin));
        // A certificate damaged, the request sent back, or no answer at all.
        assert!(refused(&blocks(&flip(&answer, 0, |n| n / 2)), &pin));
        assert!(issued_err(mine.accept(&request, &pin).unwrap_err()));
        assert!(issued_err(mine.accept("", &pin).unwrap_err()));
        // The genuine answer still works after all that.
        let village = mine.accept(&answer, &pin.to_uppercase()).unwrap();
        assert_eq!(handshake(&village, &town).unwrap(), (2, 2));
    }
}
