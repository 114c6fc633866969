//! `sluice validate`: every problem of every manifest, one line each.

use std::path::Path;
use std::process::ExitCode;

use sluice_crds::Problem;

use super::EXIT_INVALID;
use crate::manifest::{CompileOptions, compile};

/// Loads, validates and compiles a manifest file: the job or every problem.
pub(crate) fn check(
    file: &Path,
    options: &CompileOptions,
) -> Result<(sluice_crds::StreamingJob, crate::job::Job), Vec<Problem>> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| vec![Problem::new("file", format!("cannot read it: {e}"))])?;
    let manifest = sluice_crds::load(&text)?;
    let job = compile(&manifest, options)?;
    Ok((manifest, job))
}

pub(crate) fn print_problems(file: &Path, problems: &[Problem]) {
    for p in problems {
        // One line per problem, even when a parser's message spans several.
        let one_line: Vec<&str> = p
            .message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        eprintln!("{}: {}: {}", file.display(), p.path, one_line.join(" "));
    }
}

pub(crate) fn validate(files: &[std::path::PathBuf]) -> ExitCode {
    let mut bad = 0;
    for file in files {
        match check(
            file,
            &CompileOptions {
                threads: 1,
                discard_output: false,
            },
        ) {
            Ok(_) => println!("{}: valid", file.display()),
            Err(problems) => {
                bad += 1;
                print_problems(file, &problems);
            }
        }
    }
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID)
    }
}
