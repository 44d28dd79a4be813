//! Fuzzing the UNet loaders (`config.json` + safetensors, `src/unet/`) with seeded mutations of
//! a valid tiny model: truncation, bit flips, inserted and deleted bytes, the header length set
//! huge, shapes / dtypes / offsets changed in the JSON header, config values changed (negative
//! and huge channel counts, unknown block names, zero groups, mismatched list lengths).
//!
//! Every input must give a clean `Err` or a model whose forward pass runs; never a panic. The
//! counting allocator also checks that no load allocates more than a small multiple of the
//! files' size, so no size field from a file is trusted unbounded.
//!
//! `RDIFF_FUZZ_EXECS` (default 4000) and `RDIFF_FUZZ_SECS` (default 20) bound the run;
//! `RDIFF_FUZZ_SEED` picks another seed. The number of executions is printed.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use _rdiff::dtype::DType;
use _rdiff::target::Target;
use _rdiff::tensor::{Device, Tensor};
use _rdiff::unet::embeddings::{ClassLabels, Conditioning, Timesteps};
use _rdiff::unet::model::UNet2D;
use _rdiff::unet::runner::UNetRunner;
use _rdiff::unet::weights::ComputeDtype;
use common::{Counting, Rng};
use serde_json::{json, Value};

#[global_allocator]
static ALLOC: Counting = Counting;

const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A value from the pool of troublesome JSON values.
fn odd_value(rng: &mut Rng) -> Value {
    match rng.below(18) {
        0 => json!(-1),
        1 => json!(0),
        2 => json!(1),
        3 => json!(3),
        4 => json!(1_000_000_000u64),
        5 => json!(u64::MAX),
        6 => json!(1u64 << 63),
        7 => json!(1.5),
        8 => json!(1e300),
        9 => json!("garbage"),
        10 => Value::Null,
        11 => json!(true),
        12 => json!([]),
        13 => json!([0]),
        14 => json!([1_000_000_000u64]),
        15 => json!({}),
        16 => json!(-4),
        _ => json!("x".repeat(rng.below(5000))),
    }
}

const BLOCK_NAMES: &[&str] = &[
    "DownBlock2D",
    "AttnDownBlock2D",
    "ResnetDownsampleBlock2D",
    "UNetResDownBlock2D",
    "UpBlock2D",
    "AttnUpBlock2D",
    "ResnetUpsampleBlock2D",
    "CrossAttnDownBlock2D",
    "",
    "UNetMidBlock2D",
];

/// One change to the config; returns what it did.
fn mutate_config(cfg: &mut Value, rng: &mut Rng) -> String {
    let obj = cfg.as_object_mut().unwrap();
    let keys = [
        "in_channels",
        "out_channels",
        "block_out_channels",
        "down_block_types",
        "up_block_types",
        "layers_per_block",
        "norm_num_groups",
        "attention_head_dim",
        "attn_norm_num_groups",
        "time_embedding_type",
        "time_embedding_dim",
        "mid_block_type",
        "class_embed_type",
        "num_class_embeds",
        "num_train_timesteps",
        "resnet_time_scale_shift",
        "downsample_type",
        "upsample_type",
        "act_fn",
        "norm_eps",
        "freq_shift",
        "center_input_sample",
        "add_attention",
    ];
    let key = keys[rng.below(keys.len())];
    match rng.below(4) {
        0 => {
            let v = odd_value(rng);
            let s = format!("{key} = {v}");
            obj.insert(key.into(), v);
            s
        }
        1 => {
            obj.remove(key);
            format!("{key} removed")
        }
        _ => match obj.get_mut(key) {
            // Lists: change one element, or the length.
            Some(Value::Array(list)) => {
                let n = list.len();
                match rng.below(4) {
                    0 if n > 0 => {
                        list.pop();
                        format!("{key}: last popped")
                    }
                    1 => {
                        let v = list.first().cloned().unwrap_or(json!(4));
                        list.push(v);
                        format!("{key}: first pushed")
                    }
                    _ if n > 0 => {
                        let i = rng.below(n);
                        list[i] = if list[i].is_string() {
                            json!(BLOCK_NAMES[rng.below(BLOCK_NAMES.len())])
                        } else {
                            [
                                json!(0),
                                json!(-4),
                                json!(3),
                                json!(6),
                                json!(12),
                                json!(1u64 << 40),
                            ][rng.below(6)]
                            .clone()
                        };
                        format!("{key}[{i}] = {}", list[i])
                    }
                    _ => format!("{key}: unchanged"),
                }
            }
            _ => {
                let v = [
                    json!(0),
                    json!(1),
                    json!(2),
                    json!(8),
                    json!(16),
                    json!(null),
                ][rng.below(6)]
                .clone();
                let s = format!("{key} = {v}");
                obj.insert(key.into(), v);
                s
            }
        },
    }
}

/// Byte-level damage: truncation, bit flips, insertions, deletions, overwrites.
fn mutate_bytes(b: &mut Vec<u8>, rng: &mut Rng) -> String {
    let n = b.len().max(1);
    match rng.below(5) {
        0 => {
            let at = rng.below(n);
            b.truncate(at);
            format!("truncated to {at}")
        }
        1 => {
            let k = 1 + rng.below(8);
            for _ in 0..k {
                let i = rng.below(n);
                if i < b.len() {
                    b[i] ^= 1 << rng.below(8);
                }
            }
            format!("{k} bits flipped")
        }
        2 => {
            let at = rng.below(n);
            let k = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..k).map(|_| rng.next() as u8).collect();
            b.splice(at.min(b.len())..at.min(b.len()), bytes);
            format!("{k} bytes inserted at {at}")
        }
        3 => {
            let at = rng.below(n).min(b.len());
            let end = (at + 1 + rng.below(64)).min(b.len());
            b.drain(at..end);
            format!("bytes {at}..{end} deleted")
        }
        _ => {
            let at = rng.below(n);
            let v = [b'{', b'}', b'"', b'[', b']', b',', b'9', b'-', 0xff, 0][rng.below(10)];
            if at < b.len() {
                b[at] = v;
            }
            format!("byte {at} = {v:#x}")
        }
    }
}

/// The header-length field set to something else (huge, off by a little, zero).
fn mutate_header_len(b: &mut [u8], rng: &mut Rng) -> String {
    let len = u64::from_le_bytes(b[..8].try_into().unwrap());
    let v = match rng.below(7) {
        0 => u64::MAX,
        1 => 1 << 40,
        2 => b.len() as u64,
        3 => b.len() as u64 - 7,
        4 => len + 1 + rng.below(16) as u64,
        5 => len.saturating_sub(1 + rng.below(16) as u64),
        _ => 0,
    };
    b[..8].copy_from_slice(&v.to_le_bytes());
    format!("header length {len} -> {v}")
}

/// A JSON-aware change to one tensor's entry in the header (shape, dtype, offsets), or to the
/// set of entries; the length prefix is rewritten to match.
fn mutate_header(b: &[u8], rng: &mut Rng) -> (Vec<u8>, String) {
    let len = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&b[8..8 + len]).unwrap();
    let data = &b[8 + len..];
    let obj = header.as_object_mut().unwrap();
    let names: Vec<String> = obj
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let name = names[rng.below(names.len())].clone();
    let entry = obj.get_mut(&name).unwrap();
    let what = match rng.below(9) {
        0 => {
            let shape = entry["shape"].as_array_mut().unwrap();
            let v = [0u64, 1, 2, 3, 1 << 20, 1 << 32, u64::MAX][rng.below(7)];
            if shape.is_empty() {
                shape.push(json!(v));
            } else {
                let i = rng.below(shape.len());
                shape[i] = json!(v);
            }
            format!("{name}: a dim = {v}")
        }
        1 => {
            let shape = entry["shape"].as_array_mut().unwrap();
            if rng.below(2) == 0 {
                shape.push(json!(1));
            } else {
                shape.pop();
            }
            format!("{name}: rank changed")
        }
        2 => {
            let dt = [
                "F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "I32", "XYZ",
            ][rng.below(10)];
            entry["dtype"] = json!(dt);
            format!("{name}: dtype {dt}")
        }
        3 => {
            let off = entry["data_offsets"].as_array_mut().unwrap();
            let (s, e) = (off[0].as_u64().unwrap(), off[1].as_u64().unwrap());
            let (s2, e2) = match rng.below(5) {
                0 => (e, s),
                1 => (s, u64::MAX),
                2 => (s + 2, e + 2),
                3 => (s, e + data.len() as u64),
                _ => (0, e - s),
            };
            *off = vec![json!(s2), json!(e2)];
            format!("{name}: offsets [{s2}, {e2}]")
        }
        4 => {
            obj.remove(&name);
            format!("{name} removed")
        }
        5 => {
            let other = names[rng.below(names.len())].clone();
            let e = obj[&other].clone();
            obj.insert(name.clone(), e);
            format!("{name} points at {other}'s entry")
        }
        6 => {
            entry["shape"] = odd_value(rng);
            format!("{name}: shape = {}", entry["shape"])
        }
        7 => {
            entry["data_offsets"] = odd_value(rng);
            format!("{name}: offsets = {}", entry["data_offsets"])
        }
        _ => {
            obj.insert("__metadata__".into(), odd_value(rng));
            "__metadata__ changed".into()
        }
    };
    (common::with_header(&header, data), what)
}

/// Loads the folder and, if that succeeds, runs a forward pass: Ok(true) for a model,
/// Ok(false) for a clean error, Err(message) for a panic.
fn load_and_run(dir: &Path) -> Result<bool, String> {
    catch_unwind(AssertUnwindSafe(|| match UNet2D::from_dir(dir, WEIGHTS) {
        Err(_) => false,
        Ok(m) => {
            let side = 8;
            let (b, c) = (1, m.in_channels());
            let mut x: Vec<f32> = (0..b * c * side * side)
                .map(|i| (i % 7) as f32 / 7.0)
                .collect();
            let co = m.out_channels();
            let mut out = vec![0.0f32; b * co * side * side];
            let t = |v: &mut [f32], c: usize| {
                let ptr = v.as_mut_ptr() as u64;
                Tensor::new(
                    "t",
                    ptr,
                    DType::F32,
                    Device::Cpu,
                    vec![b, c, side, side],
                    None,
                )
                .unwrap()
            };
            let (xt, ot) = (t(&mut x, c), t(&mut out, co));
            let m = UNetRunner::new(m, Target::Cpu, 0, ComputeDtype::F32).unwrap();
            // A model that loads may still refuse a size (e.g. more downsamplers): fine.
            let _ = m.forward(
                &xt,
                &ot,
                Timesteps::Host(&[10.0]),
                &Conditioning::class(ClassLabels::None),
                None,
                None,
                0,
            );
            true
        }
    }))
    .map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

/// `gemm` keeps a packing buffer per thread (2 MiB), made by the thread's first product.
/// Whether the seed run above reached every pool thread depends on scheduling, so without
/// this the first execution to run a product on a new thread was charged 2 MiB (a flaky
/// failure); one product on every thread now makes them all.
fn warm_gemm_on_every_thread() {
    rayon::broadcast(|_| {
        let n = 256;
        let (a, b, mut c) = (
            vec![1.0f32; n * n],
            vec![1.0f32; n * n],
            vec![0.0f32; n * n],
        );
        // SAFETY: three n×n row-major matrices of this thread's own.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
}

#[test]
fn unet_loader_survives_mutated_files() {
    let max_execs = env_or("RDIFF_FUZZ_EXECS", 4000);
    let budget = Duration::from_secs(env_or("RDIFF_FUZZ_SECS", 20));
    let seed = env_or("RDIFF_FUZZ_SEED", 0x5eed_f022);

    let cfg = common::tiny_config();
    let cfg_text = cfg.to_string();
    let shapes = common::weight_shapes(&cfg_text);
    let weights = common::safetensors_bytes(&common::random_weights(&shapes, 7));

    let dir = std::env::temp_dir().join(format!("rdiff-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |c: &[u8], w: &[u8]| {
        std::fs::write(dir.join("config.json"), c).unwrap();
        std::fs::write(dir.join(WEIGHTS), w).unwrap();
    };

    // The seeds themselves load and run.
    write(cfg_text.as_bytes(), &weights);
    assert_eq!(
        load_and_run(&dir),
        Ok(true),
        "the valid seed files must load"
    );
    warm_gemm_on_every_thread();

    let mut rng = Rng(seed);
    let start = Instant::now();
    let (mut execs, mut loaded, mut worst_ratio) = (0u64, 0u64, 0.0f64);
    while execs < max_execs && start.elapsed() < budget {
        let mut c = cfg.clone();
        let mut w = weights.clone();
        let mut what = Vec::new();
        // One to three mutations, of the config, the weights or both.
        for _ in 0..1 + rng.below(3) {
            match rng.below(6) {
                0 | 1 => what.push(mutate_config(&mut c, &mut rng)),
                2 => what.push(mutate_bytes(&mut w, &mut rng)),
                3 if w.len() >= 8 => what.push(mutate_header_len(&mut w, &mut rng)),
                4 if w.len() >= 8
                    && serde_json::from_slice::<Value>(
                        w.get(8..8 + u64::from_le_bytes(w[..8].try_into().unwrap()) as usize)
                            .unwrap_or(b"x"),
                    )
                    .is_ok_and(|h| h.is_object()) =>
                {
                    let (w2, s) = mutate_header(&w, &mut rng);
                    w = w2;
                    what.push(s);
                }
                _ => {
                    // Damage the config's text rather than its values.
                    let mut t = c.to_string().into_bytes();
                    what.push(format!("config text: {}", mutate_bytes(&mut t, &mut rng)));
                    write(&t, &w);
                    c = Value::Null;
                    break;
                }
            }
        }
        if !c.is_null() {
            write(c.to_string().as_bytes(), &w);
        }
        let files = (c.to_string().len() + w.len()) as f64;
        common::reset_peak();
        let base = common::live_bytes();
        let res = load_and_run(&dir);
        let peak = (common::peak_bytes() - base) as f64;
        execs += 1;
        match res {
            Ok(ok) => loaded += ok as u64,
            Err(msg) => {
                let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failure");
                let _ = std::fs::remove_dir_all(&keep);
                let _ = std::fs::rename(&dir, &keep);
                panic!("execution {execs} panicked ({msg}) after {what:?}; files in {keep:?}");
            }
        }
        // Weights are converted to f32 (≤ 2× an f16 file) and activations of an 8×8 image are
        // tiny: anything past 8× the files plus 1 MiB came from trusting a size field.
        let ratio = (peak - (1 << 20) as f64) / files;
        worst_ratio = worst_ratio.max(ratio);
        assert!(
            ratio <= 8.0,
            "execution {execs} allocated {peak} bytes for {files} bytes of files after {what:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "fuzzed the UNet loaders: {execs} executions in {:.1} s (seed {seed:#x}), {loaded} \
         loaded a model, the rest were clean errors; peak allocation ≤ 1 MiB + \
         {worst_ratio:.2}× the files",
        start.elapsed().as_secs_f64()
    );
    assert!(
        execs >= 200,
        "only {execs} executions ran in the time budget"
    );
}
