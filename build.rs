//! Compiles kernels/*.cu as C++ for the host (with kernels/host_shim.h) into the emulated
//! launcher's runtime, so the CUDA code path runs and is tested on machines with no GPU.

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=src/cuda/emulate/host.cpp");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("src/cuda/emulate/host.cpp")
        .include("kernels")
        .define("RDIFF_HOST", None)
        // The kernels read f16/bf16 buffers through 16-byte vector structs.
        .flag_if_supported("-fno-strict-aliasing")
        // The emulation must round like the CPU path: no fused multiply-adds.
        .flag_if_supported("-ffp-contract=off")
        .warnings(true)
        .flag_if_supported("-Wno-unknown-pragmas")
        .compile("rdiff_emulate");
}
