//! What the Jabbridge core, and test kits, use to hand a bridge its [`Core`]: a sink for the
//! bridge's events. Bridge authors need none of it: a bridge only receives a `Core`.

use std::sync::Arc;

use crate::Core;
pub use crate::core::CoreSink;

/// A [`Core`] for the bridge at `domain`, whose events go to `sink`, with the URL the
/// outside world reaches Jabbridge's HTTP listener at (`http.public_url`), if any.
pub fn core(domain: &str, sink: Arc<dyn CoreSink>, public_url: Option<String>) -> Core {
    Core::new(domain, sink).with_public_url(public_url)
}
