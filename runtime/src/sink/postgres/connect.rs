//! Connecting to PostgreSQL: the manifest's URL, credentials from the environment, TLS with
//! the server's certificate verified, and errors that say what to change.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sluice_crds::postgres::{PostgresUrl, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::Error;

/// The user, when the URL names none.
pub const USER_VAR: &str = "SLUICE_POSTGRES_USER";
/// The password (never in the manifest).
pub const PASSWORD_VAR: &str = "SLUICE_POSTGRES_PASSWORD";

/// How long a connection attempt may take when the URL sets no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a sink writes, for messages: `host:port/database`.
pub fn describe(url: &PostgresUrl) -> String {
    let hosts: Vec<String> = url.hosts.iter().map(|(h, p)| format!("{h}:{p}")).collect();
    format!("{}/{}", hosts.join(","), url.database)
}

/// The client settings of `url`, with the credentials from the environment.
pub fn config(url: &PostgresUrl) -> Result<tokio_postgres::Config, Error> {
    let mut config = tokio_postgres::Config::new();
    for (host, port) in &url.hosts {
        config.host(host).port(*port);
    }
    let user = match &url.user {
        Some(u) => u.clone(),
        None => std::env::var(USER_VAR).map_err(|_| {
            Error::Config(format!(
                "postgres {}: no user: name one in the url (postgres://USER@host/db) or set {USER_VAR} (on Kubernetes: spec.postgresCredentials)",
                describe(url)
            ))
        })?,
    };
    config
        .user(&user)
        .dbname(&url.database)
        .application_name(url.application_name.as_deref().unwrap_or("sluice"))
        .connect_timeout(
            url.connect_timeout_seconds
                .map_or(CONNECT_TIMEOUT, Duration::from_secs),
        )
        .keepalives(true)
        .ssl_mode(match url.ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
    if let Ok(password) = std::env::var(PASSWORD_VAR) {
        config.password(password);
    }
    Ok(config)
}

/// TLS as `sslmode` asks: `prefer` and `require` encrypt without checking the certificate
/// (libpq's meaning; a password is still safe from a server in the middle with SCRAM's
/// channel binding, which the connector offers); `verify-ca` checks that a trusted CA (the
/// system's, or the URL's `sslrootcert`) signed it; `verify-full` also that it names the host.
pub fn tls(url: &PostgresUrl) -> Result<MakeRustlsConnect, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = match url.ssl_mode {
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(roots(url)?);
            Some(
                WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| {
                        Error::Config(format!(
                            "postgres {}: no CA to verify the server's certificate with ({e}); name one with sslrootcert=/path/ca.pem",
                            describe(url)
                        ))
                    })?,
            )
        }
        SslMode::Disable | SslMode::Prefer | SslMode::Require => None,
    };
    let verifier = Arc::new(Verifier {
        chain,
        check_name: url.ssl_mode == SslMode::VerifyFull,
        algorithms: provider.signature_verification_algorithms,
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS protocol versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The system's CAs and the URL's `sslrootcert`.
fn roots(url: &PostgresUrl) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore::empty();
    // A system without CA certificates still works with `sslrootcert`.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let Some(file) = &url.ca_file else {
        return Ok(roots);
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| {
            Error::Config(format!(
                "postgres {}: cannot read the CA certificates of sslrootcert {file}: {e}",
                describe(url)
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "postgres {}: sslrootcert {file} holds no PEM certificate",
            describe(url)
        )));
    }
    for cert in certs {
        roots.add(cert).map_err(|e| {
            Error::Config(format!(
                "postgres {}: a certificate of sslrootcert {file} is not a CA certificate: {e}",
                describe(url)
            ))
        })?;
    }
    Ok(roots)
}

/// Checks a server's certificate as far as `sslmode` asks; the handshake's signatures are
/// always checked (they prove the server holds the certificate's key).
#[derive(Debug)]
struct Verifier {
    /// The CA check, for `verify-ca` and `verify-full`.
    chain: Option<Arc<WebPkiServerVerifier>>,
    /// `verify-full`: the certificate must name the host.
    check_name: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What went wrong, for the job's status and logs, and whether running the batch again may
/// help: a refused password, a missing table or a row the table refuses stay that way
/// ([`Error::Config`], the job stops with the message); a lost connection or a deadlock
/// passes ([`Error::Output`], the batch runs again).
pub fn classify(url: &PostgresUrl, table: &str, what: &str, e: &tokio_postgres::Error) -> Error {
    let at = describe(url);
    let Some(db) = e.as_db_error() else {
        // No answer from the server: the network, TLS, or a closed connection.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            message = format!("{message}: {s}");
            source = s.source();
        }
        if message.contains("UnknownIssuer") || message.contains("certificate") {
            return Error::Config(format!(
                "postgres {at}: {what}: the server's certificate is not trusted ({message}); add its CA with sslrootcert=/path/ca.pem in the url, or use sslmode=require (encrypted, the certificate not checked)"
            ));
        }
        return Error::Output {
            output: format!("postgres {at}"),
            message: format!("{what}: {message}"),
        };
    };
    let code = db.code();
    let permanent = |message: String| Error::Config(format!("postgres {at}: {what}: {message}"));
    let class = &code.code()[..2];
    match class {
        // The server's host-based rules refuse this connection before any password.
        "28" if db.message().contains("pg_hba.conf") => permanent(format!(
            "{}: the server's pg_hba.conf refuses this host, user, database or transport; a rule for plain connections only wants sslmode=require (or verify-ca, verify-full), otherwise ask the server's administrator",
            db.message()
        )),
        "28" => permanent(format!(
            "the server refused the credentials ({}); check the user and {PASSWORD_VAR} (on Kubernetes: spec.postgresCredentials)",
            db.message()
        )),
        _ if *code == SqlState::UNDEFINED_TABLE => permanent(format!(
            "table {table} does not exist; create it (CREATE TABLE {table} (...)) before the job starts"
        )),
        _ if *code == SqlState::INSUFFICIENT_PRIVILEGE => permanent(format!(
            "{} (the sink needs INSERT, and UPDATE to upsert, on {table}, and SELECT, INSERT, UPDATE on its marks table sluice_batches, or CREATE on the schema to make it)",
            db.message()
        )),
        _ if *code == SqlState::INVALID_COLUMN_REFERENCE => permanent(format!(
            "{}; the sink's key must be the columns of a primary key or unique index of {table}",
            db.message()
        )),
        // A row the table refuses: the same row is refused again. The server's message may
        // quote the value; the job's status is read by more people than the data, so only
        // the part before the value is kept.
        "22" | "23" => permanent(format!(
            "a row does not fit table {table}: {} (SQLSTATE {})",
            db.message()
                .split_once(": \"")
                .map_or(db.message(), |(head, _)| head),
            code.code()
        )),
        // Connection, transaction rollback (deadlock, serialization), resources, operator
        // intervention (a restart), system errors: running again may succeed.
        "08" | "40" | "53" | "57" | "58" => Error::Output {
            output: format!("postgres {at}"),
            message: format!("{what}: {} (SQLSTATE {})", db.message(), code.code()),
        },
        _ => permanent(format!("{} (SQLSTATE {})", db.message(), code.code())),
    }
}
