//! The StreamingJob CRD, kept current by the operator. Helm installs a chart's `crds/` once
//! and never upgrades them, so a `helm upgrade` alone would leave the API server validating
//! new jobs against an old schema (refusing new fields, or worse, pruning them). The operator
//! applies the CRD it was built with at start, unless the one installed was written by a newer
//! operator (a replica of the old version, still running during a rolling upgrade, must not
//! undo the new one's).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, CustomResourceExt};
use sluice_crds::resource::StreamingJobResource;

use crate::constants::MANAGER;

/// The annotation with the version of the operator that last applied the CRD.
pub const VERSION_ANNOTATION: &str = "sluice.dev/operator-version";

/// What [`ensure`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The CRD was applied (created, or updated from the version given, if it said one).
    Applied { from: Option<String> },
    /// The installed CRD was written by this version already.
    Current,
    /// The installed CRD was written by a newer operator: left alone.
    Newer(String),
}

/// Whether a CRD written by operator `installed` (unknown: `None`) should be replaced by this
/// operator's, `ours`.
pub fn should_apply(installed: Option<&str>, ours: &str) -> bool {
    let Ok(ours) = semver::Version::parse(ours) else {
        return false;
    };
    match installed.map(semver::Version::parse) {
        None | Some(Err(_)) => true,
        Some(Ok(installed)) => installed < ours,
    }
}

/// This operator's CRD, annotated with its version.
pub fn desired() -> CustomResourceDefinition {
    let mut crd = StreamingJobResource::crd();
    crd.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(VERSION_ANNOTATION.into(), env!("CARGO_PKG_VERSION").into());
    crd
}

/// Applies this operator's CRD where the installed one is older (or missing).
pub async fn ensure(client: &Client) -> Result<Outcome, kube::Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = desired();
    let name = crd.metadata.name.clone().unwrap_or_default();
    let ours = env!("CARGO_PKG_VERSION");
    let installed = api.get_opt(&name).await?.and_then(|c| {
        c.metadata
            .annotations
            .and_then(|mut a| a.remove(VERSION_ANNOTATION))
    });
    if installed.as_deref() == Some(ours) {
        return Ok(Outcome::Current);
    }
    if !should_apply(installed.as_deref(), ours) {
        return Ok(Outcome::Newer(installed.unwrap_or_default()));
    }
    let mut body = serde_json::to_value(&crd).map_err(kube::Error::SerdeError)?;
    body["apiVersion"] = "apiextensions.k8s.io/v1".into();
    body["kind"] = "CustomResourceDefinition".into();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await?;
    Ok(Outcome::Applied { from: installed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_older_or_unversioned_crd_is_replaced() {
        assert!(
            should_apply(None, "0.2.0"),
            "installed by helm, unversioned"
        );
        assert!(should_apply(Some("0.1.0"), "0.2.0"));
        assert!(should_apply(Some("garbage"), "0.2.0"));
        assert!(!should_apply(Some("0.2.0"), "0.2.0"));
        assert!(!should_apply(Some("0.3.0"), "0.2.0"), "a newer operator's");
        assert!(should_apply(Some("0.2.0-rc.1"), "0.2.0"));
        let crd = desired();
        assert_eq!(
            crd.metadata.annotations.expect("annotated")[VERSION_ANNOTATION],
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("streamingjobs.sluice.dev")
        );
    }
}
