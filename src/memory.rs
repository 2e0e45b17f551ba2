//! How the process uses glibc's allocator: few arenas, and free pages given back.
//!
//! glibc gives each thread that allocates an arena of its own, up to eight per core; memory
//! freed in one arena serves only that arena, so a daemon whose allocations move between
//! threads (tokio's workers, SQLite's, the blocking pool) keeps several partly empty heaps.
//! [`limit_arenas`] keeps four (unless the admin set `MALLOC_ARENA_MAX` or
//! `GLIBC_TUNABLES`). And glibc keeps what a burst freed (a join storm's presences, a
//! backlog's stanzas), so RSS would stay at the burst's peak: [`trim`] gives those pages
//! back every few seconds, so RSS follows what is held.

use std::time::Duration;

/// How often the free pages are given back.
const EVERY: Duration = Duration::from_secs(2);

/// Most arenas, when the environment does not say.
const ARENAS: i32 = 4;

/// Limits glibc to [`ARENAS`] arenas, unless `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` say
/// otherwise. Call it
/// first thing in `main`, before any thread starts.
pub fn limit_arenas() {
    let tuned = std::env::var_os("GLIBC_TUNABLES")
        .is_some_and(|tunables| tunables.to_string_lossy().contains("arena_max"));
    if tuned || std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and only sets glibc's own tunables, under its lock.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Gives free pages back every [`EVERY`], for as long as the process runs, on a blocking
/// thread (the trim walks the heap under the arenas' locks: no worker waits on it).
pub async fn trim() {
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let _ = tokio::task::spawn_blocking(trim_now).await;
    }
}

/// Gives the allocator's free pages back to the system now.
fn trim_now() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only walks glibc's own arenas, under their
    // locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
