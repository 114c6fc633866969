//! Writing a job's objects: its Secrets (the token and the TLS certificate, made once and never
//! changed under running pods) and the objects `resources` builds, applied server-side.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use sluice_crds::resource::StreamingJobResource;

use crate::constants::{MANAGER, TOKEN_KEY};
use crate::controller::Error;
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
    client: &Client,
    job: &StreamingJobResource,
    desired: &resources::Desired,
) -> Result<Access, Error> {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let name = job.name_any();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
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
    apply::<ConfigMap>(client, &ns, &desired.config).await?;
    apply::<Service>(client, &ns, &desired.master_service).await?;
    apply::<Service>(client, &ns, &desired.worker_service).await?;
    apply::<NetworkPolicy>(client, &ns, &desired.network_policy).await?;
    apply::<PodDisruptionBudget>(client, &ns, &desired.disruption_budget).await?;
    apply::<StatefulSet>(client, &ns, &desired.master).await?;
    apply::<StatefulSet>(client, &ns, &desired.workers).await?;
    Ok(Access { token, tls })
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
    api: &Api<Secret>,
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
    if let Some(secret) = api.get_opt(name).await? {
        return Ok(ours(secret));
    }
    let data = make()?;
    let secret = Secret {
        metadata: resources::child_meta(job, name.into(), role)?,
        string_data: Some(data.clone()),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(Some(
            data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect(),
        )),
        // Created meanwhile by another reconcile: its data is the one.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(api.get_opt(name).await?.and_then(ours)),
        Err(e) => Err(e.into()),
    }
}

async fn apply<K>(client: &Client, ns: &str, object: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = object.meta().name.clone().unwrap_or_default();
    let mut body = serde_json::to_value(object)
        .map_err(|e| Error::Build(BuildError::Render(e.to_string())))?;
    body["apiVersion"] = json!(K::api_version(&()));
    body["kind"] = json!(K::kind(&()));
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await?;
    Ok(())
}
