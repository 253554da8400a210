//! Kubeconfig files.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::TrustError;
use crate::fsutil::write_file_if_changed;

/// Render a kubeconfig whose cluster, user and context are all named
/// `default`, with the CA, client certificate and key embedded (base64).
pub fn render_kubeconfig(
    server_url: &str,
    ca_pem: &[u8],
    client_cert_pem: &[u8],
    client_key_pem: &[u8],
) -> String {
    // A JSON string is a valid YAML double-quoted scalar.
    let server = serde_json::to_string(server_url).unwrap_or_else(|_| "\"\"".into());
    format!(
        "apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: {server}
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
preferences: {{}}
users:
- name: default
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
",
        ca = STANDARD.encode(ca_pem),
        cert = STANDARD.encode(client_cert_pem),
        key = STANDARD.encode(client_key_pem),
    )
}

/// Write a kubeconfig (see [`render_kubeconfig`]) atomically with `mode`.
/// The file is left untouched when it already holds the same content, but
/// its mode is always set to `mode`.
pub fn write_kubeconfig(
    path: &Path,
    server_url: &str,
    ca_pem: &[u8],
    client_cert_pem: &[u8],
    client_key_pem: &[u8],
    mode: u32,
) -> Result<(), TrustError> {
    let text = render_kubeconfig(server_url, ca_pem, client_cert_pem, client_key_pem);
    write_file_if_changed(path, text.as_bytes(), mode)?;
    Ok(())
}

/// Parse a kubeconfig mode given as an octal string (`"644"`, `"0600"`).
pub fn parse_mode(s: &str) -> Result<u32, TrustError> {
    let t = s.trim().trim_start_matches("0o");
    match u32::from_str_radix(t, 8) {
        Ok(m) if m <= 0o7777 && !t.is_empty() => Ok(m),
        _ => Err(TrustError::Invalid(format!(
            "{s:?} is not an octal file mode such as 0600"
        ))),
    }
}
