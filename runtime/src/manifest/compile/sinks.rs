//! Sinks: where a manifest's results go.

use sluice_crds::{OutputFormat, SinkKind, SinkSpec, defaults};

use super::{Compiler, Stream, local_path, text_format};
use crate::sink::{FilesSink, StdoutSink};

impl Compiler {
    pub(super) fn sink(&mut self, path: &str, stream: &Stream, sink: &SinkSpec) {
        let Some(kind) = sink.kind() else {
            self.problem(
                path,
                format!("set exactly one of {}", SinkKind::NAMES.join(", ")),
            );
            return;
        };
        match kind {
            SinkKind::Stdout(out) => {
                let limit = out.limit.unwrap_or(defaults::STDOUT_LIMIT) as usize;
                let (records, pairs) = text_format(OutputFormat::Text);
                match stream {
                    Stream::Records(s) => s.output(StdoutSink::new(limit, records)),
                    Stream::Keyed(s) => s.output(StdoutSink::new(limit, pairs)),
                }
            }
            SinkKind::S3(s3) => {
                let settings = sluice_storage::S3Settings {
                    endpoint: s3.endpoint.clone(),
                    region: s3.region.clone(),
                    path_style: s3.path_style.unwrap_or(false),
                    credentials: None,
                };
                let (records, pairs) = text_format(s3.format.unwrap_or_default());
                match stream {
                    Stream::Records(s) => {
                        s.output(crate::sink::S3Sink::new(&s3.uri, settings, records))
                    }
                    Stream::Keyed(s) => {
                        s.output(crate::sink::S3Sink::new(&s3.uri, settings, pairs))
                    }
                }
            }
            SinkKind::Files(files) => {
                let dir = local_path(&files.path).to_string();
                let prefix = files
                    .prefix
                    .clone()
                    .unwrap_or_else(|| defaults::FILES_PREFIX.to_string());
                let (records, pairs) = text_format(files.format.unwrap_or_default());
                match stream {
                    Stream::Records(s) => s.output(FilesSink::new(&dir, &prefix, records)),
                    Stream::Keyed(s) => s.output(FilesSink::new(&dir, &prefix, pairs)),
                }
            }
        }
    }
}
