//! ES256 (ECDSA P-256, SHA-256) signing and verification of registry
//! tokens, with key rotation.
//!
//! The operator keeps the keys in a Secret that the registry mounts:
//! - [`SIGNING_KEY_FILE`]: the current private key, PKCS#8 PEM;
//! - [`VERIFY_KEYS_FILE`]: every public key still accepted, as `PUBLIC KEY`
//!   PEM blocks (the current one, the next one before it takes over, and the
//!   previous one until tokens it signed have expired).
//!
//! A token names its key by `kid`, a hash of the public key, so verifying
//! never tries keys in turn. Only ES256 is accepted: a token whose header
//! says `none`, `HS256` or anything else is refused before any key is used.

use std::collections::HashMap;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use sha2::{Digest, Sha256};

use crate::claims::Claims;

/// File (Secret key) holding the current private key.
pub const SIGNING_KEY_FILE: &str = "signing.key";
/// File (Secret key) holding every accepted public key.
pub const VERIFY_KEYS_FILE: &str = "verify.pem";

/// The DER prefix of a P-256 SubjectPublicKeyInfo: everything before the
/// 65-byte uncompressed point. Fixed for this one curve, so keys of any
/// other kind are recognised by not having it.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the signing key is not a PKCS#8 PEM ECDSA P-256 private key (BEGIN PRIVATE KEY); regenerate it or let the operator do so"
    )]
    BadPrivateKey,
    #[error("the verification keys hold no P-256 PUBLIC KEY PEM block")]
    NoPublicKeys,
    #[error("a verification key is not an ECDSA P-256 public key (BEGIN PUBLIC KEY)")]
    BadPublicKey,
    #[error("could not sign a token: {0}")]
    Sign(String),
}

/// Why a token was refused. The messages are safe to show a client: they
/// never include the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a JWT")]
    Malformed,
    #[error("the token is not signed with ES256")]
    WrongAlgorithm,
    #[error("the token was signed by a key this registry does not know (or no longer accepts)")]
    UnknownKey,
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued for another registry")]
    WrongAudience,
    #[error("the token was issued by someone else")]
    WrongIssuer,
    #[error("the token lacks a required claim")]
    MissingClaim,
}

/// The current private key and its id.
pub struct Signer {
    kid: String,
    key: EncodingKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.debug_struct("Signer").field("kid", &self.kid).finish()
    }
}

impl Signer {
    /// From a PKCS#8 PEM P-256 private key.
    pub fn from_pem(pem: &[u8]) -> Result<Signer, KeyError> {
        let (der, pair) = private_key(pem)?;
        let kid = kid_of_point(pair.public_key().as_ref());
        Ok(Signer {
            kid,
            key: EncodingKey::from_ec_der(&der),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| KeyError::Sign(e.to_string()))
    }
}

/// Every accepted public key, by id.
#[derive(Clone)]
pub struct Verifier {
    keys: HashMap<String, DecodingKey>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("kids", &self.kids())
            .finish()
    }
}

impl Verifier {
    /// From one or more `PUBLIC KEY` PEM blocks.
    pub fn from_pem(pem: &[u8]) -> Result<Verifier, KeyError> {
        let mut keys = HashMap::new();
        for der in pem_blocks(pem, "PUBLIC KEY") {
            let point = der
                .strip_prefix(&P256_SPKI_PREFIX[..])
                .filter(|p| p.len() == 65 && p[0] == 4)
                .ok_or(KeyError::BadPublicKey)?;
            let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
            let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
            let key =
                DecodingKey::from_ec_components(&x, &y).map_err(|_| KeyError::BadPublicKey)?;
            keys.insert(kid_of_point(point), key);
        }
        if keys.is_empty() {
            return Err(KeyError::NoPublicKeys);
        }
        Ok(Verifier { keys })
    }

    pub fn kids(&self) -> Vec<String> {
        let mut k: Vec<String> = self.keys.keys().cloned().collect();
        k.sort();
        k
    }

    /// Checks the signature, `exp`/`nbf` (30 s leeway), `iss` and `aud`.
    pub fn verify(&self, token: &str, issuer: &str, audience: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::ES256 {
            return Err(TokenError::WrongAlgorithm);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = self.keys.get(&kid).ok_or(TokenError::UnknownKey)?;
        let mut v = Validation::new(Algorithm::ES256);
        v.leeway = 30;
        v.validate_nbf = true;
        v.set_audience(&[audience]);
        v.set_issuer(&[issuer]);
        v.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, key, &v)
            .map(|d| d.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::InvalidSignature => TokenError::BadSignature,
                    K::ExpiredSignature => TokenError::Expired,
                    K::ImmatureSignature => TokenError::NotYetValid,
                    K::InvalidAudience => TokenError::WrongAudience,
                    K::InvalidIssuer => TokenError::WrongIssuer,
                    K::MissingRequiredClaim(_) => TokenError::MissingClaim,
                    K::InvalidAlgorithm => TokenError::WrongAlgorithm,
                    _ => TokenError::Malformed,
                }
            })
    }
}

/// A new P-256 key: (PKCS#8 private key PEM, public key PEM).
pub fn generate() -> Result<(String, String), KeyError> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| KeyError::BadPrivateKey)?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref())
        .map_err(|_| KeyError::BadPrivateKey)?;
    Ok((pem("PRIVATE KEY", doc.as_ref()), spki_pem(&pair)))
}

/// The public key PEM of a private key PEM.
pub fn public_pem(private_pem: &[u8]) -> Result<String, KeyError> {
    Ok(spki_pem(&private_key(private_pem)?.1))
}

/// The PKCS#8 DER of the first private key in `pem`, and the key pair.
fn private_key(pem: &[u8]) -> Result<(Vec<u8>, EcdsaKeyPair), KeyError> {
    let der = pem_blocks(pem, "PRIVATE KEY")
        .into_iter()
        .next()
        .ok_or(KeyError::BadPrivateKey)?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
        .map_err(|_| KeyError::BadPrivateKey)?;
    Ok((der, pair))
}

/// The `PUBLIC KEY` PEM of a key pair.
fn spki_pem(pair: &EcdsaKeyPair) -> String {
    let mut spki = P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(pair.public_key().as_ref());
    pem("PUBLIC KEY", &spki)
}

/// The key id of a public key PEM (the first block), as tokens carry it.
pub fn kid_of_public_pem(public_pem: &[u8]) -> Result<String, KeyError> {
    let der = pem_blocks(public_pem, "PUBLIC KEY")
        .into_iter()
        .next()
        .ok_or(KeyError::NoPublicKeys)?;
    let point = der
        .strip_prefix(&P256_SPKI_PREFIX[..])
        .ok_or(KeyError::BadPublicKey)?;
    Ok(kid_of_point(point))
}

/// 16 random bytes as hex: token ids and the like.
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    // SystemRandom only fails if the OS has no randomness, where nothing
    // here could work; an all-zero id is then still a valid (if unlucky) id.
    let _ = aws_lc_rs::rand::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// sha256 of the SPKI DER, first 15 bytes, base32 in 4-character groups
/// (the shape of Distribution's libtrust key ids, so logs look familiar).
fn kid_of_point(point: &[u8]) -> String {
    let mut spki = P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(point);
    let digest = Sha256::digest(&spki);
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits: u64 = 0;
    let mut nbits = 0;
    let mut out = String::new();
    for byte in &digest[..15] {
        bits = (bits << 8) | u64::from(*byte);
        nbits += 8;
        while nbits >= 5 {
            nbits -= 5;
            out.push(ALPHABET[((bits >> nbits) & 31) as usize] as char);
        }
    }
    out.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// The DER contents of every PEM block labelled `label` (`PRIVATE KEY`:
/// PKCS#8; `PUBLIC KEY`: SubjectPublicKeyInfo); other blocks are skipped.
fn pem_blocks(pem: &[u8], label: &str) -> Vec<Vec<u8>> {
    use rustls_pemfile::Item;
    rustls_pemfile::read_all(&mut &pem[..])
        .filter_map(Result::ok)
        .filter_map(|item| match (item, label) {
            (Item::Pkcs8Key(k), "PRIVATE KEY") => Some(k.secret_pkcs8_der().to_vec()),
            (Item::SubjectPublicKeyInfo(k), "PUBLIC KEY") => Some(k.as_ref().to_vec()),
            _ => None,
        })
        .collect()
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(line));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::claims::{Grant, TokenKind};
    use crate::scope::{Action, Actions};

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn claims(exp_in: i64) -> Claims {
        let t = now();
        Claims {
            iss: "hub".into(),
            sub: "alice".into(),
            aud: "hub".into(),
            exp: t + exp_in,
            nbf: t - 1,
            iat: t,
            jti: random_id(),
            access: vec![Grant::repository("team/app", Actions::of(&[Action::Pull]))],
            kind: TokenKind::Access,
            groups: vec![],
            uid: None,
        }
    }

    #[test]
    fn a_signed_token_verifies_with_its_public_key() {
        let (private, public) = generate().unwrap();
        let signer = Signer::from_pem(private.as_bytes()).unwrap();
        let verifier = Verifier::from_pem(public.as_bytes()).unwrap();
        assert_eq!(verifier.kids(), vec![signer.kid().to_owned()]);
        assert_eq!(kid_of_public_pem(public.as_bytes()).unwrap(), signer.kid());
        assert_eq!(public_pem(private.as_bytes()).unwrap(), public);
        let token = signer.sign(&claims(300)).unwrap();
        let back = verifier.verify(&token, "hub", "hub").unwrap();
        assert!(back.allows("team/app", Action::Pull));
    }

    #[test]
    fn either_key_verifies_during_a_rotation() {
        let (old_private, old_public) = generate().unwrap();
        let (new_private, new_public) = generate().unwrap();
        let both = Verifier::from_pem(format!("{old_public}{new_public}").as_bytes()).unwrap();
        for private in [old_private, new_private] {
            let t = Signer::from_pem(private.as_bytes())
                .unwrap()
                .sign(&claims(300))
                .unwrap();
            assert!(both.verify(&t, "hub", "hub").is_ok());
        }
    }

    #[test]
    fn refuses_unknown_keys_expiry_audience_issuer_and_tampering() {
        let (private, public) = generate().unwrap();
        let (_, other_public) = generate().unwrap();
        let signer = Signer::from_pem(private.as_bytes()).unwrap();
        let v = Verifier::from_pem(public.as_bytes()).unwrap();
        let other = Verifier::from_pem(other_public.as_bytes()).unwrap();
        let good = signer.sign(&claims(300)).unwrap();
        assert_eq!(
            other.verify(&good, "hub", "hub"),
            Err(TokenError::UnknownKey)
        );
        assert_eq!(
            v.verify(&good, "hub", "elsewhere"),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            v.verify(&good, "mallory", "hub"),
            Err(TokenError::WrongIssuer)
        );
        let expired = signer.sign(&claims(-120)).unwrap();
        assert_eq!(v.verify(&expired, "hub", "hub"), Err(TokenError::Expired));
        // Change one character of the payload: the signature no longer holds.
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let mut payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        payload["access"][0]["actions"] = serde_json::json!(["pull", "push"]);
        parts[1] = URL_SAFE_NO_PAD.encode(payload.to_string());
        assert_eq!(
            v.verify(&parts.join("."), "hub", "hub"),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            v.verify("garbage", "hub", "hub"),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn refuses_alg_none_and_hmac_tokens() {
        let (_, public) = generate().unwrap();
        let v = Verifier::from_pem(public.as_bytes()).unwrap();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(300)).unwrap());
        for alg in ["none", "HS256"] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            let token = format!("{header}.{payload}.");
            let e = v.verify(&token, "hub", "hub").unwrap_err();
            assert!(
                matches!(e, TokenError::WrongAlgorithm | TokenError::Malformed),
                "{alg}: {e:?}"
            );
        }
    }

    #[test]
    fn refuses_keys_that_are_not_p256() {
        assert!(matches!(
            Signer::from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            Err(KeyError::BadPrivateKey)
        ));
        assert!(matches!(
            Verifier::from_pem(b""),
            Err(KeyError::NoPublicKeys)
        ));
    }
}
