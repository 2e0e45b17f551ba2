//! How the process uses glibc's allocator: few arenas, and free pages given back.
//!
//! glibc gives each thread that allocates an arena of its own, up to eight per core; memory
//! freed in one arena serves only that arena, so a daemon whose allocations move between
//! threads (tokio's workers, SQLite's, the blocking pool) keeps several partly empty heaps.
//! [`limit_arenas`] keeps four (unless the admin set `MALLOC_ARENA_MAX` or
//! `GLIBC_TUNABLES`). And glibc keeps what a burst freed (a join storm's presences, a
//! backlog's stanzas), so RSS would stay at the burst's peak: [`trim`] gives those pages
//! back as soon as a burst is over, and every few seconds besides, so RSS follows what is
//! held.

use std::time::Duration;

/// The longest the free pages are kept, busy or not.
const EVERY: Duration = Duration::from_secs(2);

/// How often the trimmer looks whether a burst just ended.
const LOOK: Duration = Duration::from_millis(250);

/// Pages faulted in during one [`LOOK`] above which the process counts as busy: memory is
/// being taken (and will be freed when the burst is over). A quiet process faults a few
/// pages a second.
const BUSY_FAULTS: u64 = 32;

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

/// Gives free pages back, for as long as the process runs: at the first quiet look after a
/// burst (more than [`BUSY_FAULTS`] pages faulted in between two looks), and at least every
/// [`EVERY`]. On a blocking thread: the trim walks the heap under the arenas' locks, and no
/// worker waits on it.
pub async fn trim() {
    let mut look = tokio::time::interval(LOOK);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut faults = minor_faults();
    let mut burst = false;
    let mut trimmed = tokio::time::Instant::now();
    loop {
        look.tick().await;
        let now = minor_faults();
        let busy = now.saturating_sub(faults) > BUSY_FAULTS;
        faults = now;
        burst |= busy;
        if (burst && !busy) || trimmed.elapsed() >= EVERY {
            let _ = tokio::task::spawn_blocking(trim_now).await;
            trimmed = tokio::time::Instant::now();
            burst = false;
            // What the trim's own work faulted is not a burst.
            faults = minor_faults();
        }
    }
}

/// The pages this process faulted in without I/O so far: first touches of memory it took,
/// all threads together.
fn minor_faults() -> u64 {
    // SAFETY: getrusage writes one `rusage` into the zeroed struct we own; RUSAGE_SELF
    // always exists.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `usage` is a valid, exclusive pointer for the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    u64::try_from(usage.ru_minflt).unwrap_or(0)
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
