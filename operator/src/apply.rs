//! Writing a job's objects: its Secrets (the token and the TLS certificate, made once and never
//! changed under running pods) and the objects `resources` builds, applied server-side when
//! they are not already what the last apply left (see [`crate::cache`]).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use sluice_crds::resource::StreamingJobResource;

use crate::cache::{Child, Children, JobKey};
use crate::constants::{MANAGER, TOKEN_KEY};
use crate::controller::{Context, Error};
use crate::metrics::Write;
use crate::ownership::owned_by;
use crate::resources::{self, BuildError};

/// What the job's pods and the operator share once the objects are written.
pub struct Access {
    /// The token the master wants (`None` when the job's Secret is not readable as ours).
    pub token: Option<String>,
    /// The job's TLS identity, to ask its master.
    pub tls: Option<sluice_proto::Tls>,
}

/// Writes the job's Secrets and every object of `desired`.
pub async fn all(
    ctx: &Context,
    job: &StreamingJobResource,
    desired: &resources::Desired,
) -> Result<Access, Error> {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let name = job.name_any();
    let secrets = Secrets {
        api: Api::namespaced(ctx.client.clone(), &ns),
        children: &ctx.children,
        job: JobKey::of(job),
    };
    let token = ensure_secret(
        job,
        &secrets,
        &resources::token_secret(&name),
        "token",
        || Ok([(TOKEN_KEY.to_string(), random_token()?)].into()),
    )
    .await?
    .and_then(|data| String::from_utf8(data.get(TOKEN_KEY)?.clone()).ok());
    let tls = ensure_secret(job, &secrets, &resources::tls_secret(&name), "tls", || {
        Ok(crate::tls::issue(&name)?)
    })
    .await?
    .as_ref()
    .and_then(crate::tls::from_secret);
    let key = JobKey::of(job);
    apply::<ConfigMap>(ctx, &key, &desired.config).await?;
    apply::<Service>(ctx, &key, &desired.master_service).await?;
    apply::<Service>(ctx, &key, &desired.worker_service).await?;
    apply::<NetworkPolicy>(ctx, &key, &desired.network_policy).await?;
    apply::<PodDisruptionBudget>(ctx, &key, &desired.disruption_budget).await?;
    apply::<StatefulSet>(ctx, &key, &desired.master).await?;
    apply::<StatefulSet>(ctx, &key, &desired.workers).await?;
    Ok(Access { token, tls })
}

/// Where a job's Secrets are read: the copy read lately, else the API server.
struct Secrets<'a> {
    api: Api<Secret>,
    children: &'a Children,
    job: JobKey,
}

impl Secrets<'_> {
    async fn get(&self, name: &str) -> Result<Option<Secret>, Error> {
        if let Some(secret) = self.children.secret(&self.job, name) {
            return Ok(Some((*secret).clone()));
        }
        let found = self.api.get_opt(name).await?;
        if let Some(secret) = &found {
            self.children.keep_secret(&self.job, secret.clone());
        }
        Ok(found)
    }
}

fn random_token() -> Result<String, Error> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(Error::Token)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The data of the job's Secret `name`, created (owned by the job) from `make` the first time
/// and never changed under running pods: the token, the TLS certificate. `None` when a Secret
/// of that name is not this job's: anyone could have made it.
async fn ensure_secret(
    job: &StreamingJobResource,
    secrets: &Secrets<'_>,
    name: &str,
    role: &str,
    make: impl FnOnce() -> Result<BTreeMap<String, String>, Error>,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
    let ours = |secret: Secret| {
        owned_by(&secret.metadata, job).then(|| {
            secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        })
    };
    if let Some(secret) = secrets.get(name).await? {
        return Ok(ours(secret));
    }
    let data = make()?;
    let secret = Secret {
        metadata: resources::child_meta(job, name.into(), role)?,
        string_data: Some(data.clone()),
        ..Default::default()
    };
    match secrets.api.create(&PostParams::default(), &secret).await {
        Ok(created) => {
            secrets.children.keep_secret(&secrets.job, created);
            Ok(Some(
                data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect(),
            ))
        }
        // Created meanwhile by another reconcile: its data is the one.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(secrets.get(name).await?.and_then(ours)),
        Err(e) => Err(e.into()),
    }
}

/// Applies `object` server-side, unless it is, as watched, what the last apply of it left.
async fn apply<K: Child>(ctx: &Context, job: &JobKey, object: &K) -> Result<(), Error> {
    if ctx.children.unchanged(job, object) {
        ctx.metrics.applied(Write::Unchanged);
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &job.namespace);
    let name = object.meta().name.clone().unwrap_or_default();
    let mut body = serde_json::to_value(object)
        .map_err(|e| Error::Build(BuildError::Render(e.to_string())))?;
    body["apiVersion"] = json!(K::api_version(&()));
    body["kind"] = json!(K::kind(&()));
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
    ctx.children.wrote(job, object, applied.meta());
    ctx.metrics.applied(Write::Sent);
    Ok(())
}
