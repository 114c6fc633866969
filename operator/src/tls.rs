//! Mutual TLS for every job, with no cert-manager: the operator makes each job a CA of its own
//! and one certificate signed by it, which the master, the workers and the operator's own status
//! calls present and check. The CA's key is thrown away once the certificate is signed, so
//! nothing else can ever be signed by it; a job's pods trust only their own job's certificate.

use std::collections::BTreeMap;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::constants::{TLS_CA_KEY, TLS_CERT_KEY, TLS_KEY_KEY, TLS_SERVER_NAME};

/// What could not be issued.
#[derive(Debug, thiserror::Error)]
#[error("cannot issue the job's TLS certificate: {0}")]
pub struct IssueError(#[from] rcgen::Error);

/// PEM files of a job's TLS Secret: `ca.crt`, `tls.crt`, `tls.key`.
pub fn issue(job: &str) -> Result<BTreeMap<String, String>, IssueError> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, format!("sluice job {job} CA"));
    let ca_cert = ca.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec![TLS_SERVER_NAME.to_string()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, format!("sluice job {job}"));
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = leaf.signed_by(&key, &Issuer::new(ca, ca_key))?;
    Ok([
        (TLS_CA_KEY.to_string(), ca_cert.pem()),
        (TLS_CERT_KEY.to_string(), cert.pem()),
        (TLS_KEY_KEY.to_string(), key.serialize_pem()),
    ]
    .into())
}

/// The runtime's TLS settings from a job's TLS Secret data, when complete.
pub fn from_secret(data: &BTreeMap<String, Vec<u8>>) -> Option<sluice_proto::Tls> {
    Some(sluice_proto::Tls {
        cert: data.get(TLS_CERT_KEY)?.clone(),
        key: data.get(TLS_KEY_KEY)?.clone(),
        ca: data.get(TLS_CA_KEY)?.clone(),
        server_name: TLS_SERVER_NAME.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_job_gets_its_own_ca_and_a_certificate_for_both_ends() {
        let a = issue("wc").expect("issued");
        let b = issue("wc").expect("issued");
        assert_ne!(a[TLS_CA_KEY], b[TLS_CA_KEY], "a CA per job");
        for key in [TLS_CA_KEY, TLS_CERT_KEY] {
            assert!(a[key].starts_with("-----BEGIN CERTIFICATE-----"), "{key}");
        }
        assert!(a[TLS_KEY_KEY].contains("PRIVATE KEY"));
        let bytes: BTreeMap<String, Vec<u8>> =
            a.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
        // All three files make the runtime's settings; the handshake itself is proven by the
        // e2e tests, whose pods and status calls run on these certificates.
        let tls = from_secret(&bytes).expect("complete");
        assert_eq!(tls.server_name, TLS_SERVER_NAME);
        let mut partial = bytes.clone();
        partial.remove(TLS_KEY_KEY);
        assert!(from_secret(&partial).is_none());
    }
}
