//! Compiles kernels/*.cu as C++ for the host (with kernels/host_shim.h) into the emulated
//! launcher's runtime, so the CUDA code path runs and is tested on machines with no GPU.
//!
//! Without a C++ compiler the extension still builds: the emulated launcher then has no
//! kernels and says so (`cfg(rdiff_no_emulation)`); the real CUDA path does not need it.

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=src/cuda/emulate/host.cpp");
    println!("cargo::rustc-check-cfg=cfg(rdiff_no_emulation)");
    let mut build = cc::Build::new();
    let sanitized = sanitize(&mut build);
    let built = build
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
        assert!(
            !sanitized,
            "RDIFF_SANITIZE: the instrumented kernels did not compile: {e}"
        );
        println!("cargo:warning=no C++ compiler for the emulated CUDA launcher ({e}); building without it");
        println!("cargo:rustc-cfg=rdiff_no_emulation");
    }
}

/// `RDIFF_SANITIZE=address` or `thread` (scripts/sanitize_kernels.sh): the kernels' host build
/// instrumented by gcc's AddressSanitizer + UndefinedBehaviorSanitizer or ThreadSanitizer, and
/// the runtimes linked (the Rust code stays uninstrumented: stable Rust has no sanitizers).
fn sanitize(build: &mut cc::Build) -> bool {
    println!("cargo:rerun-if-env-changed=RDIFF_SANITIZE");
    let (flags, libs): (&[&str], &[&str]) = match std::env::var("RDIFF_SANITIZE").as_deref() {
        Err(_) | Ok("") => return false,
        Ok("address") => (
            &[
                "-fsanitize=address,undefined,float-cast-overflow",
                "-fno-sanitize-recover=all",
            ],
            &["asan", "ubsan"],
        ),
        Ok("thread") => (&["-fsanitize=thread"], &["tsan"]),
        Ok(other) => panic!("RDIFF_SANITIZE={other:?}: expected address or thread"),
    };
    build
        .compiler("g++")
        .flag("-fno-omit-frame-pointer")
        .flag("-g");
    for flag in flags {
        build.flag(flag);
    }
    for lib in libs {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
    true
}
