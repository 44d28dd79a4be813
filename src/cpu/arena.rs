//! Reusable activation memory: a pool of f32 buffers for whole activations, and one growable
//! scratch buffer per thread for the tiles (im2col columns, attention scores).
//!
//! A forward pass asks for its activations in the same order each time; buffers go back to the
//! pool as soon as the graph is done with them and are handed out again best-fit, so once a
//! pass has run with a given batch and image size, later passes of that size allocate nothing
//! here. Buffers are zero-filled when created and never shrink; a request larger than every
//! free buffer grows the largest (a mapping in place, its new part zero-filled). So handing one
//! out needs no zeroing and never exposes uninitialised memory. Large buffers are anonymous
//! mappings populated in one call (`Store`): the first forward at a new size takes about 15 ms
//! less on the digits model at batch 64 than with page faults one 4 KiB page at a time, and
//! growing in place populates 22.6 MiB there instead of 34.1 (a buffer and its replacement).

use std::cell::RefCell;

use crate::error::{RdiffError, Result};

/// Buffers at least this large are anonymous mappings rather than heap vectors.
const MAP_MIN_BYTES: usize = 1 << 20;

/// The zero-filled storage of a pooled buffer: a heap vector when small; when large, an
/// anonymous mapping advised for transparent huge pages and populated in one call, so that the
/// first forward does not take a page fault per 4 KiB it touches. Where the kernel refuses
/// either advice (an older kernel: no MADV_POPULATE_WRITE) the pages fault in on first use, as
/// a vector's would.
#[derive(Debug)]
enum Store {
    Heap(Vec<f32>),
    Mapped { map: memmap2::MmapMut, len: usize },
}

impl Default for Store {
    fn default() -> Self {
        Store::Heap(Vec::new())
    }
}

impl Store {
    /// `len` zeros, or None where the memory cannot be had (the caller reports it; a failed
    /// vector allocation would abort the process).
    fn zeroed(len: usize) -> Option<Store> {
        let bytes = len.checked_mul(std::mem::size_of::<f32>())?;
        if bytes >= MAP_MIN_BYTES {
            if let Ok(map) = memmap2::MmapMut::map_anon(bytes) {
                #[cfg(target_os = "linux")]
                {
                    let _ = map.advise(memmap2::Advice::HugePage);
                    let _ = map.advise(memmap2::Advice::PopulateWrite);
                }
                return Some(Store::Mapped { map, len });
            }
        }
        let mut v = Vec::new();
        v.try_reserve_exact(len).ok()?;
        v.resize(len, 0.0);
        Some(Store::Heap(v))
    }

    /// This storage grown to `len` values (more than it has): its values kept, the new ones
    /// zero. A mapping grows in place (`mremap`) and populates only what it adds, so a first
    /// forward does not zero-fill both a buffer and the larger one that replaces it.
    fn grow(self, len: usize) -> Option<Store> {
        #[cfg(target_os = "linux")]
        if let Store::Mapped { mut map, len: old } = self {
            let bytes = len.checked_mul(std::mem::size_of::<f32>())?;
            let options = memmap2::RemapOptions::new().may_move(true);
            // SAFETY: an anonymous mapping (no file to run past), owned here: nothing borrows
            // it across the move.
            if unsafe { map.remap(bytes, options) }.is_ok() {
                let added = old * std::mem::size_of::<f32>();
                let _ = map.advise(memmap2::Advice::HugePage);
                let _ = map.advise_range(memmap2::Advice::PopulateWrite, added, bytes - added);
                return Some(Store::Mapped { map, len });
            }
            return Store::zeroed(len);
        }
        Store::zeroed(len)
    }

    fn len(&self) -> usize {
        match self {
            Store::Heap(v) => v.len(),
            Store::Mapped { len, .. } => *len,
        }
    }

    fn as_slice(&self) -> &[f32] {
        match self {
            Store::Heap(v) => v,
            // SAFETY: the mapping is page-aligned (so f32-aligned), `len` f32s long, readable,
            // zero-filled by the kernel at creation, and borrowed with `self`.
            Store::Mapped { map, len } => unsafe {
                std::slice::from_raw_parts(map.as_ptr().cast::<f32>(), *len)
            },
        }
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        match self {
            Store::Heap(v) => v,
            // SAFETY: as in `as_slice`, and writable, borrowed mutably with `self`.
            Store::Mapped { map, len } => unsafe {
                std::slice::from_raw_parts_mut(map.as_mut_ptr().cast::<f32>(), *len)
            },
        }
    }
}

/// An f32 buffer from the pool, `len` long (its storage may be longer).
#[derive(Debug, Default)]
pub struct Buf {
    data: Store,
    len: usize,
}

impl Buf {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::ops::Deref for Buf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.data.as_slice()[..self.len]
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.data.as_mut_slice()[..self.len]
    }
}

/// The pool of free buffers.
#[derive(Debug, Default)]
pub struct Arena {
    free: Vec<Store>,
    /// Bytes allocated by this arena so far (for tests and the benchmark's report).
    allocated: usize,
}

impl Arena {
    /// A buffer of `len` elements with unspecified (but initialised) contents.
    ///
    /// # Panics
    /// When the memory cannot be had ([`Arena::try_take`] reports it instead): for the ops'
    /// own buffers, bounded whatever the batch.
    pub fn take(&mut self, len: usize) -> Buf {
        self.try_take(len).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Arena::take`], or a `Memory` error when the memory cannot be had: an activation's
    /// size follows the caller's batch and image size.
    pub fn try_take(&mut self, len: usize) -> Result<Buf> {
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, v)| v.len() >= len)
            .min_by_key(|(_, v)| v.len())
            .map(|(i, _)| i);
        let data = match best {
            Some(i) => self.free.swap_remove(i),
            None => {
                // Grow the largest free buffer rather than keep a too-small one around.
                let largest = self
                    .free
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, v)| v.len())
                    .map(|(i, _)| i)
                    .map(|i| self.free.swap_remove(i));
                let had = largest.as_ref().map_or(0, Store::len);
                let grown = match largest {
                    Some(store) => store.grow(len),
                    None => Store::zeroed(len),
                };
                let Some(store) = grown else {
                    let gib = len as f64 * 4.0 / f64::from(1 << 30);
                    return Err(RdiffError::Memory(format!(
                        "cannot allocate {gib:.2} GiB for an activation buffer \
                         ({len} float32 values): use a smaller batch or image size"
                    )));
                };
                self.allocated += (len - had) * 4;
                store
            }
        };
        Ok(Buf { data, len })
    }

    /// A zero-filled buffer.
    pub fn zeros(&mut self, len: usize) -> Buf {
        let mut b = self.take(len);
        b.fill(0.0);
        b
    }

    /// Returns a buffer to the pool.
    pub fn give(&mut self, b: Buf) {
        if b.data.len() > 0 {
            self.free.push(b.data);
        }
    }

    pub fn allocated_bytes(&self) -> usize {
        self.allocated
    }
}

/// u32 words in an arena buffer (the f32 storage reinterpreted), from its first 64-byte
/// boundary, where AMX tile rows load fastest: the bf16 path's packed columns and channel-pair
/// planes shared by an op's tasks.
pub struct Words(Buf);

impl Words {
    /// `len` words (contents unspecified).
    pub fn take(arena: &mut Arena, len: usize) -> Self {
        Self(arena.take(len + 16))
    }

    pub fn give(self, arena: &mut Arena) {
        arena.give(self.0);
    }

    /// f32 slots before the first 64-byte boundary.
    fn skip(&self) -> usize {
        self.0.as_ptr().align_offset(64).min(16)
    }

    fn len(&self) -> usize {
        self.0.len() - 16
    }

    pub fn words_mut(&mut self) -> &mut [u32] {
        let (skip, len) = (self.skip(), self.len());
        let words = &mut self.0[skip..][..len];
        // SAFETY: f32 and u32 have the same size and alignment; the slice is borrowed from
        // the buffer for as long as the result lives.
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u32>(), len) }
    }

    pub fn words(&self) -> &[u32] {
        let words = &self.0[self.skip()..][..self.len()];
        // SAFETY: as in `words_mut`, shared.
        unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u32>(), words.len()) }
    }
}

thread_local! {
    static SCRATCH: RefCell<Store> = const { RefCell::new(Store::Heap(Vec::new())) };
}

/// Runs `f` on this thread's scratch buffer, grown to at least `len` elements. Not re-entrant:
/// `f` must not call `with_scratch` again (the ops using it run no nested rayon work).
pub fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            // (the old contents are scratch: not kept; an op's scratch is bounded whatever
            // the batch, so running out here is not the caller's input)
            *s = Store::zeroed(len)
                .unwrap_or_else(|| panic!("cannot allocate {len} float32 values of scratch"));
        }
        f(&mut s.as_mut_slice()[..len])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_and_small_buffers_start_at_zero_and_are_reused() {
        let mut a = Arena::default();
        let big = MAP_MIN_BYTES / 4 + 3; // a mapping
        for len in [10, big] {
            let mut b = a.take(len);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&v| v == 0.0));
            b[len - 1] = 7.0;
            a.give(b);
            let before = a.allocated_bytes();
            let b = a.take(len);
            assert_eq!(a.allocated_bytes(), before, "reused, not allocated again");
            assert_eq!(b[len - 1], 7.0);
            a.give(b);
        }
        // a larger request grows the largest free buffer: the values it held, then zeros
        let b = a.take(2 * big);
        if cfg!(target_os = "linux") {
            assert_eq!(b[big - 1], 7.0); // (elsewhere a new zeroed buffer replaces it)
        }
        assert!(b[big..].iter().all(|&v| v == 0.0));
        assert_eq!(a.allocated_bytes(), 2 * big * 4); // (net of the grown buffers)
    }

    #[test]
    fn an_impossible_buffer_is_an_error_and_the_pool_survives_it() {
        // A heap buffer and a mapping to grow from, in turn.
        for have in [100, MAP_MIN_BYTES / 4] {
            let mut arena = Arena::default();
            let small = arena.take(have);
            arena.give(small);
            // More bytes than the address space, a count that wraps to 4 MiB unchecked:
            // refused before any allocation is tried.
            let err = arena.try_take(usize::MAX / 4 + (1 << 20)).unwrap_err();
            assert!(matches!(err, RdiffError::Memory(ref m) if m.contains("smaller batch")));
            assert_eq!(arena.allocated_bytes(), have * 4);
            let mut b = arena.take(50);
            b.fill(1.0);
            assert_eq!(b.len(), 50);
        }
    }

    #[test]
    fn scratch_grows_to_the_request() {
        let n = MAP_MIN_BYTES / 2;
        let sum = with_scratch(n, |s| {
            s.fill(1.0);
            s.iter().sum::<f32>()
        });
        assert_eq!(sum, n as f32);
        assert_eq!(with_scratch(8, |s| s.len()), 8);
    }
}
