//! The process's allocator: jemalloc, with a small per-thread cache of 64 KiB blocks.
//!
//! Pingora gives every upstream response a fresh 64 KiB body buffer (`BODY_BUFFER_SIZE` in
//! pingora-core's `BodyReader::prepare_buf`), one per proxied request. jemalloc's thread cache
//! stops at 32 KiB (`opt.tcache_max` is capped at compile time by the page size: asking for
//! more is silently clamped), so each of those buffers went through its arena's large-extent
//! path on allocation and again on free: ~1.2 large allocations per request under load (perf
//! uprobe on `je_large_palloc`), about 1 µs of the gateway's CPU per request.
//!
//! [`Allocator`] keeps up to [`SLOTS`] freed blocks of exactly [`BLOCK`] bytes per thread and
//! hands them back to the next allocation of that size on the same thread. Every other size,
//! and every zeroed or realloc'd allocation, goes straight to jemalloc. A cached block is a
//! jemalloc allocation of the same size class, so jemalloc can free or realloc it later: for
//! alignments up to [`MAX_ALIGN`] (`max_align_t` on 64-bit targets) `tikv-jemallocator` calls
//! jemalloc with the same flags whatever the alignment, so a block's layout needs no
//! remapping when it changes hands.
//! Memory held: at most `SLOTS × BLOCK` (256 KiB) per thread; a thread's blocks go back to
//! jemalloc when it exits.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::RefCell;
use tikv_jemallocator::Jemalloc;

/// The cached block size: Pingora's body buffer.
pub const BLOCK: usize = 64 * 1024;
/// Blocks kept per thread. One request in flight on a worker needs one; a few cover the
/// requests a worker interleaves.
pub const SLOTS: usize = 4;
/// Alignments a cached block serves (and that may be cached). jemalloc's 64 KiB allocations
/// are page-aligned, but only the common case is worth a branch.
const MAX_ALIGN: usize = 16;

pub struct Allocator;

struct Blocks {
    held: [*mut u8; SLOTS],
    len: usize,
}

impl Blocks {
    fn pop(&mut self) -> Option<*mut u8> {
        self.len = self.len.checked_sub(1)?;
        Some(self.held[self.len])
    }

    fn push(&mut self, ptr: *mut u8) -> bool {
        if self.len == SLOTS {
            return false;
        }
        self.held[self.len] = ptr;
        self.len += 1;
        true
    }
}

impl Drop for Blocks {
    fn drop(&mut self) {
        while let Some(ptr) = self.pop() {
            // SAFETY: every held pointer came from `Jemalloc` with a layout of this size and an
            // alignment up to MAX_ALIGN, which jemalloc treats alike (module doc).
            unsafe { Jemalloc.dealloc(ptr, block_layout()) };
        }
    }
}

thread_local! {
    // Const-initialised: touching it never allocates. Registering its destructor (on first
    // use) may allocate, but only a small size, which never reaches this thread-local again.
    static BLOCKS: RefCell<Blocks> = const { RefCell::new(Blocks { held: [std::ptr::null_mut(); SLOTS], len: 0 }) };
}

fn block_layout() -> Layout {
    // SAFETY: a power-of-two alignment and a size far from overflow.
    unsafe { Layout::from_size_align_unchecked(BLOCK, MAX_ALIGN) }
}

fn cacheable(layout: Layout) -> bool {
    layout.size() == BLOCK && layout.align() <= MAX_ALIGN
}

// SAFETY: every path either delegates to jemalloc or hands out / takes back a block that
// jemalloc allocated with a layout of the same size and an alignment at least as strict.
// The thread-local is reached with `try_with` and `try_borrow_mut`, so a thread being torn
// down, or a re-entrant call, falls back to jemalloc instead of panicking.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if cacheable(layout) {
            let cached = BLOCKS.try_with(|b| b.try_borrow_mut().ok().and_then(|mut b| b.pop()));
            if let Ok(Some(ptr)) = cached {
                return ptr;
            }
        }
        unsafe { Jemalloc.alloc(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if cacheable(layout) {
            let kept = BLOCKS.try_with(|b| b.try_borrow_mut().is_ok_and(|mut b| b.push(ptr)));
            if kept == Ok(true) {
                return;
            }
        }
        unsafe { Jemalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { Jemalloc.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A block (cached or not) is jemalloc's own allocation, so jemalloc resizes it in
        // place when it can; the result is jemalloc's too, whatever its size.
        unsafe { Jemalloc.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> usize {
        BLOCKS.with(|b| b.borrow().len)
    }

    #[test]
    fn a_freed_block_is_reused_by_the_next_allocation_of_its_size() {
        let a = Allocator;
        let layout = Layout::from_size_align(BLOCK, 8).unwrap();
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            p.write_bytes(0xab, BLOCK); // the whole block is usable
            let before = held();
            a.dealloc(p, layout);
            assert_eq!(held(), before + 1);
            let q = a.alloc(layout);
            assert_eq!(q, p, "the cached block comes back");
            assert_eq!(held(), before);
            // Zeroed allocations never come from the cache.
            let z = a.alloc_zeroed(layout);
            assert!(std::slice::from_raw_parts(z, BLOCK).iter().all(|&b| b == 0));
            a.dealloc(z, layout);
            a.dealloc(q, layout);
        }
    }

    #[test]
    fn the_cache_is_bounded_and_other_sizes_pass_through() {
        let a = Allocator;
        let layout = Layout::from_size_align(BLOCK, 16).unwrap();
        unsafe {
            let blocks: Vec<*mut u8> = (0..SLOTS + 3).map(|_| a.alloc(layout)).collect();
            assert!(blocks.iter().all(|p| !p.is_null()));
            for &p in &blocks {
                a.dealloc(p, layout);
            }
            assert_eq!(held(), SLOTS, "at most SLOTS blocks are kept");
            // Not the block size, or a stricter alignment: jemalloc's, never cached.
            for layout in [Layout::from_size_align(BLOCK - 1, 8).unwrap(), Layout::from_size_align(BLOCK, 4096).unwrap()] {
                let p = a.alloc(layout);
                assert_eq!(p as usize % layout.align(), 0);
                a.dealloc(p, layout);
                assert_eq!(held(), SLOTS);
            }
        }
    }

    #[test]
    fn a_cached_block_can_be_resized_and_blocks_move_between_threads() {
        let a = Allocator;
        let layout = Layout::from_size_align(BLOCK, 1).unwrap();
        unsafe {
            let p = a.alloc(layout);
            p.write_bytes(7, BLOCK);
            let grown = a.realloc(p, layout, 2 * BLOCK);
            assert!(std::slice::from_raw_parts(grown, BLOCK).iter().all(|&b| b == 7));
            let shrunk = a.realloc(grown, Layout::from_size_align(2 * BLOCK, 1).unwrap(), BLOCK);
            a.dealloc(shrunk, layout);
        }
        // Allocated on one thread, freed on another (a task that moved), and the freeing
        // thread's blocks released when it exits.
        let p = unsafe { a.alloc(layout) } as usize;
        std::thread::spawn(move || unsafe {
            Allocator.dealloc(p as *mut u8, Layout::from_size_align(BLOCK, 1).unwrap());
            assert_eq!(held(), 1);
        })
        .join()
        .unwrap();
    }
}
