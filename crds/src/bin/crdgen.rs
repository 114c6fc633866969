//! `crdgen`: writes the StreamingJob CustomResourceDefinition as YAML (to stdout, or to the file
//! given). The committed `crds/streamingjob.yaml` is checked against it by a test.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let yaml = sluice_crds::resource::crd_yaml()?;
    match std::env::args().nth(1) {
        Some(path) => std::fs::write(&path, yaml)?,
        None => print!("{yaml}"),
    }
    Ok(())
}
