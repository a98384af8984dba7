//! Leader election on a `coordination.k8s.io/v1` Lease, so that with two
//! operator replicas only one reconciles and they never fight over objects.
//!
//! The protocol is client-go's: the holder renews `renewTime` well inside
//! `leaseDurationSeconds`; anyone may take a Lease whose renewal is older
//! than its duration; every write carries the resourceVersion it read, so two
//! candidates racing for an expired Lease cannot both win (the loser gets a
//! 409). A leader that cannot renew in time stops reconciling.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per replica: the pod name.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lost the leader Lease {namespace}/{name}: it was not renewed within {duration:?}")]
    Lost {
        namespace: String,
        name: String,
        duration: Duration,
    },
}

/// What a candidate should do with the Lease as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder let it expire: take it.
    Acquire,
    /// It is ours: renew it.
    Renew,
    /// Someone else holds it until `expires`.
    Wait { holder: String, expires: Timestamp },
}

/// Decide from the Lease's spec (`None` when the Lease does not exist yet).
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == identity {
        return Decision::Renew;
    }
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0)
        .unwrap_or(Timestamp::MIN);
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    let expires = renewed.checked_add(duration).unwrap_or(Timestamp::MAX);
    if now >= expires {
        Decision::Acquire
    } else {
        Decision::Wait {
            holder: holder.to_owned(),
            expires,
        }
    }
}

/// The Lease spec after `decision` is carried out by `identity` at `now`.
pub fn next_spec(
    previous: Option<&LeaseSpec>,
    decision: &Decision,
    config: &LeaseConfig,
    now: Timestamp,
) -> Option<LeaseSpec> {
    let seconds = i32::try_from(config.lease_duration.as_secs()).unwrap_or(i32::MAX);
    match decision {
        Decision::Wait { .. } => None,
        Decision::Renew => {
            let mut spec = previous.cloned().unwrap_or_default();
            spec.renew_time = Some(MicroTime(now));
            spec.lease_duration_seconds = Some(seconds);
            Some(spec)
        }
        Decision::Acquire => {
            let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
            let had_holder = previous
                .and_then(|p| p.holder_identity.as_deref())
                .is_some_and(|h| !h.is_empty());
            Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_duration_seconds: Some(seconds),
                lease_transitions: Some(if had_holder {
                    transitions + 1
                } else {
                    transitions
                }),
                ..LeaseSpec::default()
            })
        }
    }
}

/// One round: read the Lease, and take or renew it if we may. `Ok(true)`
/// when we hold it afterwards.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let existing = api.get_opt(&config.name).await?;
    let decision = decide(
        existing.as_ref().and_then(|l| l.spec.as_ref()),
        &config.identity,
        now,
    );
    let Some(spec) = next_spec(
        existing.as_ref().and_then(|l| l.spec.as_ref()),
        &decision,
        config,
        now,
    ) else {
        return Ok(false);
    };
    let result = match existing {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    namespace: Some(config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            };
            api.create(&PostParams::default(), &lease).await
        }
        Some(mut lease) => {
            // `replace` sends the resourceVersion we read: a 409 means
            // another candidate wrote first.
            lease.spec = Some(spec);
            api.replace(&config.name, &PostParams::default(), &lease)
                .await
        }
    };
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Wait until we hold the Lease; then keep renewing it, publishing `true`
/// on `leading`. Returns an error once leadership is lost.
pub async fn lead(
    api: Api<Lease>,
    config: LeaseConfig,
    leading: watch::Sender<bool>,
) -> Result<(), LeaderError> {
    let mut last_renewal: Option<tokio::time::Instant> = None;
    loop {
        match try_acquire_or_renew(&api, &config).await {
            Ok(true) => {
                if last_renewal.is_none() {
                    tracing::info!(lease = %config.name, identity = %config.identity, "became leader");
                }
                last_renewal = Some(tokio::time::Instant::now());
                leading.send_replace(true);
            }
            Ok(false) if last_renewal.is_some() => return Err(lost(&config)),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader Lease round failed"),
        }
        if last_renewal.is_some_and(|at| at.elapsed() > config.lease_duration) {
            return Err(lost(&config));
        }
        tokio::time::sleep(config.renew_every).await;
    }
}

fn lost(config: &LeaseConfig) -> LeaderError {
    LeaderError::Lost {
        namespace: config.namespace.clone(),
        name: config.name.clone(),
        duration: config.lease_duration,
    }
}

/// Give the Lease up on shutdown, so the other replica takes over at once
/// instead of after the Lease expires.
pub async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    spec.acquire_time = None;
    api.replace(&config.name, &PostParams::default(), &lease)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LeaseConfig {
        LeaseConfig {
            namespace: "berth-system".into(),
            name: "berth-operator".into(),
            identity: "op-a".into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn held_by(holder: &str, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(t(renewed))),
            acquire_time: Some(MicroTime(t(renewed))),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(2),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_missing_or_released_lease_is_acquired() {
        let now = t("2026-11-24T12:00:00Z");
        assert_eq!(decide(None, "op-a", now), Decision::Acquire);
        let released = LeaseSpec {
            holder_identity: None,
            ..held_by("x", "2026-11-24T11:59:59Z")
        };
        assert_eq!(decide(Some(&released), "op-a", now), Decision::Acquire);
    }

    #[test]
    fn a_live_lease_of_another_replica_is_left_alone() {
        let lease = held_by("op-b", "2026-11-24T11:59:50Z");
        let decision = decide(Some(&lease), "op-a", t("2026-11-24T12:00:00Z"));
        assert_eq!(
            decision,
            Decision::Wait {
                holder: "op-b".into(),
                expires: t("2026-11-24T12:00:05Z")
            }
        );
        assert_eq!(
            next_spec(
                Some(&lease),
                &decision,
                &config(),
                t("2026-11-24T12:00:00Z")
            ),
            None
        );
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_counted_as_a_transition() {
        let lease = held_by("op-b", "2026-11-24T11:59:40Z");
        let now = t("2026-11-24T12:00:00Z");
        let decision = decide(Some(&lease), "op-a", now);
        assert_eq!(decision, Decision::Acquire);
        let spec = next_spec(Some(&lease), &decision, &config(), now).expect("spec");
        assert_eq!(spec.holder_identity.as_deref(), Some("op-a"));
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
    }

    #[test]
    fn our_own_lease_is_renewed_keeping_its_acquire_time() {
        let lease = held_by("op-a", "2026-11-24T11:59:58Z");
        let now = t("2026-11-24T12:00:00Z");
        let decision = decide(Some(&lease), "op-a", now);
        assert_eq!(decision, Decision::Renew);
        let spec = next_spec(Some(&lease), &decision, &config(), now).expect("spec");
        assert_eq!(spec.acquire_time, lease.acquire_time);
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
        assert_eq!(spec.lease_transitions, Some(2));
    }
}
