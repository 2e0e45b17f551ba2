//! XEP-0077 in-band registration with a bridge: the bridge's [`Form`] rendered as a XEP-0004
//! data form, and a user's submission (data form, or legacy fields named like the form's)
//! read back into [`FormValues`].

use jabbridge_sdk::{FieldKind, Form, FormValues};
use xmpp_parsers::minidom::rxml::{Namespace, NcName};
use xmpp_parsers::{
    data_forms::{DataForm, DataFormType, Field, FieldType, Option_},
    minidom::Element,
    ns,
};

use crate::xmpp::stanza::StanzaFailure;

/// What a user asked for with an `<iq type='set'><query xmlns='jabber:iq:register'/>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submission {
    /// `<remove/>`: unregister.
    Remove,
    /// Register, or update the registration, with these values.
    Register(FormValues),
}

/// A bridge's form as a XEP-0004 data form of `form_type`, with `current` values filled in
/// (secrets never are: they are not sent back). Every field says its type, `text-single`
/// included (XEP-0004's default, which clients such as Profanity 0.13 do not assume: they
/// leave a field without a type uneditable), and every option has a label.
pub fn data_form(form: &Form, form_type: &str, current: Option<&FormValues>) -> Element {
    let mut x: Element = typed_form(form, form_type, current).into();
    for field in x.children_mut() {
        if field.is("field", ns::DATA_FORMS)
            && field.attr("type").is_none()
            && let Ok(name) = NcName::try_from("type")
        {
            field.set_attr(Namespace::none().clone(), name, "text-single");
        }
    }
    x
}

fn typed_form(form: &Form, form_type: &str, current: Option<&FormValues>) -> DataForm {
    let fields = form
        .fields
        .iter()
        .map(|field| {
            let type_ = match field.kind {
                FieldKind::Text => FieldType::TextSingle,
                FieldKind::Secret => FieldType::TextPrivate,
                FieldKind::Lines => FieldType::TextMulti,
                FieldKind::Boolean => FieldType::Boolean,
                FieldKind::Choice(_) => FieldType::ListSingle,
            };
            let mut rendered = Field::new(&field.var, type_);
            rendered.label = Some(field.label.clone());
            rendered.required = field.required;
            if let FieldKind::Choice(options) = &field.kind {
                rendered.options = options
                    .iter()
                    .map(|value| Option_ {
                        label: Some(value.clone()),
                        value: value.clone(),
                    })
                    .collect();
            }
            if field.kind != FieldKind::Secret
                && let Some(value) = current.and_then(|values| values.get(&field.var))
            {
                rendered.values = match field.kind {
                    FieldKind::Lines => value.lines().map(str::to_owned).collect(),
                    _ => vec![value.to_owned()],
                };
            }
            rendered
        })
        .collect();
    let mut data_form = DataForm::new(DataFormType::Form, form_type, fields);
    data_form.title = Some(form.title.clone());
    data_form.instructions = Some(form.instructions.clone());
    data_form
}

/// The values of a submitted XEP-0004 form (`FORM_TYPE` left out).
pub fn read_data_form(x: &Element) -> Result<FormValues, StanzaFailure> {
    let submitted = DataForm::try_from(x.clone())
        .map_err(|error| StanzaFailure::BadRequest(format!("bad data form: {error}")))?;
    let mut values = FormValues::default();
    for field in submitted.fields {
        let Some(var) = field.var else { continue };
        if var != "FORM_TYPE" {
            values.0.insert(var, field.values.join("\n"));
        }
    }
    Ok(values)
}

/// The answer to a registration `get`: instructions, `<registered/>` when the user already
/// is, and the form as a XEP-0004 data form.
pub fn form_query(form: &Form, registered: bool) -> Element {
    let data_form = data_form(form, ns::REGISTER, None);
    let mut query = Element::builder("query", ns::REGISTER)
        .append(Element::builder("instructions", ns::REGISTER).append(form.instructions.as_str()))
        .build();
    if registered {
        query.append_child(Element::bare("registered", ns::REGISTER));
    }
    query.append_child(data_form);
    query
}

/// Reads a registration `set`. Values are not checked against the form here; the caller
/// runs [`Form::validate`] so that every way in is checked the same.
pub fn parse_submission(payload: &Element, form: &Form) -> Result<Submission, StanzaFailure> {
    if payload.get_child("remove", ns::REGISTER).is_some() {
        return Ok(Submission::Remove);
    }
    let mut values = FormValues::default();
    if let Some(x) = payload.get_child("x", ns::DATA_FORMS) {
        values = read_data_form(x)?;
    } else {
        // Legacy XEP-0077 fields: children named like the form's fields.
        for child in payload.children() {
            if form.fields.iter().any(|field| field.var == child.name()) {
                values.0.insert(child.name().to_owned(), child.text());
            }
        }
    }
    Ok(Submission::Register(values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jabbridge_sdk::Field as FormField;

    fn form() -> Form {
        Form {
            title: "Register".into(),
            instructions: "Say who you are.".into(),
            fields: vec![FormField {
                var: "prefix".into(),
                label: "Reply prefix".into(),
                kind: FieldKind::Text,
                required: true,
            }],
        }
    }

    #[test]
    fn renders_a_data_form_with_the_fields() {
        let query = form_query(&form(), true);
        assert!(query.get_child("registered", ns::REGISTER).is_some());
        let x = DataForm::try_from(query.get_child("x", ns::DATA_FORMS).unwrap().clone()).unwrap();
        assert_eq!(x.form_type(), Some(ns::REGISTER));
        let field = x
            .fields
            .iter()
            .find(|field| field.var.as_deref() == Some("prefix"))
            .unwrap();
        assert!(field.required);
        assert_eq!(field.label.as_deref(), Some("Reply prefix"));
        // Every field names its type, text-single too.
        let x = query.get_child("x", ns::DATA_FORMS).unwrap();
        let untyped: Vec<_> = x
            .children()
            .filter(|field| field.is("field", ns::DATA_FORMS) && field.attr("type").is_none())
            .collect();
        assert!(untyped.is_empty(), "{untyped:?}");
        assert_eq!(
            x.children()
                .find(|field| field.attr("var") == Some("prefix"))
                .and_then(|field| field.attr("type")),
            Some("text-single")
        );
    }

    #[test]
    fn reads_data_forms_legacy_fields_and_remove() {
        let submit: Element =
            "<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>\
            <field var='FORM_TYPE'><value>jabber:iq:register</value></field>\
            <field var='prefix'><value>&gt; </value></field></x></query>"
                .parse()
                .unwrap();
        let Submission::Register(values) = parse_submission(&submit, &form()).unwrap() else {
            panic!("not a registration");
        };
        assert_eq!(values.get("prefix"), Some("> "));
        assert_eq!(values.0.len(), 1);

        let legacy: Element =
            "<query xmlns='jabber:iq:register'><prefix>! </prefix><other>x</other></query>"
                .parse()
                .unwrap();
        let Submission::Register(values) = parse_submission(&legacy, &form()).unwrap() else {
            panic!("not a registration");
        };
        assert_eq!(values.get("prefix"), Some("! "));
        assert_eq!(values.0.len(), 1);

        let remove: Element = "<query xmlns='jabber:iq:register'><remove/></query>"
            .parse()
            .unwrap();
        assert_eq!(
            parse_submission(&remove, &form()).unwrap(),
            Submission::Remove
        );
    }
}
