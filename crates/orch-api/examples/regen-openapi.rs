//! Regenerate `contracts/openapi/{data,control}.yaml` from the code:
//! `cargo run -p orch-api --example regen-openapi`

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts/openapi");
    std::fs::create_dir_all(&root)?;
    for (name, doc) in [
        ("data.yaml", orch_api::openapi::data_document()),
        ("control.yaml", orch_api::openapi::control_document()),
    ] {
        let path = root.join(name);
        std::fs::write(&path, orch_api::openapi::to_yaml(&doc))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
