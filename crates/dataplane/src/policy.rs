//! The SPD as the packet path sees it: an immutable `tandem_esp::spd::Spd` behind `arc-swap`,
//! loaded once per batch; the control plane replaces it (copy, change, swap) under a writer lock.
//! The copy is cheap at any size: `Spd` shares its shards and chunks with the copy it came from,
//! so a change copies only what it touches (see `tandem_esp::spd`).

use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use tandem_esp::spd::{Policy, Spd};

#[derive(Default)]
pub struct Policies {
    current: ArcSwap<Spd>,
    writer: Mutex<()>,
}

impl Policies {
    pub fn snapshot(&self) -> Guard<Arc<Spd>> {
        self.current.load()
    }

    /// Apply `f` to a copy of the SPD and publish the result.
    pub fn update<R>(&self, f: impl FnOnce(&mut Spd) -> R) -> R {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut spd = Spd::clone(&self.current.load());
        let r = f(&mut spd);
        self.current.store(Arc::new(spd));
        r
    }

    /// Policies in lookup order.
    pub fn list(&self) -> Vec<Policy> {
        self.current.load().iter().cloned().collect()
    }
}
