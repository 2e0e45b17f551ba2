//! Phone numbers: what people type (`(555) 123-4567`, `+44 20 7946 0958`) to E.164
//! (`+15551234567`), the form every JID, provider request and database row uses.

use std::fmt;

use phonenumber::{Mode, country};

/// A phone number in E.164 form: `+` and 8 to 15 digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164(String);

impl E164 {
    /// The number, e.g. `+15551234567`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads phone numbers written the way people of one region write them.
#[derive(Debug, Clone, Copy)]
pub struct Numbers {
    region: country::Id,
}

impl Numbers {
    /// A reader for `region`, an ISO 3166 code such as `US` or `FR` (`default_region`).
    pub fn new(region: &str) -> Result<Self, String> {
        let region = region
            .trim()
            .to_ascii_uppercase()
            .parse::<country::Id>()
            .map_err(|_| format!("'{region}' is not an ISO 3166 region code such as US or GB"))?;
        Ok(Self { region })
    }

    /// The E.164 form of `text`: an international number (`+44…`, `0044…` where that is how
    /// the region dials abroad) or a national one of the default region. Refuses what is not
    /// a phone number, with a reason a user understands.
    ///
    /// Validity follows libphonenumber's metadata, with one exception: any 10-digit number
    /// of the North American plan (+1) is accepted, so that the fictional 555 numbers and
    /// providers' test numbers (Twilio's +1500555…) work.
    pub fn parse(&self, text: &str) -> Result<E164, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("a phone number is needed".into());
        }
        if text.chars().any(|c| c.is_alphabetic()) {
            return Err(format!("'{text}' is not a phone number (it has letters)"));
        }
        // A number with its country code is read without the default region: read with one,
        // the region's national prefix is stripped too (with US, the 1 of +33 1 … went).
        let region = (!text.starts_with('+')).then_some(self.region);
        let number = phonenumber::parse(region, text)
            .map_err(|error| format!("'{text}' is not a phone number: {error}"))?;
        let e164 = number.format().mode(Mode::E164).to_string();
        let digits = e164.trim_start_matches('+');
        let nanp = number.code().value() == 1 && digits.len() == 11;
        if !(phonenumber::is_valid(&number) || nanp) {
            return Err(format!("'{text}' is not a valid phone number ({e164}?)"));
        }
        if !(8..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("'{text}' is not a valid phone number"));
        }
        Ok(E164(e164))
    }
}

/// The ISO 3166 region of a number, e.g. `GB` for `+442079460958`; a North American (+1)
/// number that no region claims (fictional 555 numbers, providers' test numbers) counts as
/// `US`. `None` when the digits name no region.
pub fn region(number: &E164) -> Option<String> {
    let parsed = phonenumber::parse(None, number.as_str()).ok()?;
    match parsed.country().id() {
        Some(id) => Some(id.as_ref().to_owned()),
        None if parsed.code().value() == 1 => Some("US".into()),
        None => None,
    }
}

/// Whether `region` is an ISO 3166 region code (any case), in upper case.
pub fn region_code(region: &str) -> Option<String> {
    let upper = region.trim().to_ascii_uppercase();
    upper.parse::<country::Id>().ok().map(|_| upper)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn national_and_international_forms_become_e164() {
        let us = Numbers::new("US").unwrap();
        for typed in [
            "(555) 123-4567",
            "555-123-4567",
            "+1 555 123 4567",
            "15551234567",
        ] {
            assert_eq!(us.parse(typed).unwrap().as_str(), "+15551234567", "{typed}");
        }
        assert_eq!(
            us.parse("+44 20 7946 0958").unwrap().as_str(),
            "+442079460958"
        );
        let gb = Numbers::new("gb").unwrap();
        assert_eq!(gb.parse("020 7946 0958").unwrap().as_str(), "+442079460958");
        assert_eq!(
            us.parse("+1 500 555 0006").unwrap().as_str(),
            "+15005550006"
        );
    }

    #[test]
    fn what_is_not_a_number_is_refused_with_a_reason() {
        let us = Numbers::new("US").unwrap();
        for typed in ["", "alice", "12", "+999 1234 5678", "555-CALL-NOW", "+44 1"] {
            let error = us.parse(typed).unwrap_err();
            assert!(!error.is_empty(), "{typed}");
        }
        assert!(Numbers::new("Narnia").is_err());
    }

    #[test]
    fn numbers_know_their_region() {
        let us = Numbers::new("US").unwrap();
        let region_of = |typed: &str| region(&us.parse(typed).unwrap());
        assert_eq!(region_of("+44 20 7946 0958").as_deref(), Some("GB"));
        assert_eq!(region_of("+33 1 44 55 66 77").as_deref(), Some("FR"));
        assert_eq!(
            us.parse("+33 1 44 55 66 77").unwrap().as_str(),
            "+33144556677"
        );
        assert_eq!(region_of("+1 416 979 1234").as_deref(), Some("CA"));
        assert_eq!(region_of("(555) 123-4567").as_deref(), Some("US"));
        assert_eq!(region_code("ca").as_deref(), Some("CA"));
        assert_eq!(region_code("XX"), None);
    }

    proptest::proptest! {
        /// Whatever is typed reads without a panic, and a number read once reads as itself.
        #[test]
        fn anything_typed_reads_and_numbers_read_as_themselves(
            typed in "\\PC{0,30}|[+0-9 ().-]{0,20}",
        ) {
            let us = Numbers::new("US").expect("US");
            if let Ok(number) = us.parse(&typed) {
                proptest::prop_assert_eq!(us.parse(number.as_str()), Ok(number.clone()));
                let _ = region(&number);
            }
        }
    }
}
