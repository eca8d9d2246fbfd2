//! Drift test: deploy/config/portolan-agent.toml loads, shows every key, and its values are
//! the defaults.

use std::path::Path;

use portolan_agent::config::AgentConfig;

#[test]
fn example_config_documents_every_key_with_its_default() -> Result<(), String> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/portolan-agent.toml");
    portolan_config::check_example::<AgentConfig>(&path)
}
