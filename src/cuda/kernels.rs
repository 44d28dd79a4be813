//! The CUDA sources, embedded at build time, and the kernels each one defines.
//!
//! The same files compile for the host in `build.rs` (the emulated launcher), so the names
//! below are also the names the emulation registers.

/// The header every kernel includes (`#include "common.cuh"`).
pub const COMMON: &str = include_str!("../../kernels/common.cuh");

/// Every header a kernel may include, by the name it is included as (NVRTC gets them all).
pub const HEADERS: &[(&str, &str)] = &[
    ("common.cuh", COMMON),
    ("philox.cuh", include_str!("../../kernels/philox.cuh")),
];

/// One `.cu` file: its name (without extension), its text and its `extern "C"` entry points.
pub struct KernelSource {
    pub name: &'static str,
    pub source: &'static str,
    pub entries: &'static [&'static str],
}

macro_rules! entries_by_dtype {
    ($prefix:literal, pairs) => {
        &[
            concat!($prefix, "_f32_f32"),
            concat!($prefix, "_f32_f16"),
            concat!($prefix, "_f32_bf16"),
            concat!($prefix, "_f16_f32"),
            concat!($prefix, "_f16_f16"),
            concat!($prefix, "_f16_bf16"),
            concat!($prefix, "_bf16_f32"),
            concat!($prefix, "_bf16_f16"),
            concat!($prefix, "_bf16_bf16"),
        ]
    };
    ($prefix:literal, single) => {
        &[
            concat!($prefix, "_f32"),
            concat!($prefix, "_f16"),
            concat!($prefix, "_bf16"),
        ]
    };
}

/// Every kernel source rdiff ships.
pub const SOURCES: &[KernelSource] = &[
    KernelSource {
        name: "lincomb",
        source: include_str!("../../kernels/lincomb.cu"),
        entries: entries_by_dtype!("rdiff_lincomb", pairs),
    },
    KernelSource {
        name: "threshold",
        source: include_str!("../../kernels/threshold.cu"),
        entries: entries_by_dtype!("rdiff_threshold", pairs),
    },
    KernelSource {
        name: "error_norm",
        source: include_str!("../../kernels/error_norm.cu"),
        entries: entries_by_dtype!("rdiff_error_norm", single),
    },
    KernelSource {
        name: "gemm",
        source: include_str!("../../kernels/gemm.cu"),
        entries: entries_by_dtype!("rdiff_gemm", single),
    },
    KernelSource {
        name: "unet_conv",
        source: include_str!("../../kernels/unet_conv.cu"),
        entries: &[
            "rdiff_unet_im2col_f32",
            "rdiff_unet_im2col_f16",
            "rdiff_unet_im2col_bf16",
            "rdiff_unet_narrow_f16",
            "rdiff_unet_narrow_bf16",
            "rdiff_unet_conv_init_f32",
            "rdiff_unet_nchw_in_f32",
            "rdiff_unet_nchw_out_f32",
            "rdiff_unet_nchw_in_f16",
            "rdiff_unet_nchw_out_f16",
            "rdiff_unet_nchw_in_bf16",
            "rdiff_unet_nchw_out_bf16",
            "rdiff_unet_nchw_add_f32",
            "rdiff_unet_nchw_add_f16",
            "rdiff_unet_nchw_add_bf16",
        ],
    },
    KernelSource {
        name: "unet_ops",
        source: include_str!("../../kernels/unet_ops.cu"),
        entries: &[
            "rdiff_unet_group_norm_f32",
            "rdiff_unet_upsample2x_f32",
            "rdiff_unet_avgpool2x_f32",
            "rdiff_unet_time_proj_f32",
            "rdiff_unet_rows_f32",
            "rdiff_unet_layer_norm_f32",
            "rdiff_unet_geglu_f32",
        ],
    },
    KernelSource {
        name: "unet_attention",
        source: include_str!("../../kernels/unet_attention.cu"),
        entries: &[
            "rdiff_unet_softmax_cols_f32",
            "rdiff_unet_flash_attention_f32",
            "rdiff_unet_attention_mma_bf16_d64",
            "rdiff_unet_attention_mma_bf16_d128",
            "rdiff_unet_attention_mma_bf16_d160",
            "rdiff_unet_attention_mma_f16_d64",
            "rdiff_unet_attention_mma_f16_d128",
            "rdiff_unet_attention_mma_f16_d160",
            "rdiff_unet_attention_mma_tf32_d64",
            "rdiff_unet_attention_mma_tf32_d128",
            "rdiff_unet_attention_mma_tf32_d160",
            "rdiff_unet_attention_mma_3xtf32_d64",
        ],
    },
];

/// The source named `name`.
pub fn source(name: &str) -> Option<&'static KernelSource> {
    SOURCES.iter().find(|s| s.name == name)
}

/// The source that defines the entry point `entry`.
pub fn source_of_entry(entry: &str) -> Option<&'static KernelSource> {
    SOURCES.iter().find(|s| s.entries.contains(&entry))
}

/// The suffix kernels use for a storage dtype (`f32`, `f16`, `bf16`); `None` for f64, which
/// the kernels do not take.
pub fn dtype_suffix(dtype: crate::dtype::DType) -> Option<&'static str> {
    use crate::dtype::DType;
    match dtype {
        DType::F32 => Some("f32"),
        DType::F16 => Some("f16"),
        DType::BF16 => Some("bf16"),
        DType::F64 => None,
    }
}
