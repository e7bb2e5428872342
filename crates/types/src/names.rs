//! Resource names as users type them: `rg1`, `web1`, and qualified `GROUP/NAME`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "invalid name {0:?}: use 1 to 63 characters, letters, digits, '-' and '_', starting with a letter or digit"
    )]
    Invalid(String),
    #[error("invalid name {0:?}: expected GROUP/NAME, for example rg1/web1")]
    NotQualified(String),
}

/// One resource name (a group, a VM, a network, an account, ...).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResourceName(String);

impl ResourceName {
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        let ok_len = (1..=63).contains(&s.len());
        let ok_first = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        let ok_chars = s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if ok_len && ok_first && ok_chars {
            Ok(Self(s))
        } else {
            Err(NameError::Invalid(s))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// This name with a suffix appended, e.g. `rg1` → `rg1-asr`, cut to stay valid.
    pub fn with_suffix(&self, suffix: &str) -> ResourceName {
        let keep = 63usize.saturating_sub(suffix.len()).min(self.0.len());
        ResourceName(format!("{}{}", &self.0[..keep], suffix))
    }
}

impl TryFrom<String> for ResourceName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::new(s)
    }
}

impl From<ResourceName> for String {
    fn from(n: ResourceName) -> String {
        n.0
    }
}

impl FromStr for ResourceName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::new(s)
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A resource addressed inside its group: `GROUP/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QualifiedName {
    pub group: ResourceName,
    pub name: ResourceName,
}

impl QualifiedName {
    pub fn new(group: ResourceName, name: ResourceName) -> Self {
        Self { group, name }
    }
}

impl FromStr for QualifiedName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let (g, n) = s
            .split_once('/')
            .ok_or_else(|| NameError::NotQualified(s.to_string()))?;
        Ok(Self {
            group: g.parse()?,
            name: n.parse()?,
        })
    }
}

impl TryFrom<String> for QualifiedName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        s.parse()
    }
}

impl From<QualifiedName> for String {
    fn from(n: QualifiedName) -> String {
        n.to_string()
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.group, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(ResourceName::new("rg1").is_ok());
        assert!(ResourceName::new("web-1_a").is_ok());
        assert!(ResourceName::new("").is_err());
        assert!(ResourceName::new("-x").is_err());
        assert!(ResourceName::new("a/b").is_err());
        assert!(ResourceName::new("x".repeat(64)).is_err());
    }

    #[test]
    fn qualified_names_parse_and_print() {
        let q: QualifiedName = "rg1/web1".parse().unwrap();
        assert_eq!(q.group.as_str(), "rg1");
        assert_eq!(q.to_string(), "rg1/web1");
        assert!("web1".parse::<QualifiedName>().is_err());
        assert!("a/b/c".parse::<QualifiedName>().is_err());
    }

    #[test]
    fn suffix_keeps_names_valid() {
        let long = ResourceName::new("x".repeat(63)).unwrap();
        assert_eq!(long.with_suffix("-asr").as_str().len(), 63);
        assert_eq!(
            ResourceName::new("rg1")
                .unwrap()
                .with_suffix("-asr")
                .as_str(),
            "rg1-asr"
        );
    }
}
