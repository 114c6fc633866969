//! The checkpoint store on S3 (AWS, MinIO, Ceph, R2, ...), through aws-sdk-s3.
//!
//! Credentials come from the standard AWS chain (environment, profile, web identity, instance
//! metadata) and never from the manifest; they appear in no message. Every error names the
//! endpoint, the bucket and the key.

use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use crate::Store;
use crate::error::{Result, StoreError};

/// Where an S3 endpoint is and how to address it.
#[derive(Clone, Debug, Default)]
pub struct S3Settings {
    /// Endpoint URL (MinIO, Ceph, R2...); `None` uses AWS (or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// Region; `None` uses the AWS chain (`AWS_REGION`...), then `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers need.
    pub path_style: bool,
    /// Static credentials (access key, secret); `None` uses the standard AWS chain.
    pub credentials: Option<(String, String)>,
}

/// How long to wait for a connection to the S3 endpoint.
const S3_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long to wait for the next bytes of an answer.
const S3_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads of an object whose bytes fail the store's checksum before it counts as damaged.
const GET_ATTEMPTS_ON_BAD_CHECKSUM: u32 = 3;

/// Reads in flight at once in [`Store::get_many`].
const PARALLEL_GETS: usize = 32;

/// Writes in flight at once in [`Store::put_many`]: a snapshot's partitions, each up to tens of
/// megabytes, so fewer than the reads of small objects.
const PARALLEL_PUTS: usize = 8;

/// Whether a body read failed the checksum the store sent with the object.
fn is_checksum_mismatch(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if matches!(
            e.downcast_ref::<aws_smithy_checksums::body::validate::Error>(),
            Some(aws_smithy_checksums::body::validate::Error::ChecksumMismatch { .. })
        ) {
            return true;
        }
        next = e.source();
    }
    false
}

use sluice_crds::parse_s3_uri;

/// Checkpoints under `s3://bucket/prefix`.
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    endpoint: String,
    runtime: tokio::runtime::Runtime,
}

impl S3Store {
    /// Writes an object (see [`Store::put`]).
    async fn put_async(&self, key: &str, bytes: &[u8]) -> Result<()> {
        crate::check_key(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .body(ByteStream::from(bytes.to_vec()))
            .send()
            .await
            .map_err(|e| self.fail("write", key, e))?;
        Ok(())
    }

    /// Reads an object (see [`Store::get`]).
    async fn get_async(&self, key: &str) -> Result<Option<Vec<u8>>> {
        crate::check_key(key)?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(key));
        let mut attempt = 1;
        loop {
            let out = match req.clone().send().await {
                Ok(out) => out,
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                    return Ok(None);
                }
                Err(e) => return Err(self.fail("read", key, e)),
            };
            match out.body.collect().await {
                Ok(body) => return Ok(Some(body.into_bytes().to_vec())),
                // Bytes damaged on the way read well a second time; bytes damaged at rest never
                // do, and retrying them for ever would stall the job: say the object is damaged,
                // so that recovery can fall back to an older snapshot.
                Err(e) if is_checksum_mismatch(&e) => {
                    if attempt < GET_ATTEMPTS_ON_BAD_CHECKSUM {
                        attempt += 1;
                        continue;
                    }
                    return Err(StoreError::Damaged(format!(
                        "s3://{}/{} at {} is damaged: its bytes do not match the checksum the store recorded for them ({attempt} reads)",
                        self.bucket,
                        self.key(key),
                        self.endpoint
                    )));
                }
                Err(e) => return Err(self.fail("read", key, e)),
            }
        }
    }

    /// Connects and checks that the bucket is reachable.
    pub fn open(uri: &str, settings: &S3Settings) -> Result<Self> {
        let (bucket, prefix) = parse_s3_uri(uri).ok_or_else(|| {
            StoreError::Config(format!(
                "{uri:?} is not an S3 URI; write s3://bucket/prefix"
            ))
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                StoreError::Internal(format!("cannot start the S3 client runtime: {e}"))
            })?;
        // A server that accepts connections and never answers must fail the request (and so
        // the batch, visibly) instead of hanging it: bound the connect and each wait for bytes,
        // not the whole operation, which may upload a large snapshot.
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(S3_CONNECT_TIMEOUT)
            .read_timeout(S3_READ_TIMEOUT)
            .build();
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(timeouts);
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some((key, secret)) = &settings.credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                key,
                secret,
                None,
                None,
                "sluice-static",
            ));
        }
        let shared = runtime.block_on(loader.load());
        // Without credentials every request fails with the SDK's whole chain of attempts (a
        // kilobyte, an instance-metadata error among it): say what to set instead.
        if settings.credentials.is_none() {
            use aws_sdk_s3::config::ProvideCredentials;
            let found = match shared.credentials_provider() {
                Some(provider) => runtime.block_on(provider.provide_credentials()).is_ok(),
                None => false,
            };
            if !found {
                return Err(StoreError::Unavailable(format!(
                    "no S3 credentials for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or a web identity); on Kubernetes, spec.checkpointCredentials names a Secret that holds them"
                )));
            }
        }
        let mut config =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(settings.path_style);
        if shared.region().is_none() {
            config = config.region(aws_config::Region::new("us-east-1"));
        }
        let client = Client::from_conf(config.build());
        let endpoint = settings
            .endpoint
            .clone()
            .unwrap_or_else(|| "AWS S3".to_string());
        let store = Self {
            client,
            bucket,
            prefix,
            endpoint,
            runtime,
        };
        store
            .runtime
            .block_on(store.client.head_bucket().bucket(&store.bucket).send())
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "bucket {} at {} is not usable (missing, unreachable or not allowed): {}",
                    store.bucket,
                    store.endpoint,
                    DisplayErrorContext(&e)
                ))
            })?;
        Ok(store)
    }

    fn key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn delete_keys(&self, keys: &[String], prefix: &str) -> Result<()> {
        for chunk in keys.chunks(1000) {
            let objects: Vec<ObjectIdentifier> = chunk
                .iter()
                .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
                .collect();
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| self.fail("delete", prefix, e))?;
            let req = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete);
            self.runtime
                .block_on(req.send())
                .map_err(|e| self.fail("delete", prefix, e))?;
        }
        Ok(())
    }

    /// The key prefix of a "directory" (`""` is the root of the store).
    fn dir_prefix(&self, dir: &str) -> String {
        let dir = dir.trim_matches('/');
        match (self.prefix.is_empty(), dir.is_empty()) {
            (true, true) => String::new(),
            (false, true) => format!("{}/", self.prefix),
            _ => format!("{}/", self.key(dir)),
        }
    }

    fn fail(&self, action: &str, key: &str, e: impl std::error::Error) -> StoreError {
        StoreError::Unavailable(format!(
            "{action} s3://{}/{} at {}: {}",
            self.bucket,
            self.key(key),
            self.endpoint,
            DisplayErrorContext(e)
        ))
    }

    /// Every key under `dir/` (full keys) and, with `delimiter`, the sub-"directories".
    fn keys_under(&self, dir: &str, delimiter: bool) -> Result<(Vec<String>, Vec<String>)> {
        self.list_page_all(&self.dir_prefix(dir), delimiter, dir)
    }

    /// Lists keys starting with `prefix`, following pagination; `what` names it in errors.
    fn list_page_all(
        &self,
        prefix: &str,
        delimiter: bool,
        what: &str,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let (mut keys, mut dirs) = (Vec::new(), Vec::new());
        let mut token = None;
        loop {
            let mut req = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix);
            if delimiter {
                req = req.delimiter("/");
            }
            if let Some(t) = token.take() {
                req = req.continuation_token(t);
            }
            let page = self
                .runtime
                .block_on(req.send())
                .map_err(|e| self.fail("list", what, e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(String::from)),
            );
            dirs.extend(
                page.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix().map(String::from)),
            );
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok((keys, dirs))
    }
}

impl Store for S3Store {
    fn describe(&self) -> String {
        format!("s3://{}/{} at {}", self.bucket, self.prefix, self.endpoint)
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        self.runtime.block_on(self.put_async(key, bytes))
    }

    /// The objects written at once, [`PARALLEL_PUTS`] in flight: a snapshot's partitions take
    /// about one round trip rather than one each.
    fn put_many(&self, objects: &[(&str, &[u8])]) -> Result<()> {
        use futures::{StreamExt, TryStreamExt};
        self.runtime.block_on(
            futures::stream::iter(objects)
                .map(|(key, bytes)| self.put_async(key, bytes))
                .buffer_unordered(PARALLEL_PUTS)
                .try_collect(),
        )
    }

    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        crate::check_key(key)?;
        // 409: another conditional write to the key is in flight; S3 asks to try again.
        let mut conflicts = 0;
        loop {
            let req = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(self.key(key))
                .if_none_match("*")
                .body(ByteStream::from(bytes.to_vec()));
            let status = match self.runtime.block_on(req.send()) {
                Ok(_) => return Ok(true),
                Err(e) => match e.raw_response().map(|r| r.status().as_u16()) {
                    // The key exists.
                    Some(412) => return Ok(false),
                    Some(409) if conflicts < 5 => 409,
                    _ => return Err(self.fail("write", key, e)),
                },
            };
            conflicts += 1;
            tracing::debug!(key, status, "conditional write conflicted; trying again");
            std::thread::sleep(std::time::Duration::from_millis(20 << conflicts));
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.runtime.block_on(self.get_async(key))
    }

    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        use futures::{StreamExt, TryStreamExt};
        self.runtime.block_on(
            futures::stream::iter(keys)
                .map(|key| self.get_async(key))
                .buffered(PARALLEL_GETS)
                .try_collect(),
        )
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let (keys, dirs) = self.keys_under(prefix, true)?;
        let base = self.dir_prefix(prefix);
        let mut names: Vec<String> = keys
            .iter()
            .chain(dirs.iter())
            .filter_map(|k| k.strip_prefix(&base))
            .map(|rest| rest.trim_end_matches('/').to_string())
            .filter(|n| !n.is_empty() && !n.starts_with('.'))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn delete_objects(&self, keys: &[String]) -> Result<()> {
        let mut full = Vec::with_capacity(keys.len());
        for k in keys {
            crate::check_key(k)?;
            full.push(self.key(k));
        }
        self.delete_keys(&full, keys.first().map_or("", String::as_str))
    }

    fn delete(&self, prefix: &str) -> Result<()> {
        crate::check_key(prefix)?;
        // One listing finds the object itself and everything under it; deleting only keys that
        // exist keeps servers that refuse missing keys (or treat them as folders) happy.
        if prefix.trim_matches('/').is_empty() {
            // Everything under the store's root.
            let (keys, _) = self.list_page_all(&self.dir_prefix(""), false, "")?;
            return self.delete_keys(&keys, prefix);
        }
        let exact = self.key(prefix.trim_end_matches('/'));
        let (keys, _) = self.list_page_all(&exact, false, prefix)?;
        let keys: Vec<String> = keys
            .into_iter()
            .filter(|k| *k == exact || k.starts_with(&format!("{exact}/")))
            .collect();
        self.delete_keys(&keys, prefix)
    }
}
