//! The token signing keys (Secret `<name>-token-keys`) and their rotation.
//!
//! The registry mounts the Secret and re-reads it when it changes: it signs
//! with [`SIGNING_KEY_FILE`] and accepts every key in [`VERIFY_KEYS_FILE`].
//! The operator signs robot tokens with the same key. A key is kept while
//! it is valid (never regenerated on a reconcile) and rotated on a schedule
//! in three steps, so no token is refused on the way:
//!
//! 1. **publish** (key older than [`KeyPolicy::rotate_after`]): a new key is
//!    made and kept as [`NEXT_KEY_FILE`]; its public half joins verify.pem.
//!    Signing does not change yet.
//! 2. **switch** (after [`KeyPolicy::switch_after`], long enough for every
//!    replica's mounted copy to hold the new public key): the new key signs;
//!    the old public key stays in verify.pem.
//! 3. **retire** (after [`KeyPolicy::keep_previous`], when every token the
//!    old key signed has expired): the old public key is dropped.
//!
//! [`plan`] is a pure function of what was observed and the time; the
//! state between steps lives in the Secret's annotations.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_access::keys::{self, KeyError, SIGNING_KEY_FILE, Signer, VERIFY_KEYS_FILE};
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use crate::crd::Registry;
use crate::desired::owner;
use crate::names::Names;

/// The next private key, between steps 1 and 2. The registry ignores it.
pub const NEXT_KEY_FILE: &str = "next.key";
/// When the current signing key began to sign (RFC 3339).
pub const SIGNING_SINCE: &str = "berth.dev/signing-key-since";
/// When the next key was published in verify.pem (step 1).
pub const NEXT_PUBLISHED_AT: &str = "berth.dev/next-key-published-at";
/// Until when the previous public key stays in verify.pem (step 3).
pub const PREVIOUS_UNTIL: &str = "berth.dev/previous-key-until";

/// How keys age.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyPolicy {
    /// A signing key this old is replaced.
    pub rotate_after: Duration,
    /// A published next key starts signing after this long.
    pub switch_after: Duration,
    /// A replaced key is still accepted this long after it stopped signing.
    pub keep_previous: Duration,
}

impl KeyPolicy {
    /// 30-day keys; two minutes for the kubelet to refresh every mounted
    /// copy; the old key is accepted until the longest-lived token it
    /// signed (`longest_token`, the refresh token's lifetime) has expired,
    /// plus ten minutes of clock skew and kubelet delay. Robot tokens are
    /// re-issued as soon as the key switches, so they do not count.
    pub fn new(longest_token: Duration) -> Self {
        Self {
            rotate_after: Duration::from_secs(30 * 24 * 3600),
            switch_after: Duration::from_secs(120),
            keep_previous: longest_token + Duration::from_secs(600),
        }
    }
}

/// What a plan changes, for an Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// There was no usable key: one was made.
    Issued,
    /// Step 1: the next key is published.
    NextPublished,
    /// Step 2: the next key signs.
    Switched,
    /// Step 3: the previous key is no longer accepted.
    PreviousRetired,
}

impl Change {
    /// (Event reason, note).
    pub fn describe(self) -> (&'static str, &'static str) {
        match self {
            Self::Issued => ("TokenKeyIssued", "made the token signing key"),
            Self::NextPublished => (
                "TokenKeyRotating",
                "published the next token signing key; it starts signing once every registry pod has it",
            ),
            Self::Switched => (
                "TokenKeyRotated",
                "the new token signing key signs now; tokens signed by the previous one stay valid until they expire",
            ),
            Self::PreviousRetired => (
                "TokenKeyRetired",
                "the previous token signing key is no longer accepted: every token it signed has expired",
            ),
        }
    }
}

/// Step 1's Secret (kept until step 2): the current key still signs, the
/// next one is published beside it so every replica knows it before it
/// signs anything.
fn next_published(
    signing: String,
    current_public: &str,
    (next_private, next_public): (String, String),
    since: Timestamp,
    published: Timestamp,
    next_step: Timestamp,
    change: Option<Change>,
) -> Plan {
    Plan {
        data: BTreeMap::from([
            (SIGNING_KEY_FILE.to_owned(), signing),
            (NEXT_KEY_FILE.to_owned(), next_private),
            (
                VERIFY_KEYS_FILE.to_owned(),
                verify_pem(current_public, &[next_public]),
            ),
        ]),
        annotations: BTreeMap::from([
            (SIGNING_SINCE.to_owned(), since.to_string()),
            (NEXT_PUBLISHED_AT.to_owned(), published.to_string()),
        ]),
        next_step,
        change,
    }
}

/// The Secret's contents as they should be, and when to look again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub data: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The next step is due then.
    pub next_step: Timestamp,
    pub change: Option<Change>,
}

impl Plan {
    /// The current signing key (PEM).
    pub fn signing_key(&self) -> &str {
        self.data
            .get(SIGNING_KEY_FILE)
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// Every accepted public key (PEM blocks).
    pub fn verify_pem(&self) -> &str {
        self.data
            .get(VERIFY_KEYS_FILE)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

fn text(secret: Option<&Secret>, key: &str) -> Option<String> {
    let bytes = secret?.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn annotation(secret: Option<&Secret>, key: &str) -> Option<Timestamp> {
    secret?
        .metadata
        .annotations
        .as_ref()?
        .get(key)?
        .parse()
        .ok()
}

fn after(t: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// The `PUBLIC KEY` PEM blocks of `pem`, each ending in a newline.
fn public_blocks(pem: &str) -> Vec<String> {
    const END: &str = "-----END PUBLIC KEY-----";
    let mut blocks = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find("-----BEGIN PUBLIC KEY-----") {
        let Some(end) = rest[start..].find(END) else {
            break;
        };
        let stop = start + end + END.len();
        blocks.push(format!("{}\n", rest[start..stop].trim()));
        rest = &rest[stop..];
    }
    blocks
}

fn verify_pem(first: &str, others: &[String]) -> String {
    let mut out = first.to_owned();
    for other in others {
        if other.trim() != first.trim() && !out.contains(other.trim()) {
            out.push_str(other);
        }
    }
    out
}

/// What the keys Secret should hold at `now`, given what it holds
/// (`observed`). `fresh` makes a key pair (`keys::generate` outside
/// tests); it is called only when a key is needed.
pub fn plan(
    observed: Option<&Secret>,
    now: Timestamp,
    policy: KeyPolicy,
    fresh: &mut dyn FnMut() -> Result<(String, String), KeyError>,
) -> Result<Plan, KeyError> {
    let signing =
        text(observed, SIGNING_KEY_FILE).filter(|k| Signer::from_pem(k.as_bytes()).is_ok());
    let Some(signing) = signing else {
        let (private, public) = fresh()?;
        return Ok(Plan {
            data: BTreeMap::from([
                (SIGNING_KEY_FILE.to_owned(), private),
                (VERIFY_KEYS_FILE.to_owned(), public),
            ]),
            annotations: BTreeMap::from([(SIGNING_SINCE.to_owned(), now.to_string())]),
            next_step: after(now, policy.rotate_after),
            change: Some(Change::Issued),
        });
    };
    let current_public = keys::public_pem(signing.as_bytes())?;
    let since = annotation(observed, SIGNING_SINCE).unwrap_or(now);
    let accepted = public_blocks(&text(observed, VERIFY_KEYS_FILE).unwrap_or_default());
    let next = text(observed, NEXT_KEY_FILE).and_then(|k| {
        keys::public_pem(k.as_bytes())
            .ok()
            .map(|public| (k, public))
    });

    // Step 2 is due, or pending.
    if let Some((next_private, next_public)) = next {
        let published = annotation(observed, NEXT_PUBLISHED_AT).unwrap_or(now);
        let switch_at = after(published, policy.switch_after);
        if now >= switch_at {
            let until = after(now, policy.keep_previous);
            return Ok(Plan {
                data: BTreeMap::from([
                    (SIGNING_KEY_FILE.to_owned(), next_private),
                    (
                        VERIFY_KEYS_FILE.to_owned(),
                        verify_pem(&next_public, &[current_public]),
                    ),
                ]),
                annotations: BTreeMap::from([
                    (SIGNING_SINCE.to_owned(), now.to_string()),
                    (PREVIOUS_UNTIL.to_owned(), until.to_string()),
                ]),
                next_step: until,
                change: Some(Change::Switched),
            });
        }
        return Ok(next_published(
            signing,
            &current_public,
            (next_private, next_public),
            since,
            published,
            switch_at,
            None,
        ));
    }

    // Step 1 is due.
    let rotate_at = after(since, policy.rotate_after);
    if now >= rotate_at {
        let (next_private, next_public) = fresh()?;
        // A previous key still listed goes now: it stopped signing at least
        // `rotate_after` ago, far longer than any token lives.
        return Ok(next_published(
            signing,
            &current_public,
            (next_private, next_public),
            since,
            now,
            after(now, policy.switch_after),
            Some(Change::NextPublished),
        ));
    }

    // Steady, possibly with a previous key still accepted (step 3 pending).
    let previous: Vec<String> = accepted
        .into_iter()
        .filter(|b| b.trim() != current_public.trim())
        .collect();
    let mut annotations = BTreeMap::from([(SIGNING_SINCE.to_owned(), since.to_string())]);
    let mut data = BTreeMap::from([(SIGNING_KEY_FILE.to_owned(), signing)]);
    let mut change = None;
    let mut next_step = rotate_at;
    if previous.is_empty() {
        data.insert(VERIFY_KEYS_FILE.to_owned(), current_public);
    } else {
        // No record of when the previous key stopped signing: keep it the
        // full time from now, which is never too short.
        let until = annotation(observed, PREVIOUS_UNTIL)
            .unwrap_or_else(|| after(now, policy.keep_previous));
        if now >= until {
            data.insert(VERIFY_KEYS_FILE.to_owned(), current_public);
            change = Some(Change::PreviousRetired);
        } else {
            data.insert(
                VERIFY_KEYS_FILE.to_owned(),
                verify_pem(&current_public, &previous),
            );
            annotations.insert(PREVIOUS_UNTIL.to_owned(), until.to_string());
            next_step = next_step.min(until);
        }
    }
    Ok(Plan {
        data,
        annotations,
        next_step,
        change,
    })
}

/// Whether `secret` already holds exactly what `plan` says.
pub fn is_current(secret: Option<&Secret>, plan: &Plan) -> bool {
    let Some(secret) = secret else {
        return false;
    };
    let data: BTreeMap<String, String> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    let annotations: BTreeMap<String, String> = secret
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| plan_annotation(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    data == plan.data && annotations == plan.annotations
}

fn plan_annotation(key: &str) -> bool {
    [SIGNING_SINCE, NEXT_PUBLISHED_AT, PREVIOUS_UNTIL].contains(&key)
}

/// The Secret for `plan`. Server-side apply of it drops the keys and
/// annotations a step no longer needs (the operator owns them all).
pub fn secret(registry: &Registry, names: &Names, plan: &Plan) -> Secret {
    let mut meta = owner::child_meta(registry, names, names.token_keys_secret(), true);
    meta.annotations = Some(plan.annotations.clone());
    Secret {
        metadata: meta,
        type_: Some("Opaque".to_owned()),
        data: Some(
            plan.data
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use berth_access::Verifier;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn policy() -> KeyPolicy {
        KeyPolicy::new(Duration::from_secs(86_400))
    }

    fn keygen() -> impl FnMut() -> Result<(String, String), KeyError> {
        keys::generate
    }

    fn never() -> impl FnMut() -> Result<(String, String), KeyError> {
        || -> Result<(String, String), KeyError> { panic!("no key should be generated") }
    }

    /// What the apiserver would hold after applying `plan`.
    fn stored(plan: &Plan) -> Secret {
        secret(
            &crate::fixtures::registry(),
            &crate::fixtures::names(),
            plan,
        )
    }

    fn kids(pem: &str) -> Vec<String> {
        Verifier::from_pem(pem.as_bytes()).unwrap().kids()
    }

    fn kid(private: &str) -> String {
        keys::kid_of_public_pem(keys::public_pem(private.as_bytes()).unwrap().as_bytes()).unwrap()
    }

    #[test]
    fn a_missing_secret_gets_a_new_key_due_for_rotation_in_thirty_days() {
        let now = t("2026-11-30T12:00:00Z");
        let p = plan(None, now, policy(), &mut keygen()).unwrap();
        assert_eq!(p.change, Some(Change::Issued));
        assert_eq!(kids(p.verify_pem()), vec![kid(p.signing_key())]);
        assert_eq!(p.next_step, t("2026-12-30T12:00:00Z"));
        assert_eq!(p.annotations[SIGNING_SINCE], now.to_string());
        assert!(!p.data.contains_key(NEXT_KEY_FILE));
    }

    #[test]
    fn a_valid_key_is_kept_across_reconciles() {
        let now = t("2026-11-30T12:00:00Z");
        let first = plan(None, now, policy(), &mut keygen()).unwrap();
        let s = stored(&first);
        let later = t("2026-12-10T12:00:00Z");
        let again = plan(Some(&s), later, policy(), &mut never()).unwrap();
        assert_eq!(again.change, None);
        assert_eq!(again.data, first.data);
        assert_eq!(again.annotations, first.annotations);
        assert!(is_current(Some(&s), &again));
    }

    #[test]
    fn a_broken_key_is_replaced() {
        let mut s =
            stored(&plan(None, t("2026-11-30T12:00:00Z"), policy(), &mut keygen()).unwrap());
        s.data
            .as_mut()
            .unwrap()
            .insert(SIGNING_KEY_FILE.into(), ByteString(b"not a key".to_vec()));
        let p = plan(Some(&s), t("2026-12-01T12:00:00Z"), policy(), &mut keygen()).unwrap();
        assert_eq!(p.change, Some(Change::Issued));
    }

    #[test]
    fn rotation_publishes_then_switches_then_retires_with_overlap() {
        let t0 = t("2026-11-01T00:00:00Z");
        let issued = plan(None, t0, policy(), &mut keygen()).unwrap();
        let old_kid = kid(issued.signing_key());

        // Day 30: the next key is published but does not sign yet.
        let t1 = t("2026-12-01T00:00:00Z");
        let published = plan(Some(&stored(&issued)), t1, policy(), &mut keygen()).unwrap();
        assert_eq!(published.change, Some(Change::NextPublished));
        assert_eq!(kid(published.signing_key()), old_kid);
        let new_kid = kid(&published.data[NEXT_KEY_FILE]);
        assert_eq!(kids(published.verify_pem()).len(), 2);
        assert!(kids(published.verify_pem()).contains(&new_kid));
        assert_eq!(published.next_step, t("2026-12-01T00:02:00Z"));

        // One minute on: still waiting for the mounted copies.
        let waiting = plan(
            Some(&stored(&published)),
            t("2026-12-01T00:01:00Z"),
            policy(),
            &mut never(),
        )
        .unwrap();
        assert_eq!(waiting.change, None);
        assert_eq!(
            waiting,
            Plan {
                change: None,
                ..published.clone()
            }
        );

        // Two minutes on: the new key signs, the old one is still accepted.
        let t2 = t("2026-12-01T00:02:00Z");
        let switched = plan(Some(&stored(&published)), t2, policy(), &mut never()).unwrap();
        assert_eq!(switched.change, Some(Change::Switched));
        assert_eq!(kid(switched.signing_key()), new_kid);
        assert!(!switched.data.contains_key(NEXT_KEY_FILE));
        let accepted = kids(switched.verify_pem());
        assert!(accepted.contains(&old_kid) && accepted.contains(&new_kid));
        let until = t("2026-12-02T00:12:00Z");
        assert_eq!(switched.next_step, until);
        assert_eq!(switched.annotations[SIGNING_SINCE], t2.to_string());

        // Before the longest token expires the old key stays.
        let kept = plan(
            Some(&stored(&switched)),
            t("2026-12-02T00:00:00Z"),
            policy(),
            &mut never(),
        )
        .unwrap();
        assert_eq!(kept.change, None);
        assert_eq!(kids(kept.verify_pem()).len(), 2);
        assert_eq!(kept.next_step, until);

        // Then it goes.
        let retired = plan(Some(&stored(&kept)), until, policy(), &mut never()).unwrap();
        assert_eq!(retired.change, Some(Change::PreviousRetired));
        assert_eq!(kids(retired.verify_pem()), vec![new_kid.clone()]);
        assert!(!retired.annotations.contains_key(PREVIOUS_UNTIL));
        assert_eq!(retired.next_step, t("2026-12-31T00:02:00Z"));

        // And nothing moves until the next rotation.
        let quiet = plan(
            Some(&stored(&retired)),
            t("2026-12-15T00:00:00Z"),
            policy(),
            &mut never(),
        )
        .unwrap();
        assert_eq!(quiet.change, None);
        assert!(is_current(Some(&stored(&retired)), &quiet));
    }

    #[test]
    fn the_previous_key_outlives_the_longest_token() {
        let p = KeyPolicy::new(Duration::from_secs(86_400));
        assert!(p.keep_previous > Duration::from_secs(86_400));
        assert!(p.switch_after >= Duration::from_secs(60));
    }

    #[test]
    fn pem_blocks_are_split_and_deduplicated() {
        let (_, a) = keys::generate().unwrap();
        let (_, b) = keys::generate().unwrap();
        let both = format!("{a}{b}");
        assert_eq!(public_blocks(&both), vec![a.clone(), b.clone()]);
        assert_eq!(verify_pem(&a, &[a.clone(), b.clone()]), both);
    }
}
