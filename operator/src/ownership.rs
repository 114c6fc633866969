//! Whose objects a job's names are: the operator writes only objects the job controls, and
//! refuses to take over one of the same name that someone else made (server-side apply with
//! force would, and the garbage collector would then delete it with the job).

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use sluice_crds::resource::StreamingJobResource;

use crate::cache::Child;
use crate::controller::{Context, Error};
use crate::resources;

/// Whether `meta` names the job (its uid) as its controlling owner.
pub fn owned_by(meta: &kube::api::ObjectMeta, job: &StreamingJobResource) -> bool {
    let uid = job.metadata.uid.as_deref();
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && Some(r.uid.as_str()) == uid)
}

/// `Kind name` of each object the job would write that exists and is not the job's. Objects
/// the operator labels as its own are looked up in the watched copies; only a name not among
/// them is asked of the API server (a new job's, or one someone else made).
pub async fn foreign_objects(
    ctx: &Context,
    job: &StreamingJobResource,
    desired: &resources::Desired,
) -> Result<Vec<String>, Error> {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let name = job.name_any();
    let mut claims = Claims {
        ctx,
        ns: &ns,
        job,
        foreign: Vec::new(),
    };
    claims
        .name::<Secret>(&resources::token_secret(&name))
        .await?;
    claims.name::<Secret>(&resources::tls_secret(&name)).await?;
    claims.object(&desired.config).await?;
    claims.object(&desired.master_service).await?;
    claims.object(&desired.worker_service).await?;
    claims.object(&desired.network_policy).await?;
    claims.object(&desired.disruption_budget).await?;
    claims.object(&desired.master).await?;
    claims.object(&desired.workers).await?;
    Ok(claims.foreign)
}

/// Collects the objects of a job's names that someone else controls.
struct Claims<'a> {
    ctx: &'a Context,
    ns: &'a str,
    job: &'a StreamingJobResource,
    foreign: Vec<String>,
}

impl Claims<'_> {
    async fn name<K: Child>(&mut self, name: &str) -> Result<(), Error> {
        // Only a known object that is the job's answers without a request: anything else (not
        // seen, or seen as someone else's) is asked of the API server as it is now.
        let key = crate::cache::JobKey::of(self.job);
        if let Some(meta) = self.ctx.children.meta::<K>(&key, name)
            && owned_by(&meta, self.job)
        {
            return Ok(());
        }
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), self.ns);
        if let Some(found) = api.get_metadata_opt(name).await?
            && !owned_by(&found.metadata, self.job)
        {
            self.foreign.push(format!("{} {name}", K::kind(&())));
        }
        Ok(())
    }

    async fn object<K: Child>(&mut self, object: &K) -> Result<(), Error> {
        let name = object.meta().name.clone().unwrap_or_default();
        self.name::<K>(&name).await
    }
}

/// The message of a job blocked by `foreign` objects in its way.
pub fn conflict_message(foreign: &[String]) -> String {
    let one = foreign.len() == 1;
    format!(
        "{} already exist{} and {} not owned by this StreamingJob; the operator does not take over objects it did not create: rename the job, or delete or rename {}",
        foreign.join(", "),
        if one { "s" } else { "" },
        if one { "is" } else { "are" },
        if one { "it" } else { "them" },
    )
}
