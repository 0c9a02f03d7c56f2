//! The device path (what runs on CUDA and for non-f32 dtypes: candle ops forward, recomputing
//! backward) checked on the CPU in f32 against every reference: models, adapters, training.

use ftl::ops::{set_path, Path};

struct Reset;

impl Drop for Reset {
    fn drop(&mut self) {
        set_path(Path::Auto);
        ftl::ops::generic::set_chunk_bytes(256 << 20);
    }
}

#[test]
fn device_path_reproduces_every_reference() {
    let _reset = Reset;
    set_path(Path::Device);
    // tiny working copies: the chunked loops (rows of logits, samples of attention) run too
    ftl::ops::generic::set_chunk_bytes(4096);
    crate::fixtures::check_base_models();
    crate::fixtures::check_adapters();
    crate::training::check_shared_train_fixtures();
    crate::training::check_own_train_references();
}
