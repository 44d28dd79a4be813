//! PyTorch's CPU generator: MT19937 (Matsumoto & Nishimura 1998) with torch's bookkeeping of
//! the state (`ATen/core/MT19937RNGEngine.h`), read from and written back to the bytes of
//! `torch.Generator.get_state()`.
//!
//! Diffusers draws a sampler's noise with `torch.randn(..., generator=g)`; for rdiff to give
//! the same samples it must draw the same numbers and leave `g` where torch would. Torch draws
//! them serially, one virtual call per number; here the uniforms come from a tight loop over
//! the state block and the Box–Muller transform runs in parallel (`random::torch_normal`).
//!
//! # The state bytes (`CPUGeneratorImplState`, 5,056 bytes, little-endian)
//!
//! ```text
//! offset   0  u64   the initial seed
//!          8  i32   left   (numbers until the next twist, plus one)
//!         12  i32   seeded (1)
//!         16  u64   next   (index of the next state word)
//!         24  u64 × 624   the state words (u32 values widened)
//!       5016  …     torch's cached normals (not used by the ≥ 16-element fill; kept as is)
//! ```

use crate::error::RdiffError;

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER: u32 = 0x8000_0000;
const LOWER: u32 = 0x7fff_ffff;

/// The size of `torch.Generator.get_state()` for a CPU generator.
pub const TORCH_STATE_BYTES: usize = 5056;
const LEFT_AT: usize = 8;
const SEEDED_AT: usize = 12;
const NEXT_AT: usize = 16;
const WORDS_AT: usize = 24;

/// The MT19937 engine with torch's counters: a call first decrements `left` and twists when it
/// reaches zero, then returns the tempered word at `next` and advances it, so `left + next`
/// is 625 between calls.
#[derive(Clone)]
pub struct Mt19937 {
    state: [u32; N],
    left: usize,
    next: usize,
}

#[inline(always)]
fn temper(mut y: u32) -> u32 {
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c_5680;
    y ^= (y << 15) & 0xefc6_0000;
    y ^ (y >> 18)
}

#[inline(always)]
fn twist(u: u32, v: u32) -> u32 {
    (((u & UPPER) | (v & LOWER)) >> 1) ^ if v & 1 == 1 { MATRIX_A } else { 0 }
}

impl Mt19937 {
    /// The engine `torch.Generator().manual_seed(seed)` starts from.
    pub fn from_seed(seed: u64) -> Self {
        let mut state = [0u32; N];
        state[0] = seed as u32;
        for j in 1..N {
            let p = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(p ^ (p >> 30))
                .wrapping_add(j as u32);
        }
        Mt19937 {
            state,
            left: 1,
            next: 0,
        }
    }

    /// The engine held in `torch.Generator.get_state()`'s bytes; an error for bytes of another
    /// size or counters torch itself would reject (`mt19937_engine::is_valid`).
    pub fn from_torch_state(bytes: &[u8]) -> Result<Self, RdiffError> {
        if bytes.len() != TORCH_STATE_BYTES {
            return Err(RdiffError::Value(format!(
                "generator state: {} bytes, expected torch's CPU generator state of {TORCH_STATE_BYTES}",
                bytes.len()
            )));
        }
        let i32_at = |o: usize| i32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
        let (left, seeded, next) = (i32_at(LEFT_AT), i32_at(SEEDED_AT), u64_at(NEXT_AT));
        // (torch's own check, plus left + next ≤ 625 so that no read runs past the state)
        if seeded != 1 || left <= 0 || left as u64 + next > N as u64 + 1 {
            return Err(RdiffError::Value(format!(
                "generator state: not a seeded MT19937 state (left {left}, next {next})"
            )));
        }
        let mut state = [0u32; N];
        for (j, w) in state.iter_mut().enumerate() {
            *w = u64_at(WORDS_AT + 8 * j) as u32;
        }
        Ok(Mt19937 {
            state,
            left: left as usize,
            next: next as usize,
        })
    }

    /// Writes the counters and the state words into `bytes` (a copy of the state this engine
    /// was read from), leaving torch's other fields as they were.
    pub fn write_torch_state(&self, bytes: &mut [u8]) {
        bytes[LEFT_AT..LEFT_AT + 4].copy_from_slice(&(self.left as i32).to_le_bytes());
        bytes[NEXT_AT..NEXT_AT + 8].copy_from_slice(&(self.next as u64).to_le_bytes());
        for (j, w) in self.state.iter().enumerate() {
            let o = WORDS_AT + 8 * j;
            bytes[o..o + 8].copy_from_slice(&(*w as u64).to_le_bytes());
        }
    }

    #[inline(always)]
    fn next_state(&mut self) {
        let s = &mut self.state;
        for k in 0..N - M {
            s[k] = s[k + M] ^ twist(s[k], s[k + 1]);
        }
        for k in N - M..N - 1 {
            s[k] = s[k + M - N] ^ twist(s[k], s[k + 1]);
        }
        s[N - 1] = s[M - 1] ^ twist(s[N - 1], s[0]);
        // As if just before a call's decrement: the call that twisted still counts.
        self.left = N + 1;
        self.next = 0;
    }

    /// torch's `mt19937()`: one tempered 32-bit word.
    pub fn next_u32(&mut self) -> u32 {
        let mut out = 0;
        self.fill_with(std::slice::from_mut(&mut out), |y| y);
        out
    }

    /// `out.len()` consecutive words through `f`, a block of the state at a time.
    #[inline(always)]
    fn fill_with<T>(&mut self, out: &mut [T], f: impl Fn(u32) -> T) {
        let mut done = 0;
        while done < out.len() {
            if self.left == 1 {
                self.next_state();
            }
            let k = (self.left - 1).min(out.len() - done);
            let words = &self.state[self.next..self.next + k];
            for (o, &w) in out[done..done + k].iter_mut().zip(words) {
                *o = f(temper(w));
            }
            self.left -= k;
            self.next += k;
            done += k;
        }
    }

    /// torch's `uniform_real_distribution<float>(0, 1)`: the low 24 bits of each word
    /// times 2⁻²⁴, in [0, 1).
    pub fn fill_uniform(&mut self, out: &mut [f32]) {
        fill_uniform_dispatch(self, out);
    }
}

#[inline(always)]
fn fill_uniform_kernel(g: &mut Mt19937, out: &mut [f32]) {
    const SCALE: f32 = 1.0 / (1u32 << 24) as f32;
    g.fill_with(out, |y| (y & 0x00ff_ffff) as f32 * SCALE);
}

// (the twist and the tempering vectorise: twice as fast with AVX2 as with the baseline's SSE2)
crate::simd_dispatch!(fn fill_uniform_dispatch(g: &mut Mt19937, out: &mut [f32]) => fill_uniform_kernel);

#[cfg(test)]
mod tests {
    use super::*;

    /// The 10,000th output of MT19937 seeded with 5489 is 4123659995 (C++11's
    /// `std::mt19937` conformance requirement, [rand.predef]).
    #[test]
    fn ten_thousandth_output_is_the_standard_ones() {
        let mut g = Mt19937::from_seed(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = g.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn block_fill_equals_one_call_at_a_time() {
        let mut a = Mt19937::from_seed(7);
        let mut b = a.clone();
        let mut block = vec![0f32; 2000];
        a.fill_uniform(&mut block[..3]);
        a.fill_uniform(&mut block[3..]);
        for (i, v) in block.iter().enumerate() {
            let one = (b.next_u32() & 0x00ff_ffff) as f32 / (1u32 << 24) as f32;
            assert_eq!(*v, one, "element {i}");
        }
        assert_eq!((a.left, a.next), (b.left, b.next));
        assert_eq!(a.left + a.next, N + 1);
    }

    #[test]
    fn torch_state_round_trips_and_is_checked() {
        let mut g = Mt19937::from_seed(3);
        g.next_u32();
        let mut bytes = vec![0u8; TORCH_STATE_BYTES];
        bytes[SEEDED_AT] = 1;
        g.write_torch_state(&mut bytes);
        let h = Mt19937::from_torch_state(&bytes).unwrap();
        assert_eq!((h.left, h.next, h.state), (g.left, g.next, g.state));
        assert!(Mt19937::from_torch_state(&bytes[1..]).is_err());
        bytes[SEEDED_AT] = 0;
        assert!(Mt19937::from_torch_state(&bytes).is_err());
    }
}
