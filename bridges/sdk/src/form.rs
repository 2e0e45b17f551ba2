//! Registration forms as a bridge declares them and the values a user submits. The core
//! renders a [`Form`] as a XEP-0004 data form inside XEP-0077 registration.

use std::collections::BTreeMap;

/// A form a user fills in, e.g. to register with a bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form {
    /// Shown as the form's title.
    pub title: String,
    /// Shown above the fields: what the user is asked for and why.
    pub instructions: String,
    /// The fields, in order.
    pub fields: Vec<Field>,
}

/// One field of a [`Form`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The field's name, used as the key in [`FormValues`].
    pub var: String,
    /// The label shown next to it.
    pub label: String,
    /// What kind of input it takes.
    pub kind: FieldKind,
    /// Whether the form is refused without it.
    pub required: bool,
}

/// The kinds of input a [`Field`] takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldKind {
    /// One line of text.
    Text,
    /// One line of text that clients hide as it is typed (passwords, tokens).
    Secret,
    /// Several lines of text (XEP-0004 `text-multi`); the value holds them separated by
    /// `\n`.
    Lines,
    /// A yes/no choice.
    Boolean,
    /// One of a fixed list of values.
    Choice(Vec<String>),
}

/// The values a user submitted, by field name. The core checks required fields and choices
/// against the [`Form`] before a bridge sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormValues(pub BTreeMap<String, String>);

impl FormValues {
    /// The value of a field, if the user gave one.
    pub fn get(&self, var: &str) -> Option<&str> {
        self.0.get(var).map(String::as_str)
    }

    /// The values as a JSON object, e.g. to store them as registration data.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(key, value)| (key.clone(), serde_json::Value::String(value.clone())))
                .collect(),
        )
    }
}

impl Form {
    /// Checks submitted values against the form: every required field present and non-empty,
    /// no unknown field, choices among their options, booleans as XEP-0004 spells them.
    pub fn validate(&self, values: &FormValues) -> Result<(), String> {
        for (var, value) in &values.0 {
            let Some(field) = self.fields.iter().find(|field| &field.var == var) else {
                return Err(format!("unknown field '{var}'"));
            };
            match &field.kind {
                FieldKind::Choice(options) if !options.iter().any(|option| option == value) => {
                    return Err(format!(
                        "'{}' must be one of: {}",
                        field.label,
                        options.join(", ")
                    ));
                }
                FieldKind::Boolean if !matches!(value.as_str(), "0" | "1" | "true" | "false") => {
                    return Err(format!("'{}' must be true or false", field.label));
                }
                _ => {}
            }
        }
        for field in self.fields.iter().filter(|field| field.required) {
            if values
                .get(&field.var)
                .is_none_or(|value| value.trim().is_empty())
            {
                return Err(format!("'{}' is required", field.label));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form() -> Form {
        Form {
            title: "t".into(),
            instructions: "i".into(),
            fields: vec![
                Field {
                    var: "name".into(),
                    label: "Name".into(),
                    kind: FieldKind::Text,
                    required: true,
                },
                Field {
                    var: "colour".into(),
                    label: "Colour".into(),
                    kind: FieldKind::Choice(vec!["red".into(), "blue".into()]),
                    required: false,
                },
            ],
        }
    }

    fn values(pairs: &[(&str, &str)]) -> FormValues {
        FormValues(
            pairs
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
        )
    }

    #[test]
    fn validate_names_the_faulty_field() {
        assert_eq!(form().validate(&values(&[("name", "a")])), Ok(()));
        assert_eq!(
            form().validate(&values(&[])),
            Err("'Name' is required".into())
        );
        assert_eq!(
            form().validate(&values(&[("name", " ")])),
            Err("'Name' is required".into())
        );
        assert_eq!(
            form().validate(&values(&[("name", "a"), ("colour", "green")])),
            Err("'Colour' must be one of: red, blue".into())
        );
        assert_eq!(
            form().validate(&values(&[("name", "a"), ("x", "y")])),
            Err("unknown field 'x'".into())
        );
    }
}
