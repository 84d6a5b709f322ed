//! `cargo bench --bench memory`: runs `benches/memory.rs` with the `retrace`
//! binary's allocator. The worker process is this binary too, so both sides
//! allocate as in production. (The allocator lives here, not in
//! `benches/memory.rs`, because the smoke tests include several benchmarks in one
//! crate, and cargo builds benchmarks with `--cfg test`, so `cfg(test)` cannot
//! tell the two apart.)

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../memory.rs"]
mod workload;

fn main() {
    workload::main();
}
