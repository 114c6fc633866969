//! The gRPC edge shared by master and workers: the per-job token, client channels, and the
//! conversion of protocol messages into engine values (bad input becomes `invalid_argument`).

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

pub mod health;
pub mod listener;

pub use sluice_proto::v1 as pb;
pub use sluice_proto::{PROTOCOL_VERSION, Tls};

/// The environment variable that holds the per-job token.
pub const TOKEN_ENV: &str = "SLUICE_TOKEN";
/// Largest gRPC message accepted (shuffle blocks are batched under it).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The status for an engine error: its message, with the error's domain as a typed detail
/// ([`pb::ErrorInfo`]) so that the master can tell a bad job from a flaky store.
pub fn engine_status(e: &crate::Error) -> Status {
    use crate::error::Domain;
    use prost::Message;
    let domain = match (e.domain(), e) {
        (_, crate::Error::Checkpoint(_)) => pb::ErrorDomain::Damaged,
        (Domain::User, _) => pb::ErrorDomain::User,
        (Domain::External, _) => pb::ErrorDomain::External,
        (Domain::Internal, _) => pb::ErrorDomain::Internal,
    };
    let info = pb::ErrorInfo {
        domain: domain.into(),
    };
    Status::with_details(
        tonic::Code::Internal,
        e.to_string(),
        info.encode_to_vec().into(),
    )
}

/// The domain a worker sent with an error; `None` for errors that did not come from the
/// engine (the transport, a refused message).
pub fn error_domain(status: &Status) -> Option<pb::ErrorDomain> {
    use prost::Message;
    if status.details().is_empty() {
        return None;
    }
    let info = pb::ErrorInfo::decode(status.details()).ok()?;
    pb::ErrorDomain::try_from(info.domain)
        .ok()
        .filter(|d| *d != pb::ErrorDomain::Unspecified)
}

/// Checks `authorization: Bearer <token>` on every incoming call.
#[derive(Clone)]
pub struct CheckToken {
    expected: String,
}

impl CheckToken {
    pub fn new(token: &str) -> Self {
        Self {
            expected: format!("Bearer {token}"),
        }
    }
}

impl Interceptor for CheckToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // Compare in constant time: a stray process learns nothing from timings.
        let same = given.len() == self.expected.len()
            && given
                .bytes()
                .zip(self.expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same {
            Ok(request)
        } else {
            Err(Status::unauthenticated("missing or wrong job token"))
        }
    }
}

/// Adds the token to every outgoing call.
#[derive(Clone)]
pub struct AddToken {
    header: MetadataValue<tonic::metadata::Ascii>,
}

impl AddToken {
    pub fn new(token: &str) -> Result<Self, String> {
        let header = format!("Bearer {token}")
            .parse()
            .map_err(|_| format!("{TOKEN_ENV} must be printable ASCII"))?;
        Ok(Self { header })
    }
}

impl Interceptor for AddToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.header.clone());
        Ok(request)
    }
}

/// A lazily connecting channel to `address` (`host:port`), over TLS when configured.
pub fn channel(address: &str, timeout: Duration, tls: Option<&Tls>) -> Result<Channel, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| format!("bad address {address}: {e}"))?;
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.client())
            .map_err(|e| format!("TLS for {address}: {e}"))?;
    }
    Ok(endpoint
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .connect_lazy())
}

/// The token from the environment.
pub fn token_from_env() -> Result<String, String> {
    match std::env::var(TOKEN_ENV) {
        Ok(t) if t.len() >= 16 => Ok(t),
        Ok(_) => Err(format!(
            "{TOKEN_ENV} is shorter than 16 characters; use a random token (the operator makes one per job)"
        )),
        Err(_) => Err(format!(
            "{TOKEN_ENV} is not set: master and workers of a job share a secret token"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_check() {
        let mut check = CheckToken::new("0123456789abcdef");
        let mut ok = Request::new(());
        ok.metadata_mut().insert(
            "authorization",
            "Bearer 0123456789abcdef".parse().expect("ascii"),
        );
        assert!(check.call(ok).is_ok());
        let mut bad = Request::new(());
        bad.metadata_mut().insert(
            "authorization",
            "Bearer 0123456789abcdeX".parse().expect("ascii"),
        );
        assert_eq!(
            check.call(bad).map(|_| ()).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(check.call(Request::new(())).is_err());
    }
}
