//! Sources: where a manifest's records come from.

use std::time::Duration;

use sluice_crds::{SourceKind, SourceSpec, defaults};

use super::{Compiler, local_path};
use crate::dstream::DStream;
use crate::source::{FilesSource, GeneratorConfig, GeneratorSource, SocketSource};

impl Compiler {
    pub(super) fn source(&mut self, path: &str, s: &SourceSpec) -> DStream<String> {
        let Some(kind) = s.kind() else {
            self.problem(
                path,
                format!("set exactly one of {}", SourceKind::NAMES.join(", ")),
            );
            // An empty queue keeps the graph well formed, so later steps are checked too.
            return self.ctx.source(crate::source::QueueSource::new(&s.name));
        };
        match kind {
            SourceKind::Generator(g) => self.ctx.source(GeneratorSource::new(GeneratorConfig {
                name: s.name.clone(),
                rate: g.rate,
                seed: g.seed.unwrap_or(defaults::GENERATOR_SEED),
                format: g.format.unwrap_or_default(),
                vocabulary: g.vocabulary.unwrap_or(defaults::GENERATOR_VOCABULARY),
                line_bytes: g.line_bytes.unwrap_or(defaults::GENERATOR_LINE_BYTES),
            })),
            SourceKind::Files(f) => {
                let remember = match &f.remember_for {
                    None => Duration::from_secs(defaults::FILES_REMEMBER_FOR_SECONDS),
                    Some(text) => {
                        let field = format!("{path}.files.rememberFor");
                        let d = self.duration(&field, Some(text));
                        if d.is_zero() {
                            self.problem(
                                field,
                                "must be longer than 0s: it covers files that land while a batch is planned",
                            );
                        }
                        d
                    }
                };
                self.ctx
                    .source(FilesSource::new(&s.name, local_path(&f.path)).remembering(remember))
            }
            SourceKind::Socket(sock) => self.ctx.source(SocketSource::new(
                &s.name,
                &sock.host,
                u16::try_from(sock.port).unwrap_or(0),
            )),
        }
    }
}
