//! A bridge's own config keys (everything in its `[[bridge]]` section that the core does not
//! own), parsed into the bridge's typed struct with errors that name the faulty key.

use serde::de::DeserializeOwned;

/// The bridge-specific keys of one `[[bridge]]` section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings(serde_json::Map<String, serde_json::Value>);

/// A bridge-specific key is missing, unknown or has a bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {message}")]
pub struct SettingsError {
    /// The key's path inside the bridge's section, e.g. `endpoint[0].url`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl Settings {
    /// Wraps the keys; used by the core and the test kit.
    pub fn new(keys: serde_json::Map<String, serde_json::Value>) -> Self {
        Self(keys)
    }

    /// Parses the keys into the bridge's config struct. Give the struct
    /// `#[serde(deny_unknown_fields)]` so that a misspelt key is an error, not a silent default.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, SettingsError> {
        let value = serde_json::Value::Object(self.0.clone());
        serde_path_to_error::deserialize(value).map_err(|error| {
            let path = error.path().to_string();
            SettingsError {
                key: if path == "." { String::new() } else { path },
                message: error.into_inner().to_string(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Example {
        greeting: String,
        #[serde(default)]
        inner: Vec<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        port: u16,
    }

    fn settings(json: serde_json::Value) -> Settings {
        match json {
            serde_json::Value::Object(map) => Settings::new(map),
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn errors_name_the_key() {
        let error = settings(serde_json::json!({"greeting": "hi", "inner": [{"port": 99999}]}))
            .parse::<Example>()
            .unwrap_err();
        assert_eq!(error.key, "inner[0].port");
        let error = settings(serde_json::json!({"greting": "hi"}))
            .parse::<Example>()
            .unwrap_err();
        assert!(error.message.contains("unknown field `greting`"), "{error}");
    }
}
