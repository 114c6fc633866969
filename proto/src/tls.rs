//! Mutual TLS between a job's processes: the master, its workers, and the operator asking the
//! master for its status.

/// TLS between master and workers: this process's certificate and key, and the CA that signed
/// the peers'. Both sides present certificates (mutual TLS).
#[derive(Clone)]
pub struct Tls {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub ca: Vec<u8>,
    /// The name peers' certificates are checked against (a SAN of every job certificate).
    pub server_name: String,
}

impl Tls {
    /// Reads the PEM files; `None` when no certificate is configured.
    pub fn load(
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
        ca: Option<&std::path::Path>,
        server_name: &str,
    ) -> Result<Option<Tls>, String> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(c), Some(k), Some(a)) => {
                let read = |p: &std::path::Path, what: &str| {
                    std::fs::read(p).map_err(|e| format!("{what} {}: {e}", p.display()))
                };
                Ok(Some(Tls {
                    cert: read(c, "--tls-cert")?,
                    key: read(k, "--tls-key")?,
                    ca: read(a, "--tls-ca")?,
                    server_name: server_name.to_string(),
                }))
            }
            _ => Err("TLS needs all of --tls-cert, --tls-key and --tls-ca".to_string()),
        }
    }

    /// The server side.
    pub fn server(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca))
    }

    /// The client side.
    pub fn client(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca))
            .identity(tonic::transport::Identity::from_pem(&self.cert, &self.key))
            .domain_name(self.server_name.clone())
    }
}
