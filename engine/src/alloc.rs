//! The process allocator: mimalloc, asked for alignment only when it matters.
//!
//! The `mimalloc` crate's `MiMalloc` passes every Rust allocation to `mi_malloc_aligned`,
//! whatever its alignment. mimalloc 3 serves an aligned request above 1 KiB from its size
//! class only when that class is a power of two; otherwise it over-allocates by the
//! alignment, which moves the block into the next size class. So every `Vec` of 8-byte
//! aligned items between 1 KiB and a few MiB whose size is not a power of two cost up to a
//! size class more than it asked: a copy-on-write page of 32 znodes (2,560 B) took a
//! 3,072 B block, 16 bytes per znode, 7% of the data tree (`perf` `tree-mem`).
//!
//! mimalloc's plain `mi_malloc` already returns blocks aligned to 16 bytes (its
//! `MI_MAX_ALIGN_SIZE`) whenever the size allows, so [`Mimalloc`] asks for plain blocks up to
//! that alignment, checks the address, and falls back to the aligned call if it ever is not
//! aligned — alignment is never assumed.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc, mi_zalloc_aligned,
};

/// The alignment `mi_malloc` gives blocks of at least that size (mimalloc's
/// `MI_MAX_ALIGN_SIZE` on 64-bit targets).
const PLAIN_ALIGN: usize = 16;

/// mimalloc as the global allocator: `#[global_allocator] static A: Mimalloc = Mimalloc;`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mimalloc;

fn plain(layout: Layout) -> bool {
    layout.align() <= PLAIN_ALIGN && layout.align() <= layout.size()
}

fn aligned(p: *mut c_void, align: usize) -> bool {
    (p as usize) & (align - 1) == 0
}

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free` takes blocks from
// any of its allocation calls); a block is handed out only once its address is checked to
// have the layout's alignment, else the aligned call (which guarantees it) is used.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout) {
            // SAFETY: plain FFI call; any size is accepted.
            let p = unsafe { mi_malloc(layout.size()) };
            if aligned(p, layout.align()) {
                return p.cast();
            }
            // SAFETY: `p` came from mimalloc just above (or is null, which it accepts).
            unsafe { mi_free(p) };
        }
        // SAFETY: the alignment is a power of two (a `Layout` invariant).
        unsafe { mi_malloc_aligned(layout.size(), layout.align()) }.cast()
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout) {
            // SAFETY: plain FFI call; any size is accepted.
            let p = unsafe { mi_zalloc(layout.size()) };
            if aligned(p, layout.align()) {
                return p.cast();
            }
            // SAFETY: `p` came from mimalloc just above (or is null, which it accepts).
            unsafe { mi_free(p) };
        }
        // SAFETY: the alignment is a power of two (a `Layout` invariant).
        unsafe { mi_zalloc_aligned(layout.size(), layout.align()) }.cast()
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller's contract: `ptr` came from this allocator, hence from mimalloc.
        unsafe { mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        if align <= PLAIN_ALIGN && align <= new_size {
            // SAFETY: the caller's contract: `ptr` came from this allocator, hence from
            // mimalloc, and is live; on success `mi_realloc` frees or reuses it.
            let p = unsafe { mi_realloc(ptr.cast(), new_size) };
            if p.is_null() || aligned(p, align) {
                return p.cast();
            }
            // Misaligned (never seen): move it to an aligned block. The old block is gone by
            // now, so running out of memory here cannot be reported as a failed realloc.
            // SAFETY: the alignment is a power of two (a `Layout` invariant).
            let q = unsafe { mi_malloc_aligned(new_size, align) };
            if q.is_null() {
                // SAFETY: size and alignment come from a valid layout and a size the caller
                // vouches for.
                std::alloc::handle_alloc_error(unsafe { Layout::from_size_align_unchecked(new_size, align) });
            }
            // SAFETY: both blocks are live, distinct and at least `new_size` long; `p` came
            // from mimalloc and is not used after its contents are copied.
            unsafe {
                std::ptr::copy_nonoverlapping(p.cast::<u8>(), q.cast::<u8>(), new_size);
                mi_free(p);
            }
            return q.cast();
        }
        // SAFETY: the caller's contract, and a power-of-two alignment.
        unsafe { mi_realloc_aligned(ptr.cast(), new_size, align) }.cast()
    }
}

/// Gives the pages this thread's heap has left empty, and kept for the purge delay
/// (mimalloc's, a second), back to the system. mimalloc does it only on a later allocation
/// of the same thread: a thread that frees much and then idles keeps them resident.
pub fn return_freed() {
    // SAFETY: plain FFI call on the calling thread's own heap.
    unsafe { libmimalloc_sys::mi_collect(false) };
}

/// As [`return_freed`], without waiting for the purge delay: for a thread that has just
/// freed much at once (a snapshot's values moved into its file: hundreds of MB).
pub fn return_freed_now() {
    // SAFETY: plain FFI call on the calling thread's own heap.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_their_layouts_alignment_and_keep_their_contents_through_realloc() {
        let a = Mimalloc;
        for align in [1usize, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [align, 24, 40, 100, 2560, 40976, 1 << 20] {
                let Ok(layout) = Layout::from_size_align(size.max(align), align) else { continue };
                // SAFETY: a non-zero layout; the block is written within its size and freed once.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    std::ptr::write_bytes(p, 0xab, layout.size());
                    let q = a.realloc(p, layout, layout.size() * 3);
                    assert_eq!(q as usize % align, 0, "realloc: size {size} align {align}");
                    assert!(std::slice::from_raw_parts(q, layout.size()).iter().all(|&b| b == 0xab));
                    a.dealloc(q, Layout::from_size_align_unchecked(layout.size() * 3, align));
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!(std::slice::from_raw_parts(z, layout.size()).iter().all(|&b| b == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }

    #[test]
    fn a_page_of_znodes_gets_its_own_size_class_not_the_next() {
        // The case that cost 16 B per znode: 2,560 B at alignment 8.
        let layout = Layout::from_size_align(2560, 8).expect("a valid layout");
        // SAFETY: a non-zero layout, freed once.
        unsafe {
            let p = Mimalloc.alloc(layout);
            let usable = libmimalloc_sys::mi_usable_size(p.cast());
            Mimalloc.dealloc(p, layout);
            assert_eq!(usable, 2560);
        }
    }
}
