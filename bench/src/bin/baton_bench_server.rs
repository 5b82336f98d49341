//! The `baton` command line, built inside the bench package so that its tests can run Baton
//! ensembles with `compare --baton` (same code as the real binary).

#[global_allocator]
static GLOBAL: baton_engine::alloc::Mimalloc = baton_engine::alloc::Mimalloc;

fn main() -> anyhow::Result<()> {
    baton_server::cli::main()
}
