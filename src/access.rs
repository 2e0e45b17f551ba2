//! Who may use a bridge (`allow`, `admins`) and how fast (`rate_limit`): checked before a
//! stanza from a user makes the bridge do anything.
//!
//! An SMS gateway open to the federation spends its owner's money, so the default is closed:
//! an empty `allow` admits only the admins. `*` admits everyone, on purpose.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

use crate::config::RateLimit;
use crate::xmpp::stanza::StanzaFailure;

/// What a user may do on a bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// May register, message and use the user commands.
    User,
    /// May also use the admin commands.
    Admin,
}

/// One bridge's access policy and rate limiter.
#[derive(Debug)]
pub struct Access {
    domain: String,
    /// Replaced whole when a reload changes it.
    rules: std::sync::RwLock<Arc<Rules>>,
}

/// `allow`, `admins` and the rate limit's buckets, as one value.
#[derive(Debug)]
struct Rules {
    allow: Vec<String>,
    admins: Vec<String>,
    limiter: Option<Limiter>,
}

impl Rules {
    fn new(allow: &[String], admins: &[String], limiter: Option<Limiter>) -> Self {
        let lower = |entries: &[String]| entries.iter().map(|e| e.to_lowercase()).collect();
        Self {
            allow: lower(allow),
            admins: lower(admins),
            limiter,
        }
    }
}

/// Checks an `allow` / `admins` entry: a bare JID, a domain, or (allow only) `*`.
pub fn check_entry(entry: &str, admin: bool) -> Result<(), String> {
    if entry == "*" {
        return if admin {
            Err("admins must be JIDs; '*' is allowed only in allow".into())
        } else {
            Ok(())
        };
    }
    if entry.contains('/') {
        return Err(format!(
            "'{entry}' has a resource; give a bare JID or a domain"
        ));
    }
    if admin && !entry.contains('@') {
        return Err(format!("'{entry}' is not a bare JID (user@domain)"));
    }
    entry
        .parse::<xmpp_parsers::jid::BareJid>()
        .map(|_| ())
        .map_err(|error| format!("'{entry}' is not a JID or domain: {error}"))
}

impl Access {
    /// The policy of the bridge on `domain`.
    pub fn new(
        domain: &str,
        allow: &[String],
        admins: &[String],
        rate_limit: Option<RateLimit>,
    ) -> Self {
        Self {
            domain: domain.to_owned(),
            rules: std::sync::RwLock::new(Arc::new(Rules::new(
                allow,
                admins,
                rate_limit.map(Limiter::new),
            ))),
        }
    }

    fn rules(&self) -> Arc<Rules> {
        self.rules
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces `allow`, `admins` and the rate limit (a reload). Users' counts against the
    /// rate limit are kept when it did not change.
    pub fn update(&self, allow: &[String], admins: &[String], rate_limit: Option<RateLimit>) {
        let mut rules = self
            .rules
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let same_rate = rules.limiter.as_ref().map(|limiter| limiter.rate) == rate_limit;
        let limiter = match (same_rate, &rules.limiter) {
            (true, Some(limiter)) => Some(limiter.clone()),
            _ => rate_limit.map(Limiter::new),
        };
        *rules = Arc::new(Rules::new(allow, admins, limiter));
    }

    /// The role of a bare JID, or `None` for a stranger.
    pub fn role(&self, user: &str) -> Option<Role> {
        let user = user.to_lowercase();
        let rules = self.rules();
        if rules.admins.contains(&user) {
            return Some(Role::Admin);
        }
        let domain = user
            .rsplit_once('@')
            .map_or(user.as_str(), |(_, domain)| domain);
        rules
            .allow
            .iter()
            .any(|entry| entry == "*" || *entry == user || entry == domain)
            .then_some(Role::User)
    }

    /// The role of a bare JID, or `forbidden` for a stranger.
    pub fn check(&self, user: &str) -> Result<Role, StanzaFailure> {
        self.role(user).ok_or_else(|| {
            StanzaFailure::Forbidden(format!(
                "{user} may not use {}; ask its operator to add you to its allow list",
                self.domain
            ))
        })
    }

    /// Counts one message of `user` against the rate limit: `resource-constraint` when over.
    pub fn take(&self, user: &str) -> Result<(), StanzaFailure> {
        match &self.rules().limiter {
            Some(limiter) if !limiter.take(user, Instant::now()) => {
                Err(StanzaFailure::ResourceConstraint(format!(
                    "you may send {} messages per {} through {}; wait a little",
                    limiter.rate.count,
                    humantime::format_duration(limiter.rate.per),
                    self.domain
                )))
            }
            _ => Ok(()),
        }
    }
}

/// A token bucket per user: `count` tokens, refilled evenly over `per`. Cloned, it shares
/// the buckets.
#[derive(Debug, Clone)]
struct Limiter {
    rate: RateLimit,
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Buckets kept before full ones are forgotten (a full bucket is the same as none).
const BUCKETS_BEFORE_SWEEP: usize = 10_000;

impl Limiter {
    fn new(rate: RateLimit) -> Self {
        Self {
            rate,
            buckets: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let capacity = f64::from(self.rate.count);
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens =
            (bucket.tokens + elapsed * capacity / self.rate.per.as_secs_f64()).min(capacity);
        bucket.updated = now;
    }

    fn take(&self, user: &str, now: Instant) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        if buckets.len() >= BUCKETS_BEFORE_SWEEP {
            let capacity = f64::from(self.rate.count);
            buckets.retain(|_, bucket| {
                let mut bucket = *bucket;
                self.refill(&mut bucket, now);
                bucket.tokens < capacity
            });
        }
        let bucket = buckets.entry(user.to_lowercase()).or_insert(Bucket {
            tokens: f64::from(self.rate.count),
            updated: now,
        });
        self.refill(bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn access(allow: &[&str], admins: &[&str]) -> Access {
        let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Access::new("gw.example", &owned(allow), &owned(admins), None)
    }

    #[test]
    fn empty_allow_admits_only_admins() {
        let policy = access(&[], &["boss@example.org"]);
        assert_eq!(policy.role("alice@example.org"), None);
        assert_eq!(policy.role("Boss@Example.org"), Some(Role::Admin));
        assert!(matches!(
            policy.check("alice@example.org"),
            Err(StanzaFailure::Forbidden(_))
        ));
    }

    #[test]
    fn domains_jids_and_star() {
        let policy = access(&["example.org", "bob@elsewhere.net"], &[]);
        assert_eq!(policy.role("alice@example.org"), Some(Role::User));
        assert_eq!(policy.role("bob@elsewhere.net"), Some(Role::User));
        assert_eq!(policy.role("eve@elsewhere.net"), None);
        assert_eq!(policy.role("eve@sub.example.org"), None);
        assert_eq!(
            access(&["*"], &[]).role("anyone@any.where"),
            Some(Role::User)
        );
    }

    #[test]
    fn entries_are_checked() {
        assert!(check_entry("example.org", false).is_ok());
        assert!(check_entry("a@example.org", true).is_ok());
        assert!(check_entry("example.org", true).is_err());
        assert!(check_entry("*", true).is_err());
        assert!(check_entry("a@example.org/phone", false).is_err());
    }

    #[test]
    fn the_bucket_refills_evenly() {
        let limiter = Limiter::new(RateLimit {
            count: 3,
            per: Duration::from_secs(60),
        });
        let start = Instant::now();
        assert!((0..3).all(|_| limiter.take("a@x", start)));
        assert!(!limiter.take("a@x", start));
        assert!(limiter.take("b@x", start), "buckets are per user");
        assert!(!limiter.take("a@x", start + Duration::from_secs(19)));
        assert!(limiter.take("a@x", start + Duration::from_secs(21)));
    }
}
