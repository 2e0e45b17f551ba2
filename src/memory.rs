//! Gives the memory allocator's free pages back to the system after a burst.
//!
//! glibc's malloc keeps what a burst freed (a join storm's presences, a backlog's stanzas)
//! in its arenas, so the process's RSS stays at the burst's peak for as long as it runs.
//! Trimming every few seconds gives those pages back: RSS follows what is held.

use std::time::Duration;

/// How often the free pages are given back.
const EVERY: Duration = Duration::from_secs(2);

/// Gives free pages back every [`EVERY`], for as long as the process runs.
pub async fn trim() {
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        trim_now();
    }
}

/// Gives the allocator's free pages back to the system now.
pub fn trim_now() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only walks glibc's own arenas, under their
    // locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
