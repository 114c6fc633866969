//! Leader election with a coordination Lease: several operator replicas run, one reconciles.
//! The leader renews the Lease; when it cannot within a deadline shorter than the Lease, it
//! stops (and its pod restarts as a standby). A standby takes the Lease once it has seen no
//! renewal for the Lease's duration, timed by its own clock, as client-go does: the times
//! written in the Lease come from another machine's clock and are never compared with ours.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

/// How long a Lease holds without renewal.
pub const LEASE_SECONDS: i32 = 15;
/// How often the leader renews, and each renewal's time limit.
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// A leader that could not renew for this long steps down: well before a standby, which
/// waits the whole Lease, may take over.
const RENEW_DEADLINE: Duration = Duration::from_secs(10);
const RETRY_EVERY: Duration = Duration::from_secs(2);

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// What a standby last saw of the Lease, and when by its own monotonic clock.
#[derive(Debug, Default)]
struct Watch {
    seen: Option<(String, std::time::Instant)>,
}

impl Watch {
    /// Whether the Lease, as read at `now`, has gone unrenewed for its duration: its record
    /// (holder, renew time, version) has not changed since this process saw it change.
    fn expired(&mut self, lease: &Lease, now: std::time::Instant) -> bool {
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.is_none() || spec.renew_time.is_none() {
            return true;
        }
        let record = format!(
            "{:?}|{:?}|{:?}",
            spec.holder_identity,
            spec.renew_time.map(|t| t.0.to_string()),
            lease.metadata.resource_version
        );
        let since = match &self.seen {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                self.seen = Some((record, now));
                now
            }
        };
        let duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS)).unwrap_or(15),
        );
        now.duration_since(since) > duration
    }
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref().and_then(|s| s.holder_identity.clone())
}

/// Waits until `me` holds the Lease `name`.
pub async fn acquire(api: &Api<Lease>, name: &str, me: &str) -> Result<(), kube::Error> {
    let mut watch = Watch::default();
    loop {
        match api.get_opt(name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.into()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(me.into()),
                        lease_duration_seconds: Some(LEASE_SECONDS),
                        acquire_time: Some(now()),
                        renew_time: Some(now()),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                match api.create(&PostParams::default(), &lease).await {
                    Ok(_) => return Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
            Some(mut lease)
                if holder(&lease).as_deref() == Some(me)
                    || watch.expired(&lease, std::time::Instant::now()) =>
            {
                let mut spec = lease.spec.clone().unwrap_or_default();
                if spec.holder_identity.as_deref() != Some(me) {
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                    spec.acquire_time = Some(now());
                }
                spec.holder_identity = Some(me.into());
                spec.renew_time = Some(now());
                spec.lease_duration_seconds = Some(LEASE_SECONDS);
                lease.spec = Some(spec);
                // The resourceVersion makes this a compare-and-swap: two standbys cannot both win.
                match api.replace(name, &PostParams::default(), &lease).await {
                    Ok(_) => return Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
            Some(_) => {}
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// Renews the Lease while `me` holds it; returns when leadership is lost, or when it could
/// not be renewed for [`RENEW_DEADLINE`] (shorter than the Lease, so this process stops
/// leading before any standby may start).
pub async fn hold(api: &Api<Lease>, name: &str, me: &str) {
    let mut last_renewed = std::time::Instant::now();
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        // Each try is bounded: a hung call must not outlast the deadline.
        let renewed = tokio::time::timeout(RENEW_EVERY, async {
            let mut lease = api.get(name).await?;
            if holder(&lease).as_deref() != Some(me) {
                return Ok(false);
            }
            if let Some(spec) = lease.spec.as_mut() {
                spec.renew_time = Some(now());
            }
            api.replace(name, &PostParams::default(), &lease).await?;
            Ok::<_, kube::Error>(true)
        })
        .await;
        match renewed {
            Ok(Ok(true)) => last_renewed = std::time::Instant::now(),
            Ok(Ok(false)) => return,
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the leader lease"),
            Err(_) => tracing::warn!("renewing the leader lease timed out"),
        }
        if last_renewed.elapsed() > RENEW_DEADLINE {
            tracing::error!(deadline = ?RENEW_DEADLINE, "the leader lease was not renewed in time; stepping down");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;
    use std::time::Instant;

    fn lease(renewed: Timestamp, version: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                resource_version: Some(version.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("other".into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(renewed)),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn expiry_is_timed_by_our_clock_not_the_holders() {
        let start = Instant::now();
        let later = |s: u64| start + Duration::from_secs(s);
        // A holder whose clock runs an hour behind, renewing every 5 s: never expired.
        let mut watch = Watch::default();
        let behind = Timestamp::now() - SignedDuration::from_hours(1);
        for i in 0..10u64 {
            let renewed = behind + SignedDuration::from_secs(5 * i as i64);
            assert!(!watch.expired(&lease(renewed, &i.to_string()), later(5 * i)));
        }
        // A holder whose clock runs an hour ahead that stopped renewing: expired once we have
        // seen the same record for longer than the Lease.
        let mut watch = Watch::default();
        let ahead = lease(Timestamp::now() + SignedDuration::from_hours(1), "7");
        assert!(!watch.expired(&ahead, later(0)));
        assert!(!watch.expired(&ahead, later(14)));
        assert!(watch.expired(&ahead, later(16)));
        // No holder: free.
        let mut free = lease(Timestamp::now(), "8");
        if let Some(s) = free.spec.as_mut() {
            s.holder_identity = None;
        }
        assert!(Watch::default().expired(&free, start));
    }
}
