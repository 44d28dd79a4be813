//! The UNet's activation layout, shared by the graph and both backends: channel-major
//! `[c][b][h][w]` activations of [`Dims`], and the [`Geometry`] of a convolution.

/// Batch and spatial extent of an activation; its element count is `c · n()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub b: usize,
    pub h: usize,
    pub w: usize,
}

impl Dims {
    /// Columns of the activation matrix: b·h·w.
    pub fn n(&self) -> usize {
        self.b * self.h * self.w
    }
    pub fn hw(&self) -> usize {
        self.h * self.w
    }
}

/// The geometry of a convolution: square kernel `k` (1 or 3), `stride` (1 or 2), zero padding
/// (top, left, bottom, right), and an optional nearest 2× upsampling of the input first
/// (fused: the im2col reads the low-resolution input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub k: usize,
    pub stride: usize,
    pub pad: [usize; 4],
    pub upsample: bool,
}

impl Geometry {
    /// 3×3, stride 1, padding 1.
    pub const SAME3: Self = Self {
        k: 3,
        stride: 1,
        pad: [1; 4],
        upsample: false,
    };
    /// 1×1.
    pub const POINT: Self = Self {
        k: 1,
        stride: 1,
        pad: [0; 4],
        upsample: false,
    };

    pub fn out_dims(&self, d: Dims) -> Dims {
        let (h, w) = if self.upsample {
            (2 * d.h, 2 * d.w)
        } else {
            (d.h, d.w)
        };
        let [t, l, b, r] = self.pad;
        Dims {
            b: d.b,
            h: (h + t + b - self.k) / self.stride + 1,
            w: (w + l + r - self.k) / self.stride + 1,
        }
    }
}
