//! Leader election with a coordination Lease: several operator replicas run, one reconciles.
//! The leader renews the Lease; when it cannot, it stops (and its pod restarts as a standby).
//! A standby takes the Lease once it has not been renewed for its duration.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

/// How long a Lease holds without renewal.
pub const LEASE_SECONDS: i32 = 15;
const RENEW_EVERY: Duration = Duration::from_secs(5);
const RETRY_EVERY: Duration = Duration::from_secs(2);

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn expired(lease: &Lease) -> bool {
    let spec = lease.spec.clone().unwrap_or_default();
    let Some(MicroTime(renewed)) = spec.renew_time else {
        return true;
    };
    let duration = SignedDuration::from_secs(i64::from(
        spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS),
    ));
    renewed
        .checked_add(duration)
        .map(|until| until < Timestamp::now())
        .unwrap_or(true)
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref().and_then(|s| s.holder_identity.clone())
}

/// Waits until `me` holds the Lease `name`.
pub async fn acquire(api: &Api<Lease>, name: &str, me: &str) -> Result<(), kube::Error> {
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
            Some(mut lease) if holder(&lease).as_deref() == Some(me) || expired(&lease) => {
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

/// Renews the Lease while `me` holds it; returns when leadership is lost or cannot be renewed
/// within the Lease's duration.
pub async fn hold(api: &Api<Lease>, name: &str, me: &str) {
    let mut last_renewed = std::time::Instant::now();
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        match api.get(name).await {
            Ok(mut lease) if holder(&lease).as_deref() == Some(me) => {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.renew_time = Some(now());
                }
                if api
                    .replace(name, &PostParams::default(), &lease)
                    .await
                    .is_ok()
                {
                    last_renewed = std::time::Instant::now();
                }
            }
            Ok(_) => return,
            Err(e) => tracing::warn!(error = %e, "cannot renew the leader lease"),
        }
        if last_renewed.elapsed() > Duration::from_secs(LEASE_SECONDS as u64) {
            return;
        }
    }
}
