//! Reusable activation memory: a pool of f32 buffers for whole activations, and one growable
//! scratch buffer per thread for the tiles (im2col columns, attention scores).
//!
//! A forward pass asks for its activations in the same order each time; buffers go back to the
//! pool as soon as the graph is done with them and are handed out again best-fit, so once a
//! pass has run with a given batch and image size, later passes of that size allocate nothing
//! here. Buffers never shrink and keep their longest initialised length, so handing one out
//! needs no zeroing and never exposes uninitialised memory.

use std::cell::RefCell;

/// An f32 buffer from the pool, `len` long (its storage may be longer).
#[derive(Debug, Default)]
pub struct Buf {
    data: Vec<f32>,
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
        &self.data[..self.len]
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.data[..self.len]
    }
}

/// The pool of free buffers.
#[derive(Debug, Default)]
pub struct Arena {
    free: Vec<Vec<f32>>,
    /// Bytes allocated by this arena so far (for tests and the benchmark's report).
    allocated: usize,
}

impl Arena {
    /// A buffer of `len` elements with unspecified (but initialised) contents.
    pub fn take(&mut self, len: usize) -> Buf {
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
                let mut v = match self
                    .free
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, v)| v.len())
                    .map(|(i, _)| i)
                {
                    Some(i) => self.free.swap_remove(i),
                    None => Vec::new(),
                };
                self.allocated += (len - v.len()) * 4;
                v.resize(len, 0.0);
                v
            }
        };
        Buf { data, len }
    }

    /// A zero-filled buffer.
    pub fn zeros(&mut self, len: usize) -> Buf {
        let mut b = self.take(len);
        b.fill(0.0);
        b
    }

    /// Returns a buffer to the pool.
    pub fn give(&mut self, b: Buf) {
        if !b.data.is_empty() {
            self.free.push(b.data);
        }
    }

    pub fn allocated_bytes(&self) -> usize {
        self.allocated
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch buffer, grown to at least `len` elements. Not re-entrant:
/// `f` must not call `with_scratch` again (the ops using it run no nested rayon work).
pub fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}
