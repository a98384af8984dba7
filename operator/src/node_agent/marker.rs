//! The marker file (`.berth-managed`) in each directory the agent writes:
//! which Registry the directory is for and exactly which files the agent
//! put there. A directory without a marker is never changed, and only the
//! files a marker lists are ever removed; the names it may list are the
//! agent's own fixed ones, so a tampered marker cannot point elsewhere.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::desired::{FILE_NAMES, Owner};

pub const MARKER: &str = ".berth-managed";
const MANAGED_BY: &str = "berth-node-agent";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    pub managed_by: String,
    pub registry: Owner,
    /// The files the agent wrote here, by name.
    pub files: BTreeSet<String>,
}

impl Marker {
    pub fn new(registry: Owner, files: impl IntoIterator<Item = String>) -> Self {
        Self {
            managed_by: MANAGED_BY.to_owned(),
            registry,
            files: files.into_iter().collect(),
        }
    }

    pub fn render(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Read a marker, refusing any that names a file the agent never writes.
    pub fn parse(text: &str) -> crate::Result<Self> {
        let marker: Self = serde_json::from_str(text)
            .map_err(|e| crate::Error::Host(format!("unreadable marker: {e}")))?;
        if marker.managed_by != MANAGED_BY {
            return Err(crate::Error::Host(format!(
                "marker says managedBy {:?}, not {MANAGED_BY}",
                marker.managed_by
            )));
        }
        if let Some(stray) = marker
            .files
            .iter()
            .find(|f| !FILE_NAMES.contains(&f.as_str()))
        {
            return Err(crate::Error::Host(format!(
                "marker lists {stray:?}, which the agent never writes"
            )));
        }
        Ok(marker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner {
            namespace: "team".into(),
            name: "hub".into(),
            uid: "u1".into(),
        }
    }

    #[test]
    fn a_marker_round_trips_and_names_its_registry() {
        let marker = Marker::new(owner(), ["hosts.toml".to_owned(), "ca.crt".to_owned()]);
        let text = marker.render();
        assert!(text.contains("\"namespace\": \"team\""), "{text}");
        assert!(text.contains("\"uid\": \"u1\""), "{text}");
        assert_eq!(Marker::parse(&text).ok(), Some(marker));
    }

    #[test]
    fn a_marker_naming_other_files_is_refused() {
        let mut marker = Marker::new(owner(), ["ca.crt".to_owned()]);
        marker.files.insert("../../etc/passwd".into());
        let err = Marker::parse(&marker.render())
            .expect_err("refused")
            .to_string();
        assert!(err.contains("never writes"), "{err}");
        assert!(Marker::parse("{").is_err());
        let mut foreign = Marker::new(owner(), []);
        foreign.managed_by = "someone".into();
        assert!(Marker::parse(&foreign.render()).is_err());
    }
}
