//! `run.ron`, the run manifest: the input is read as a manifest (`ftl run --rerun`, `ftl runs`)
//! and checked for a rerun.

use ftl_fuzz::{clear, put};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let p = put("run/run.ron", data);
        match ftl::manifest::Manifest::read(&p) {
            Ok(m) => {
                if let Err(e) = m.check_rerun(&p) {
                    clear(&format!("{e:#}"), &[&p]);
                }
            }
            Err(e) => clear(&format!("{e:#}"), &[&p]),
        }
    });
}
