//! Shared by the Rust integration tests: a counting global allocator and a tiny UNet built
//! from scratch (config + weights found by asking the loader what it needs).

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use _rdiff::unet::model::UNet2D;
use _rdiff::unet::weights::MemoryWeights;

/// The system allocator, counting live bytes and their high-water mark.
pub struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn add(n: isize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counters are plain atomics and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `GlobalAlloc::alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (hence from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        add(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; the caller guarantees `new_size` is valid for `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Bytes allocated and not yet freed, over all threads.
pub fn live_bytes() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Restarts the high-water mark at the current live bytes.
pub fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// The high-water mark since the last `reset_peak`.
pub fn peak_bytes() -> isize {
    PEAK.load(Ordering::Relaxed)
}

/// splitmix64: a seeded generator with no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A two-level UNet2DModel config with attention, small enough to load in well under 1 ms.
pub fn tiny_config() -> serde_json::Value {
    serde_json::json!({
        "_class_name": "UNet2DModel",
        "in_channels": 1,
        "out_channels": 1,
        "block_out_channels": [4, 8],
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "layers_per_block": 1,
        "norm_num_groups": 2,
        "attention_head_dim": 4,
        "time_embedding_type": "positional",
        "sample_size": 8
    })
}

/// Every weight `config` needs, by name, with its shape: the loader names each missing one
/// (and its expected shape) in turn, so the list follows the loader rather than a copy of it.
pub fn weight_shapes(config: &str) -> Vec<(String, Vec<usize>)> {
    let mut mem = MemoryWeights::default();
    let mut order = Vec::new();
    loop {
        let err = match UNet2D::load(config, &mem) {
            Ok(_) => return order,
            Err(e) => e.to_string(),
        };
        let name = err
            .strip_prefix("missing weight \"")
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("unexpected loader error: {err}"))
            .to_string();
        let dims = err
            .rsplit_once("expected shape [")
            .and_then(|(_, s)| s.split(']').next())
            .unwrap_or_else(|| panic!("unexpected loader error: {err}"));
        let shape: Vec<usize> = dims
            .split(", ")
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        let n = shape.iter().product();
        assert!(
            !mem.tensors.contains_key(&name),
            "loader asked twice for {name}"
        );
        mem.tensors
            .insert(name.clone(), (shape.clone(), vec![0.0; n].into()));
        order.push((name, shape));
    }
}

/// Tensors with small seeded values for `shapes`.
pub fn random_weights(
    shapes: &[(String, Vec<usize>)],
    seed: u64,
) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = Rng(seed);
    shapes
        .iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let fan = *shape.get(1).unwrap_or(&1) as f32;
            let vals = (0..n).map(|_| (rng.unit() - 0.5) / fan.sqrt()).collect();
            (name.clone(), shape.clone(), vals)
        })
        .collect()
}

/// A safetensors file, written by hand (the format is an 8-byte little-endian header length,
/// a JSON header of `{name: {dtype, shape, data_offsets}}`, then the data); the tensors cycle
/// through F32, F16, BF16 and F64 so every conversion is exercised.
pub fn safetensors_bytes(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut data = Vec::new();
    for (i, (name, shape, vals)) in tensors.iter().enumerate() {
        let start = data.len();
        let dtype = match i % 4 {
            0 => {
                vals.iter().for_each(|v| data.extend(v.to_le_bytes()));
                "F32"
            }
            1 => {
                vals.iter()
                    .for_each(|v| data.extend(half::f16::from_f32(*v).to_le_bytes()));
                "F16"
            }
            2 => {
                vals.iter()
                    .for_each(|v| data.extend(half::bf16::from_f32(*v).to_le_bytes()));
                "BF16"
            }
            _ => {
                vals.iter()
                    .for_each(|v| data.extend((*v as f64).to_le_bytes()));
                "F64"
            }
        };
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    with_header(&serde_json::Value::Object(header), &data)
}

/// The file for a JSON header and data: length prefix, header padded to 8 bytes, data.
pub fn with_header(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::to_vec(header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}
