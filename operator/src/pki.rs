//! Certificates for SelfSigned mode: a long-lived CA per Registry and the
//! registry's serving certificate, plus the facts the controller needs about
//! any certificate (its names, its expiry, when to renew it).
//!
//! Pure: the clock comes in as an argument, so the renewal math is tested
//! without waiting. Keys are ECDSA P-256, which every registry client and
//! container runtime accepts, and small enough to rotate often.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use crate::crd::Tls;

/// The CA lives long: every node trusts it, and replacing it means a
/// rotation through every node. Ten years, renewed with one year to spare.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
pub const CA_RENEW_BEFORE: Duration = Duration::from_secs(365 * 24 * 3600);

/// Certificates start a little in the past, so a node whose clock lags the
/// operator's does not see a certificate from the future.
const BACKDATE: SignedDuration = SignedDuration::from_mins(5);

/// Longest Common Name X.509 allows; longer names are still in the SANs,
/// which is where clients look.
const MAX_COMMON_NAME: usize = 64;

#[derive(Clone, Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating a key pair: {0}")]
    Key(#[source] rcgen::Error),
    #[error("issuing a certificate: {0}")]
    Issue(#[source] rcgen::Error),
    #[error("reading the CA: {0}")]
    Ca(#[source] rcgen::Error),
    #[error("{what} holds no readable PEM certificate: {detail}")]
    Unreadable { what: &'static str, detail: String },
    #[error("`{value}` is not a Go duration (like 2160h): {detail}")]
    Duration { value: String, detail: String },
    #[error("{0} is out of the range a certificate can express")]
    TimeRange(Timestamp),
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for KeyedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// How long the serving certificate lives and when it is renewed, from the
/// spec's Go duration strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CertPolicy {
    pub validity: Duration,
    pub renew_before: Duration,
}

impl CertPolicy {
    pub fn from_tls(tls: &Tls) -> Result<Self, PkiError> {
        Ok(Self {
            validity: parse_duration(&tls.duration)?,
            renew_before: parse_duration(&tls.renew_before)?,
        })
    }

    pub const CA: Self = Self {
        validity: CA_VALIDITY,
        renew_before: CA_RENEW_BEFORE,
    };
}

fn parse_duration(value: &str) -> Result<Duration, PkiError> {
    let parsed = kube::core::Duration::from_str(value).map_err(|e| PkiError::Duration {
        value: value.to_owned(),
        detail: e.to_string(),
    })?;
    if parsed.is_negative() {
        return Err(PkiError::Duration {
            value: value.to_owned(),
            detail: "it is negative".into(),
        });
    }
    Ok(parsed.into())
}

/// A new self-signed CA, valid for [`CA_VALIDITY`] from `now`.
pub fn issue_ca(common_name: &str, now: Timestamp) -> Result<KeyedCert, PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::Key)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "berth");
    params
        .distinguished_name
        .push(DnType::CommonName, truncate(common_name, MAX_COMMON_NAME));
    // Path length 0: this CA signs serving certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = to_offset(ts_sub(now, BACKDATE)?)?;
    params.not_after = to_offset(ts_add(now, CA_VALIDITY)?)?;
    let cert = params.self_signed(&key).map_err(PkiError::Issue)?;
    Ok(KeyedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A serving certificate for `names` (DNS names and IP addresses), signed by
/// `ca`, valid for `validity` from `now` but never past the CA's own expiry.
pub fn issue_serving(
    ca: &KeyedCert,
    names: &[String],
    now: Timestamp,
    validity: Duration,
) -> Result<KeyedCert, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(PkiError::Ca)?;
    let ca_not_after = parse_cert(&ca.cert_pem, "the CA")?.not_after;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(PkiError::Ca)?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::Key)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(PkiError::Issue)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "berth");
    if let Some(cn) = names
        .iter()
        .find(|n| n.len() <= MAX_COMMON_NAME && IpAddr::from_str(n).is_err())
    {
        params
            .distinguished_name
            .push(DnType::CommonName, cn.as_str());
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = to_offset(ts_sub(now, BACKDATE)?)?;
    params.not_after = to_offset(ts_add(now, validity)?.min(ca_not_after))?;
    let cert = params.signed_by(&key, &issuer).map_err(PkiError::Issue)?;
    Ok(KeyedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// What the controller needs to know about one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub is_ca: bool,
    /// `sha256:<hex>` of the DER encoding.
    pub fingerprint: String,
    /// DER of the SubjectPublicKeyInfo, to match a certificate to its key.
    pub public_key_der: Vec<u8>,
}

impl CertInfo {
    /// Whether a client dialling `name` (a DNS name or an IP address) would
    /// accept this certificate's names. Wildcards match one left-most label.
    pub fn covers(&self, name: &str) -> bool {
        if let Ok(ip) = IpAddr::from_str(name) {
            return self.ip_addresses.contains(&ip);
        }
        let name = name.to_ascii_lowercase();
        self.dns_names.iter().any(|san| {
            let san = san.to_ascii_lowercase();
            match san.strip_prefix("*.") {
                Some(parent) => name
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => san == name,
            }
        })
    }

    /// When to renew: `renew_before` ahead of expiry.
    pub fn renewal_time(&self, renew_before: Duration) -> Timestamp {
        renewal_time(self.not_after, renew_before)
    }
}

/// `not_after − renew_before`, or the start of time if that underflows.
pub fn renewal_time(not_after: Timestamp, renew_before: Duration) -> Timestamp {
    ts_sub(
        not_after,
        SignedDuration::try_from(renew_before).unwrap_or(SignedDuration::MAX),
    )
    .unwrap_or(Timestamp::MIN)
}

/// How long from `now` until `at`; zero if `at` has passed. The controller
/// requeues after exactly this long, so renewal happens on time without
/// polling.
pub fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// `sha256:<lower-case hex>` of a DER certificate: how status and the node
/// agent name a CA.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Every certificate in a PEM bundle, in order. Blocks that are not
/// certificates (a private key, say) are skipped.
pub fn parse_bundle(pem: &str, what: &'static str) -> Result<Vec<CertInfo>, PkiError> {
    let unreadable = |detail: String| PkiError::Unreadable { what, detail };
    let mut certs = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| unreadable(e.to_string()))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        let x509 = block.parse_x509().map_err(|e| unreadable(e.to_string()))?;
        certs.push(info(&x509, &block.contents, what)?);
    }
    if certs.is_empty() {
        return Err(unreadable("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// The first certificate of a PEM bundle (the leaf of a chain).
pub fn parse_cert(pem: &str, what: &'static str) -> Result<CertInfo, PkiError> {
    let mut certs = parse_bundle(pem, what)?;
    Ok(certs.swap_remove(0))
}

fn info(
    x509: &x509_parser::certificate::X509Certificate<'_>,
    der: &[u8],
    what: &'static str,
) -> Result<CertInfo, PkiError> {
    let unreadable = |detail: String| PkiError::Unreadable { what, detail };
    let validity = x509.validity();
    let stamp = |t: &x509_parser::time::ASN1Time| {
        Timestamp::from_second(t.timestamp()).map_err(|e| unreadable(e.to_string()))
    };
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    if let Some(san) = x509
        .subject_alternative_name()
        .map_err(|e| unreadable(e.to_string()))?
    {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        ip_addresses.push(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        ip_addresses.push(IpAddr::from(v6));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        not_before: stamp(&validity.not_before)?,
        not_after: stamp(&validity.not_after)?,
        dns_names,
        ip_addresses,
        is_ca: x509.is_ca(),
        fingerprint: fingerprint(der),
        public_key_der: x509.public_key().raw.to_vec(),
    })
}

/// Whether the first certificate in `leaf_pem` carries a valid signature by
/// the first certificate in `ca_pem`.
pub fn is_signed_by(leaf_pem: &str, ca_pem: &str) -> bool {
    let Some(leaf) = first_block(leaf_pem) else {
        return false;
    };
    let Some(ca) = first_block(ca_pem) else {
        return false;
    };
    let (Ok(leaf), Ok(ca)) = (leaf.parse_x509(), ca.parse_x509()) else {
        return false;
    };
    leaf.verify_signature(Some(ca.public_key())).is_ok()
}

fn first_block(pem: &str) -> Option<Pem> {
    Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .find(|b| b.label == "CERTIFICATE")
}

/// Whether `key_pem` is the private key of the certificate described by `cert`.
pub fn key_matches(cert: &CertInfo, key_pem: &str) -> bool {
    KeyPair::from_pem(key_pem).is_ok_and(|key| {
        use rcgen::PublicKeyData;
        key.subject_public_key_info() == cert.public_key_der
    })
}

/// What to do with the serving certificate found in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It is good; renew it at `renew_at`.
    Keep { renew_at: Timestamp },
    /// Issue a new one, for this reason (said in events and conditions).
    Reissue(ReissueReason),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReissueReason {
    Missing,
    Unreadable(String),
    KeyMismatch,
    NotFromCurrentCa,
    MissingNames(Vec<String>),
    RenewalDue { renew_at: Timestamp },
    ValidityChanged,
}

impl std::fmt::Display for ReissueReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => write!(f, "no serving certificate yet"),
            Self::Unreadable(detail) => {
                write!(f, "the serving certificate is unreadable: {detail}")
            }
            Self::KeyMismatch => write!(f, "the private key does not belong to the certificate"),
            Self::NotFromCurrentCa => write!(f, "the certificate was not issued by the current CA"),
            Self::MissingNames(names) => {
                write!(f, "the certificate does not name {}", names.join(", "))
            }
            Self::RenewalDue { renew_at } => write!(f, "renewal was due at {renew_at}"),
            Self::ValidityChanged => write!(f, "tls.duration changed"),
        }
    }
}

/// Decide whether an existing serving certificate (PEM cert and key, as
/// found in the TLS Secret) can stay, given the CA that should have issued
/// it, the names clients use, and the renewal policy.
pub fn serving_verdict(
    existing: Option<(&str, &str)>,
    ca_pem: &str,
    wanted_names: &[String],
    policy: CertPolicy,
    now: Timestamp,
) -> Verdict {
    let parsed = existing.map(|(cert_pem, key_pem)| {
        let cert = parse_cert(cert_pem, "the serving certificate");
        (cert_pem, key_pem, cert)
    });
    let existing = parsed
        .as_ref()
        .map(|(cert_pem, key_pem, cert)| (*cert_pem, *key_pem, cert.as_ref()));
    serving_verdict_parsed(existing, ca_pem, wanted_names, policy, now)
}

/// [`serving_verdict`] for a certificate already parsed (`Err`: why it is
/// unreadable), so a reconcile parses each certificate once.
pub fn serving_verdict_parsed(
    existing: Option<(&str, &str, Result<&CertInfo, &PkiError>)>,
    ca_pem: &str,
    wanted_names: &[String],
    policy: CertPolicy,
    now: Timestamp,
) -> Verdict {
    let Some((cert_pem, key_pem, cert)) = existing else {
        return Verdict::Reissue(ReissueReason::Missing);
    };
    let cert = match cert {
        Ok(cert) => cert,
        Err(e) => return Verdict::Reissue(ReissueReason::Unreadable(e.to_string())),
    };
    if !key_matches(cert, key_pem) {
        return Verdict::Reissue(ReissueReason::KeyMismatch);
    }
    if !is_signed_by(cert_pem, ca_pem) {
        return Verdict::Reissue(ReissueReason::NotFromCurrentCa);
    }
    let missing: Vec<String> = wanted_names
        .iter()
        .filter(|n| !cert.covers(n))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Verdict::Reissue(ReissueReason::MissingNames(missing));
    }
    // A certificate issued for a longer lifetime than the spec now asks for
    // is replaced; one cut short by the CA's expiry is not (reissuing could
    // not make it longer).
    let lifetime = until(cert.not_before, cert.not_after);
    let allowed =
        policy.validity + Duration::try_from(BACKDATE).unwrap_or_default() + Duration::from_secs(1);
    if lifetime > allowed {
        return Verdict::Reissue(ReissueReason::ValidityChanged);
    }
    let renew_at = cert.renewal_time(policy.renew_before);
    if now >= renew_at {
        return Verdict::Reissue(ReissueReason::RenewalDue { renew_at });
    }
    Verdict::Keep { renew_at }
}

/// Whether a stored CA can keep signing: readable, a CA, its key matches,
/// and not within [`CA_RENEW_BEFORE`] of expiry.
pub fn ca_is_usable(ca: &KeyedCert, now: Timestamp) -> bool {
    parse_cert(&ca.cert_pem, "the CA").is_ok_and(|cert| ca_cert_is_usable(&cert, &ca.key_pem, now))
}

/// [`ca_is_usable`] for a CA certificate already parsed.
pub fn ca_cert_is_usable(cert: &CertInfo, key_pem: &str, now: Timestamp) -> bool {
    cert.is_ca && key_matches(cert, key_pem) && now < cert.renewal_time(CA_RENEW_BEFORE)
}

/// Whether a stored CA can still sign at all: readable, a CA, its key
/// matches, not expired. (A CA being rotated out is past
/// [`ca_is_usable`] but still signs until every node trusts its successor.)
pub fn can_sign(ca: &KeyedCert, now: Timestamp) -> bool {
    parse_cert(&ca.cert_pem, "the CA").is_ok_and(|cert| ca_cert_can_sign(&cert, &ca.key_pem, now))
}

/// [`can_sign`] for a CA certificate already parsed.
pub fn ca_cert_can_sign(cert: &CertInfo, key_pem: &str, now: Timestamp) -> bool {
    cert.is_ca && key_matches(cert, key_pem) && now < cert.not_after
}

/// The PEM bundle nodes and clients are told to trust: the current CA first,
/// then any earlier CAs that have not expired yet, so certificates from the
/// previous CA keep verifying while every node learns the new one.
pub fn trust_bundle(current_ca_pem: &str, previous_bundle: Option<&str>, now: Timestamp) -> String {
    let current = parse_cert(current_ca_pem, "the CA")
        .map(|c| c.fingerprint)
        .ok();
    trust_bundle_of(current_ca_pem, current.as_deref(), previous_bundle, now)
}

/// [`trust_bundle`] for a current CA whose fingerprint is already known.
pub fn trust_bundle_of(
    current_ca_pem: &str,
    current_fingerprint: Option<&str>,
    previous_bundle: Option<&str>,
    now: Timestamp,
) -> String {
    let mut bundle = current_ca_pem.trim().to_owned();
    bundle.push('\n');
    for block in previous_bundle.map(certificate_blocks).unwrap_or_default() {
        let Ok(old) = parse_cert(block, "the previous CA bundle") else {
            continue;
        };
        if Some(old.fingerprint.as_str()) != current_fingerprint
            && old.not_after > now
            && !bundle.contains(block)
        {
            bundle.push_str(block);
            bundle.push('\n');
        }
    }
    bundle
}

/// The text of each `CERTIFICATE` PEM block in `pem`, markers included.
fn certificate_blocks(pem: &str) -> Vec<&str> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut blocks = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let stop = start + len + END.len();
        blocks.push(&rest[start..stop]);
        rest = &rest[stop..];
    }
    blocks
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((idx, _)) => &s[..idx],
        None => s,
    }
}

fn ts_add(ts: Timestamp, d: Duration) -> Result<Timestamp, PkiError> {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| ts.checked_add(d).ok())
        .ok_or(PkiError::TimeRange(ts))
}

fn ts_sub(ts: Timestamp, d: SignedDuration) -> Result<Timestamp, PkiError> {
    ts.checked_sub(d).map_err(|_| PkiError::TimeRange(ts))
}

fn to_offset(ts: Timestamp) -> Result<time::OffsetDateTime, PkiError> {
    time::OffsetDateTime::from_unix_timestamp(ts.as_second()).map_err(|_| PkiError::TimeRange(ts))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn now() -> Timestamp {
        "2026-11-24T12:00:00Z".parse().expect("timestamp")
    }

    fn names() -> Vec<String> {
        [
            "hub",
            "hub.team",
            "hub.team.svc",
            "hub.team.svc.cluster.local",
            "10.96.0.42",
            "registry.example.com",
        ]
        .map(String::from)
        .to_vec()
    }

    fn policy() -> CertPolicy {
        CertPolicy {
            validity: 90 * DAY,
            renew_before: 30 * DAY,
        }
    }

    fn ca_and_leaf() -> (KeyedCert, KeyedCert) {
        let ca = issue_ca("berth team/hub", now()).expect("ca");
        let leaf = issue_serving(&ca, &names(), now(), policy().validity).expect("leaf");
        (ca, leaf)
    }

    /// rustls's own verifier, as a registry client would run it.
    fn client_accepts(
        ca_pem: &str,
        leaf_pem: &str,
        name: &str,
        at: Timestamp,
    ) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(ca.expect("ca der")).expect("root");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .expect("verifier");
        let leaf = CertificateDer::from_pem_slice(leaf_pem.as_bytes()).expect("leaf der");
        let server = ServerName::try_from(name.to_owned()).expect("server name");
        let secs = u64::try_from(at.as_second()).expect("after 1970");
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &server,
                &[],
                UnixTime::since_unix_epoch(Duration::from_secs(secs)),
            )
            .map(|_| ())
    }

    #[test]
    fn a_client_trusting_the_ca_accepts_the_leaf_for_every_name() {
        let (ca, leaf) = ca_and_leaf();
        for name in names() {
            client_accepts(&ca.cert_pem, &leaf.cert_pem, &name, now())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn a_client_refuses_a_name_the_leaf_does_not_carry() {
        let (ca, leaf) = ca_and_leaf();
        assert!(client_accepts(&ca.cert_pem, &leaf.cert_pem, "other.team.svc", now()).is_err());
    }

    #[test]
    fn a_client_refuses_the_leaf_after_it_expires() {
        let (ca, leaf) = ca_and_leaf();
        let later = now()
            .checked_add(SignedDuration::try_from(91 * DAY).expect("dur"))
            .expect("ts");
        assert!(client_accepts(&ca.cert_pem, &leaf.cert_pem, "hub.team.svc", later).is_err());
    }

    #[test]
    fn the_leaf_verifies_against_its_ca_and_not_another() {
        let (ca, leaf) = ca_and_leaf();
        let other = issue_ca("someone else", now()).expect("ca");
        assert!(is_signed_by(&leaf.cert_pem, &ca.cert_pem));
        assert!(!is_signed_by(&leaf.cert_pem, &other.cert_pem));
        assert!(client_accepts(&other.cert_pem, &leaf.cert_pem, "hub", now()).is_err());
    }

    #[test]
    fn the_leaf_lists_every_dns_name_and_ip_address() {
        let (_, leaf) = ca_and_leaf();
        let info = parse_cert(&leaf.cert_pem, "leaf").expect("parse");
        assert_eq!(
            info.dns_names,
            [
                "hub",
                "hub.team",
                "hub.team.svc",
                "hub.team.svc.cluster.local",
                "registry.example.com"
            ]
        );
        assert_eq!(info.ip_addresses, [IpAddr::from([10, 96, 0, 42])]);
        assert!(!info.is_ca);
    }

    #[test]
    fn the_ca_is_a_ca_valid_for_ten_years() {
        let ca = parse_cert(&issue_ca("hub", now()).expect("ca").cert_pem, "ca").expect("parse");
        assert!(ca.is_ca);
        assert_eq!(until(now(), ca.not_after), CA_VALIDITY);
        assert_eq!(ca.not_before, now().checked_sub(BACKDATE).expect("ts"));
    }

    #[test]
    fn the_leaf_expires_after_the_requested_duration() {
        let (_, leaf) = ca_and_leaf();
        let info = parse_cert(&leaf.cert_pem, "leaf").expect("parse");
        assert_eq!(until(now(), info.not_after), 90 * DAY);
    }

    #[test]
    fn the_leaf_never_outlives_its_ca() {
        let ca = issue_ca("hub", now()).expect("ca");
        let leaf = issue_serving(&ca, &names(), now(), 20 * 365 * DAY).expect("leaf");
        let (ca, leaf) = (
            parse_cert(&ca.cert_pem, "ca").expect("ca"),
            parse_cert(&leaf.cert_pem, "leaf").expect("leaf"),
        );
        assert_eq!(leaf.not_after, ca.not_after);
    }

    #[test]
    fn renewal_is_due_renew_before_ahead_of_expiry() {
        let not_after: Timestamp = "2027-02-22T12:00:00Z".parse().expect("ts");
        let renew_at = renewal_time(not_after, 30 * DAY);
        assert_eq!(
            renew_at,
            "2027-01-23T12:00:00Z".parse::<Timestamp>().expect("ts")
        );
    }

    #[test]
    fn the_requeue_delay_is_the_time_left_until_renewal_and_never_negative() {
        let renew_at: Timestamp = "2026-11-25T12:00:00Z".parse().expect("ts");
        assert_eq!(until(now(), renew_at), DAY);
        assert_eq!(until(renew_at, now()), Duration::ZERO);
    }

    #[test]
    fn a_fresh_leaf_is_kept_until_its_renewal_time() {
        let (ca, leaf) = ca_and_leaf();
        let verdict = serving_verdict(
            Some((&leaf.cert_pem, &leaf.key_pem)),
            &ca.cert_pem,
            &names(),
            policy(),
            now(),
        );
        let expected_renewal = now()
            .checked_add(SignedDuration::try_from(60 * DAY).expect("dur"))
            .expect("ts");
        assert_eq!(
            verdict,
            Verdict::Keep {
                renew_at: expected_renewal
            }
        );
    }

    #[test]
    fn a_leaf_is_reissued_once_renewal_is_due() {
        let (ca, leaf) = ca_and_leaf();
        let at_renewal = now()
            .checked_add(SignedDuration::try_from(60 * DAY).expect("dur"))
            .expect("ts");
        let verdict = serving_verdict(
            Some((&leaf.cert_pem, &leaf.key_pem)),
            &ca.cert_pem,
            &names(),
            policy(),
            at_renewal,
        );
        assert!(
            matches!(verdict, Verdict::Reissue(ReissueReason::RenewalDue { .. })),
            "{verdict:?}"
        );
    }

    #[test]
    fn a_leaf_missing_a_wanted_name_is_reissued() {
        let (ca, leaf) = ca_and_leaf();
        let mut wanted = names();
        wanted.push("10.96.0.99".into());
        let verdict = serving_verdict(
            Some((&leaf.cert_pem, &leaf.key_pem)),
            &ca.cert_pem,
            &wanted,
            policy(),
            now(),
        );
        assert_eq!(
            verdict,
            Verdict::Reissue(ReissueReason::MissingNames(vec!["10.96.0.99".into()]))
        );
    }

    #[test]
    fn a_leaf_from_another_ca_or_with_a_foreign_key_is_reissued() {
        let (ca, leaf) = ca_and_leaf();
        let other = issue_ca("other", now()).expect("ca");
        let foreign = serving_verdict(
            Some((&leaf.cert_pem, &leaf.key_pem)),
            &other.cert_pem,
            &names(),
            policy(),
            now(),
        );
        assert_eq!(foreign, Verdict::Reissue(ReissueReason::NotFromCurrentCa));
        let wrong_key = serving_verdict(
            Some((&leaf.cert_pem, &other.key_pem)),
            &ca.cert_pem,
            &names(),
            policy(),
            now(),
        );
        assert_eq!(wrong_key, Verdict::Reissue(ReissueReason::KeyMismatch));
    }

    #[test]
    fn a_missing_or_garbled_leaf_is_reissued() {
        let (ca, _) = ca_and_leaf();
        assert_eq!(
            serving_verdict(None, &ca.cert_pem, &names(), policy(), now()),
            Verdict::Reissue(ReissueReason::Missing)
        );
        let garbled = serving_verdict(
            Some(("not pem", "")),
            &ca.cert_pem,
            &names(),
            policy(),
            now(),
        );
        assert!(
            matches!(garbled, Verdict::Reissue(ReissueReason::Unreadable(_))),
            "{garbled:?}"
        );
    }

    #[test]
    fn a_shorter_duration_in_the_spec_reissues_a_longer_lived_leaf() {
        let (ca, leaf) = ca_and_leaf();
        let shorter = CertPolicy {
            validity: 30 * DAY,
            renew_before: 10 * DAY,
        };
        let verdict = serving_verdict(
            Some((&leaf.cert_pem, &leaf.key_pem)),
            &ca.cert_pem,
            &names(),
            shorter,
            now(),
        );
        assert_eq!(verdict, Verdict::Reissue(ReissueReason::ValidityChanged));
    }

    #[test]
    fn the_fingerprint_is_sha256_of_the_der() {
        let ca = issue_ca("hub", now()).expect("ca");
        let der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("der");
        let info = parse_cert(&ca.cert_pem, "ca").expect("parse");
        assert_eq!(info.fingerprint, fingerprint(&der));
        assert!(info.fingerprint.starts_with("sha256:") && info.fingerprint.len() == 7 + 64);
        assert_eq!(
            fingerprint(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_ca_close_to_expiry_is_no_longer_usable() {
        let ca = issue_ca("hub", now()).expect("ca");
        assert!(ca_is_usable(&ca, now()));
        let nine_and_a_half_years = now()
            .checked_add(SignedDuration::try_from(CA_VALIDITY - 180 * DAY).expect("d"))
            .expect("ts");
        assert!(!ca_is_usable(&ca, nine_and_a_half_years));
    }

    #[test]
    fn a_ca_being_rotated_out_can_still_sign_until_it_expires() {
        let ca = issue_ca("hub", now()).expect("ca");
        let nine_and_a_half_years = now()
            .checked_add(SignedDuration::try_from(CA_VALIDITY - 180 * DAY).expect("d"))
            .expect("ts");
        assert!(can_sign(&ca, nine_and_a_half_years));
        let after = now()
            .checked_add(SignedDuration::try_from(CA_VALIDITY + DAY).expect("d"))
            .expect("ts");
        assert!(!can_sign(&ca, after));
        let other = issue_ca("other", now()).expect("ca");
        let mismatched = KeyedCert {
            cert_pem: ca.cert_pem.clone(),
            key_pem: other.key_pem,
        };
        assert!(!can_sign(&mismatched, now()));
    }

    #[test]
    fn the_trust_bundle_keeps_an_unexpired_previous_ca_after_the_current_one() {
        let old = issue_ca("old", now()).expect("ca");
        let new = issue_ca("new", now()).expect("ca");
        let bundle = trust_bundle(&new.cert_pem, Some(&old.cert_pem), now());
        let certs = parse_bundle(&bundle, "bundle").expect("bundle");
        let fps: Vec<_> = certs.iter().map(|c| c.fingerprint.clone()).collect();
        let fp = |pem: &str| parse_cert(pem, "ca").expect("ca").fingerprint;
        assert_eq!(fps, [fp(&new.cert_pem), fp(&old.cert_pem)]);
        // Re-running with the bundle it produced changes nothing.
        assert_eq!(trust_bundle(&new.cert_pem, Some(&bundle), now()), bundle);
    }

    #[test]
    fn the_trust_bundle_drops_an_expired_previous_ca() {
        let old = issue_ca("old", now()).expect("ca");
        let much_later = now()
            .checked_add(SignedDuration::try_from(CA_VALIDITY + DAY).expect("d"))
            .expect("ts");
        let new = issue_ca("new", much_later).expect("ca");
        let bundle = trust_bundle(&new.cert_pem, Some(&old.cert_pem), much_later);
        assert_eq!(parse_bundle(&bundle, "bundle").expect("bundle").len(), 1);
    }

    #[test]
    fn go_durations_from_the_spec_parse() {
        let policy = CertPolicy::from_tls(&Tls::default()).expect("policy");
        assert_eq!(
            policy,
            CertPolicy {
                validity: 90 * DAY,
                renew_before: 30 * DAY
            }
        );
        let bad = Tls {
            duration: "ninety days".into(),
            ..Tls::default()
        };
        assert!(CertPolicy::from_tls(&bad).is_err());
    }

    #[test]
    fn wildcard_names_cover_one_label() {
        let info = CertInfo {
            not_before: now(),
            not_after: now(),
            dns_names: vec!["*.hub.example".into()],
            ip_addresses: vec![],
            is_ca: false,
            fingerprint: String::new(),
            public_key_der: vec![],
        };
        assert!(info.covers("a.hub.example"));
        assert!(!info.covers("a.b.hub.example"));
        assert!(!info.covers("hub.example"));
    }
}
