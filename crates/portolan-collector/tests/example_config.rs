//! Drift test: deploy/config/portolan-collector.toml loads, shows every key, and its values
//! are the defaults.

use std::collections::BTreeMap;
use std::path::Path;

use portolan_collector::config::CollectorConfig;

#[test]
fn example_config_documents_every_key_with_its_default() -> Result<(), Box<dyn std::error::Error>> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/portolan-collector.toml");
    let loaded: CollectorConfig = portolan_config::load(
        Some(&path),
        &BTreeMap::new(),
        "PORTOLAN_",
        toml::Table::new(),
    )?;
    assert_eq!(
        loaded,
        CollectorConfig::default(),
        "the example's values differ from the defaults"
    );
    let text = std::fs::read_to_string(&path)?;
    let defaults = toml::to_string(&CollectorConfig::default())?;
    let example: toml::Table = text.parse()?;
    let defaults: toml::Table = defaults.parse()?;
    assert_same_keys(&defaults, &example, "");
    Ok(())
}

fn assert_same_keys(defaults: &toml::Table, example: &toml::Table, prefix: &str) {
    for (key, value) in defaults {
        let path = format!("{prefix}{key}");
        let Some(shown) = example.get(key) else {
            panic!("`{path}` is missing from deploy/config/portolan-collector.toml")
        };
        if let (toml::Value::Table(d), toml::Value::Table(e)) = (value, shown) {
            assert_same_keys(d, e, &format!("{path}."));
        }
    }
}
