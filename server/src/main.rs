//! `baton`: see [`baton_server::cli`].

#[global_allocator]
static GLOBAL: baton_engine::alloc::Mimalloc = baton_engine::alloc::Mimalloc;

fn main() -> anyhow::Result<()> {
    baton_server::cli::main()
}
