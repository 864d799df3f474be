//! One lock for the tests that run the demo network in real time or time themselves (`reflex
//! run`, `reflex demo`, `reflex bench`): with one integration test binary per crate they would
//! otherwise share a 2-core machine with each other and miss their deadlines. Other tests keep
//! running in parallel beside them.

use std::sync::{Mutex, MutexGuard};

static REAL_TIME: Mutex<()> = Mutex::new(());

/// Holds the real-time lock until the guard is dropped (the end of the test). A test that failed
/// while holding it does not block the others.
pub fn real_time() -> MutexGuard<'static, ()> {
    REAL_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
