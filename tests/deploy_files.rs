//! The deployment examples stay valid: the image's config, config/bccguard.toml with the
//! compose file's environment overrides, and the Kubernetes ConfigMap.

use bccguard::config::{UpstreamKind, load_str};

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn the_image_config_is_valid() {
    let config = load_str(Some(&read("docker/bccguard.toml")), &[]).unwrap();
    assert_eq!(config.server.listen[0].to_string(), "0.0.0.0:2525");
    assert!(matches!(config.upstream.kind(), UpstreamKind::Directory(d) if d.ends_with("outbox")));
}

#[test]
fn the_compose_overrides_apply_to_the_shipped_config() {
    let compose = read("docker/compose.yaml");
    let env: Vec<(String, String)> = compose
        .lines()
        .filter_map(|l| l.trim().strip_prefix("BCCGUARD__").map(|rest| format!("BCCGUARD__{rest}")))
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            let v = v.trim();
            let v = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(v);
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
            Some((k.to_string(), v.to_string()))
        })
        .collect();
    assert!(env.len() >= 8, "{env:?}");
    let config = load_str(Some(&read("config/bccguard.toml")), &env).unwrap();
    assert_eq!(config.server.listen[0].to_string(), "0.0.0.0:2525");
    assert!(matches!(config.upstream.kind(), UpstreamKind::Smtp("relay")));
    assert_eq!(config.upstream.port(), 1025);
    assert_eq!(config.access.relay_networks[0].to_string(), "172.28.0.0/16");
}

#[test]
fn the_kubernetes_configmap_is_valid() {
    let manifest = read("docker/k8s/bccguard-sidecar.yaml");
    let start = manifest.find("bccguard.toml: |\n").unwrap() + "bccguard.toml: |\n".len();
    let toml: String = manifest[start..]
        .lines()
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    let secret = tempfile::NamedTempFile::new().unwrap();
    let toml = toml.replace("/run/secrets/bccguard/upstream-password", secret.path().to_str().unwrap());
    let config = load_str(Some(&toml), &[]).unwrap();
    assert!(matches!(config.upstream.kind(), UpstreamKind::Smtp("smtp.example.com")));
    assert_eq!(config.metrics.listen.unwrap().port(), 9325);
}
