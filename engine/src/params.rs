//! Job parameters as bytes: how a job graph names a vertex of a typed job and
//! the parameters its catalog entry was built with.

use std::collections::BTreeMap;

use crate::error::EngineError;

/// Parameters: `key=value` pairs, encoded as `k=v;k=v` UTF-8 bytes so a
/// job description stays readable on the wire and in logs. A `;`, `=` or `\\` in
/// a key or value is escaped with a backslash, so any strings round-trip.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    entries: BTreeMap<String, String>,
}

/// Appends `text` with `;`, `=` and `\\` escaped.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        if matches!(c, ';' | '=' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

impl Params {
    /// An empty configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key = value`.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.entries.insert(key.to_string(), value.to_string());
        self
    }

    /// The encoded bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        for (i, (k, v)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(';');
            }
            escape_into(&mut out, k);
            out.push('=');
            escape_into(&mut out, v);
        }
        out.into_bytes()
    }

    /// Decodes bytes written by [`Params::to_bytes`] for `operator`.
    pub fn parse(operator: &str, bytes: &[u8]) -> Result<Self, EngineError> {
        let bad = |reason: String| EngineError::InvalidOperatorConfig { operator: operator.to_string(), reason };
        let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8: {e}")))?;
        let mut entries = BTreeMap::new();
        // The entry being read: its key once its `=` has come, and the text so far.
        let (mut key, mut part): (Option<String>, String) = (None, String::new());
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(e @ (';' | '=' | '\\')) => part.push(e),
                    Some(other) => return Err(bad(format!("'\\{other}' is not an escape (only \\; \\= \\\\)"))),
                    None => return Err(bad("a lone '\\' at the end".into())),
                },
                '=' if key.is_none() => key = Some(std::mem::take(&mut part)),
                ';' => {
                    match key.take() {
                        Some(k) => entries.insert(k, std::mem::take(&mut part)),
                        None if part.is_empty() => None,
                        None => return Err(bad(format!("'{part}' is not key=value"))),
                    };
                }
                c => part.push(c),
            }
        }
        match key {
            Some(k) => {
                entries.insert(k, part);
            }
            None if part.is_empty() => {}
            None => return Err(bad(format!("'{part}' is not key=value"))),
        }
        Ok(Params { entries })
    }

    /// Parameters from a map.
    pub fn from_map(map: &BTreeMap<String, String>) -> Self {
        Params { entries: map.clone() }
    }

    /// Every parameter, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Takes `key` out.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.entries.remove(key)
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// `key` as a `u64`, or `default` when absent.
    pub fn u64_or(&self, operator: &str, key: &str, default: u64) -> Result<u64, EngineError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| EngineError::InvalidOperatorConfig {
                operator: operator.to_string(),
                reason: format!("{key}={v} is not an unsigned integer"),
            }),
        }
    }

    /// `key` as a `u64`; absent is an error.
    pub fn u64(&self, operator: &str, key: &str) -> Result<u64, EngineError> {
        if self.get(key).is_none() {
            return Err(EngineError::InvalidOperatorConfig {
                operator: operator.to_string(),
                reason: format!("missing {key}"),
            });
        }
        self.u64_or(operator, key, 0)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any keys and values, separators and backslashes included, come back as
        /// they went in.
        #[test]
        fn any_strings_round_trip(entries in proptest::collection::btree_map(".*", ".*", 0..6)) {
            let c = entries.iter().fold(Params::new(), |c, (k, v)| c.with(k, v));
            prop_assert_eq!(Params::parse("op", &c.to_bytes()).unwrap(), c);
        }

        /// Any bytes parse or fail typed.
        #[test]
        fn any_bytes_parse_or_fail_typed(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Params::parse("op", &bytes);
        }
    }

    #[test]
    fn separators_in_values_are_escaped() {
        let c = Params::new().with("path", "a=b;c\\d").with("k;=", "");
        assert_eq!(String::from_utf8(c.to_bytes()).unwrap(), "k\\;\\==;path=a\\=b\\;c\\\\d");
        assert_eq!(Params::parse("op", &c.to_bytes()).unwrap().get("path"), Some("a=b;c\\d"));
        assert!(Params::parse("op", b"a=\\x").is_err());
        assert!(Params::parse("op", b"a=b\\").is_err());
    }

    #[test]
    fn config_round_trips_and_reports_bad_values() {
        let c = Params::new().with("records", 10).with("keys", "golden");
        let back = Params::parse("generator", &c.to_bytes()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.u64("generator", "records").unwrap(), 10);
        assert!(matches!(back.u64("generator", "keys"), Err(EngineError::InvalidOperatorConfig { .. })));
        assert!(Params::parse("x", b"novalue").is_err());
        assert!(Params::parse("x", &[0xff]).is_err());
    }
}
