//! `crdgen`: writes the StreamingJob CustomResourceDefinition as YAML (to stdout, or to each
//! file given: `crds/streamingjob.yaml charts/sluice/crds/streamingjob.yaml`). A test checks
//! both committed copies.

use std::process::ExitCode;

const HELP: &str = "crdgen: writes the StreamingJob CRD as YAML\n\n\
usage: crdgen [FILE...]   (no FILE: to standard output)\n\
example: cargo run -p sluice-crds --features kube --bin crdgen crds/streamingjob.yaml";

fn main() -> ExitCode {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    // An option is never a file name: `crdgen --help` must not write a file called --help.
    if let Some(option) = paths.iter().find(|p| p.starts_with('-')) {
        let asked = option == "--help" || option == "-h";
        if asked {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        eprintln!("crdgen: unknown option {option}\n\n{HELP}");
        return ExitCode::from(2);
    }
    let yaml = match sluice_crds::resource::crd_yaml() {
        Ok(yaml) => yaml,
        Err(e) => {
            eprintln!("crdgen: cannot render the CRD: {e}");
            return ExitCode::FAILURE;
        }
    };
    if paths.is_empty() {
        print!("{yaml}");
    }
    for path in paths {
        if let Err(e) = std::fs::write(&path, &yaml) {
            eprintln!("crdgen: cannot write {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
