//! The text of containerd's `hosts.toml` for one registry host, or for one
//! upstream the registry mirrors ([`render_mirror`]).
//!
//! containerd (1.5+, `config_path` set) reads `<config_path>/<host>/hosts.toml`
//! on every pull, so a change needs no restart. The file written here says:
//! the registry is `https://<host>` (never dialled: the node cannot resolve
//! cluster DNS), and it is reached at the Service's ClusterIP, trusting the
//! CA file named by `ca`. The `ca` line is required: containerd does not use
//! a `ca.crt` beside `hosts.toml` for a `[host]` entry, and its path is the
//! one the host's containerd sees (not where the agent's container mounts
//! the directory).

use std::fmt::Write as _;
use std::path::Path;

/// `hosts.toml` for `host` (`name` or `name:port`), reached at `upstream`
/// (`https://<ip>:<port>`), trusting the CA bundle at `ca_path`. `owner`
/// (`namespace/name`) is named in a comment for people reading the node.
pub fn render(host: &str, upstream: &str, ca_path: &Path, owner: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Written by the berth node agent for Registry {owner}; changes are overwritten."
    );
    let _ = writeln!(
        out,
        "# Pulls of {host}/... go to the registry's ClusterIP, trusting its CA."
    );
    let _ = writeln!(out, "server = {}", quote(&format!("https://{host}")));
    out.push('\n');
    let _ = writeln!(out, "[host.{}]", quote(upstream));
    let _ = writeln!(out, "  capabilities = [\"pull\", \"resolve\"]");
    let _ = writeln!(out, "  ca = {}", quote(&ca_path.to_string_lossy()));
    out
}

/// `hosts.toml` for a mirrored upstream `prefix` (`docker.io`): pulls of
/// `prefix/...` try the Registry at `upstream` (its ClusterIP, trusting the
/// CA at `ca_path`) and fall back to `server` (the upstream's URL) when it
/// cannot answer. containerd names the upstream in a `ns=` query
/// parameter, which is how the Registry knows which cache to serve.
pub fn render_mirror(
    prefix: &str,
    server: &str,
    upstream: &str,
    ca_path: &Path,
    owner: &str,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Written by the berth node agent for Registry {owner} (pull-through cache); changes are overwritten."
    );
    let _ = writeln!(
        out,
        "# Pulls of {prefix}/... go through the registry's ClusterIP, then to the upstream if it fails."
    );
    let _ = writeln!(out, "server = {}", quote(server.trim_end_matches('/')));
    out.push('\n');
    let _ = writeln!(out, "[host.{}]", quote(upstream));
    let _ = writeln!(out, "  capabilities = [\"pull\", \"resolve\"]");
    let _ = writeln!(out, "  ca = {}", quote(&ca_path.to_string_lossy()));
    out
}

/// A TOML basic string. Host names and upstreams are validated before they
/// get here, but a configured base path may hold any character.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_maps_the_host_to_the_cluster_ip_with_the_ca_line() {
        let text = render(
            "hub.team.svc.cluster.local",
            "https://10.96.0.42:443",
            Path::new("/etc/containerd/certs.d/hub.team.svc.cluster.local/ca.crt"),
            "team/hub",
        );
        assert_eq!(
            text,
            "# Written by the berth node agent for Registry team/hub; changes are overwritten.\n\
             # Pulls of hub.team.svc.cluster.local/... go to the registry's ClusterIP, trusting its CA.\n\
             server = \"https://hub.team.svc.cluster.local\"\n\
             \n\
             [host.\"https://10.96.0.42:443\"]\n  \
             capabilities = [\"pull\", \"resolve\"]\n  \
             ca = \"/etc/containerd/certs.d/hub.team.svc.cluster.local/ca.crt\"\n"
        );
    }

    #[test]
    fn a_host_with_a_port_keeps_it_in_the_server_url() {
        let text = render(
            "hub.berth.internal:5000",
            "https://[fd00::2a]:5000",
            Path::new("/c/hub.berth.internal:5000/ca.crt"),
            "team/hub",
        );
        assert!(text.contains("server = \"https://hub.berth.internal:5000\"\n"));
        assert!(text.contains("[host.\"https://[fd00::2a]:5000\"]\n"));
    }

    #[test]
    fn a_mirror_file_names_the_upstream_as_server_and_the_registry_as_its_host() {
        let text = render_mirror(
            "docker.io",
            "https://registry-1.docker.io/",
            "https://10.96.0.42:443",
            Path::new("/etc/containerd/certs.d/hub.team.svc.cluster.local/ca.crt"),
            "team/hub",
        );
        assert_eq!(
            text,
            "# Written by the berth node agent for Registry team/hub (pull-through cache); changes are overwritten.\n\
             # Pulls of docker.io/... go through the registry's ClusterIP, then to the upstream if it fails.\n\
             server = \"https://registry-1.docker.io\"\n\
             \n\
             [host.\"https://10.96.0.42:443\"]\n  \
             capabilities = [\"pull\", \"resolve\"]\n  \
             ca = \"/etc/containerd/certs.d/hub.team.svc.cluster.local/ca.crt\"\n"
        );
    }

    #[test]
    fn odd_characters_in_a_path_are_escaped() {
        assert_eq!(quote("a\"b\\c\u{1}"), "\"a\\\"b\\\\c\\u0001\"");
    }
}
