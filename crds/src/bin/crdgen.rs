//! `crdgen`: writes the StreamingJob CustomResourceDefinition as YAML (to stdout, or to each
//! file given: `crds/streamingjob.yaml charts/sluice/crds/streamingjob.yaml`). A test checks
//! both committed copies.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let yaml = sluice_crds::resource::crd_yaml()?;
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        print!("{yaml}");
    }
    for path in paths {
        std::fs::write(&path, &yaml)?;
    }
    Ok(())
}
