//! Compiles kernels/*.cu as C++ for the host (with kernels/host_shim.h) into the emulated
//! launcher's runtime, so the CUDA code path runs and is tested on machines with no GPU.
//!
//! Without a C++ compiler the extension still builds: the emulated launcher then has no
//! kernels and says so (`cfg(rdiff_no_emulation)`); the real CUDA path does not need it.

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=src/cuda/emulate/host.cpp");
    println!("cargo::rustc-check-cfg=cfg(rdiff_no_emulation)");
    let built = cc::Build::new()
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
        .try_compile("rdiff_emulate");
    if let Err(e) = built {
        println!("cargo:warning=no C++ compiler for the emulated CUDA launcher ({e}); building without it");
        println!("cargo:rustc-cfg=rdiff_no_emulation");
    }
}
