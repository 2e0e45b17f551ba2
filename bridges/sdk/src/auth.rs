//! Checking the credentials of HTTP requests a bridge receives (webhooks): bearer tokens
//! compared in constant time.

use secrecy::{ExposeSecret, SecretString};

/// The token of a request's `Authorization: Bearer …` header, if it has one.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Whether `presented` equals `expected`, in time that does not depend on where they differ.
pub fn secret_matches(presented: &str, expected: &SecretString) -> bool {
    let expected = expected.expose_secret();
    presented.len() == expected.len()
        && presented
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        headers.insert(
            http::header::AUTHORIZATION,
            "Bearer s3cret".parse().unwrap(),
        );
        let token = SecretString::from("s3cret");
        assert!(bearer_token(&headers).is_some_and(|presented| secret_matches(presented, &token)));
        assert!(!secret_matches("s3cre", &token));
        assert!(!secret_matches("s3creT", &token));
    }
}
