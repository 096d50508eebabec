//! Every example machine config in recipes/machine/ parses and validates,
//! and survives a round trip through its canonical form.

use std::path::Path;

use debvisor_api::machine::MachineConfig;

#[test]
fn every_example_machine_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/machine");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let cfg = MachineConfig::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let again = MachineConfig::from_toml(&cfg.to_toml())
            .unwrap_or_else(|e| panic!("{} re-serialised: {e}\n{}", path.display(), cfg.to_toml()));
        assert_eq!(again, cfg, "{} changes in a round trip", path.display());
        checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    checked.sort();
    assert_eq!(
        checked,
        ["bond-bridge.toml", "dhcp.toml", "static-vlan.toml", "worker.toml"]
    );
}
