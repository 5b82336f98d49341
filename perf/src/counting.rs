//! mimalloc, counting the bytes asked for and not yet freed, to tell what a structure asks
//! for apart from what the allocator makes of it. A memory benchmark installs it:
//! `#[global_allocator] static GLOBAL: Counting = Counting;`.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering};

/// The counting allocator.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counting;

static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);
static LIVE_BLOCKS: AtomicU64 = AtomicU64::new(0);
/// What the allocator actually set aside for the live blocks (its size classes).
static LIVE_USABLE: AtomicU64 = AtomicU64::new(0);

fn usable(ptr: *const u8) -> u64 {
    // SAFETY: `ptr` is a live block from mimalloc (or null, which it accepts).
    unsafe { libmimalloc_sys::mi_usable_size(ptr.cast()) as u64 }
}

// SAFETY: forwards every call to mimalloc unchanged; the counters are only statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { baton_engine::alloc::Mimalloc.alloc(layout) };
        LIVE_USABLE.fetch_add(usable(p), Ordering::Relaxed);
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
        LIVE_USABLE.fetch_sub(usable(ptr), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { baton_engine::alloc::Mimalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        LIVE_USABLE.fetch_sub(usable(ptr), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { baton_engine::alloc::Mimalloc.realloc(ptr, layout, new_size) };
        LIVE_USABLE.fetch_add(usable(p), Ordering::Relaxed);
        p
    }
}

/// What is allocated and not yet freed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Live {
    /// Bytes asked for.
    pub bytes: u64,
    /// Blocks.
    pub blocks: u64,
    /// Bytes the allocator set aside for them.
    pub usable: u64,
}

impl Live {
    /// The counts now (meaningful only with [`Counting`] installed).
    pub fn now() -> Live {
        Live {
            bytes: LIVE_BYTES.load(Ordering::Relaxed),
            blocks: LIVE_BLOCKS.load(Ordering::Relaxed),
            usable: LIVE_USABLE.load(Ordering::Relaxed),
        }
    }

    /// What was added since `before`.
    pub fn since(&self, before: &Live) -> Live {
        Live {
            bytes: self.bytes.saturating_sub(before.bytes),
            blocks: self.blocks.saturating_sub(before.blocks),
            usable: self.usable.saturating_sub(before.usable),
        }
    }
}

/// The process's resident memory in kB.
pub fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
